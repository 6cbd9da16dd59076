"""Per-query-head vs grouped k/v edges on a trained grouped-query model with a known mechanism.

    .venv/bin/python benchmarks/gqa_quality.py MODEL_DIR [--rows 64] [--target 0.9]

MODEL_DIR: a Llama model with grouped-query attention trained on the induction data: the shipped
`toy:llama-induction`, or the recipe retrained `python -m discovery.toy.train llama-induction --out DIR`
(2 layers, 4 query heads over 2 key/value heads). Task: the built-in `induction` task (logit difference). For kv_edges "head" and
"grouped", on the same weights and rows:
- exact scores (the measured effect of switching each edge alone) and EAP-IG scores (5 steps, with
  the QK fix as discover() runs it): Spearman correlation of |EAP-IG| with |exact|;
- the smallest circuit, ranked by |exact| and pruned, whose faithfulness reaches --target, in edges
  and in per-head k/v inputs (a grouped k/v edge switches group-size query heads' inputs at once);
- the k/v edges into the layer-1 heads that the exact ranking puts first, to see whether one query
  head carries the key/value input its group mates do not.
A measurement, not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from discovery import Setup, get_metric, load_model, score_edges  # noqa: E402
from discovery.pipeline.evaluation import circuit_metrics, faithfulness  # noqa: E402
from discovery.pipeline.selection import prune, top_n  # noqa: E402
from discovery.task_library import build_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--target", type=float, default=0.9)
    args = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model(args.model, device="cpu")
    task = build_task("induction", tokenizer=lm.tokenizer, vocab_size=lm.vocab_size, n=args.rows, seed=1)
    metric = get_metric("logit_diff")
    a = lm.adapter
    print(f"{args.model}: {a.n_layers} layers, {a.n_heads} query heads over {a.n_kv_heads} key/value heads; "
          f"induction, {len(task)} rows, logit_diff")
    for mode in ("head", "grouped"):
        setup = Setup(lm, task, metric, batch_size=32, kv_edges=mode)
        g = setup.graph
        exact = score_edges(setup, "exact").numpy()
        eapig = score_edges(setup, "eap-ig", steps=5, qk_fix=True).numpy()
        rho = spearmanr(np.abs(eapig), np.abs(exact)).statistic
        circuits = [prune(g, top_n(g, exact, k)) for k in range(1, g.n_edges + 1)]
        values = circuit_metrics(setup, [np.ones(g.n_edges, bool), np.zeros(g.n_edges, bool)] + circuits)
        full, empty = values[0], values[1]
        f = np.array([faithfulness(v, full, empty) for v in values[2:]])
        hit = int(np.flatnonzero(f >= args.target)[0]) if (f >= args.target).any() else None
        kv = np.isin(np.array(g.reader_slot)[g.edge_dst], ["k", "v"])
        if hit is None:
            size = "never"
        else:
            keep = circuits[hit]
            inputs = int(keep.sum() + (g.group_size - 1) * (keep & kv).sum()) if g.grouped else int(keep.sum())
            size = (f"{int(keep.sum())} edges (top {hit + 1}), f {f[hit]:.3f}; {int((keep & kv).sum())} k/v edges = "
                    f"{inputs - int((keep & ~kv).sum())} per-head k/v inputs")
        print(f"kv_edges={mode}: {g.n_edges} edges; full {full:.3f}, empty {empty:.3f}; |EAP-IG+QK| vs |exact| "
              f"Spearman {rho:.3f}; smallest exact-ranked circuit with f >= {args.target}: {size}")
        into_layer1 = [e for e in np.argsort(-np.abs(exact)) if kv[e] and g.stages and
                       g.reader_owner[g.edge_dst[e]].startswith(f"a{a.n_layers - 1}.")][:6]
        print("  top k/v edges into the last layer by |exact|: " +
              ", ".join(f"{g.edge_names[e]} {exact[e]:+.3f}" for e in into_layer1))


if __name__ == "__main__":
    main()
