"""EAP and EAP-IG against the floor, on a GPT-2-small-shaped random-weight model.

    .venv/bin/python benchmarks/bench_eap.py [--batch-size 8] [--seq-len 32] [--reps 3] [--steps 5]
                                             [--device cuda|cpu] [--skip-memory] [--profile]

The FLOOR is what any edge-attribution method has to do at least, run on the bare Hugging Face model
(parameters frozen) in the same process: one corrupted forward (no grad) plus one clean forward and
backward, the backward taken with respect to the input embeddings (`inputs_embeds` that require
grad) of the same metric the methods use, the logit difference at the last token.

The HF model computes logits at every position, so the floor pays the 50257-wide unembedding (and its
backward) at all seq-len positions, while circuitry unembeds only the last token. A second, stricter
floor, "floor-last", passes `logits_to_keep=1` (last position only) and is reported alongside.

Timings on a shared machine are noisy, so the figures that matter are RATIOS measured in one run:
each function is warmed up once, then the functions are run interleaved (floor, floor-last, eap,
eap-ig, floor, ...) `--reps` times and the medians compared. The script always exits 0: it is a
measurement, not a test.

Peak memory: on CUDA, torch.cuda.max_memory_allocated() over one call of each function minus the
memory allocated before it (peak stats reset before each call). On CPU, two figures:
  tensor peak: the peak of live tensor bytes allocated during the call over those allocated before it
    (the CPU analogue of max_memory_allocated), summed from torch.profiler's allocation and free
    events, recorded on the warm-up call;
  RSS peak: floor, EAP and EAP-IG are each run once in a fresh process (multiprocessing 'spawn') that
    builds the model and the task, records its resident set size (VmRSS), resets the kernel's peak-RSS
    mark (writes 5 to /proc/self/clear_refs), runs the function and reads the peak (VmHWM); the figure
    is peak minus baseline and includes the C allocator's own overhead and fragmentation. Where
    clear_refs is not writable it falls back to getrusage(RUSAGE_SELF).ru_maxrss before/after, which
    can under-report if building the model peaked higher than the function does.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from discovery import Setup, get_metric, score_edges, task_from_rows, wrap_model  # noqa: E402

VOCAB = 50257
TARGET_EAP = 1.5


def n_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def build(batch_size: int, seq_len: int, device: str, seed: int = 0, cache_mb=256):
    """The GPT-2-small-shaped model (random init, fp32) and one batch of token rows."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=12, n_head=12, n_embd=768, vocab_size=VOCAB, n_positions=1024)
    hf_model = GPT2LMHeadModel(config).eval().to(device)
    hf_model.requires_grad_(False)

    g = torch.Generator().manual_seed(seed + 1)
    rows = []
    for _ in range(batch_size):
        clean = torch.randint(0, VOCAB, (seq_len,), generator=g)
        corrupted = clean.clone()
        # corrupt a few positions (as a name swap would), always including one near the end
        where = torch.randperm(seq_len, generator=g)[: max(1, seq_len // 8)].tolist() + [seq_len - 2]
        for p in where:
            corrupted[p] = (int(clean[p]) + 1 + int(torch.randint(0, VOCAB - 1, (1,), generator=g))) % VOCAB
        answer, wrong = torch.randperm(VOCAB, generator=g)[:2].tolist()
        rows.append({"clean_ids": clean.tolist(), "corrupted_ids": corrupted.tolist(),
                     "answer_id": answer, "wrong_id": wrong})

    lm = wrap_model(hf_model)
    task = task_from_rows(rows, vocab_size=VOCAB)
    setup = Setup(lm, task, get_metric("logit_diff"), batch_size=batch_size,
                  write_cache_bytes=int(cache_mb * 2**20))
    tensors = {
        "clean": torch.tensor([r["clean_ids"] for r in rows], device=device),
        "corrupted": torch.tensor([r["corrupted_ids"] for r in rows], device=device),
        "answer": torch.tensor([[r["answer_id"]] for r in rows], device=device),
        "wrong": torch.tensor([[r["wrong_id"]] for r in rows], device=device),
    }
    return hf_model, setup, tensors


def make_functions(hf_model, setup, t, steps: int):
    def floor(last_only: bool = False):
        kw = {"use_cache": False}
        if last_only:
            kw["logits_to_keep"] = 1
        with torch.no_grad():
            hf_model(input_ids=t["corrupted"], **kw)
        embeds = hf_model.transformer.wte(t["clean"]).detach().requires_grad_(True)
        logits = hf_model(inputs_embeds=embeds, **kw).logits[:, -1].float()
        metric = (logits.gather(-1, t["answer"]) - logits.gather(-1, t["wrong"])).sum()
        metric.backward()
        return embeds.grad

    return {
        "floor": lambda: floor(False),
        "floor-last": lambda: floor(True),
        "eap": lambda: score_edges(setup, "eap"),
        "eap-ig": lambda: score_edges(setup, "eap-ig", steps=steps),
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


# --- peak memory ----------------------------------------------------------------------------------

def tensor_peak_bytes(fn) -> int | None:
    """Peak of live tensor bytes allocated during fn() over what was allocated before it (the CPU
    analogue of torch.cuda.max_memory_allocated), from the profiler's allocation/free events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:  # the profiler's internals moved; report nothing rather than a wrong figure
        return None
    cur = peak = 0
    for _, nbytes in sorted(events):
        cur += nbytes
        peak = max(peak, cur)
    return peak


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_worker(name, batch_size, seq_len, steps, threads, queue, cache_mb):
    torch.set_num_threads(threads)
    hf_model, setup, t = build(batch_size, seq_len, "cpu", cache_mb=cache_mb)
    fn = make_functions(hf_model, setup, t, steps)[name]
    gc.collect()
    base = _status_kb("VmRSS")
    if base is not None and _reset_peak_rss():
        fn()
        queue.put((_status_kb("VmHWM") - base) * 1024)
        return
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    queue.put(-(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)  # negative: fallback used


def rss_peak_bytes(name, args, threads) -> int:
    """Peak RSS increase of one call of `name`, in a fresh spawned process that has built the model."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_rss_worker, args=(name, args.batch_size, args.seq_len, args.steps, threads, queue,
                                                        args.write_cache_mb))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def cuda_peak_bytes(fn, device) -> int:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) - base


# --- profile ----------------------------------------------------------------------------------------

def profile_eap(fns, device: str, top: int = 15) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        fns["eap"]()
        sync(device)
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    print(f"\ntorch.profiler, one EAP call, top {top} ops by {key}:")
    print(prof.key_averages().table(sort_by=key, row_limit=top))


def mib(nbytes) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:.0f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3, help="interleaved measured repetitions (after one warm-up)")
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG steps")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--write-cache-mb", type=float, default=256,
                    help="Setup.write_cache_bytes in MiB (0: recompute head writes per stage, least memory)")
    ap.add_argument("--skip-memory", action="store_true", help="timings only")
    ap.add_argument("--profile", action="store_true", help="also print a torch.profiler table of one EAP call")
    args = ap.parse_args(argv)

    threads = n_cores()
    torch.set_num_threads(threads)
    device = args.device
    cuda = device.startswith("cuda")
    print(f"circuitry bench_eap: GPT-2-small shape (12 layers, 12 heads, d 768, vocab {VOCAB}), random init, fp32")
    gpu = f" ({torch.cuda.get_device_name(device)})" if cuda else ""
    print(f"device {device}{gpu}, torch {torch.__version__}, torch threads {threads}, "
          f"{platform.processor() or platform.machine()}")
    print(f"batch {args.batch_size} x seq {args.seq_len} (one batch), EAP-IG steps {args.steps}, "
          f"{args.reps} interleaved reps after 1 warm-up each, head-write cache {args.write_cache_mb:g} MiB", flush=True)

    hf_model, setup, t = build(args.batch_size, args.seq_len, device, cache_mb=args.write_cache_mb)
    fns = make_functions(hf_model, setup, t, args.steps)

    # Warm-up; on CPU the warm-up call also records the tensor-allocation peak (profiler memory events).
    tensor_peak = {}
    for name, fn in fns.items():
        if cuda or args.skip_memory:
            fn()
        else:
            tensor_peak[name] = tensor_peak_bytes(fn)
    scores = fns["eap"]()
    assert scores.shape == (setup.graph.n_edges,) and torch.isfinite(scores).all(), "EAP scores are not finite"

    times = {name: [] for name in fns}
    for _ in range(args.reps):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    med = {name: statistics.median(v) for name, v in times.items()}
    best = {name: min(v) for name, v in times.items()}

    rss = {}
    if not args.skip_memory:
        if cuda:
            tensor_peak = {name: cuda_peak_bytes(fn, device) for name, fn in fns.items()}
        else:
            rss = {name: rss_peak_bytes(name, args, threads) for name in ("floor", "eap", "eap-ig")}

    peak_label = "cuda peak MiB" if cuda else "tensor pk MiB"
    print(f"\n{'function':<11} {'median s':>9} {'min s':>8} {'max s':>8} {'/floor':>7} {'/floor-last':>12} "
          f"{peak_label:>14} {'RSS pk MiB':>11}")
    for name in fns:
        r = rss.get(name)
        print(f"{name:<11} {med[name]:9.3f} {best[name]:8.3f} {max(times[name]):8.3f} "
              f"{med[name] / med['floor']:6.2f}x {med[name] / med['floor-last']:11.2f}x "
              f"{mib(tensor_peak.get(name)):>14} {mib(abs(r) if r is not None else None):>11}")
    print("ratios are of medians; /floor-last: against the floor that unembeds the last position only")
    if tensor_peak:
        print("memory: " + ("torch.cuda.max_memory_allocated over each call minus memory allocated before it" if cuda
                            else "tensor pk = peak of live tensor bytes allocated during the call (torch.profiler "
                                 "memory events, warm-up call); RSS pk = peak RSS increase of one call in a fresh "
                                 "spawned process that built the model"
                                 + (" (ru_maxrss fallback: may under-report)" if any(v < 0 for v in rss.values())
                                    else " (VmHWM after clear_refs - VmRSS)")))

    r_eap = med["eap"] / med["floor"]
    verdict = "met" if r_eap <= TARGET_EAP else "NOT met"
    print(f"\nEAP / floor = {r_eap:.2f}x (target <= {TARGET_EAP}x: {verdict}); by min times "
          f"{best['eap'] / best['floor']:.2f}x")
    print(f"EAP / floor-last = {med['eap'] / med['floor-last']:.2f}x (stricter floor: last-token logits only)")
    print(f"EAP-IG ({args.steps} steps) / floor = {med['eap-ig'] / med['floor']:.2f}x; "
          f"/ floor-last = {med['eap-ig'] / med['floor-last']:.2f}x; / EAP = {med['eap-ig'] / med['eap']:.2f}x")
    for label, mem in (("tensor", tensor_peak), ("RSS", {k: abs(v) for k, v in rss.items()})):
        if mem.get("floor") and mem.get("eap") is not None and mem.get("eap-ig") is not None:
            print(f"peak memory ({label}): EAP / floor = {mem['eap'] / mem['floor']:.2f}x, "
                  f"EAP-IG / floor = {mem['eap-ig'] / mem['floor']:.2f}x")

    if args.profile:
        profile_eap(fns, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
