"""Job submissions per second and their latency (p50/p99) against `circuitry serve` on loopback.

The server runs in its own process (API only, `--no-dispatcher`, so no job competes for the CPU),
with a bearer token and SQLite (WAL) under a temporary $CIRCUITRY_HOME; clients keep connections
alive and submit small inline-row jobs from several threads.

    python benchmarks/bench_service.py [--requests 2000] [--clients 8]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx

ROWS = [{"clean_ids": [1, 2, 3, 4], "corrupted_ids": [1, 2, 5, 4], "answer_id": 3, "wrong_id": 5}] * 8


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--database-url", default=None, help="default: SQLite in a temporary CIRCUITRY_HOME")
    args = ap.parse_args()

    home = tempfile.mkdtemp(prefix="circuitry-bench-")
    env = dict(os.environ, CIRCUITRY_HOME=home, CIRCUITRY_MAX_ACTIVE_JOBS=str(args.requests + 1000))
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    cli = [sys.executable, "-m", "discovery.cli"]
    out = subprocess.run(cli + ["tokens", "create", "--name", "bench"], env=env, capture_output=True, text=True,
                         check=True).stdout
    secret = out.split(": ", 1)[1].split()[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(cli + ["serve", "--no-dispatcher", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        headers = {"Authorization": f"Bearer {secret}"}
        body = {"model": {"name": "toy:ioi"}, "task": {"rows": ROWS}, "method": {"name": "eap"}}
        with httpx.Client(base_url=url, headers=headers) as warm:  # first requests pay for lazy imports
            for _ in range(20):
                warm.post("/v1/jobs", json=body).raise_for_status()

        latencies: list[float] = []
        lock = threading.Lock()
        per_client = args.requests // args.clients

        def client_loop():
            mine = []
            with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
                for _ in range(per_client):
                    t0 = time.perf_counter()
                    r = c.post("/v1/jobs", json=body)
                    mine.append(time.perf_counter() - t0)
                    if r.status_code != 202:
                        raise SystemExit(f"unexpected {r.status_code}: {r.text[:200]}")
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=client_loop) for _ in range(args.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        latencies.sort()
        q = statistics.quantiles(latencies, n=100)
        print(f"{len(latencies)} submissions, {args.clients} clients, {os.cpu_count()} CPUs: "
              f"{len(latencies) / wall:.0f}/s; latency p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, "
              f"max {latencies[-1] * 1000:.1f} ms")
    finally:
        server.terminate()
        server.wait(20)


if __name__ == "__main__":
    main()
