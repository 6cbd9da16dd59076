"""Explanations scored by prediction (detection), as OpenAI's and EleutherAI delphi's auto-interp score
features: from the label alone, predict where on held-out prompts the component matters; the score is
the ROC AUC of that prediction against the measured effect, beside the same scorer given a random label.

Measured effect. On the held-out task rows (the odd rows; labels come from the even ones), at every
position p of row r, the component's attribution to the task metric m:

    e(c, r, p) = (o_c^ref - o_c)[r, p] . dm/do_c[r, p]

o_c is the component's write to the residual stream (a head's z_h W_O, an MLP's output), o_c^ref its
value on the corrupted prompt (the circuit's intervention), and dm/do_c the gradient summed over every
reader downstream of c (one clean forward and backward per batch: attribution patching at the node,
per position, the estimate EAP makes per edge). The positions where c matters are the n_heldout
positions with the largest |e|; the decoys are as many positions drawn (seeded) among those with |e|
at or below the median.

Prediction from the label (the heuristic's predicate; tokens only, never the model):
- name_mover, negative_name_mover, backup_name_mover, copy_suppression, s_inhibition (the IOI heads
  write at the prediction position): p is the prediction position (the row's last) and the answer or
  the wrong token occurs earlier in the prompt;
- induction (duplicate_token): the token at p occurred earlier, with a token after it (anywhere
  before): 1 at the prediction position, 0.5 elsewhere (the metric is read at the prediction position,
  which an earlier position's write reaches only through later layers);
- previous_token: 1 at the position right after an earlier copy of the prediction position's token
  (what an induction head there reads), 0.5 at any other position p >= 1;
- the label's quoted tokens (and, for a heuristic MLP label, its evidence's top tokens): the token at p
  is one of them;
- anything else (attention_sink, positional, other): no prediction. Several tags: the largest of the
  tags' predictions, tags without one left out (a sink tag beside a predicting tag does not raise
  every position to 0.5); no predicting tag and no quoted token: 0.5 everywhere.
With an LLM scorer the label and description and each position's context go to the LLM, which answers a
probability per context (labeling/prompts.py, detection_messages).

Random-label baseline: for the predicate, the mean AUC over the labels made of one role tag each
(scoring.BASELINE_TAGS: the negative and backup name movers predict as name_mover and are not counted again) and of
as many random tokens of the held-out prompts as the label quotes (20 draws); for the LLM, another
component's label (labeling/scoring.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from discovery.core.nodes import parse_node
from discovery.methods.common import Setup
from discovery.engine.patching import head_writes, run
from discovery.model.tasks import iter_batches

from .schema import DataRef, LabelRecord, ScoreResult
from .scoring import ANSWER_READERS, BASELINE_TAGS, quoted_tokens
from .stats import auc as _auc, auc_ci


@dataclass
class Position:
    """A held-out (row, position) with the component's measured effect there."""
    ids: list[int]  # the prompt up to and including the row's last token
    pos: int
    effect: float
    positive: bool
    answer_ids: tuple = ()
    wrong_ids: tuple = ()


def measured_effects(model, task, rows: list[int], components: list[str], metric, intervention: str = "patching",
                     batch_size: int = 16) -> dict[str, list[tuple]]:
    """component -> [(effect, row, pos, ids, answers, wrongs)] over every position of the given task rows."""
    if not rows or not components:
        return {c: [] for c in components}
    setup = Setup(model, task.subset(rows), metric, batch_size=batch_size, intervention=intervention)
    graph, adapter = setup.graph, setup.adapter
    src = {c: graph.source_index[c] for c in components}
    out: dict[str, list[tuple]] = {c: [] for c in components}
    for batch in iter_batches(setup.task, batch_size, device=setup.device):
        ref = setup.reference(batch)
        n, p = batch.clean.shape
        grads = {c: torch.zeros(n, p, adapter.d_model, dtype=torch.float32, device=setup.device) for c in components}

        def hook(stage, first, grad):
            g = grad.float().sum(2)  # every reader of this stage reads the same residual
            for c, i in src.items():
                if i < stage.n_upstream:  # c writes into this stage's input
                    grads[c] += g

        with torch.no_grad():
            clean_logits = run(adapter, graph, batch.clean, last=batch.clean_last).logits
        embeds = adapter.embed(batch.clean).detach().requires_grad_(True)
        res = run(adapter, graph, batch.clean, last=batch.clean_last, embeds=embeds, record=True, grad_hook=hook)
        setup.metric(res.logits, batch, clean_logits).sum().backward()
        delta = ref.minus(res.acts)
        for c in components:
            with torch.no_grad():
                if c.startswith("a"):
                    layer, head = parse_node(c).layer, parse_node(c).head
                    d = head_writes(adapter, layer, delta.z[layer].expand(n, p, -1, -1))[:, :, head]
                else:
                    d = delta.mlp[int(c[1:])].expand(n, p, -1)
                e = (d.float() * grads[c]).sum(-1).cpu()  # [n, p]
            for r in range(n):
                last = int(batch.clean_last[r])
                ids = batch.clean[r, :last + 1].tolist()
                answers = tuple(batch.answers[r][batch.answer_mask[r]].tolist())
                wrongs = tuple(batch.wrongs[r][batch.wrong_mask[r]].tolist())
                row = rows[batch.rows[r]]  # the subset's row -> the task's
                out[c] += [(float(e[r, q]), row, q, ids, answers, wrongs) for q in range(last + 1)]
    return out


def heldout_positions(effects: list[tuple], n_heldout: int, seed: int, component: str) -> list[Position]:
    """The top-|effect| positions (positives) and as many at or below the median |effect| (decoys)."""
    if len(effects) < 2:
        return []
    ranked = sorted(effects, key=lambda x: (-abs(x[0]), x[1], x[2]))
    k = min(n_heldout, len(ranked) // 2)
    median = abs(ranked[len(ranked) // 2][0])
    low = [x for x in ranked[k:] if abs(x[0]) <= median]
    rng = random.Random(f"{seed}:{component}:detection")
    neg = rng.sample(low, min(k, len(low)))
    return [Position(ids, q, e, True, a, w) for e, _, q, ids, a, w in ranked[:k]] + \
           [Position(ids, q, e, False, a, w) for e, _, q, ids, a, w in neg]


PREDICTING = (*ANSWER_READERS, "s_inhibition", "induction", "duplicate_token", "previous_token")


def tag_predicts(tag: str, x: Position) -> float:
    ids, p = x.ids, x.pos
    last = len(ids) - 1
    if tag in ANSWER_READERS or tag == "s_inhibition":
        return float(p == last and bool(set(ids[:p]) & (set(x.answer_ids) | set(x.wrong_ids))))
    if tag in ("induction", "duplicate_token"):
        repeats = ids[p] in (ids[:p - 1] if tag == "induction" else ids[:p])
        return 0.0 if not repeats else 1.0 if p == last else 0.5
    if tag == "previous_token":
        if p < 1:
            return 0.0
        return 1.0 if p < last and ids[p - 1] == ids[last] else 0.5
    return 0.5


def predict(tags: list[str], tokens: set[str], x: Position, names) -> float:
    vals = [tag_predicts(t, x) for t in tags if t in PREDICTING]
    if tokens:
        vals.append(float(names(x.ids[x.pos]) in tokens))
    return max(vals) if vals else 0.5


def label_tokens(rec: LabelRecord) -> set[str]:
    tokens = quoted_tokens(f"{rec.label} {rec.description}")
    if rec.provenance.backend == "heuristic" and rec.kind == "mlp" and rec.evidence is not None:
        tokens |= set(rec.evidence.top_tokens)
    return tokens


def detection_score(rec: LabelRecord, positions: list[Position], names, data: DataRef | None,
                    seed: int) -> ScoreResult:
    y = [x.positive for x in positions]
    tokens = label_tokens(rec)
    scores = [predict(rec.role_tags, tokens, x, names) for x in positions]
    value = _auc(y, scores)
    lo, hi = auc_ci(y, scores, seed) if value is not None else (None, None)
    base = [_auc(y, [tag_predicts(t, x) for x in positions]) for t in BASELINE_TAGS]
    pool = sorted({names(x.ids[x.pos]) for x in positions})
    rng = random.Random(f"{seed}:{rec.component}:random-tokens")
    for _ in range(20 if tokens else 0):  # random tokens stand in for quoted ones
        pick = set(rng.sample(pool, min(max(1, len(tokens & set(pool))), len(pool)))) if pool else set()
        base.append(_auc(y, [float(names(x.ids[x.pos]) in pick) for x in positions]))
    base = [b for b in base if b is not None]
    note = None
    if value is None:
        note = "no held-out positions with and without an effect (a silent component, or too few rows)"
    elif len(set(scores)) == 1:
        note = "the label predicts no difference between positions"
    return ScoreResult(scorer="detection", metric="roc_auc", value=value, ci_low=lo, ci_high=hi,
                       random_baseline=float(np.mean(base)) if base else None,
                       n_positive=sum(y), n_negative=len(y) - sum(y), data=data, note=note)


def llm_detection_score(client, rec: LabelRecord, other: tuple[str, str] | None, positions: list[Position], names,
                        data: DataRef | None, seed: int):
    """(ScoreResult, usage): the LLM predicts, from the label and each position's context, where the
    component matters; AUC against the measured effect, beside another component's label."""
    from . import prompts
    from .llm_labeler import ask_json, explain
    from .schema import Usage
    from .scoring import NEUTRAL, shuffled_order, score_parser

    usage = Usage()
    if not positions or all(x.positive for x in positions) or not any(x.positive for x in positions):
        return ScoreResult(scorer=f"llm-detection:{client.config.model}", metric="roc_auc", data=data,
                           note="nothing held out to score"), usage
    order = shuffled_order(len(positions), seed, rec.component)
    shown = [positions[k] for k in order]
    y = [x.positive for x in shown]

    def ask(label, description):
        msgs = prompts.detection_messages(label, description, [(x.ids, x.pos) for x in shown], names,
                                          what="matters")
        asked = ask_json(client, msgs, prompts.DETECT_FORMAT, prompts.DETECT_VERSION + "+matters",
                         score_parser(len(shown)))
        usage.add(asked.usage)
        return (None, explain(asked)) if asked.value is None else (asked.value, None)

    probs, err = ask(rec.label, rec.description)
    value = _auc(y, probs) if probs is not None else None
    lo, hi = auc_ci(y, probs, seed) if value is not None else (None, None)
    bprobs, berr = ask(*(other or NEUTRAL))
    base = _auc(y, bprobs) if bprobs is not None else None
    return ScoreResult(scorer=f"llm-detection:{client.config.model}", metric="roc_auc", value=value, ci_low=lo,
                       ci_high=hi, random_baseline=base, n_positive=sum(y), n_negative=len(y) - sum(y), data=data,
                       note=err or (f"its random-label baseline could not be scored: {berr}" if berr else None)), usage
