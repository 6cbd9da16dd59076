"""eap-ig+acdc against full ACDC: does deciding only over EAP-IG's top-K edges find the same circuit,
for how much less work? One run, both measured back to back.

    .venv/bin/python benchmarks/acdc_candidates.py [--k 25 50 100 200] [--tau 1e-2] [--rows 32]

Models: the shipped toy:ioi (4-layer GPT-2, trained; IOI task) and toy:induction (2-layer
attention-only; induction task). For each: full ACDC, then eap-ig+acdc for each K; the edges each
keeps (after pruning), the overlap with full ACDC's edge set (Jaccard), the faithfulness of each
circuit, forward passes, and seconds (EAP-IG's ranking included). Metric KL (ACDC's default).
Exits 0: it is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from discovery import Graph, discover, load_model  # noqa: E402
from discovery.task_library import build_task  # noqa: E402


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def run_case(model_name: str, task_name: str, args) -> list[str]:
    model = load_model(model_name, device="cpu")
    task = build_task(task_name, model.tokenizer, model.vocab_size, n=args.rows, seed=args.seed)
    graph = Graph.from_adapter(model.adapter)
    lines = []

    def row(label, circuit, seconds, full_keep):
        keep = circuit.in_circuit(graph)
        p, m = circuit.method.params, circuit.metrics
        lines.append(f"| {model_name} | {label} | {m.n_edges} | {jaccard(keep, full_keep):.2f} | "
                     f"{m.faithfulness:.3f} | {p['n_edges_evaluated']} | {p['n_forward_passes']} | {seconds:.2f} |")

    discover(model, task.subset([0, 1]), "acdc", tau=args.tau, curve=False)  # warm-up, untimed
    t0 = time.perf_counter()
    full = discover(model, task, "acdc", tau=args.tau, curve=False)
    t_full = time.perf_counter() - t0
    full_keep = full.in_circuit(graph)
    row(f"acdc (all {graph.n_edges} edges)", full, t_full, full_keep)
    for k in args.k:
        t0 = time.perf_counter()
        c = discover(model, task, "eap-ig+acdc", tau=args.tau, candidates=k, curve=False)
        row(f"eap-ig+acdc, K={k}", c, time.perf_counter() - t0, full_keep)
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, nargs="+", default=[10, 25, 50, 100, 200])
    ap.add_argument("--tau", type=float, default=1e-2)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1000, help="task seed (held out from the toy models' training)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"tau {args.tau:g}, metric kl, {args.rows} rows (seed {args.seed}), {args.threads} torch thread(s)")
    print("| model | method | edges kept | Jaccard vs full ACDC | faithfulness | edges measured | forward passes | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for model_name, task_name in (("toy:ioi", "ioi"), ("toy:induction", "induction")):
        for line in run_case(model_name, task_name, args):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
