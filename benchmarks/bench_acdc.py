"""ACDC: the fast implementation against the plain one-forward-per-edge reference, in one run.

    .venv/bin/python benchmarks/bench_acdc.py [--layers 4] [--d-model 128] [--heads 8] [--rows 32]
        [--seq-len 12] [--batch-size 32] [--metric kl] [--tau 1e-4 1e-3 1e-2] [--reps 1] [--threads 1]
        [--device cpu]

Model: a random-weight GPT-2 (transformers GPT2Config, vocab 97) with every weight matrix scaled by 3
as in tests/tiny.py, so that every component matters to the output. Task: token rows whose corrupted
prompt differs from the clean one at two positions (a third of the way in, and the last token); the
answer is the clean last token, the wrong answer the corrupted one.

Both implementations decide the same edges for the same tau (the script checks that the edge sets
are identical and prints the largest difference of the scores). It prints each one's seconds, the
ratio, and the forward passes each made (the fast one's are batched: many masks per forward, started
mid-model), and the fast one again with one mask per forward (no speculation), which shows what the
speculative batching saves. Timings on a shared machine are noisy, so the ratio of the two, measured
in one process back to back, is the figure that matters. The script always exits 0: it is a
measurement.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "tests"))

from acdc_reference import acdc_reference  # noqa: E402

from discovery import Setup, get_metric, task_from_rows, wrap_model  # noqa: E402
from discovery.methods.acdc import acdc  # noqa: E402

VOCAB = 97


def build(args):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(args.seed)
    cfg = GPT2Config(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, n_positions=max(64, args.seq_len), n_embd=args.d_model, n_layer=args.layers,
                     n_head=args.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    model = model.to(args.device)
    g = torch.Generator().manual_seed(args.seed + 1)
    rows = []
    for _ in range(args.rows):
        clean = torch.randint(0, VOCAB, (args.seq_len,), generator=g).tolist()
        corrupted = list(clean)
        for pos in (args.seq_len // 3, args.seq_len - 1):
            corrupted[pos] = (clean[pos] + 1 + int(torch.randint(0, VOCAB - 1, (1,), generator=g))) % VOCAB
        rows.append({"clean_ids": clean, "corrupted_ids": corrupted, "answer_id": clean[-1], "wrong_id": corrupted[-1]})
    lm = wrap_model(model)
    return Setup(lm, task_from_rows(rows, vocab_size=VOCAB), get_metric(args.metric), batch_size=args.batch_size)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--metric", default="kl")
    ap.add_argument("--tau", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2])
    ap.add_argument("--reps", type=int, default=1, help="runs of each, interleaved; medians are reported")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = build(args)
    g = setup.graph
    print(f"model: GPT-2 {args.layers} layers, d_model {args.d_model}, {args.heads} heads, {g.n_edges} edges; "
          f"task {args.rows} rows x {args.seq_len} tokens, batch {args.batch_size}; metric {args.metric}; "
          f"device {args.device}, torch threads {args.threads}; torch {torch.__version__}, "
          f"Python {platform.python_version()}")
    acdc(setup, args.tau[0])  # warm-up (allocator, lazy imports)

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    print("ref: tests/acdc_reference.py, one full forward per measured edge. fast: acdc(). "
          "no-spec: acdc() with one mask per forward (max_rows = one batch), i.e. without speculation.")
    print(f"{'tau':>8} {'kept':>5} {'measured':>8} {'ref s':>8} {'fast s':>8} {'ratio':>7} {'ref fwd':>8} "
          f"{'fast fwd':>8} {'masks':>6} {'no-spec fwd':>11} {'no-spec s':>9}  identical  max|dscore|")
    for tau in args.tau:
        t_ref, t_fast, t_plain = [], [], []
        for _ in range(args.reps):
            t, ref = timed(lambda: acdc_reference(setup, tau))
            t_ref.append(t)
            t, res = timed(lambda: acdc(setup, tau))
            t_fast.append(t)
            t, plain = timed(lambda: acdc(setup, tau, max_rows=args.batch_size))
            t_plain.append(t)
        t_ref, t_fast, t_plain = (statistics.median(x) for x in (t_ref, t_fast, t_plain))
        same = bool((ref["in_circuit"] == res.in_circuit).all() and (plain.in_circuit == res.in_circuit).all())
        both = ~np.isnan(ref["scores"])
        dmax = float(np.max(np.abs(ref["scores"][both] - res.scores[both]))) if both.any() else 0.0
        print(f"{tau:8.3g} {int(res.in_circuit.sum()):5d} {res.n_edges_evaluated:8d} {t_ref:8.2f} {t_fast:8.2f} "
              f"{t_ref / t_fast:6.1f}x {ref['n_forward_passes']:8d} {res.n_forward_passes:8d} "
              f"{res.n_masks_evaluated:6d} {plain.n_forward_passes:11d} {t_plain:9.2f}  {str(same):9s}  {dmax:.1e}")
    if len(args.tau) > 1:
        t, multi = timed(lambda: acdc(setup, taus=args.tau))
        print(f"all taus in one call: {t:.2f} s, {multi[0].n_forward_passes} forwards, "
              f"{multi[0].n_masks_evaluated} masks; kept {[int(r.in_circuit.sum()) for r in multi]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
