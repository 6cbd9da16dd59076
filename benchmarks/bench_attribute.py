"""Attribution graphs: circuitry's `attribute` against circuit-tracer 0.5's on the same CPU, model,
transcoders and prompts, at 16, 64 and 256 tokens (issue 21, part 6).

    python benchmarks/bench_attribute.py make OUT                         # model + transcoders (project venv)
    python benchmarks/bench_attribute.py run OUT --peer PEER/venv/bin/python [--lengths 16,64,256]

`make` writes OUT/gpt2: a GPT-2 with random weights (toy:ioi's tokenizer and vocabulary, 4 layers,
d_model 128, 4 heads, 512 positions; `n_ctx` set for TransformerLens) and OUT/tc: per-layer ReLU
transcoders in circuit-tracer's format (512 features per layer, encoder bias -2.2, so a few features are
active per layer and position). `run` runs, for each length N and each tool, one fresh process
(`one TOOL N OUT`, circuitry in this venv, circuit-tracer in --peer's) that loads the model and the
transcoders and builds the graph of one prompt of N token ids (BOS first, then random ids; same ids for
both), with every active feature attributed (max_feature_nodes None), max_n_logits 5,
desired_logit_prob 0.9, batch size 256, float32, CPU. Each process reports:
  attribute_s   wall time of the attribute() call alone (time.perf_counter around it);
  attribute_mb  peak resident memory during attribute() above the resident memory just before it
                (/proc/self/statm sampled every 2 ms by a thread, and the final value);
  process_mb    the process's peak resident memory (ru_maxrss);
and the parent measures process_s, the process's wall time from spawn to exit (interpreter start,
imports, loading, attribute, exit). The table prints both tools' figures and circuitry / circuit-tracer
ratios, all from the same run. Each process runs with OMP_NUM_THREADS=1 (and torch.set_num_threads(1)).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = {"max_n_logits": 5, "desired_logit_prob": 0.9, "batch_size": 256}
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


class PeakSampler:
    """Peak RSS (MiB) while the block runs, sampled every 2 ms."""

    def __enter__(self):
        self.start = rss_mb()
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())


def prompt_ids(n: int, vocab: int, bos: int) -> list[int]:
    import random

    rng = random.Random(n)
    return [bos] + [rng.randrange(3, vocab) for _ in range(n - 1)]


def make(out):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from discovery.core.names import toy_model_dir
    from discovery.features.transcoders import Transcoders, save_transcoders

    dst = os.path.join(out, "gpt2")
    shutil.copytree(toy_model_dir("toy:ioi"), dst, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("checkpoints", "transcoders", "*.safetensors", "*.bin"))
    base = json.load(open(os.path.join(dst, "config.json")))
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=base["vocab_size"], n_positions=512, n_embd=128, n_layer=4, n_head=4, n_inner=512,
                     bos_token_id=base["bos_token_id"], eos_token_id=base["eos_token_id"],
                     pad_token_id=base["pad_token_id"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    GPT2LMHeadModel(cfg).save_pretrained(dst)
    cfg_path = os.path.join(dst, "config.json")
    c = json.load(open(cfg_path))
    c["n_ctx"] = c["n_positions"]  # TransformerLens reads n_ctx
    json.dump(c, open(cfg_path, "w"), indent=1)
    tok_path = os.path.join(dst, "tokenizer_config.json")  # transformers 4 (circuit-tracer's) names the class
    tok_cfg = json.load(open(tok_path))
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    json.dump(tok_cfg, open(tok_path, "w"), indent=1)
    L, d, F = 4, 128, 512
    g = torch.Generator().manual_seed(1)
    tc = Transcoders(torch.randn(L, F, d, generator=g) / d**0.5, torch.full((L, F), -2.2),
                     [torch.randn(F, d, generator=g) * 0.1 for _ in range(L)], torch.zeros(L, d),
                     activation="relu", cross_layer=False)
    save_transcoders(tc, os.path.join(out, "tc"), model_name="gpt2", overwrite=True)
    print(f"model and transcoders in {out}")


def one_ours(out, n):
    import torch

    torch.set_num_threads(1)
    from discovery.features.attribution import attribute
    from discovery.features.transcoders import load_transcoders
    from discovery.model.adapters import load_model

    model = load_model(os.path.join(out, "gpt2"), device="cpu")
    tc = load_transcoders(os.path.join(out, "tc"), model=model)
    ids = prompt_ids(n, model.vocab_size, model.tokenizer.bos_token_id)
    with PeakSampler() as mem:
        t0 = time.perf_counter()
        g = attribute(model, tc, prompt_ids=ids, max_logits=SETTINGS["max_n_logits"],
                      desired_logit_prob=SETTINGS["desired_logit_prob"], batch_size=SETTINGS["batch_size"])
        dt = time.perf_counter() - t0
    return {"attribute_s": dt, "attribute_mb": mem.peak - mem.start, "features": g.n_features,
            "nodes": g.n_nodes, "tokens": g.n_pos}


def one_ct(out, n):
    import torch

    torch.set_num_threads(1)
    import transformer_lens.loading_from_pretrained as tl_loading
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub

    original = tl_loading.get_official_model_name
    tl_loading.get_official_model_name = lambda m: m if os.path.isdir(m) else original(m)
    tcs, _ = load_transcoder_from_hub(os.path.abspath(os.path.join(out, "tc")), device=torch.device("cpu"),
                                      dtype=torch.float32, lazy_encoder=False, lazy_decoder=False)
    model = ReplacementModel.from_pretrained_and_transcoders(os.path.abspath(os.path.join(out, "gpt2")), tcs,
                                                             backend="transformerlens", device=torch.device("cpu"),
                                                             dtype=torch.float32)
    ids = torch.tensor(prompt_ids(n, model.tokenizer.vocab_size, model.tokenizer.bos_token_id))
    with PeakSampler() as mem:
        t0 = time.perf_counter()
        g = attribute(ids, model, **SETTINGS)
        dt = time.perf_counter() - t0
    return {"attribute_s": dt, "attribute_mb": mem.peak - mem.start, "features": int(len(g.selected_features)),
            "nodes": int(g.adjacency_matrix.shape[0]), "tokens": int(len(g.input_tokens))}


def run(out, peer, lengths):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    rows = []
    for n in lengths:
        res = {}
        for tool, py in (("circuitry", sys.executable), ("ct", peer)):
            t0 = time.perf_counter()
            p = subprocess.run([py, os.path.abspath(__file__), "one", tool, str(n), out], env=env,
                               capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if p.returncode != 0:
                sys.exit(f"{tool} at {n} tokens failed:\n{p.stderr[-3000:]}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["process_s"] = wall
            res[tool] = r
            print(f"{n} tokens {tool}: {json.dumps(r)}", file=sys.stderr, flush=True)
        rows.append((n, res))
    print("| tokens | features | process s ours / ct (ratio) | attribute() s ours / ct (ratio) | "
          "process peak MiB ours / ct (ratio) | attribute() peak MiB ours / ct (ratio) |")
    print("|---|---|---|---|---|---|")
    for n, r in rows:
        a, b = r["circuitry"], r["ct"]
        cells = [f"{a[k]:.{p}f} / {b[k]:.{p}f} ({a[k] / b[k]:.2f}x)" if b[k] > 0 else f"{a[k]:.{p}f} / {b[k]:.{p}f}"
                 for k, p in (("process_s", 1), ("attribute_s", 2), ("process_mb", 0), ("attribute_mb", 0))]
        same = "" if a["features"] == b["features"] else f" (ct {b['features']})"
        print(f"| {n} | {a['features']}{same} | " + " | ".join(cells) + " |")
    with open("/proc/loadavg") as f:
        print(f"load average at the end: {f.read().split()[:3]} on {os.cpu_count()} cores")


def main(argv):
    if argv[0] == "make":
        make(argv[1])
    elif argv[0] == "one":
        tool, n, out = argv[1], int(argv[2]), argv[3]
        r = (one_ours if tool == "circuitry" else one_ct)(out, n)
        r["process_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(r), flush=True)
    elif argv[0] == "run":
        peer = argv[argv.index("--peer") + 1]
        lengths = [int(x) for x in argv[argv.index("--lengths") + 1].split(",")] if "--lengths" in argv else [16, 64, 256]
        run(argv[1], peer, lengths)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
