#!/usr/bin/env bash
# Build the lpt-serve image and check it with a real container engine: alone (no network) and
# in the compose topology (nginx + two replicas on one adapter volume, then on an S3 bucket:
# docker/test-s3-profile.sh). docs/deploy.md.
#
#   docker/test.sh             build, check, remove every container/volume/network it made
#   docker/test.sh --rmi       ... and the images it built (kept by default: the next build is cached)
#   docker/test.sh --no-build  check $IMAGE as it is
#
# Environment (all optional):
#   ENGINE           podman or docker (default: docker when its engine answers, else podman)
#   BASE_IMAGE       the build's base (default: docker.io/library/python:3.11-slim when it can be
#                    pulled, else a Debian base made here with debootstrap: make-base-image.sh)
#   IMAGE            the tag built and checked (default localhost/lpt-serve:test)
#   NGINX_IMAGE      the load balancer (default: nginx:1.27-alpine when pullable, else Debian's
#                    nginx-light on BASE_IMAGE, built here)
#   TORCH_INDEX_URL  for the build (default: PyTorch's CPU index; empty when PIP_FIND_LINKS is a
#                    local folder, which is then mounted into the build: podman only)
#   PIP_CERT         a CA bundle for pip inside the build (default: the host pip's `global.cert`)
#   LOAD_REQUESTS    requests in the stop-under-load check (default 160)
#   READY_TIMEOUT    seconds a container, or the whole topology, may take to turn ready (default
#                    300; seen on 2 busy cores: 12-47 s alone, 22-66 s for the topology)
#
# Before building, a preflight checks that containers on one network resolve each other's
# names (nginx reaches the replicas by name) and names the missing package when they do not.
# Whatever happens (a failed check, Ctrl-C, SIGTERM from `timeout`), the script removes the
# containers, volumes and networks it made and stops the podman API service it started.
# Podman runs with docker/containers.conf (CONTAINERS_CONF): see docs/deploy.md for why.
# Compose: Debian's docker-compose 1.29, against podman's Docker-compatible socket.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

RMI=0; BUILD=1
for arg in "$@"; do
    case "$arg" in
        --rmi) RMI=1 ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/!p}' "$0"; exit 0 ;;
        *) echo "test.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

IMAGE=${IMAGE:-localhost/lpt-serve:test}
LOAD_REQUESTS=${LOAD_REQUESTS:-160}
READY_TIMEOUT=${READY_TIMEOUT:-300}
ADMIN_KEY=test-admin-$$
TASK=lbtask
# every container, volume and network this run makes is named after PROJECT: cleanup finds them so
PROJECT=lpttest$$
TMP=$(mktemp -d /tmp/lpt-docker-test.XXXXXX)
SOLO=${PROJECT}-solo
DNS_NET=${PROJECT}-dnscheck
SOCK_PID=""
MADE_IMAGES=()
FAILED=0

say() { printf '\n== %s\n' "$*"; }
pass() { printf '  PASS  %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*"; FAILED=$((FAILED + 1)); }
die() { printf '\ntest.sh: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }

# wait_for SECONDS CHECK [ARGS...]: run CHECK every half second until it returns 0 (ready) or 2
# (will never be: stop waiting), or SECONDS have passed. Returns 0 when ready, 1 otherwise.
wait_for() {
    local deadline=$((SECONDS + $1)) rc; shift
    while true; do
        rc=0; "$@" || rc=$?
        (( rc == 0 )) && return 0
        (( rc == 2 || SECONDS >= deadline )) && return 1
        sleep 0.5
    done
}

# ---- the engine ----------------------------------------------------------------------------
if [[ -z "${ENGINE:-}" ]]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker; else ENGINE=podman; fi
fi
command -v "$ENGINE" >/dev/null || { echo "test.sh: $ENGINE is not installed (docs/deploy.md)" >&2; exit 2; }
command -v curl >/dev/null || { echo "test.sh: needs curl" >&2; exit 2; }
command -v docker-compose >/dev/null || { echo "test.sh: needs docker-compose (docs/deploy.md)" >&2; exit 2; }
if [[ $ENGINE == podman ]]; then
    export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/docker/containers.conf}
fi
E() { "$ENGINE" "$@"; }
# podman without systemd logs an error about healthcheck timers on run/stop: noise, not failure
quiet() { "$@" 2> >(grep -v -e 'systemd connection' -e 'healthcheck' >&2); }

RM=(rm -f -v); [[ $ENGINE == podman ]] && RM+=(-t 0)   # podman: no stop grace when cleaning up

# E build. A podman build cut short by a signal leaves its working container in storage (seen in
# `podman ps -a --external` only): cleanup removes those that appeared during the build.
BUILDING=0; BUILD_BEFORE=()
build() {
    [[ $ENGINE == podman ]] && mapfile -t BUILD_BEFORE < <(podman ps -aq --external --no-trunc)
    BUILDING=1; E build "$@"; local rc=$?; BUILDING=0; return $rc
}
cleanup() {
    trap '' INT TERM      # a second Ctrl-C must not cut the cleanup short (hence timeout -k below)
    set +e
    # compose's own teardown, while its API answers (podman's service got the TERM too)
    if [[ -n "${COMPOSE_ENV:-}" ]] && { [[ $ENGINE != podman ]] || kill -0 "$SOCK_PID" 2>/dev/null; }; then
        timeout -k 5 120 env "${COMPOSE_ENV[@]}" docker-compose -p "$PROJECT" -f docker/compose.yaml \
            down -v --remove-orphans >"$TMP/down.log" 2>&1 \
            || echo "  compose down: $(tail -1 "$TMP/down.log"); removing by name instead"
    fi
    # whatever compose did not remove (or all of it, when the API service had already gone):
    # this run's objects by name, PROJECT_* from compose, PROJECT-* from this script
    local names
    mapfile -t names < <(E ps -a --format '{{.Names}}' 2>/dev/null | grep -E "^${PROJECT}[-_]")
    (( ${#names[@]} )) && quiet E "${RM[@]}" "${names[@]}" >/dev/null 2>&1
    mapfile -t names < <(E volume ls --format '{{.Name}}' 2>/dev/null | grep -E "^${PROJECT}[-_]")
    (( ${#names[@]} )) && E volume rm -f "${names[@]}" >/dev/null 2>&1
    mapfile -t names < <(E network ls --format '{{.Name}}' 2>/dev/null | grep -E "^${PROJECT}[-_]")
    (( ${#names[@]} )) && E network rm "${names[@]}" >/dev/null 2>&1
    if [[ -n "$SOCK_PID" ]]; then kill "$SOCK_PID" 2>/dev/null; wait "$SOCK_PID" 2>/dev/null; fi
    if (( BUILDING )) && [[ $ENGINE == podman ]]; then
        mapfile -t names < <(podman ps -aq --external --no-trunc | grep -vxF -f <(printf '%s\n' "${BUILD_BEFORE[@]}"))
        (( ${#names[@]} )) && podman rm -f "${names[@]}" >/dev/null 2>&1
    fi
    if (( RMI )); then
        for img in "${MADE_IMAGES[@]}"; do E rmi -f "$img" >/dev/null 2>&1; done
        # the build stages' cache images carry the Dockerfile's title label: remove only those
        E image prune -f --filter "label=org.opencontainers.image.title=lpt-serve" >/dev/null 2>&1
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
# Ctrl-C, or `timeout` (TERM to this script and everything it runs): exit, and the EXIT trap
# cleans up. bash runs these once its foreground command has ended (it got the signal too).
trap 'exit 130' INT
trap 'exit 143' TERM
# a command that fails outside any check stops the script (set -e): say where, not nothing
trap 'printf "\ntest.sh: stopped by a failing command (exit %s) at %s line %s\n" "$?" "${BASH_SOURCE[0]:-$0}" "$LINENO" >&2' ERR

# ---- preflight: container names on a network ----------------------------------------------
# nginx reaches the replicas by name; without DNS on the compose network it restarts forever
# with `host not found in upstream`. Podman resolves names only with a DNS plugin of its network
# backend, which `--no-install-recommends` leaves out.
dns_package() {
    [[ $ENGINE == podman ]] || { echo "the engine's DNS for user-defined networks"; return; }
    case $(podman info --format '{{.Host.NetworkBackend}}' 2>/dev/null) in
        cni) echo "golang-github-containernetworking-plugin-dnsname (the DNS plugin of podman's CNI backend; scripts/install.sh --podman installs it)" ;;
        netavark) echo "aardvark-dns (the DNS server of podman's netavark backend)" ;;
        *) echo "the DNS plugin of podman's network backend" ;;
    esac
}
no_dns() { die "containers on a $ENGINE network cannot resolve each other's names ($1): install $(dns_package)"; }

say "preflight: container names on a $ENGINE network"
E network create "$DNS_NET" >/dev/null
if [[ $ENGINE == podman && $(podman network inspect -f '{{.DNSEnabled}}' "$DNS_NET") != true ]]; then
    no_dns "podman created the network without DNS"
fi
pass "network $DNS_NET has DNS"

pullable() { timeout 120 "$ENGINE" pull -q "$1" >/dev/null 2>&1; }

# ---- base image, build ---------------------------------------------------------------------------
if [[ -z "${BASE_IMAGE:-}" ]]; then
    if pullable docker.io/library/python:3.11-slim; then
        BASE_IMAGE=docker.io/library/python:3.11-slim
    else
        BASE_IMAGE=localhost/lpt-base:bookworm
        if ! E image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
            say "no registry reachable: making $BASE_IMAGE with debootstrap"
            MADE_IMAGES+=("$BASE_IMAGE"); t0=$SECONDS
            ENGINE=$ENGINE docker/make-base-image.sh "$BASE_IMAGE"
            BASE_S=$((SECONDS - t0))
        fi
    fi
fi

# the real check, seconds before a build of minutes: one container looks another up by name
quiet E run -d --name "$DNS_NET-a" --network "$DNS_NET" "$BASE_IMAGE" sleep 300 >/dev/null
# (getent's own "not found" is 2, which wait_for reads as "give up": map every failure to 1)
resolves() { E run --rm --network "$DNS_NET" "$BASE_IMAGE" getent hosts "$DNS_NET-a" >/dev/null 2>&1 || return 1; }
wait_for 15 resolves || no_dns "getent hosts $DNS_NET-a failed in a second container"
pass "a container resolves another by name on $DNS_NET"
quiet E "${RM[@]}" "$DNS_NET-a" >/dev/null; E network rm "$DNS_NET" >/dev/null

if (( BUILD )); then
    say "build $IMAGE on $BASE_IMAGE ($ENGINE)"
    args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE")
    find_links=${PIP_FIND_LINKS:-$(pip config get global.find-links 2>/dev/null || true)}
    if [[ $ENGINE == podman && -n "$find_links" && -d "$find_links" ]]; then
        # a local wheel folder (the CPU torch wheel): mounted read-only, pip finds torch there
        args+=(-v "$find_links:$find_links:ro" --build-arg "PIP_FIND_LINKS=$find_links"
               --build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL-}")
    elif [[ -n "${TORCH_INDEX_URL+x}" ]]; then
        args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
    fi
    cert=${PIP_CERT:-$(pip config get global.cert 2>/dev/null || true)}
    [[ -n "$cert" && -f "$cert" ]] && args+=(--secret "id=ca_bundle,src=$cert")
    [[ $ENGINE == podman ]] && args+=(--format docker)     # OCI images drop HEALTHCHECK
    t0=$(now)
    (( RMI )) && MADE_IMAGES+=("$IMAGE")
    if ! build --network host "${args[@]}" . >"$TMP/build.log" 2>&1; then
        tail -40 "$TMP/build.log"; echo "test.sh: build failed" >&2; exit 1
    fi
    BUILD_S=$(secs "$t0" "$(now)")
    echo "  built in ${BUILD_S} s"
fi
SIZE=$(E image inspect -f '{{.Size}}' "$IMAGE")
echo "  image size: $((SIZE / 1000000)) MB"

# ---- one container, no network ------------------------------------------------------------------
say "alone, --network none"
inside() { E exec "$1" python3 -c "import sys, urllib.request as u
r = u.urlopen(u.Request('http://127.0.0.1:8080' + sys.argv[1], data=sys.argv[2].encode() if len(sys.argv) > 2 else None,
              headers={'Content-Type': 'application/json'}), timeout=30)
sys.stdout.write(r.read().decode())" "${@:2}"; }

# state and last log lines of each container named: what a failed wait shows
show() {
    local c
    for c in "$@"; do
        echo "  --- $c: $(E inspect -f 'status {{.State.Status}}, exit code {{.State.ExitCode}}, restarts {{.RestartCount}}' "$c" 2>&1)"
        E logs --tail 30 "$c" 2>&1 | sed 's/^/  | /'
    done
}
solo_ready() {
    inside "$SOLO" /ready >/dev/null 2>&1 && return 0
    [[ $(E inspect -f '{{.State.Running}}' "$SOLO" 2>/dev/null) == true ]] || return 2   # exited
    return 1
}

t0=$(now)
quiet E run -d --name "$SOLO" --network none "$IMAGE" >/dev/null
wait_for "$READY_TIMEOUT" solo_ready \
    || { show "$SOLO"; die "$SOLO: /ready did not answer 200 within $READY_TIMEOUT s (READY_TIMEOUT)"; }
COLD_S=$(secs "$t0" "$(now)")
pass "ready with no network: cold start to /ready ${COLD_S} s"

uid=$(E exec "$SOLO" id -u); user=$(E image inspect -f '{{.Config.User}}' "$IMAGE")
if [[ $uid != 0 && -n "$user" ]]; then pass "runs as non-root (uid $uid, USER $user)"; else fail "runs as uid $uid"; fi

if [[ $ENGINE == podman ]]; then
    if quiet E healthcheck run "$SOLO" >/dev/null; then pass "HEALTHCHECK (/ready) healthy"; else fail "HEALTHCHECK failed"; fi
else
    for _ in $(seq 30); do [[ $(E inspect -f '{{.State.Health.Status}}' "$SOLO") == healthy ]] && break; sleep 1; done
    if [[ $(E inspect -f '{{.State.Health.Status}}' "$SOLO") == healthy ]]; then pass "HEALTHCHECK healthy"; else fail "HEALTHCHECK not healthy"; fi
fi

demo=$(inside "$SOLO" /info | python3 -c "import json, sys; print(' '.join(json.load(sys.stdin)['adapters']['demo_seeded']))")
if [[ -n "$demo" ]]; then
    task=${demo%% *}
    out=$(inside "$SOLO" /v1/classify "{\"inputs\": \"what a great day\", \"task\": \"$task\"}" || true)
    if [[ $out == *'"label"'* ]]; then pass "baked-in demo adapters ($demo): $task answers offline"; else fail "demo $task: $out"; fi
else
    echo "  note  no demo adapters in the image (server/lpt_server/demo_adapters/ is empty)"
fi

docs_mode=$(inside "$SOLO" /info | python3 -c "import json, sys; print(json.load(sys.stdin).get('docs'))")
if inside "$SOLO" /docs 2>/dev/null | grep -qi '<html'; then pass "/docs served with no network ($docs_mode)"; else
    fail "/docs not served offline"; fi

t0=$(now)
quiet E stop -t 40 "$SOLO" >/dev/null
STOP_S=$(secs "$t0" "$(now)")
code=$(E inspect -f '{{.State.ExitCode}}' "$SOLO")
logs=$(E logs "$SOLO" 2>&1)
# uvicorn re-raises the SIGTERM it handled once it has shut down: 143 is a clean stop too
if [[ $code =~ ^(0|143)$ && $logs == *"Application shutdown complete"* && $logs == *draining* ]] \
        && python3 -c "import sys; sys.exit(float(sys.argv[1]) >= 40)" "$STOP_S"; then
    pass "stop: exit $code in ${STOP_S} s (grace 40 s), drained and shut down cleanly"
else
    fail "stop: exit $code in ${STOP_S} s"; echo "$logs" | tail -15
fi
quiet E rm -f -v "$SOLO" >/dev/null

# ---- compose: nginx + two replicas on one volume -------------------------------------------------
say "compose: lb + replica1 + replica2"
if [[ -z "${NGINX_IMAGE:-}" ]]; then
    if pullable docker.io/library/nginx:1.27-alpine; then NGINX_IMAGE=docker.io/library/nginx:1.27-alpine; else
        NGINX_IMAGE=localhost/lpt-nginx:test
        if ! E image inspect "$NGINX_IMAGE" >/dev/null 2>&1; then
            mkdir -p "$TMP/nginx-image"
            printf '%s\n' "FROM $BASE_IMAGE" \
                'RUN apt-get update && apt-get install -y --no-install-recommends nginx-light && rm -rf /var/lib/apt/lists/*' \
                'CMD ["nginx", "-g", "daemon off;"]' > "$TMP/nginx-image/Dockerfile"
            MADE_IMAGES+=("$NGINX_IMAGE"); t0=$SECONDS
            build --network host -t "$NGINX_IMAGE" "$TMP/nginx-image" >"$TMP/nginx-build.log" 2>&1 \
                || { tail -20 "$TMP/nginx-build.log"; fail "nginx image build"; exit 1; }
            NGINX_S=$((SECONDS - t0))
        fi
    fi
fi
if [[ $ENGINE == podman ]]; then
    SOCK=$TMP/podman.sock
    podman system service --time=0 "unix://$SOCK" >"$TMP/podman-service.log" 2>&1 &
    SOCK_PID=$!
    sock_up() { [[ -S $SOCK ]] && return 0; kill -0 "$SOCK_PID" 2>/dev/null || return 2; return 1; }
    wait_for 60 sock_up || { cat "$TMP/podman-service.log"; die "podman system service: no socket within 60 s"; }
    export DOCKER_HOST=unix://$SOCK
fi
LB_PORT=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
LB=http://127.0.0.1:$LB_PORT
COMPOSE_ENV=(LPT_IMAGE="$IMAGE" NGINX_IMAGE="$NGINX_IMAGE" LPT_ADMIN_KEY="$ADMIN_KEY" LPT_LB_PORT="$LB_PORT"
             LPT_THREADS=1 LPT_LOG_FORMAT=text LPT_DTYPE=float32 LPT_CORS_ORIGINS=)
compose() { env "${COMPOSE_ENV[@]}" docker-compose -p "$PROJECT" -f docker/compose.yaml "$@"; }
R1=${PROJECT}_replica1_1; R2=${PROJECT}_replica2_1; LBC=${PROJECT}_lb_1

replicas_ready() { inside "$R1" /ready >/dev/null 2>&1 && inside "$R2" /ready >/dev/null 2>&1; }
topology_ready() { [[ $(curl -s -m 10 -o /dev/null -w '%{http_code}' "$LB/ready") == 200 ]] && replicas_ready; }
# up_topology LOG [COMPOSE ARGS]: the replicas, then nginx once both answer. nginx started earlier
# would count its probes of the loading replicas as failures (max_fails) and route nothing to a
# replica for fail_timeout after it is ready: the checks would see one replica, not the topology.
up_topology() {
    local log=$1; shift
    compose "$@" up -d replica1 replica2 >"$log" 2>&1 || { cat "$log"; return 1; }
    wait_for "$READY_TIMEOUT" replicas_ready || { show "$R1" "$R2"; die "replicas not ready within $READY_TIMEOUT s"; }
    # a running nginx resolved the old replicas' addresses when it started (docs/deploy.md): restart it
    if E inspect "$LBC" >/dev/null 2>&1; then compose "$@" restart lb >>"$log" 2>&1
    else compose "$@" up -d lb >>"$log" 2>&1; fi || { cat "$log"; return 1; }
}

t0=$(now)
up_topology "$TMP/up.log" || { fail "compose up"; exit 1; }
if ! wait_for "$READY_TIMEOUT" topology_ready; then
    show "$R1" "$R2" "$LBC"
    [[ $(E logs "$LBC" 2>&1) == *'host not found in upstream'* ]] && no_dns "nginx: host not found in upstream"
    die "topology not ready within $READY_TIMEOUT s (READY_TIMEOUT): $LB/ready and both replicas' /ready must answer 200"
fi
pass "topology ready through the load balancer in $(secs "$t0" "$(now)") s"

ro=$(E inspect -f '{{.HostConfig.ReadonlyRootfs}} {{.Config.User}}' "$R1")
if [[ $ro == "true 10001:10001" ]]; then pass "replicas: read-only root filesystem, user 10001"; else fail "replica1: read-only/user = $ro"; fi

# an adapter made with the image's own lpt, then uploaded through nginx
E exec "$R1" python3 -c "import lpt
lpt.save_adapter(lpt.new_adapter(lpt.Backbone.load('minilm'), task='$TASK', labels=['neg', 'pos'], layer=3), '/tmp/a.safetensors')" \
    >/dev/null 2>&1
E cp "$R1:/tmp/a.safetensors" "$TMP/a.safetensors"
code=$(curl -s -o "$TMP/put.json" -w '%{http_code}' -X PUT -H "Authorization: Bearer $ADMIN_KEY" \
       --data-binary @"$TMP/a.safetensors" "$LB/v1/adapters/$TASK")
[[ $code =~ ^20[01]$ ]] || fail "upload through the load balancer: $code $(cat "$TMP/put.json")"

served() {   # served CONTAINER TASK: classify requests the replica answered 200 for TASK, from its own /metrics
    inside "$1" /metrics | awk -v t="task=\"$2\"" '/^lpt_requests_total\{/ && index($0, t) && /status="200"/ {s += $NF} END {print s + 0}'
}
classify_once() {   # classify_once TASK TEXT: one request through nginx; prints its status, its body is $TMP/classify.json
    curl -s -o "$TMP/classify.json" -w '%{http_code}' -H 'Content-Type: application/json' \
        -d "{\"inputs\": [\"$2\"], \"task\": \"$1\"}" "$LB/v1/classify" || true
}
classify_all() {   # classify_all N TASK: N requests through nginx, every one 200 (else: the first other answer)
    local i c
    for i in $(seq "$1"); do
        c=$(classify_once "$2" "request $i for $2 was fine")
        [[ $c == 200 ]] || { echo "request $i: $c $(head -c 400 "$TMP/classify.json")"; return 1; }
    done
}
lb_diagnosis() {   # after a failed check through nginx: its lines that are not a 200, each replica's last other lines
    E logs "$LBC" 2>&1 | grep -v ' 200 ' | tail -12 | sed 's/^/  | /'
    local c
    for c in "$R1" "$R2"; do
        echo "  | $c: $(E inspect -f 'restarts {{.RestartCount}}, started {{.State.StartedAt}}' "$c" 2>&1)"
        E logs --tail 40 "$c" 2>&1 | grep -v -e '" 200$' -e 'GET /metrics' | tail -8 | sed 's/^/  |   /'
    done
}
if bad=$(classify_all 16 "$TASK"); then
    s1=$(served "$R1" "$TASK"); s2=$(served "$R2" "$TASK")
    if (( ${s1%.*} > 0 && ${s2%.*} > 0 && ${s1%.*} + ${s2%.*} == 16 )); then
        pass "adapter uploaded through nginx ($code) is served by both replicas: $s1 + $s2 of 16 (their /metrics)"
    else
        fail "adapter served by replica1: $s1, replica2: $s2 of 16"; lb_diagnosis
    fi
else
    fail "classify through the load balancer: $bad"; lb_diagnosis
fi

# a bounded load through nginx; replica2 gets `stop` (SIGTERM, grace 40 s) a quarter of the way in
say "stop replica2 during $LOAD_REQUESTS requests"
before1=$(served "$R1" "$TASK")
python3 - "$LB" "$TASK" "$LOAD_REQUESTS" "$ENGINE" "$R2" >"$TMP/load.json" <<'EOF'
import json, subprocess, sys, threading, time, urllib.error, urllib.request
from concurrent.futures import ThreadPoolExecutor
lb, task, total, engine, victim = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
statuses, lock, stop = [], threading.Lock(), {}
def stopper():
    t0 = time.monotonic()
    p = subprocess.run([engine, "stop", "-t", "40", victim], capture_output=True, text=True)
    stop.update(rc=p.returncode, seconds=round(time.monotonic() - t0, 1))
th = threading.Thread(target=stopper)
def one(i):
    body = json.dumps({"inputs": [f"request {i}: what a day", "so so"], "task": task}).encode()
    req = urllib.request.Request(lb + "/v1/classify", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            code = r.status
    except urllib.error.HTTPError as e:
        code = e.code
    except Exception as e:                      # connection-level failure: counted, not raised
        code = repr(e)
    with lock:
        statuses.append(code)
        if len(statuses) == total // 4:
            th.start()
t0 = time.monotonic()
with ThreadPoolExecutor(4) as pool:
    list(pool.map(one, range(total)))
th.join()
print(json.dumps({"seconds": round(time.monotonic() - t0, 1), "stop": stop,
                  "non_200": [s for s in statuses if s != 200], "n": len(statuses)}))
EOF
after1=$(served "$R1" "$TASK")
read -r n bad secs_ stop_s < <(python3 -c "import json, sys; d = json.load(open(sys.argv[1]))
print(d['n'], len(d['non_200']), d['seconds'], d['stop'].get('seconds'))" "$TMP/load.json")
code=$(E inspect -f '{{.State.ExitCode}}' "$R2")
logs2=$(E logs "$R2" 2>&1)
# nginx's log: the final upstream of every classify request after the stop was sent
r1_ip=$(E inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$R1")
lb_log=$(E logs "$LBC" 2>/dev/null | grep 'POST /v1/classify' | tail -n "$LOAD_REQUESTS")
retried=$(grep -c 'upstream=[^ ]*, ' <<<"$lb_log" || true)
if (( n == LOAD_REQUESTS && bad == 0 )); then
    pass "no request lost: $n of $n answered 200 in $secs_ s (nginx retried $retried on replica1 after replica2 refused)"
else
    fail "$bad of $n requests failed: $(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['non_200'][:5])" "$TMP/load.json")"
    lb_diagnosis
fi
took1=$(( ${after1%.*} - ${before1%.*} ))
if (( took1 >= LOAD_REQUESTS * 3 / 4 - 4 )); then
    pass "the rest went to replica1: it answered $took1 of $LOAD_REQUESTS (its /metrics)"
else
    fail "replica1 answered only $took1 of $LOAD_REQUESTS"
fi
if [[ $code =~ ^(0|143)$ && $logs2 == *"Application shutdown complete"* ]]; then
    pass "replica2 stopped within the grace period: ${stop_s} s, exit $code, drained cleanly"
else
    fail "replica2: exit $code after ${stop_s} s"; echo "$logs2" | tail -15
fi
grep -q "$r1_ip" <<<"$lb_log" || fail "nginx log shows no request on replica1 ($r1_ip)"

# ---- the same topology on an S3 store (compose profile s3) ------------------------------------
source docker/test-s3-profile.sh

say "summary"
echo "  engine $ENGINE, base $BASE_IMAGE, image $IMAGE: $((SIZE / 1000000)) MB${BUILD_S:+, built in ${BUILD_S} s}"
echo "  cold start to /ready (no network): ${COLD_S} s; docker stop: ${STOP_S} s"
echo "  $SECONDS s in all${BASE_S:+; base image made in ${BASE_S} s}${NGINX_S:+; nginx image built in ${NGINX_S} s}"
if (( FAILED )); then echo "  $FAILED check(s) FAILED"; exit 1; fi
echo "  all checks passed"
