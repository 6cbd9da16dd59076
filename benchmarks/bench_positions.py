"""Position-aware edges at GPT-2-small shape: edge counts, time and memory of positional EAP against plain EAP.

    .venv/bin/python benchmarks/bench_positions.py [--seq-len 8] [--rows 4] [--top-n 2000] [--device cpu|cuda]

A GPT-2-small-shaped random-weight model (12 layers, 12 heads, d_model 768) and `--rows` token rows of
`--seq-len` tokens whose corrupted prompt differs at one position. Measured in one run, each phase
once after a warm-up on one row: plain EAP scoring, positional EAP scoring, and evaluating a
positional top-n circuit (full model, empty circuit, the circuit: three masked forwards per batch).
Memory: on CUDA the peak allocated over the phase; on CPU the process's peak RSS over the phase
(VmHWM after writing 5 to /proc/self/clear_refs), minus the RSS before it. A measurement, not a test:
it always exits 0. Also checks that the positional scores summed over positions equal plain EAP's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from discovery import Setup, get_metric, score_edges, task_from_rows, wrap_model  # noqa: E402
from discovery.pipeline.evaluation import evaluate_circuit  # noqa: E402
from discovery.pipeline.selection import prune, top_n  # noqa: E402


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else _hwm()) - before
    return out, dt, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-len", type=int, default=8)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--top-n", type=int, default=2000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = GPT2LMHeadModel(GPT2Config(n_positions=max(64, args.seq_len))).eval().to(device)
    lm = wrap_model(model)
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(args.rows):
        clean = torch.randint(0, 50257, (args.seq_len,), generator=g).tolist()
        corrupted = list(clean)
        corrupted[args.seq_len // 2] = (clean[args.seq_len // 2] + 1) % 50257
        rows.append({"clean_ids": clean, "corrupted_ids": corrupted, "answer_id": clean[1], "wrong_id": clean[2]})
    task = task_from_rows(rows, vocab_size=50257)
    metric = get_metric("logit_diff")
    plain = Setup(lm, task, metric, batch_size=args.rows)
    positional = Setup(lm, task, metric, batch_size=args.rows, positions=True)
    warm = Setup(lm, task.subset([0]), metric, positions=True)
    score_edges(warm, "eap")
    score_edges(Setup(lm, task.subset([0]), metric), "eap")

    p_scores, t_plain, m_plain = measure(lambda: score_edges(plain, "eap").numpy(), device)
    pos_scores, t_pos, m_pos = measure(lambda: score_edges(positional, "eap").numpy(), device)
    graph = positional.graph
    summed = graph.base_scores(pos_scores)
    err = float(np.abs(summed - p_scores).max() / max(np.abs(p_scores).max(), 1e-12))
    keep = prune(graph, top_n(graph, pos_scores, args.top_n))
    result, t_eval, m_eval = measure(lambda: evaluate_circuit(positional, keep), device)
    print(f"GPT-2-small shape, {args.rows} rows x {args.seq_len} tokens, {device.type}, "
          f"{torch.get_num_threads()} threads")
    print(f"edges: plain {plain.graph.n_edges:,}, positional {graph.n_edges:,} "
          f"({graph.n_edges / plain.graph.n_edges:.1f}x); score tensor "
          f"{np.prod(graph.valid.shape) * 4 / 2**20:.0f} MiB")
    print(f"EAP plain:      {t_plain:7.2f} s  peak +{m_plain / 2**20:7.0f} MiB")
    print(f"EAP positional: {t_pos:7.2f} s  peak +{m_pos / 2**20:7.0f} MiB  ({t_pos / t_plain:.1f}x time)")
    print(f"summed positional vs plain EAP: max relative difference {err:.1e}")
    print(f"evaluate positional top-{args.top_n} ({int(keep.sum())} after pruning): {t_eval:.2f} s, peak "
          f"+{m_eval / 2**20:.0f} MiB; faithfulness {result['faithfulness']:.3f}")


if __name__ == "__main__":
    main()
