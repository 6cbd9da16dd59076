"""Edge pruning's training step against one bare forward+backward of the same batch.

    .venv/bin/python benchmarks/bench_edge_pruning.py [--models toy:ioi,qwen2-4l-d256] [--steps 60]
                                                      [--threads 1] [--profile] [--device cpu|cuda]

Two models: the shipped `toy:ioi` on its own IOI task (200 rows, batch 16: the CLI's defaults), and a
4-layer, d_model 256 Qwen2-shaped model with random weights (8 query heads over 2 key/value heads,
d_head 32, MLP 1024, vocab 4096, fp32) on 64 random token rows of 16 tokens (batch 16) whose corrupted
prompt changes 2 tokens, one of them near the end.

STEP: one edge-pruning training step (`discovery.methods.edge_pruning.edge_pruning`, target sparsity
0.95): sample the gates, one patched forward with every edge carrying z of its live value, the KL loss,
backward to the gate logits, Adam. Per-step times come from the method's own per-step callback
(`Setup.on_batch`), so they are exactly the loop body.

FLOOR ("bare fwd+bwd"): the Hugging Face model itself (no patching) on the same batch as the step:
a forward from input embeddings that require grad (the weights are frozen), the final hidden state
at each row's last real token through the unembedding, the same KL against the clean log-probs, and
backward. It unembeds only the last tokens, as edge pruning does.

Timing: the floor runs inside the per-step callback, on the batch of the step about to run, and the
step clock restarts after it, so floors and steps interleave one to one under the same load; the
first `--warmup` steps (and their floors) are dropped. Printed per model: the step's median, the
largest step over the median, the floor's median and the ratio median step / median floor. Targets
(issue 25): ratio <= 3 and max/median <= 2. A measurement, not a test: it always exits 0. With
--profile, a torch.profiler table of a few steps (after the timed run) by self CPU time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from discovery import Setup, get_metric, load_model, task_from_rows, wrap_model  # noqa: E402
from discovery.methods.edge_pruning import edge_pruning  # noqa: E402
from discovery.task_library import build_task  # noqa: E402

TARGET_RATIO, TARGET_SPREAD = 3.0, 2.0
QWEN_VOCAB = 4096


def qwen2_setup(device: str, rows: int = 64, seq_len: int = 16, batch_size: int = 16, seed: int = 0):
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=QWEN_VOCAB, hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=2, intermediate_size=1024, max_position_embeddings=128)
    hf = AutoModelForCausalLM.from_config(cfg).eval().to(device)
    g = torch.Generator().manual_seed(seed + 1)
    data = []
    for _ in range(rows):
        clean = torch.randint(0, QWEN_VOCAB, (seq_len,), generator=g)
        corrupted = clean.clone()
        for p in (int(torch.randint(1, seq_len - 2, (1,), generator=g)), seq_len - 2):
            corrupted[p] = (int(clean[p]) + 1 + int(torch.randint(0, QWEN_VOCAB - 1, (1,), generator=g))) % QWEN_VOCAB
        answer, wrong = torch.randperm(QWEN_VOCAB, generator=g)[:2].tolist()
        data.append({"clean_ids": clean.tolist(), "corrupted_ids": corrupted.tolist(), "answer_id": answer,
                     "wrong_id": wrong})
    lm = wrap_model(hf)
    task = task_from_rows(data, vocab_size=QWEN_VOCAB)
    return Setup(lm, task, get_metric("logit_diff"), batch_size=batch_size)


def toy_setup(name: str, device: str):
    m = load_model(name, device=device)
    task = build_task("ioi", tokenizer=m.tokenizer, vocab_size=m.vocab_size, n=200, seed=0)
    return Setup(m, task, get_metric("logit_diff"), batch_size=16)


def bare_step(setup: Setup, batch, clean_logp: torch.Tensor) -> None:
    """The floor: the HF model's own forward from embeddings that require grad, KL at the last tokens, backward."""
    hf = setup.model.hf_model
    embeds = hf.get_input_embeddings()(batch.clean).detach().requires_grad_(True)
    hidden = hf.base_model(inputs_embeds=embeds, use_cache=False).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    logits = hf.get_output_embeddings()(hidden[rows, batch.clean_last]).float()
    kl = F.kl_div(F.log_softmax(logits, -1), clean_logp, log_target=True, reduction="batchmean")
    kl.backward()


def measure(setup: Setup, steps: int, warmup: int, device: str) -> dict:
    batches = list(setup.batches())  # edge pruning cycles over these, in this order
    with torch.no_grad():
        clean_logp = [F.log_softmax(setup.clean_run(b).logits.float(), -1) for b in batches]
    step_times, floor_times = [], []
    clock = {"t": None}

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def on_batch(done, total, desc):
        if desc != "edge-pruning":
            return
        sync()
        now = time.perf_counter()
        if clock["t"] is not None:
            step_times.append(now - clock["t"])
        if done < total:  # the floor on the batch of the step about to run, outside the step's clock
            b = done % len(batches)
            t0 = time.perf_counter()
            bare_step(setup, batches[b], clean_logp[b])
            sync()
            floor_times.append(time.perf_counter() - t0)
        clock["t"] = time.perf_counter()

    setup.on_batch = on_batch
    t0 = time.perf_counter()
    result = edge_pruning(setup, sparsity=0.95, steps=steps)
    total = time.perf_counter() - t0
    setup.on_batch = None
    st, fl = step_times[warmup:], floor_times[warmup:]
    med, fmed = statistics.median(st), statistics.median(fl)
    return {"steps": st, "floors": fl, "median": med, "max": max(st), "floor": fmed, "ratio": med / fmed,
            "spread": max(st) / med, "total": total, "result": result}


def profile_steps(setup: Setup, steps: int, device: str, top: int = 20) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        edge_pruning(setup, sparsity=0.95, steps=steps)
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    print(f"\ntorch.profiler, edge_pruning with {steps} steps (plus its data preparation), top {top} by {key}:")
    print(prof.key_averages().table(sort_by=key, row_limit=top))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="toy:ioi,qwen2-4l-d256")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=3, help="first steps (and floors) not counted")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--profile", action="store_true", help="also print a torch.profiler table per model")
    ap.add_argument("--show-steps", action="store_true", help="print every step's time")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"circuitry bench_edge_pruning: device {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.steps} steps per model, first {args.warmup} dropped; targets: step <= {TARGET_RATIO:g}x "
          f"the bare fwd+bwd, max step <= {TARGET_SPREAD:g}x the median\n")
    print(f"{'model':<16} {'edges':>6} {'step median':>12} {'max/median':>11} {'bare fwd+bwd':>13} "
          f"{'ratio':>6} {'total':>8}")
    for name in args.models.split(","):
        setup = qwen2_setup(args.device) if name == "qwen2-4l-d256" else toy_setup(name, args.device)
        r = measure(setup, args.steps, args.warmup, args.device)
        print(f"{name:<16} {setup.graph.n_edges:>6} {r['median'] * 1e3:>10.1f}ms {r['spread']:>11.2f} "
              f"{r['floor'] * 1e3:>11.1f}ms {r['ratio']:>6.2f} {r['total']:>7.1f}s", flush=True)
        if args.show_steps:
            print("  steps (ms):", " ".join(f"{t * 1e3:.0f}" for t in r["steps"]))
            print("  floors (ms):", " ".join(f"{t * 1e3:.0f}" for t in r["floors"]))
        if args.profile:
            profile_steps(setup, 10, args.device)
    print(f"\nload average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
