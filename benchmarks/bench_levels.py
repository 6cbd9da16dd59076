"""Memory and time of node- and neuron-level scoring and evaluation on GPT-2-small shape.

GPT-2 small's shape (12 layers, 12 heads, d_model 768, vocab 50257) with random weights built from
the config in code (nothing downloaded); random token rows. Each mode runs in its own process, so
its peak resident set size (ru_maxrss) is its own; the `model only` row is the floor (weights, one
forward), and each other row's peak is reported with its increase over that floor, measured in the
same run.

    python benchmarks/bench_levels.py                  # 16 rows of 24 tokens, batch 8
    python benchmarks/bench_levels.py --rows 8 --len 16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("model only", "edge eap", "node eap", "neuron eap", "node eap-ig", "neuron eap-ig",
         "node evaluation (22 circuits)", "neuron evaluation (22 circuits)")


def child(mode: str, rows: int, length: int, batch: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from discovery import Setup, score_edges, task_from_rows, wrap_model
    from discovery.pipeline.levels import neuron_circuit_metrics, node_edges
    from discovery.pipeline.evaluation import circuit_metrics
    from discovery.methods.node import neuron_scores, node_scores

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GPT2Config()).eval()
    lm = wrap_model(model)
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(rows):
        clean = torch.randint(0, 50257, (length,), generator=g).tolist()
        corrupted = list(clean)
        corrupted[length // 2] = (clean[length // 2] + 1) % 50257
        data.append({"clean_ids": clean, "corrupted_ids": corrupted, "answer_id": clean[0], "wrong_id": clean[1]})
    setup = Setup(lm, task_from_rows(data, vocab_size=50257), "logit_diff", batch_size=batch)
    d, n_src = lm.adapter.d_model, setup.graph.n_sources
    start = time.perf_counter()
    out = {}
    if mode == "model only":
        with torch.no_grad():
            model(torch.tensor([data[0]["clean_ids"]]))
    elif mode.startswith("edge"):
        out["scores"] = score_edges(setup, mode.split()[1])
    elif mode.startswith("node evaluation"):
        rng = np.random.default_rng(0)
        masks = [node_edges(setup.graph, rng.random(n_src) < f) for f in np.linspace(0, 1, 22)]
        circuit_metrics(setup, masks)
    elif mode.startswith("neuron evaluation"):
        rng = np.random.default_rng(0)
        neuron_circuit_metrics(setup, [rng.random((n_src, d)) < f for f in np.linspace(0, 1, 22)])
    elif mode.startswith("node"):
        out["scores"] = node_scores(setup, mode.split()[1], steps=5)
    else:
        out["scores"] = neuron_scores(setup, mode.split()[1], steps=5)
    wall = time.perf_counter() - start
    score_bytes = int(out["scores"].numel() * out["scores"].element_size()) if "scores" in out else 0
    return {"mode": mode, "wall_s": wall, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "score_bytes": score_bytes, "n_sources": n_src, "n_edges": setup.graph.n_edges}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--len", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rows, args.len, args.batch_size)))
        return 0
    results = []
    for mode in MODES:
        proc = subprocess.run([sys.executable, __file__, "--child", mode, "--rows", str(args.rows), "--len",
                               str(args.len), "--batch-size", str(args.batch_size)], capture_output=True, text=True,
                              env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        if proc.returncode:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(results[-1], file=sys.stderr, flush=True)
    floor = results[0]["peak_rss"]
    mib = 2**20
    print(f"GPT-2-small shape ({results[0]['n_sources']} sources, {results[0]['n_edges']} edges), {args.rows} rows "
          f"x {args.len} tokens, batch {args.batch_size}, 1 thread\n")
    print("| mode | scores held | peak RSS MiB | over the floor MiB | wall s |\n|---|---|---|---|---|")
    for r in results:
        held = f"{r['score_bytes'] / 1024:.0f} KiB" if r["score_bytes"] else "-"
        print(f"| {r['mode']} | {held} | {r['peak_rss'] / mib:.0f} | {(r['peak_rss'] - floor) / mib:+.0f} | "
              f"{r['wall_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
