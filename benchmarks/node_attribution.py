"""Node-level EAP and EAP-IG against the EAP-IG library's node attribution, on the same weights.

The library (hannamw/EAP-IG, `attribute_node`) is not on PyPI and cannot be fetched here, so it is
compared through tests/node_reference.py: an independent re-implementation of its procedure with
plain torch hooks on the Hugging Face model (nothing shared with discovery/). Two variants of it:
`library` takes an MLP's gradient at its input hook as the library's code does, `output` at the
MLP's output (the score's definition, and ours). Also ours against exact node patching (measured).

For each shipped trained toy model (toy:ioi, toy:induction: GPT-2 architecture), prints Pearson
correlations over all source nodes (and over heads only), the largest absolute difference, and
wall times; one markdown table.

    python benchmarks/node_attribution.py            # 64 rows per task, EAP-IG 5 steps
    python benchmarks/node_attribution.py --n 16     # quicker
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
sys.path.insert(0, str(ROOT / "tests"))

from discovery import Setup, load_model  # noqa: E402
from discovery.methods.node import node_scores  # noqa: E402
from discovery.model.metrics import get_metric  # noqa: E402
from discovery.task_library import build_task  # noqa: E402
from discovery.model.tasks import iter_batches  # noqa: E402
from node_reference import library_node_scores  # noqa: E402


def reference(model, task, metric, method, steps, mlp_grad, batch_size):
    """The re-implemented library procedure over the task's batches, mean over rows."""
    total, n = None, 0
    for batch in iter_batches(task, batch_size):
        rows = torch.arange(len(batch.rows))
        fn = lambda logits, b=batch, r=rows: metric(logits[r, b.clean_last], b).sum()  # noqa: E731
        s = library_node_scores(model, batch.clean, batch.corrupted, fn, method=method, steps=steps,
                                mlp_grad=mlp_grad) * len(batch.rows)
        total = s if total is None else total + s
        n += len(batch.rows)
    return (total / n).numpy()


def pearson(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, float), np.asarray(b, float))[0, 1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="rows per task (default 64)")
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG steps (default 5)")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lines = ["| model · task | method | r (ours, library) | r heads only | r (ours, output-gradient ref.) | "
             "max \\|diff\\| / max \\|score\\| | r (ours, exact) | ours s | ref. s |", "|---" * 9 + "|"]
    for model_name, task_name in (("toy:ioi", "ioi"), ("toy:induction", "induction")):
        lm = load_model(model_name, device="cpu")
        task = build_task(task_name, tokenizer=lm.tokenizer, vocab_size=lm.vocab_size, n=args.n, seed=0)
        metric = get_metric(task.metric or "logit_diff")
        setup = Setup(lm, task, metric, batch_size=args.batch_size)
        names = setup.graph.sources
        heads = [i for i, s in enumerate(names) if s.startswith("a")]
        exact = node_scores(setup, "exact").numpy()
        for method, lib_method in (("eap", "EAP"), ("eap-ig", "EAP-IG")):
            t0 = time.perf_counter()
            ours = node_scores(setup, method, steps=args.steps).numpy()
            t_ours = time.perf_counter() - t0
            t0 = time.perf_counter()
            lib = reference(lm.hf_model, task, metric, lib_method, args.steps, "input", args.batch_size)
            t_ref = time.perf_counter() - t0
            out = reference(lm.hf_model, task, metric, lib_method, args.steps, "output", args.batch_size)
            rel = float(np.abs(ours - out).max() / np.abs(out).max())
            lines.append(f"| {model_name} · {task_name} | {method} | {pearson(ours, lib):.4f} | "
                         f"{pearson(ours[heads], lib[heads]):.4f} | {pearson(ours, out):.6f} | {rel:.1e} | "
                         f"{pearson(ours, exact):.3f} | {t_ours:.1f} | {t_ref:.1f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
