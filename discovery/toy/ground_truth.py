"""The known mechanism of the toy induction model, read from its own attention patterns.

This is computed independently of the discovery methods: it only runs the Hugging Face model with
`output_attentions=True` (eager attention) on held-out repeated random-token sequences `<bos> S S`
(S of SEGMENT distinct tokens, as in the built-in `induction` task) and averages attention weights:

- previous-token score of a head: mean attention from position i to i-1 (over i >= 2, so the
  position right after `<bos>` does not count);
- current-token score: mean attention from position i to itself (over i >= 1);
- induction score: mean attention from a token of the second copy of S to the token right after
  that token's occurrence in the first copy (position i - len(S) + 1).

Layer-0 heads whose previous-token score is at least PREV_THRESHOLD are the previous-token heads,
layer-0 heads whose current-token score is at least CURRENT_THRESHOLD the current-token heads, and
layer-1 heads whose induction score is at least INDUCTION_THRESHOLD the induction heads. The expected
circuit for the built-in `induction` task (clean `S + S[:k]`, corrupted `S' + S[:k]`, answer `S[k]`,
wrong `S'[k]`) follows from which activations differ between the clean and corrupted prompts:

- the query of an induction head at the last position reads the token `S[k-1]`, the same in both
  prompts, so no query edge carries a difference;
- its key at the position of `S[k]` in the first copy says "my previous token is S[k-1]": that is the
  previous-token head's output there (`a0.hP->a1.hI<k>`), a copy of the previous token's embedding
  (`input->a0.hP<v>`); the previous-token head's own pattern is positional, so its q/k edges are not
  expected;
- its value at that position is the token `S[k]` itself, read directly (`input->a1.hI<v>`) and through
  the current-token heads, which attend to their own position and re-write that token
  (`input->a0.hC<v>`, `a0.hC->a1.hI<v>`);
- the induction head writes the copied token to the output (`a1.hI->logits`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..core.nodes import kv_id, parse_node, reader_name

PREV_THRESHOLD = 0.4
CURRENT_THRESHOLD = 0.4
INDUCTION_THRESHOLD = 0.4
SEGMENT = 10  # tokens in S for the scoring sequences <bos> S S (as in the built-in induction task)
N_SPECIAL = 3  # <pad> <unk> <bos>: ids below this never appear in S
BOS_ID = 2


def _hf_model(model):
    """A Hugging Face model with eager attention from a directory, a `toy:` name or a LoadedModel."""
    from transformers import AutoModelForCausalLM

    if isinstance(model, (str, os.PathLike)):
        path = str(model)
        if path.startswith("toy:"):
            from ..model.adapters import toy_model_dir
            path = toy_model_dir(path)
        return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
    hf = getattr(model, "hf_model", model)
    return hf.eval()


def repeated_sequences(vocab_size: int, n: int, seed: int, segment: int = SEGMENT, bos_id: int | None = BOS_ID,
                       pool=None):
    """[n, 1 + 2 * segment] ids `<bos> S S`, S of distinct ordinary tokens, from a seeded generator.
    pool: the token ids S is drawn from (default: every id from N_SPECIAL on, the toy tokenizers'
    ordinary tokens); bos_id None: no `<bos>` column ([n, 2 * segment])."""
    g = torch.Generator().manual_seed(seed)
    if pool is None:
        s = torch.stack([torch.randperm(vocab_size - N_SPECIAL, generator=g)[:segment] for _ in range(n)]) + N_SPECIAL
    else:
        pool = torch.as_tensor(list(pool), dtype=torch.long)
        s = torch.stack([pool[torch.randperm(len(pool), generator=g)[:segment]] for _ in range(n)])
    parts = [s, s] if bos_id is None else [torch.full((n, 1), bos_id), s, s]
    return torch.cat(parts, dim=1)


@torch.no_grad()
def attention_patterns(hf_model, ids: torch.Tensor) -> list[torch.Tensor]:
    """Per layer [batch, heads, query, key] attention weights, from the model's eager attention."""
    previous = hf_model.config._attn_implementation
    if previous != "eager":
        hf_model.set_attn_implementation("eager")
    try:
        out = hf_model(ids.to(next(hf_model.parameters()).device), output_attentions=True)
    finally:
        if previous != "eager":
            hf_model.set_attn_implementation(previous)
    return [a.float().cpu() for a in out.attentions]


def head_scores(model, n: int = 200, seed: int = 12345, segment: int = SEGMENT) -> dict:
    """Previous-token, current-token and induction score of every head, each as [[per head] per layer]:
    {"prev_token", "current_token", "induction", "n", "seed", "segment"}. `model`: a model directory,
    a `toy:` name, a LoadedModel or a Hugging Face model."""
    hf = _hf_model(model)
    ids = repeated_sequences(hf.config.vocab_size, n, seed, segment)
    atts = attention_patterns(hf, ids)
    t = ids.shape[1]
    q = torch.arange(2, t)  # previous-token: i -> i-1, from the second token of S on
    cur = torch.arange(1, t)
    second = torch.arange(1 + segment, t)  # the second copy of S
    prev, self_, ind = [], [], []
    for a in atts:
        prev.append(a[:, :, q, q - 1].mean(dim=(0, 2)).tolist())
        self_.append(a[:, :, cur, cur].mean(dim=(0, 2)).tolist())
        ind.append(a[:, :, second, second - segment + 1].mean(dim=(0, 2)).tolist())
    return {"prev_token": prev, "current_token": self_, "induction": ind, "n": n, "seed": seed, "segment": segment}


def expected_edges(prev_heads: list[str], current_heads: list[str], induction_heads: list[str]) -> list[str]:
    """The circuit edges, in the project's edge names, for the built-in `induction` task."""
    edges = [f"input->{p}<v>" for p in prev_heads] + [f"input->{c}<v>" for c in current_heads]
    for i in induction_heads:
        edges += [f"{p}->{i}<k>" for p in prev_heads]
        edges += [f"input->{i}<v>"] + [f"{c}->{i}<v>" for c in current_heads]
        edges.append(f"{i}->logits")
    return edges


def graph_edge_name(graph, name: str) -> str:
    """An expected edge's name in `graph`: edges into a query head's k/v slot are named per query head
    (`a0.h3->a1.h2<k>`); a graph whose grouped k/v readers are per key/value head (`a1.kv1<k>`) gets
    that reader's name instead."""
    if name in graph.edge_index or not graph.grouped:
        return name
    src, dst = name.split("->")
    owner, slot = dst[:-3], dst[-2]
    if slot in "kv" and dst.endswith(">"):
        head = parse_node(owner)
        alt = f"{src}->{reader_name(kv_id(head.layer, head.head // graph.group_size), slot)}"
        if alt in graph.edge_index:
            return alt
    return name


def ground_truth(model, n: int = 200, seed: int = 12345, prev_threshold: float = PREV_THRESHOLD,
                 current_threshold: float = CURRENT_THRESHOLD, induction_threshold: float = INDUCTION_THRESHOLD,
                 mlps_write: bool = False) -> dict:
    """Heads, their scores, the thresholds and the expected edges of the induction model. mlps_write:
    the model's MLPs write to the residual (their edges are then neither expected nor ruled out)."""
    scores = head_scores(model, n, seed)
    pick = lambda key, layer, th: [f"a{layer}.h{h}" for h, s in enumerate(scores[key][layer]) if s >= th]  # noqa: E731
    prev = pick("prev_token", 0, prev_threshold)
    cur = [h for h in pick("current_token", 0, current_threshold) if h not in prev]
    ind = pick("induction", 1, induction_threshold)
    return {
        "task": "induction",
        "method": "attention patterns of the model itself (output_attentions, eager attention) on held-out "
                  "sequences <bos> S S, independent of the discovery methods; see discovery/toy/ground_truth.py",
        "thresholds": {"prev_token": prev_threshold, "current_token": current_threshold,
                       "induction": induction_threshold},
        "scores": scores,
        "heads": {"prev_token": prev, "current_token": cur, "induction": ind},
        "edges": expected_edges(prev, cur, ind),
        "not_expected": "query edges (the query token is the same in clean and corrupted prompts), the "
                        "previous-token heads' q/k edges (their pattern is positional)" + (
                            "; MLP edges are not part of this ground truth (the MLPs write, and what they do is "
                            "not read from attention patterns)" if mlps_write else
                            ", MLP edges (the MLPs write nothing in this model)"),
    }


def write_ground_truth(model_dir: str | os.PathLike, **kwargs) -> dict:
    gt = ground_truth(model_dir, **kwargs)
    Path(model_dir, "ground_truth.json").write_text(json.dumps(gt, indent=2) + "\n")
    return gt
