"""Train the toy models shipped in discovery/toy/models/ (CPU, a few minutes each, deterministic).

    python -m discovery.toy.train induction --out discovery/toy/models/induction --seed 0
    python -m discovery.toy.train ioi --out discovery/toy/models/ioi --seed 0

`induction`: an attention-only 2-layer GPT-2 trained on random tokens containing repeated segments (mostly
pairs) at varying offsets; intermediate checkpoints go to `<out>/checkpoints/step-XXXXXX/`, and the expected
circuit (from its attention patterns) to `<out>/ground_truth.json`. `ioi`: a 4-layer GPT-2 trained on
sentences of the built-in `ioi` task. Each output directory is a Hugging Face model directory
(safetensors, config, tokenizer) with a model card `README.md` and `training_log.json`.

Over 500 lines: both recipes (data, model, training loop, checkpoints, ground truth, model card) in the
one script that `python -m discovery.toy.train` documents, so that a shipped model's recipe reads whole.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .tokenizer import BOS, SPECIAL, build_tokenizer

N_SPECIAL = len(SPECIAL)


@dataclass
class Recipe:
    n_layer: int
    n_head: int
    d_model: int
    n_positions: int
    mlp_width: int
    steps: int
    batch: int
    lr: float
    warmup: int
    weight_decay: float
    checkpoints: int  # intermediate checkpoints, evenly spaced (0: none)
    attention_only: bool
    seq_len: int = 40  # induction training sequences: <bos> + seq_len - 1 tokens
    max_segment: int = 10  # longest repeated segment in induction training
    pair_frac: float = 0.8  # fraction of repeated segments that are pairs (a b ... a b)
    family: str = "gpt2"  # "gpt2" | "llama"
    n_kv_head: int | None = None  # llama: key/value heads (grouped-query attention when < n_head)
    data: str = ""  # "induction" | "repeat" | "ioi" (default: the kind's name)


RECIPES = {
    # The attention-only MLPs write nothing, so their width only costs bytes: d_model keeps the directory small.
    "induction": Recipe(n_layer=2, n_head=4, d_model=128, n_positions=40, mlp_width=128, steps=3000, batch=64,
                        lr=3e-3, warmup=100, weight_decay=0.01, checkpoints=6, attention_only=True, seq_len=40,
                        max_segment=10, pair_frac=0.8),
    "ioi": Recipe(n_layer=4, n_head=4, d_model=64, n_positions=64, mlp_width=256, steps=2000, batch=64, lr=2e-3,
                  warmup=100, weight_decay=0.01, checkpoints=0, attention_only=False),
    # Llama (RoPE, RMSNorm, SwiGLU MLPs) with grouped-query attention, trained on the induction data.
    # Trained on repeat_batch (one repeated segment of varying length): with the segment data of `induction` it
    # did not form induction heads in 2000-3000 steps (held-out top-1 0.02-0.03, d_model 64 and 128), and with
    # a fixed segment length it learned a fixed-offset positional head instead.
    "llama-induction": Recipe(n_layer=2, n_head=4, d_model=64, n_positions=64, mlp_width=256, steps=1800, batch=64,
                              lr=3e-3, warmup=100, weight_decay=0.01, checkpoints=0, attention_only=False,
                              seq_len=33, max_segment=16, pair_frac=0.0, family="llama", n_kv_head=2,
                              data="repeat"),
}
HELDOUT_SEED_OFFSET = 1_000_003  # held-out data seed = training seed + this (never used for training)


def vocabulary_words() -> list[str]:
    from discovery.task_library import vocabulary
    return vocabulary()


def make_model(recipe: Recipe, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if recipe.family == "llama":
        cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=recipe.d_model, intermediate_size=recipe.mlp_width,
                          num_hidden_layers=recipe.n_layer, num_attention_heads=recipe.n_head,
                          num_key_value_heads=recipe.n_kv_head or recipe.n_head,
                          max_position_embeddings=recipe.n_positions, tie_word_embeddings=True,
                          attention_dropout=0.0, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        return LlamaForCausalLM(cfg)

    cfg = GPT2Config(
        vocab_size=len(tokenizer), n_positions=recipe.n_positions, n_embd=recipe.d_model, n_layer=recipe.n_layer,
        n_head=recipe.n_head, n_inner=recipe.mlp_width, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(cfg)
    if recipe.attention_only:
        for block in model.transformer.h:
            with torch.no_grad():
                block.mlp.c_proj.weight.zero_()
                block.mlp.c_proj.bias.zero_()
            block.mlp.c_proj.weight.requires_grad_(False)
            block.mlp.c_proj.bias.requires_grad_(False)
    return model


# ------------------------------------------------------------------------------------------- data


def induction_batch(g: torch.Generator, batch: int, vocab_size: int, seq_len: int = 40, max_segment: int = 10,
                    pair_frac: float = 0.8, max_repeats: int = 6):
    """Random ordinary tokens after `<bos>` in which 1..max_repeats segments S of distinct tokens appear
    twice, at random places with random-length gaps, so the offset between the copies varies. A
    fraction `pair_frac` of the segments are pairs (a b ... a b), whose second token only an exact
    previous-token match predicts; the others have 3..max_segment tokens. Returns ids [batch, seq_len]
    and a mask of the positions whose next token is predictable (each second copy, from its first
    token up to its second-last)."""
    pool = vocab_size - N_SPECIAL
    ids = torch.randint(N_SPECIAL, vocab_size, (batch, seq_len), generator=g)
    ids[:, 0] = SPECIAL.index(BOS)
    target = torch.zeros(batch, seq_len, dtype=torch.bool)  # target[b, i]: ids[b, i+1] is predictable
    rand = lambda lo, hi: int(torch.randint(lo, hi + 1, (), generator=g))  # noqa: E731 - inclusive bounds
    for b in range(batch):
        free = torch.ones(seq_len, dtype=torch.bool)
        free[0] = False
        for _ in range(rand(1, max_repeats)):
            seg = 2 if bool(torch.rand((), generator=g) < pair_frac) else rand(3, max_segment)
            if 2 * seg > seq_len - 1:
                continue
            # two non-overlapping copies in still-free places (a few tries; the first segment always fits)
            for _ in range(8):
                first = rand(1, seq_len - 2 * seg)
                second = rand(first + seg, seq_len - seg)
                if free[first:first + seg].all() and free[second:second + seg].all():
                    break
            else:
                continue
            s = torch.randperm(pool, generator=g)[:seg] + N_SPECIAL
            ids[b, first:first + seg] = ids[b, second:second + seg] = s
            free[first:first + seg] = free[second:second + seg] = False
            target[b, second:second + seg - 1] = True
    return ids, target


def repeat_batch(g: torch.Generator, batch: int, vocab_size: int, seq_len: int = 33, max_segment: int = 16):
    """`<bos> R S S T`: S of 3..max_segment distinct ordinary tokens (its length, hence the offset between
    the copies, varies per row, so only content can find the repeat), R and T random fillers (R of
    random length). target marks the positions of the second copy whose next token is predictable
    (from its first token to its second-last)."""
    pool = vocab_size - N_SPECIAL
    ids = torch.randint(N_SPECIAL, vocab_size, (batch, seq_len), generator=g)
    ids[:, 0] = SPECIAL.index(BOS)
    target = torch.zeros(batch, seq_len, dtype=torch.bool)
    for b in range(batch):
        seg = int(torch.randint(3, min(max_segment, (seq_len - 1) // 2) + 1, (), generator=g))
        start = 1 + int(torch.randint(0, seq_len - 2 * seg, (), generator=g))
        s = torch.randperm(pool, generator=g)[:seg] + N_SPECIAL
        ids[b, start:start + seg] = ids[b, start + seg:start + 2 * seg] = s
        target[b, start + seg:start + 2 * seg - 1] = True
    return ids, target


def ioi_texts(n: int, seed: int, tokenizer) -> tuple[list[str], list[str], list[str]]:
    """Prompts, IO names and S names of the built-in `ioi` task (prompts end right before the IO)."""
    from discovery.task_library import Lexicon, get_task

    examples = get_task("ioi").examples(n, seed, Lexicon(tokenizer))
    return ([e.clean for e in examples], [e.answer[0].strip() for e in examples],
            [e.wrong[0].strip() for e in examples])


def ioi_encode(prompts: list[str], ios: list[str], tokenizer):
    """Right-padded ids of `prompt + IO` [n, T], the index of each prompt's last token, and a mask of
    real next-token targets."""
    rows = [tokenizer(p + " " + io)["input_ids"] for p, io in zip(prompts, ios)]
    t = max(map(len, rows))
    ids = torch.full((len(rows), t), tokenizer.pad_token_id)
    real = torch.zeros(len(rows), t, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        real[i, :len(r) - 1] = True
    last = torch.tensor([len(r) - 2 for r in rows])  # position of the prompt's last token
    return ids, real, last


# ------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def induction_accuracy(model, vocab_size: int, n: int = 512, seed: int = HELDOUT_SEED_OFFSET, seq_len: int = 40,
                       max_segment: int = 10, pair_frac: float = 0.8) -> float:
    """Top-1 accuracy on the second copies of the repeated segments (their first tokens excluded) of
    fresh sequences drawn like the training data (`induction_batch`) from `seed`; `pair_frac=0` leaves
    only segments of 3..max_segment tokens."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    correct = total = 0
    for _ in range(math.ceil(n / 64)):
        ids, target = induction_batch(g, 64, vocab_size, seq_len, max_segment, pair_frac)
        pred = model(ids).logits[:, :-1].argmax(-1)
        hit = (pred == ids[:, 1:]) & target[:, :-1]
        correct += int(hit.sum())
        total += int(target[:, :-1].sum())
    return correct / total


@torch.no_grad()
def induction_task_accuracy(model, tokenizer, n: int = 200, seed: int = HELDOUT_SEED_OFFSET) -> dict:
    """On the built-in `induction` task (clean S + S[:k]): top-1 accuracy of S[k], and the fraction
    where logit(S[k]) > logit(S'[k])."""
    from discovery.task_library import build_task

    model.eval()
    task = build_task("induction", tokenizer=tokenizer, vocab_size=len(tokenizer), n=n, seed=seed)
    t = max(map(len, task.clean_ids))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (t - len(r)) for r in task.clean_ids])  # right-padded
    last = torch.tensor([len(r) - 1 for r in task.clean_ids])
    mask = (torch.arange(t)[None] <= last[:, None]).long()
    logits = model(ids, attention_mask=mask).logits[torch.arange(len(last)), last]
    ans = torch.tensor([a[0] for a in task.answer_ids])
    wrong = torch.tensor([w[0] for w in task.wrong_ids])
    rows = torch.arange(len(ans))
    return {"top1": float((logits.argmax(-1) == ans).float().mean()),
            "answer_beats_wrong": float((logits[rows, ans] > logits[rows, wrong]).float().mean())}


@torch.no_grad()
def ioi_accuracy(model, tokenizer, n: int = 500, seed: int = HELDOUT_SEED_OFFSET) -> dict:
    """On fresh `ioi` examples from `seed`: fraction where logit(IO) > logit(S) at the last prompt
    position, and top-1 accuracy of the IO."""
    model.eval()
    prompts, ios, ss = ioi_texts(n, seed, tokenizer)
    ids, _, last = ioi_encode(prompts, ios, tokenizer)
    logits = model(ids, attention_mask=(ids != tokenizer.pad_token_id).long()).logits
    final = logits[torch.arange(len(last)), last]
    io = torch.tensor(tokenizer.convert_tokens_to_ids(ios))
    s = torch.tensor(tokenizer.convert_tokens_to_ids(ss))
    rows = torch.arange(len(io))
    return {"io_beats_s": float((final[rows, io] > final[rows, s]).float().mean()),
            "top1": float((final.argmax(-1) == io).float().mean()),
            "mean_logit_diff": float((final[rows, io] - final[rows, s]).mean())}


def crosscheck(model_dir: Path, gt: dict, n: int = 64, seed: int = HELDOUT_SEED_OFFSET) -> dict:
    """How the ground-truth edges fare under circuitry's own exact patching (a check for the model card;
    the ground truth itself never uses the discovery methods)."""
    import numpy as np

    from ..methods import Setup, score_edges
    from ..model.adapters import load_model
    from ..model.metrics import get_metric
    from ..pipeline.evaluation import circuit_metrics
    from ..task_library import build_task

    lm = load_model(str(model_dir), device="cpu")
    task = build_task("induction", tokenizer=lm.tokenizer, vocab_size=lm.vocab_size, n=n, seed=seed)
    setup = Setup(lm, task, get_metric("logit_diff"), batch_size=n)
    keep = np.zeros(len(setup.graph.edge_names), dtype=bool)
    from .ground_truth import graph_edge_name

    keep[[setup.graph.edge_index[graph_edge_name(setup.graph, e)] for e in gt["edges"]]] = True
    full, empty, circuit = (float(x) for x in circuit_metrics(setup, [np.ones_like(keep), np.zeros_like(keep), keep]))
    scores = np.abs(score_edges(setup, "exact").numpy())
    top = np.argsort(-scores, kind="stable")[:len(gt["edges"])]
    return {"n": n, "seed": seed, "full": full, "empty": empty, "circuit": circuit,
            "faithfulness": (circuit - empty) / (full - empty), "in_top": int(keep[top].sum())}


# --------------------------------------------------------------------------------------- training


def lr_at(step: int, recipe: Recipe) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    frac = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def save_dir(model, tokenizer, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def train(kind: str, out: Path, seed: int = 0, steps: int | None = None, threads: int = 1,
          evaluate: bool = True, argv: list[str] | None = None, **overrides) -> dict:
    """Train one toy model into `out` (replaced if it exists) and return its training log. `steps` and
    `overrides` (Recipe fields) change the recipe; torch's thread count and determinism flag are
    restored afterwards."""
    recipe = RECIPES[kind]
    if steps is not None:
        overrides = {**overrides, "steps": steps, "warmup": min(recipe.warmup, max(1, steps // 10))}
    recipe = Recipe(**{**asdict(recipe), **overrides})
    threads_before, deterministic_before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(kind, recipe, Path(out), seed, evaluate, argv)
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)


def _train(kind: str, recipe: Recipe, out: Path, seed: int, evaluate: bool, argv: list[str] | None) -> dict:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    random.seed(seed)
    torch.manual_seed(seed)
    start = time.time()

    tokenizer = build_tokenizer(vocabulary_words())
    model = make_model(recipe, tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.98))
    g = torch.Generator().manual_seed(seed)

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    every = recipe.steps // recipe.checkpoints if recipe.checkpoints else 0
    log = {"kind": kind, "seed": seed, "recipe": asdict(recipe), "loss": [], "checkpoints": []}

    data = recipe.data or kind
    if data == "ioi":
        pool = recipe.steps * recipe.batch
        prompts, ios, _ = ioi_texts(pool, seed, tokenizer)
        all_ids, all_real, all_last = ioi_encode(prompts, ios, tokenizer)
        order = torch.randperm(pool, generator=g)

    model.train()
    for step in range(recipe.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe)
        if data == "repeat":
            ids, target = repeat_batch(g, recipe.batch, len(tokenizer), recipe.seq_len, recipe.max_segment)
            logits = model(ids).logits
            loss = F.cross_entropy(logits[:, :-1][target[:, :-1]], ids[:, 1:][target[:, :-1]])
        elif data == "induction":
            ids, target = induction_batch(g, recipe.batch, len(tokenizer), recipe.seq_len, recipe.max_segment,
                                          recipe.pair_frac)
            logits = model(ids).logits
            loss = F.cross_entropy(logits[:, :-1][target[:, :-1]], ids[:, 1:][target[:, :-1]])
        else:
            pick = order[step * recipe.batch:(step + 1) * recipe.batch]
            ids, real, last = all_ids[pick], all_real[pick], all_last[pick]
            logits = model(ids, attention_mask=(ids != tokenizer.pad_token_id).long()).logits
            per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
            lm = (per_token * real[:, :-1]).sum() / real[:, :-1].sum()
            final = per_token[torch.arange(len(last)), last].mean()  # the IO name, weighted once more
            loss = lm + final
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 10 == 0 or step == recipe.steps - 1:
            log["loss"].append([step + 1, round(loss.item(), 5)])
        done = step + 1
        if every and done % every == 0:
            save_dir(model, tokenizer, out / "checkpoints" / f"step-{done:06d}")
            model.train()
    train_time = time.time() - start

    model.eval()
    save_dir(model, tokenizer, out)
    log["train_wall_s"] = round(train_time, 1)
    if evaluate:
        heldout = seed + HELDOUT_SEED_OFFSET
        if data in ("induction", "repeat"):
            from .ground_truth import head_scores, write_ground_truth
            shape = dict(seq_len=recipe.seq_len, max_segment=recipe.max_segment)
            log["heldout"] = {
                "seed": heldout,
                "repeat_top1": induction_accuracy(model, len(tokenizer), seed=heldout, pair_frac=recipe.pair_frac,
                                                  **shape),
                "repeat_top1_no_pairs": induction_accuracy(model, len(tokenizer), seed=heldout, pair_frac=0.0, **shape),
                "induction_task": induction_task_accuracy(model, tokenizer, seed=heldout)}
            for ck in sorted((out / "checkpoints").iterdir()) if (out / "checkpoints").is_dir() else []:
                sc = head_scores(ck)
                log["checkpoints"].append({"revision": ck.name, "step": int(ck.name.split("-")[1]),
                                           "prev_token": sc["prev_token"][0], "current_token": sc["current_token"][0],
                                           "induction": sc["induction"][1]})
            log["ground_truth"] = write_ground_truth(out, mlps_write=not recipe.attention_only)
            log["crosscheck"] = crosscheck(out, log["ground_truth"], seed=heldout)
        else:
            log["heldout"] = {"seed": heldout, **ioi_accuracy(model, tokenizer, seed=heldout)}
            seen = set(zip(prompts, ios))
            fresh = ioi_texts(500, heldout, tokenizer)
            log["heldout"]["also_in_training"] = sum((p, io) in seen for p, io in zip(fresh[0], fresh[1]))
    log["total_wall_s"] = round(time.time() - start, 1)
    command = "python -m discovery.toy.train " + " ".join(shlex.quote(a) for a in (argv or [kind, "--out", str(out),
                                                                                           "--seed", str(seed)]))
    log["command"] = command
    (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    (out / "README.md").write_text(model_card(kind, recipe, log, model))
    return log


# ------------------------------------------------------------------------------------- model card


def _n_params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def model_card(kind: str, r: Recipe, log: dict, model) -> str:
    import transformers

    data = r.data or kind
    arch = (f"Llama (`LlamaForCausalLM`), {r.n_layer} layers, {r.n_head} query heads sharing {r.n_kv_head} key/value "
            f"heads (grouped-query attention), d_model {r.d_model}, d_head {r.d_model // r.n_head}, SwiGLU MLPs of "
            f"width {r.mlp_width}, RMSNorm, rotary positions (theta {model.config.rope_parameters['rope_theta']:g}), "
            f"dropout 0, tied input/output embeddings, {_n_params(model):,} parameters, vocabulary "
            f"{model.config.vocab_size}.") if r.family == "llama" else \
           (f"GPT-2 (`GPT2LMHeadModel`), {r.n_layer} layers, {r.n_head} heads, d_model {r.d_model}, d_head "
            f"{r.d_model // r.n_head}, MLP width {r.mlp_width}, learned positions ({r.n_positions}), dropout 0, "
            f"tied input/output embeddings, {_n_params(model):,} parameters, vocabulary {model.config.vocab_size}.")
    lines = [f"# circuitry toy model: {kind}", "",
             f"Load it with `discovery.load_model(\"toy:{kind}\")` or "
             "`transformers.AutoModelForCausalLM.from_pretrained(<this directory>)`.", "",
             "## Architecture", "", arch]
    if r.attention_only:
        lines += ["", "**Attention-only.** The MLP output projections (`mlp.c_proj` weight and bias) of every layer "
                  "are zero and were frozen (`requires_grad=False`) during training, so the MLPs write exactly "
                  "nothing to the residual stream. The MLP nodes exist in the graph but carry nothing."]
    lines += ["", "## Tokenizer", "",
              "Word-level (`discovery/toy/tokenizer.py`) over `discovery.task_library.vocabulary()`: special tokens "
              "`<pad>` 0, `<unk>` 1, `<bos>` 2 (also end of text), then every word piece of the built-in tasks. "
              "Text is split into runs of word characters or punctuation, with each pair of digits on its own; "
              "`<bos>` is put before every encoded text.", "", "## Data", ""]
    if data == "repeat":
        lines += [f"Fresh batches every step of {r.batch} sequences of {r.seq_len} tokens `<bos> R S S T`: S of 3-"
                  f"{r.max_segment} distinct uniformly random ordinary tokens (its length, hence the offset between "
                  "the copies, varies per row, so only content finds the repeat), R (random length) and T random "
                  "fillers (`repeat_batch` in `discovery/toy/train.py`). Loss: next-token cross-entropy on the second "
                  "copy (from its first token to its second-last), the only predictable positions. Two recipes "
                  "that did not give induction: the segment data of `toy:induction` (pairs at random offsets; no "
                  "induction within 3000 steps, held-out top-1 0.02-0.03 at d_model 64 and 128) and `<bos> S S` with "
                  "a fixed |S| = 16 (loss ~0 through a fixed-offset positional head; top-1 0.25 on the built-in task, "
                  "whose offset is 10)."]
    elif data == "induction":
        lines += [f"Fresh batches every step of {r.batch} sequences of {r.seq_len} tokens: `<bos>`, then uniformly random "
                  "ordinary tokens (every vocabulary entry except the three special tokens) in which 1-6 segments of "
                  "distinct tokens appear twice, at random places with random-length gaps "
                  f"(`induction_batch` in `discovery/toy/train.py`). {r.pair_frac:.0%} of the segments are pairs "
                  f"(`a b ... a b`), the others have 3-{r.max_segment} tokens. The offset between the copies varies, so "
                  "a repeat can only be predicted by content (a previous-token head, then an induction head); the "
                  "pairs make an exact previous-token match necessary (with longer segments only, the model found "
                  "fuzzier mechanisms in our trials). Loss: next-token cross-entropy on the predictable positions "
                  "only (each second copy from its first token to its second-last); the other tokens are random."]
    else:
        lines += [f"{r.steps * r.batch:,} sentences of the built-in `ioi` task (`get_task(\"ioi\").examples(n, seed)`, "
                  "8 templates, ABBA and BABA orders), each `clean + \" \" + IO`, in batches of "
                  f"{r.batch}, each sentence seen once. Loss: next-token cross-entropy over all positions, plus the "
                  "cross-entropy of the final IO name once more."]
    lines += ["", "## Training", "",
              f"- steps: {r.steps}, batch {r.batch}",
              f"- optimizer: AdamW (betas 0.9, 0.98), peak lr {r.lr}, {r.warmup} warm-up steps then cosine decay "
              f"to 10%, weight decay {r.weight_decay} on matrices, gradient clipping 1.0",
              f"- seed: {log['seed']} (torch and Python `random`; data from one seeded `torch.Generator`, one "
              "process, deterministic algorithms, 1 torch thread)",
              f"- reproduce: `{log['command']}`",
              f"- wall time: {log['train_wall_s']} s training, {log['total_wall_s']} s with evaluation "
              f"(CPU, torch {torch.__version__}, transformers {transformers.__version__})",
              "", "## Held-out accuracy", ""]
    h = log.get("heldout")
    if h and data in ("induction", "repeat"):
        lines += [f"- fresh sequences drawn like the training data (data seed {h['seed']}): top-1 accuracy on the "
                  f"second copies, their first tokens excluded: **{h['repeat_top1']:.3f}**; with segments of 3-"
                  f"{r.max_segment} tokens only (no pairs): **{h['repeat_top1_no_pairs']:.3f}**",
                  f"- built-in `induction` task (200 rows, seed {h['seed']}): top-1 of S[k] "
                  f"**{h['induction_task']['top1']:.3f}**, logit(S[k]) > logit(S'[k]) in "
                  f"**{h['induction_task']['answer_beats_wrong']:.3f}**",
                  *([f"- prompts longer than {r.n_positions} tokens do not fit the position embeddings"]
                    if r.family == "gpt2" else [])]
    elif h:
        lines += [f"Fresh `ioi` examples (500, seed {h['seed']}; {h['also_in_training']} of these sentences also "
                  f"occur among the training sentences), last prompt position: logit(IO) > logit(S) in "
                  f"**{h['io_beats_s']:.3f}**, top-1 IO **{h['top1']:.3f}**, mean logit(IO) - logit(S) "
                  f"{h['mean_logit_diff']:.2f}. No ground truth is shipped for this model: its mechanism is "
                  "whatever training found."]
    gt = log.get("ground_truth")
    if gt:
        sc = gt["scores"]
        lines += ["", "## Ground truth (`ground_truth.json`)", "",
                  f"From the model's own attention patterns on {sc['n']} held-out sequences `<bos> S S` "
                  f"(|S| = {sc['segment']}, seed {sc['seed']}), independently of the discovery methods "
                  "(`discovery/toy/ground_truth.py`). Previous-token score: mean attention from i to i-1; current-token "
                  "score: from i to i; induction score: from a token of the second copy to the token after its first "
                  "occurrence.", "",
                  "| head | prev-token | current-token | induction |", "|---|---|---|---|"]
        for layer in range(len(sc["prev_token"])):
            for hh in range(len(sc["prev_token"][layer])):
                lines.append(f"| a{layer}.h{hh} | {sc['prev_token'][layer][hh]:.3f} | "
                             f"{sc['current_token'][layer][hh]:.3f} | {sc['induction'][layer][hh]:.3f} |")
        th, heads = gt["thresholds"], gt["heads"]
        lines += ["", f"Previous-token heads (layer 0, score >= {th['prev_token']}): "
                  f"{', '.join(heads['prev_token']) or 'none'}. Current-token heads (layer 0, attend to their own "
                  f"position, score >= {th['current_token']}): {', '.join(heads['current_token']) or 'none'}. "
                  f"Induction heads (layer 1, score >= {th['induction']}): {', '.join(heads['induction']) or 'none'}.",
                  "", f"Expected edges ({len(gt['edges'])}) for the built-in `induction` task (clean `S + S[:k]`, "
                  "corrupted `S' + S[:k]`): " + ", ".join(f"`{e}`" for e in gt["edges"]) + ". Not expected: "
                  + gt["not_expected"] + "."]
        cc = log.get("crosscheck")
        if cc:
            lines += ["", f"Cross-check with circuitry's exact activation patching (built-in `induction` task, "
                      f"{cc['n']} rows, seed {cc['seed']}; not used to build the ground truth): logit difference "
                      f"{cc['full']:.2f} with every edge, {cc['empty']:.2f} with none, {cc['circuit']:.2f} with only "
                      f"the expected edges, so their faithfulness is **{cc['faithfulness']:.2f}**; "
                      f"{cc['in_top']} of the {len(gt['edges'])} edges with the largest |score| are expected edges. "
                      f"The rest is spread over small edges, mostly the value paths of the other layer-0 heads."]
    if log["checkpoints"]:
        lines += ["", "## Checkpoints (`checkpoints/step-XXXXXX`, `load_model(\"toy:induction\", revision=...)`)", "",
                  "The circuit forming: best previous-token score in layer 0 and best induction score in layer 1.",
                  "", "| revision | max prev-token (layer 0) | max induction (layer 1) |", "|---|---|---|"]
        for c in log["checkpoints"]:
            lines.append(f"| {c['revision']} | {max(c['prev_token']):.3f} | {max(c['induction']):.3f} |")
    lines += ["", "Loss curve and all numbers: `training_log.json`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m discovery.toy.train", description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=sorted(RECIPES))
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    ap.add_argument("--no-eval", action="store_true", help="skip held-out evaluation and ground truth")
    args = ap.parse_args(argv)
    log = train(args.kind, args.out, args.seed, args.steps, evaluate=not args.no_eval, argv=argv)
    summary = {k: log[k] for k in ("heldout", "train_wall_s", "total_wall_s") if k in log}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
