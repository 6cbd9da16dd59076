"""Per-query-head k/v edges (the default) against grouped ones: what the MIB naming costs on a GQA model.

    .venv/bin/python benchmarks/bench_gqa.py [--layers 8] [--d-model 512] [--heads 16] [--kv-heads 4]
                                             [--rows 8] [--seq-len 32] [--reps 3] [--device cpu|cuda]

A random-weight Llama-shaped model. For kv_edges "head" and "grouped": edge counts, EAP and EAP-IG
(5 steps) scoring time, and the time to evaluate a top-5% circuit (full model, empty circuit and the
circuit: masked forwards where the k/v readers of a layer see different inputs, so "head" projects
keys and values per query head there). Each function is warmed up, then the two modes run
interleaved `--reps` times; medians and their ratio (head / grouped) are printed. Also prints the
largest difference between the grouped EAP scores and the per-head scores summed over each group.
A measurement, not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from discovery import Setup, get_metric, score_edges, task_from_rows, wrap_model  # noqa: E402
from discovery.pipeline.evaluation import evaluate_circuit  # noqa: E402
from discovery.pipeline.selection import top_n  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=4096, hidden_size=args.d_model, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                      intermediate_size=4 * args.d_model, max_position_embeddings=max(64, args.seq_len))
    lm = wrap_model(LlamaForCausalLM(cfg).eval().to(args.device))
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(args.rows):
        clean = torch.randint(0, 4096, (args.seq_len,), generator=g).tolist()
        corrupted = list(clean)
        corrupted[args.seq_len // 2] = (clean[args.seq_len // 2] + 1) % 4096
        rows.append({"clean_ids": clean, "corrupted_ids": corrupted, "answer_id": clean[1], "wrong_id": clean[2]})
    task = task_from_rows(rows, vocab_size=4096)
    setups = {mode: Setup(lm, task, get_metric("logit_diff"), batch_size=args.rows, kv_edges=mode)
              for mode in ("head", "grouped")}
    scores = {mode: score_edges(s, "eap").numpy() for mode, s in setups.items()}  # warm-up, and the check
    circuits = {mode: top_n(s.graph, scores[mode], max(1, s.graph.n_edges // 20)) for mode, s in setups.items()}
    jobs = {"eap": lambda s, m: score_edges(s, "eap"), "eap-ig": lambda s, m: score_edges(s, "eap-ig", steps=5),
            "evaluate top 5%": lambda s, m: evaluate_circuit(s, circuits[m])}
    for fn in jobs.values():
        for mode, s in setups.items():
            fn(s, mode)
    times = {(j, m): [] for j in jobs for m in setups}
    for _ in range(args.reps):
        for j, fn in jobs.items():
            for mode, s in setups.items():
                if args.device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                fn(s, mode)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                times[(j, mode)].append(time.perf_counter() - t)
    gh, gg = setups["head"].graph, setups["grouped"].graph
    worst = 0.0
    for e, name in enumerate(gg.edge_names):
        src, reader = name.split("->")
        if ".kv" in reader:
            layer, rest = reader[1:].split(".kv")
            grp, slot = int(rest[0]), rest[-2]
            heads = range(grp * gh.group_size, (grp + 1) * gh.group_size)
            total = sum(scores["head"][gh.edge_index[f"{src}->a{layer}.h{h}<{slot}>"]] for h in heads)
            worst = max(worst, abs(total - scores["grouped"][e]))
    print(f"Llama shape: {args.layers} layers, d_model {args.d_model}, {args.heads} heads over {args.kv_heads} "
          f"key/value heads; {args.rows} rows x {args.seq_len} tokens; {args.device}, "
          f"{torch.get_num_threads()} threads; medians of {args.reps}")
    print(f"edges: head {gh.n_edges:,}, grouped {gg.n_edges:,}")
    for j in jobs:
        th, tg = statistics.median(times[(j, "head")]), statistics.median(times[(j, "grouped")])
        print(f"{j:<16} head {th:7.3f} s  grouped {tg:7.3f} s  ratio {th / tg:.2f}")
    print(f"grouped EAP vs per-head EAP summed over each group: max |difference| {worst:.1e} "
          f"(max |score| {np.abs(scores['grouped']).max():.1e})")


if __name__ == "__main__":
    main()
