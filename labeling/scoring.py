"""Scoring explanations on held-out data (the odd task rows; the evidence came from the even rows).

Heads, pair classification: the held-out positives are the (query, key) position pairs where the head
put its strongest attention, the decoys a low-attention key of the same query. A scorer reads the
explanation and gives each pair a probability; the score is ROC AUC of positives over decoys (0.5 is
chance, 1 perfect). MLPs, detection: held-out positions where the MLP writes most vs positions below
its median; the score is the balanced accuracy of the scorer's yes/no (p >= 0.5).

Two scorers:
- evidence_agreement (offline): an explanation's role tags are turned into predicates on a pair (the
  key is the previous token / the token after an earlier copy of the query token / an earlier copy /
  the first position / the query itself; for the answer readers (name movers, negative and backup name
  movers, copy suppression) from the prediction position to the answer or the wrong token, for
  s_inhibition to the wrong token's last earlier position, S2); tags without a positional predicate score every pair 0.5.
  For an MLP the explanation's tokens (those it quotes, or the evidence's top tokens for the heuristic
  label) predict "active" when the context ends in one of them.
- llm: the explanation and the pairs (or contexts) go to the LLM, which answers probabilities.
Each comes with a random-label baseline: the same scorer with a label that does not belong to the
component (the evidence-agreement one averages over every single role tag of BASELINE_TAGS; the LLM one takes another
component's label, drawn with the seed, or a neutral sentence when there is no other)."""

from __future__ import annotations

import random
import re

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from . import prompts
from .evidence import HeldOutContext, HeldOutPair
from .llm_labeler import ask_json, explain
from .schema import ROLE_TAGS, DataRef, LabelRecord, ScoreResult
from .stats import auc_ci, bacc_ci

NEUTRAL = ("A component of a transformer language model.", "It is part of the circuit for this task.")


# --- predicates ----------------------------------------------------------------------------------

# roles that read the answer or the wrong token from the prediction position (the IOI name movers among them)
ANSWER_READERS = ("name_mover", "negative_name_mover", "backup_name_mover", "copy_suppression")
# the random-label baselines average over these tags: the negative and backup name movers predict what
# name_mover predicts, so counting them again would weigh that one predicate three times
BASELINE_TAGS = tuple(t for t in ROLE_TAGS if t not in ("negative_name_mover", "backup_name_mover"))


def pair_predicate(tag: str, ids: list[int], i: int, j: int, answers=(), wrongs=()) -> float:
    """1 when the (query i, key j) pair is what the role predicts, 0 when not, 0.5 when the role says
    nothing about positions. The answer-reading roles (name mover, copy suppression) predict: from the
    prediction position (the prompt's last), a key holding the answer or the wrong token; s_inhibition
    (IOI): from the prediction position, the last earlier position holding the wrong token (S2)."""
    if tag in ANSWER_READERS:
        return float(i == len(ids) - 1 and ids[j] in set(answers) | set(wrongs))
    if tag == "s_inhibition":  # from the prediction position, the last earlier copy of the wrong token (S2)
        s_pos = [k for k in range(i) if ids[k] in set(wrongs)]
        return float(i == len(ids) - 1 and bool(s_pos) and j == s_pos[-1])
    if tag == "previous_token":
        return float(j == i - 1)
    if tag == "positional":
        return float(j == i)
    if tag == "attention_sink":
        return float(j == 0)
    if tag == "duplicate_token":
        return float(j < i and ids[j] == ids[i])
    if tag == "induction":
        return float(1 <= j < i and ids[j - 1] == ids[i])
    return 0.5


def tags_pair_score(tags: list[str], p: HeldOutPair) -> float:
    vals = [pair_predicate(t, p.ids, p.query_pos, p.key_pos, p.answer_ids, p.wrong_ids) for t in tags] or [0.5]
    return max(vals)


def _auc(y, s) -> float | None:
    y = np.asarray(y, dtype=bool)
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, np.asarray(s, dtype=np.float64)))


def _bacc(y, pred) -> float | None:
    y = np.asarray(y, dtype=bool)
    if y.all() or not y.any():
        return None
    return float(balanced_accuracy_score(y, np.asarray(pred, dtype=bool)))


def agreement_head(tags: list[str], pairs: list[HeldOutPair], data: DataRef | None) -> ScoreResult:
    y = [p.positive for p in pairs]
    s = [tags_pair_score(tags, p) for p in pairs]
    value = _auc(y, s)
    lo, hi = auc_ci(y, s) if value is not None else (None, None)
    base = [_auc(y, [tags_pair_score([t], p) for p in pairs]) for t in BASELINE_TAGS]
    base = [b for b in base if b is not None]
    return ScoreResult(scorer="evidence_agreement", metric="roc_auc", value=value, ci_low=lo, ci_high=hi,
                       random_baseline=float(np.mean(base)) if base else None,
                       n_positive=sum(y), n_negative=len(y) - sum(y), data=data,
                       note=None if value is not None else "held-out pairs need both positives and decoys")


def quoted_tokens(text: str) -> set[str]:
    return set(re.findall(r"'([^']{1,40})'", text)) | set(re.findall(r'"([^"]{1,40})"', text))


def agreement_mlp(rec: LabelRecord, contexts: list[HeldOutContext], names, data: DataRef | None,
                  seed: int) -> ScoreResult:
    tokens = quoted_tokens(f"{rec.label} {rec.description}")
    if rec.provenance.backend == "heuristic" and rec.evidence is not None:
        tokens |= set(rec.evidence.top_tokens)
    y = [c.positive for c in contexts]
    pred = [float(names(c.ids[c.pos]) in tokens) for c in contexts]
    value = _bacc(y, pred)
    lo, hi = bacc_ci(y, pred, seed) if value is not None else (None, None)
    # baseline: as many tokens drawn at random from the held-out contexts' own tokens
    pool = sorted({names(c.ids[c.pos]) for c in contexts})
    rng = random.Random(seed)
    base = []
    for _ in range(20):
        pick = set(rng.sample(pool, min(len(tokens & set(pool)) or 1, len(pool)))) if pool else set()
        b = _bacc(y, [names(c.ids[c.pos]) in pick for c in contexts])
        if b is not None:
            base.append(b)
    return ScoreResult(scorer="evidence_agreement", metric="balanced_accuracy", value=value, ci_low=lo, ci_high=hi,
                       random_baseline=float(np.mean(base)) if base else None,
                       n_positive=sum(y), n_negative=len(y) - sum(y), data=data,
                       note=None if value is not None else "no held-out contexts (silent MLP or too few positions)")


# --- the LLM scorer --------------------------------------------------------------------------------

def score_parser(n: int):
    """A parser of the LLM's {"scores": [{"id", "p"}...]} answer for items 1..n: their p, clipped to [0, 1]."""
    def parse(data: dict) -> list[float]:
        items = data.get("scores")
        if not isinstance(items, list):
            raise ValueError("the answer has no 'scores' list")
        got = {}
        for item in items:
            try:
                got[int(item["id"])] = min(1.0, max(0.0, float(item["p"])))
            except (KeyError, TypeError, ValueError):
                raise ValueError("an item of 'scores' is not {\"id\": integer, \"p\": number}") from None
        missing = [k for k in range(1, n + 1) if k not in got]
        if missing:
            raise ValueError(f"no score for items {', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}")
        return [got[k] for k in range(1, n + 1)]
    return parse


def shuffled_order(n: int, seed: int, component: str) -> list[int]:
    """A seeded shuffle, so positives and decoys are not told apart by position in the list."""
    order = list(range(n))
    random.Random(f"{seed}:{component}").shuffle(order)
    return order


def llm_score(client, rec: LabelRecord, other: tuple[str, str] | None, pairs, contexts, names, data, seed: int):
    """(ScoreResult, usage, error) for the record's explanation and for the random-label baseline."""
    from .schema import Usage
    usage = Usage()
    is_head = rec.kind == "head"
    items = pairs if is_head else contexts
    if not items or all(x.positive for x in items) or not any(x.positive for x in items):
        return ScoreResult(scorer=f"llm:{client.config.model}", metric="roc_auc" if is_head else "balanced_accuracy",
                           data=data, note="nothing held out to score"), usage, None
    order = shuffled_order(len(items), seed, rec.component)
    shown = [items[k] for k in order]
    y = [x.positive for x in shown]

    def run(label, description):
        if is_head:
            msgs = prompts.pair_scoring_messages(label, description, [(p.ids, p.query_pos, p.key_pos) for p in shown],
                                                 names)
            asked = ask_json(client, msgs, prompts.PAIRS_FORMAT, prompts.SCORE_PAIRS_VERSION, score_parser(len(shown)))
        else:
            msgs = prompts.detection_messages(label, description, [(c.ids, c.pos) for c in shown], names)
            asked = ask_json(client, msgs, prompts.DETECT_FORMAT, prompts.DETECT_VERSION, score_parser(len(shown)))
        usage.add(asked.usage)
        if asked.value is None:
            return None, explain(asked), None
        if is_head:
            return _auc(y, asked.value), None, auc_ci(y, asked.value, seed)
        return _bacc(y, [p >= 0.5 for p in asked.value]), None, bacc_ci(y, asked.value, seed)

    value, err, ci = run(rec.label, rec.description)
    base, berr, _ = run(*(other or NEUTRAL))
    lo, hi = ci if value is not None and ci is not None else (None, None)
    return ScoreResult(scorer=f"llm:{client.config.model}", metric="roc_auc" if is_head else "balanced_accuracy",
                       value=value, ci_low=lo, ci_high=hi, random_baseline=base, n_positive=sum(y), n_negative=len(y) - sum(y), data=data,
                       note=err or (f"its random-label baseline could not be scored: {berr}" if berr else None)), usage, err
