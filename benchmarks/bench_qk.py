"""The QK fix's cost against plain EAP (and EAP-IG with the fix against plain EAP-IG), measured in one run.

    python benchmarks/bench_qk.py [--batch-size 8] [--seq-len 16] [--reps 3] [--steps 5] [--shape gpt2-small|toy]
                                  [--skip-ig] [--paths]

Same GPT-2-small-shaped random model and rows as bench_eap.py (--shape toy: toy:induction on its
task). Each function is warmed up once, then the four run interleaved --reps times; the script prints
the medians and the ratios fix / plain. --paths also times the fix by its general path (the model's
own norm module per source, methods/qk.py FAST = False) against the fast path (the norm in closed
form). A measurement, not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from discovery import Setup, get_metric, load_model, score_edges  # noqa: E402


def setup_for(shape: str, batch_size: int, seq_len: int) -> Setup:
    if shape == "toy":
        from discovery.task_library import build_task
        lm = load_model("toy:induction", device="cpu")
        task = build_task("induction", lm.tokenizer, lm.vocab_size, n=batch_size, seed=1000)
        return Setup(lm, task, get_metric("logit_diff"), batch_size=batch_size)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_eap import build
    _, setup, _ = build(batch_size, seq_len, "cuda" if torch.cuda.is_available() else "cpu")
    return setup


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--shape", default="gpt2-small", choices=["gpt2-small", "toy"])
    ap.add_argument("--skip-ig", action="store_true", help="EAP and EAP + fix only")
    ap.add_argument("--paths", action="store_true", help="also the fix by its general path")
    args = ap.parse_args(argv)
    setup = setup_for(args.shape, args.batch_size, args.seq_len)
    fns = {
        "eap": lambda: score_edges(setup, "eap"),
        "eap+qk": lambda: score_edges(setup, "eap", qk_fix=True),
        "eap-ig": lambda: score_edges(setup, "eap-ig", steps=args.steps),
        "eap-ig+qk": lambda: score_edges(setup, "eap-ig", steps=args.steps, qk_fix=True),
    }
    if args.skip_ig:
        fns = {k: v for k, v in fns.items() if not k.startswith("eap-ig")}
    if args.paths:
        from discovery.methods import qk

        def general():
            qk.FAST = False
            try:
                score_edges(setup, "eap", qk_fix=True)
            finally:
                qk.FAST = True
        fns["eap+qk gen"] = general
    times = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up
    for _ in range(args.reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"shape {args.shape}, {setup.graph.n_edges} edges, {args.batch_size} rows x {args.seq_len} tokens, "
          f"{torch.get_num_threads()} threads, device {setup.device}, reps {args.reps}")
    for k, v in med.items():
        print(f"  {k:<10} {v:8.3f} s")
    line = f"ratio eap+qk / eap = {med['eap+qk'] / med['eap']:.2f}"
    if not args.skip_ig:
        line += (f"; eap-ig+qk / eap-ig = {med['eap-ig+qk'] / med['eap-ig']:.2f}; "
                 f"eap-ig+qk / eap = {med['eap-ig+qk'] / med['eap']:.2f}")
    if args.paths:
        line += f"; general / fast path = {med['eap+qk gen'] / med['eap+qk']:.2f}"
    print(line)


if __name__ == "__main__":
    main()
