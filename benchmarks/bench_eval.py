"""Evaluating circuits against the bare floor, on a GPT-2-small-shaped random-weight model, in one run.

    .venv/bin/python benchmarks/bench_eval.py [--rows 32] [--seq-len 16] [--batch-size 16] [--reps 3]
                                              [--threads 1] [--device cpu|cuda] [--no-process] [--compare-passes]

Model and task: the GPT-2-small shape of benchmarks/bench_eap.py (12 layers, 12 heads, d 768, vocab
50257, random init, fp32; 32,491 edges) on `rows` token rows of `seq-len` tokens, a few positions
corrupted (bench_eap.build).

In one process (interleaved `--reps` times after one warm-up; medians):
- bare pair: the plain Hugging Face model's corrupted forward plus its clean forward, no grad (what any
  evaluation has to run at least once); "bare pair, last" passes logits_to_keep=1.
- evaluate 1%: discovery.evaluate_circuit of the top 1% of the edges by EAP's |score| (pruned), warm:
  on a setup that already holds the batches' clean and corrupted runs (as every evaluation after
  the first on one setup, e.g. discover's circuit and curve), and cold: a fresh setup, which first
  makes those runs.
- evaluate 10%, 50%: the same, warm.
- curve: faithfulness_curves of the EAP scores (20 circuits), warm, one circuit per pass (the CPU
  default); with --compare-passes also 4 circuits per pass.

As whole processes (each a fresh `python`, model loaded from a saved directory, task from a JSONL file;
interleaved `--reps` times; medians):
- floor process: load the model and the rows, one corrupted forward (no grad) plus one clean forward
  and backward (w.r.t. the input embeddings) of the logit difference, the floor of bench_eap.py;
- discover process: `circuitry discover --method eap` with the faithfulness curve (the CLI's defaults
  otherwise), on the same model and rows.

Targets (issue 13): discover process <= 5x the floor process; evaluate 1% (warm) <= 0.3x the bare pair.
Timings on a shared machine are noisy: the ratios are what matter. Always exits 0 (a measurement).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_eap import build  # noqa: E402

from discovery import Setup, evaluate_circuit, faithfulness_curves, score_edges  # noqa: E402
from discovery.pipeline.selection import prune, top_n  # noqa: E402
from discovery.pipeline.evaluation import forget  # noqa: E402

FLOOR_SCRIPT = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
model.requires_grad_(False)
rows = [json.loads(line) for line in open(sys.argv[2])]
clean = torch.tensor([r["clean_ids"] for r in rows])
corrupted = torch.tensor([r["corrupted_ids"] for r in rows])
answer = torch.tensor([[r["answer_id"]] for r in rows])
wrong = torch.tensor([[r["wrong_id"]] for r in rows])
with torch.no_grad():
    model(input_ids=corrupted, use_cache=False)
embeds = model.transformer.wte(clean).detach().requires_grad_(True)
logits = model(inputs_embeds=embeds, use_cache=False).logits[:, -1].float()
(logits.gather(-1, answer) - logits.gather(-1, wrong)).sum().backward()
"""


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16, help="the CLI's default")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, here and in the processes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-process", action="store_true", help="skip the whole-process figures")
    ap.add_argument("--compare-passes", action="store_true", help="also the curve with 4 circuits per pass")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    hf, setup, t = build(args.rows, args.seq_len, args.device)
    setup = dataclasses.replace(setup, batch_size=args.batch_size)  # a Setup is fixed once made
    g = setup.graph
    print(f"circuitry bench_eval: GPT-2-small shape, random init, fp32, {g.n_edges} edges; {args.rows} rows x "
          f"{args.seq_len} tokens, batch {args.batch_size}; device {args.device}, torch threads {args.threads}, "
          f"torch {torch.__version__}, Python {platform.python_version()}", flush=True)

    def bare(last: bool):
        kw = {"use_cache": False, **({"logits_to_keep": 1} if last else {})}
        with torch.no_grad():
            for lo in range(0, args.rows, args.batch_size):
                hf(input_ids=t["corrupted"][lo:lo + args.batch_size], **kw)
                hf(input_ids=t["clean"][lo:lo + args.batch_size], **kw)

    scores = score_edges(setup, "eap").numpy()
    circuits = {}
    for pct in (1, 10, 50):
        keep = prune(g, top_n(g, scores, int(g.n_edges * pct / 100)))
        circuits[pct] = keep
    fresh = lambda: Setup(setup.model, setup.task, setup.metric, batch_size=args.batch_size)  # noqa: E731
    fns = {
        "bare pair": lambda: bare(False),
        "bare pair, last": lambda: bare(True),
        "evaluate 1%, cold": lambda: evaluate_circuit(fresh(), circuits[1]),
        "evaluate 1%, warm": lambda: evaluate_circuit(setup, circuits[1]),
        "evaluate 10%, warm": lambda: evaluate_circuit(setup, circuits[10]),
        "evaluate 50%, warm": lambda: evaluate_circuit(setup, circuits[50]),
        "curve, warm": lambda: faithfulness_curves(setup, scores),
    }
    if args.compare_passes:
        fns["curve, warm, 4 circuits/pass"] = lambda: faithfulness_curves(setup, scores, max_rows=4 * args.batch_size)

    def clear_memo():  # warm means: the batches' runs are held, not this very circuit's results
        forget(setup)
        for c in setup.runs.caches():
            c.forget()

    for fn in fns.values():
        fn()
        clear_memo()
    times = {name: [] for name in fns}
    for _ in range(args.reps):
        for name, fn in fns.items():
            times[name].append(timed(fn))
            clear_memo()
    med = {name: statistics.median(ts) for name, ts in times.items()}
    pair = med["bare pair"]
    print(f"{'':32s} {'median s':>9s} {'x bare pair':>12s}   (edges kept: 1% {int(circuits[1].sum())}, "
          f"10% {int(circuits[10].sum())}, 50% {int(circuits[50].sum())})")
    for name, s in med.items():
        print(f"{name:32s} {s:9.3f} {s / pair:11.2f}x")
    ok = med["evaluate 1%, warm"] / pair <= 0.3
    print(f"target: evaluate 1% (warm) <= 0.3x bare pair: {med['evaluate 1%, warm'] / pair:.2f}x "
          f"({'met' if ok else 'NOT met'})", flush=True)

    if not args.no_process:
        process_figures(hf, setup, args)
    return 0


def process_figures(hf, setup, args) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, task_file, out = Path(tmp, "model"), Path(tmp, "task.jsonl"), Path(tmp, "circuit.json")
        hf.save_pretrained(model_dir)
        with open(task_file, "w") as f:
            task = setup.task
            for c, k, a, w in zip(task.clean_ids, task.corrupted_ids, task.answer_ids, task.wrong_ids):
                f.write(json.dumps({"clean_ids": list(c), "corrupted_ids": list(k), "answer_id": int(a[0]),
                                    "wrong_id": int(w[0])}) + "\n")
        floor_cmd = [sys.executable, "-c", FLOOR_SCRIPT, str(model_dir), str(task_file)]
        discover_cmd = [sys.executable, "-m", "discovery.cli", "discover", "--model", str(model_dir), "--task",
                        str(task_file), "--method", "eap", "--batch-size", str(args.batch_size), "--device",
                        args.device, "--quiet", "--out", str(out)]
        print("floor process:    python -c FLOOR_SCRIPT MODEL_DIR TASK.jsonl")
        print("discover process: " + " ".join(["python"] + discover_cmd[1:]).replace(tmp, "$TMP"), flush=True)
        times = {"floor process": [], "discover process": []}
        for _ in range(args.reps):
            for name, cmd in (("floor process", floor_cmd), ("discover process", discover_cmd)):
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                times[name].append(time.perf_counter() - t0)
                if proc.returncode:
                    print(f"{name} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
                    return
        circuit = json.loads(out.read_text())
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, s in med.items():
        print(f"{name:32s} {s:9.3f} s  (runs: {', '.join(f'{x:.1f}' for x in times[name])})")
    ratio = med["discover process"] / med["floor process"]
    m = circuit["metrics"]
    print(f"discover: {m.get('n_edges')} edges, faithfulness {m.get('faithfulness')}, cpr {m.get('cpr')}, "
          f"its own wall_time_s {circuit.get('wall_time_s')}")
    print(f"target: discover process <= 5x floor process: {ratio:.2f}x ({'met' if ratio <= 5 else 'NOT met'})")


if __name__ == "__main__":
    sys.exit(main())
