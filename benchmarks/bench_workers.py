"""Ray workers: throughput of 1 vs 2 workers against the plain single-process run, in one run.

    .venv/bin/python benchmarks/bench_workers.py [--rows 16] [--seq-len 32] [--batch-size 8] [--steps 5]
        [--reps 2] [--acdc-rows 32] [--acdc-tau 1e-3] [--skip-acdc]

EAP and EAP-IG on the GPT-2-small-shaped model of bench_eap.py (GPT2Config: 12 layers, 12 heads,
d 768, vocab 50257; random weights, fp32; logit_diff), and ACDC on the 4-layer model of
bench_acdc.py (d 128, 8 heads, weights x3; KL), each under five settings:

    single t1   score_edges / acdc in this process, 1 torch thread
    single tN   the same with N torch threads (N = the machine's cores)
    workers 1   one Ray worker (1 CPU, 1 thread)
    workers 2   two Ray workers (1 CPU, 1 thread each): the examples split in two shards

Throughput is examples per second (for ACDC: the task's rows over one whole ACDC run). Every setting
is warmed up once (the workers receive and build the model then), then the settings run interleaved
`--reps` times and the medians are compared: on a shared machine only ratios measured in one run mean
anything. The sharded results are checked against the single-process ones (max |difference| is
printed). The script starts a local Ray of its own (or uses RAY_ADDRESS) and always exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_acdc  # noqa: E402
import bench_eap  # noqa: E402

from discovery import score_edges  # noqa: E402
from discovery.pipeline.distributed import Workers  # noqa: E402
from discovery.methods.acdc import acdc  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=16, help="examples of the EAP/EAP-IG task")
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG steps")
    ap.add_argument("--reps", type=int, default=2, help="interleaved measured repetitions (after one warm-up)")
    ap.add_argument("--acdc-rows", type=int, default=32)
    ap.add_argument("--acdc-tau", type=float, default=1e-3)
    ap.add_argument("--skip-acdc", action="store_true")
    args = ap.parse_args(argv)

    import ray

    cores = bench_eap.n_cores()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        # three one-CPU workers (the pools of 1 and 2) stay up side by side so that the settings can
        # be interleaved; only one pool computes at a time
        local = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": 3}
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **local)
    print(f"circuitry bench_workers: {cores} cores ({platform.processor() or platform.machine()}), torch "
          f"{torch.__version__}, Ray {ray.__version__}, Python {platform.python_version()}", flush=True)

    _, setup, _ = bench_eap.build(args.rows, args.seq_len, "cpu")
    setup = dataclasses.replace(setup, batch_size=args.batch_size)  # a Setup is fixed once made
    acdc_setup = None
    if not args.skip_acdc:
        acdc_setup = bench_acdc.build(argparse.Namespace(
            seed=0, seq_len=12, d_model=128, layers=4, heads=8, device="cpu", rows=args.acdc_rows,
            batch_size=args.acdc_rows // 2, metric="kl"))
    print(f"EAP/EAP-IG: GPT-2-small shape, {setup.graph.n_edges} edges, {args.rows} rows x {args.seq_len} "
          f"tokens, batch {args.batch_size}, EAP-IG {args.steps} steps", flush=True)
    if acdc_setup is not None:
        print(f"ACDC: GPT-2 4 layers d 128, {acdc_setup.graph.n_edges} edges, {args.acdc_rows} rows x 12 tokens, "
              f"batch {args.acdc_rows // 2}, KL, tau {args.acdc_tau:g}", flush=True)

    def single(threads, fn):
        def run():
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                return fn(None)
            finally:
                torch.set_num_threads(before)
        return run

    with Workers(1, cpus=1, threads=1) as w1, Workers(2, cpus=1, threads=1) as w2:
        jobs = {
            "eap": (args.rows, lambda w: score_edges(setup, "eap", workers=w)),
            "eap-ig": (args.rows, lambda w: score_edges(setup, "eap-ig", steps=args.steps, workers=w)),
        }
        if acdc_setup is not None:
            jobs["acdc"] = (args.acdc_rows, lambda w: acdc(acdc_setup, args.acdc_tau, workers=w))
        calls_of = lambda fn: {"single t1": single(1, fn), f"single t{cores}": single(cores, fn),  # noqa: E731
                               "workers 1": lambda: fn(w1), "workers 2": lambda: fn(w2)}
        print(f"\n{'method':8} {'setting':10} {'median s':>9} {'ex/s':>8} {'vs single t1':>12} "
              f"{'vs single t' + str(cores):>13}  max|diff| vs single")
        for name, (rows, fn) in jobs.items():
            calls = calls_of(fn)
            outs = {label: c() for label, c in calls.items()}  # warm-up (workers get the model here)
            times = {label: [] for label in calls}
            for _ in range(args.reps):
                for label, c in calls.items():
                    t0 = time.perf_counter()
                    c()
                    times[label].append(time.perf_counter() - t0)
            med = {label: statistics.median(t) for label, t in times.items()}
            for label in calls:
                if name == "acdc":
                    a, b = outs[label], outs["single t1"]
                    diff = ("same edges" if np.array_equal(a.in_circuit, b.in_circuit) else "DIFFERENT EDGES") + \
                        f", scores {np.nanmax(np.abs(a.scores - b.scores)):.1e}"
                else:
                    diff = f"{float((outs[label] - outs['single t1']).abs().max()):.1e} " \
                           f"(scores up to {float(outs['single t1'].abs().max()):.1e})"
                print(f"{name:8} {label:10} {med[label]:9.2f} {rows / med[label]:8.2f} "
                      f"{med['single t1'] / med[label]:11.2f}x {med[f'single t{cores}'] / med[label]:12.2f}x  {diff}",
                      flush=True)
            print(f"{name:8} workers 2 / workers 1: {med['workers 1'] / med['workers 2']:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
