"""Each role's own test, and the status a label ends with.

A role tag stays on a label only when its own test passes on the measured evidence (whoever proposed
it: the heuristic or the LLM). Thresholds are the heuristic's (labeling/heuristic.py THRESHOLDS):
- induction: induction attention on the repeated random tokens `<bos> S S` (the definition of an
  induction head: attending to the token after the earlier copy of the current token on text it
  cannot have memorised) reaches its threshold;
- previous_token, duplicate_token, positional (self-attention), attention_sink: that attention
  pattern reaches its threshold on the repeated random tokens or on the task prompts (over at least
  min_queries queries);
- name_mover: at the prediction position it attends to the answer (or wrong) token's earlier
  occurrence (answer_attention), or its OV circuit copies at the ov_copying threshold; its OV circuit
  copies (at least ov_relative x chance) and its direct write moves logit(answer) - logit(wrong) the
  way copying what it reads would (up for the answer, down for the wrong token);
- copy_suppression: the same with the OV circuit suppressing, and the direct write the other way;
- s_inhibition: no test here (it is about what the head does to other heads' queries), so never kept.
A tag that fails is removed (the reason recorded); a label left with no role is tagged `other`.

Status: `ok` only when every tag passed and every held-out score beats its random-label baseline
(labeling/stats.py: by MARGIN, with the interval above it); otherwise `unverified`, with the reasons in
`status_reason`. Labels the LLM could not give (`llm_failed`, `unparsed`) and `skipped` ones keep
their status."""

from __future__ import annotations

from .heuristic import THRESHOLDS, _where
from .schema import HeadEvidence, LabelRecord
from .stats import beats_baseline

PATTERN_OF = {"previous_token": "previous_token", "duplicate_token": "duplicate_token",
              "positional": "self_attention", "attention_sink": "sink"}


def _repeated(ev: HeadEvidence, name: str, th: dict) -> float:
    vals = [getattr(p, name) for p in ev.patterns
            if p.data.source == "repeated_random_tokens" and getattr(p, name) is not None
            and p.n_queries.get(name, th["min_queries"]) >= th["min_queries"]]
    return max(vals, default=0.0)


def role_test(tag: str, ev, th: dict | None = None) -> tuple[bool, str]:
    """(passes, what was measured) for one role tag of a head's evidence."""
    th = {**THRESHOLDS, **(th or {})}
    if tag == "other":
        return True, "no role claimed"
    if not isinstance(ev, HeadEvidence):
        return False, f"'{tag}' is a head role; this is an MLP"
    if tag == "induction":
        v = _repeated(ev, "induction", th)
        return v >= th["induction"], f"induction attention {v:.2f} on repeated random tokens (needs {th['induction']:.2f})"
    if tag in PATTERN_OF:
        name = PATTERN_OF[tag]
        v, _ = _where(ev, name, th["min_queries"])
        return v >= th[name], f"{name.replace('_', '-')} attention {v:.2f} (needs {th[name]:.2f})"
    if tag in ("name_mover", "copy_suppression"):
        ov, aa = ev.ov, ev.answer_attention
        direct = ev.logits.answer_minus_wrong if ev.logits is not None else None
        if ov is None or direct is None or ov.silent:
            return False, f"'{tag}' needs the OV map and the direct write (not measured, or silent)"
        relative = th["ov_relative"] * ov.chance
        reads = None
        if aa is not None and aa.rows:
            if aa.to_answer >= th["answer_attention"] and aa.to_answer >= aa.to_wrong:
                reads = "answer"
            elif aa.to_wrong >= th["answer_attention"]:
                reads = "wrong"
        if tag == "name_mover":
            copies = ov.copying >= (relative if reads else th["ov_copying"])
            sign_ok = direct < 0 if reads == "wrong" else direct > 0
            what = (f"OV copying {ov.copying:.2f} (chance {ov.chance:.3f}), attends to "
                    f"{reads or 'neither answer nor wrong'}, direct write {direct:+.2f}")
            return copies and sign_ok, what
        suppresses = ov.suppression >= (relative if reads else th["ov_suppression"])
        sign_ok = direct > 0 if reads == "wrong" else direct < 0
        what = (f"OV suppression {ov.suppression:.2f} (chance {ov.chance:.3f}), attends to "
                f"{reads or 'neither answer nor wrong'}, direct write {direct:+.2f}")
        return suppresses and sign_ok, what
    return False, f"no test for '{tag}' in these measurements"


def verify(rec: LabelRecord, thresholds: dict | None = None) -> LabelRecord:
    """The record with failing role tags removed and its final status and reason."""
    if rec.status in ("llm_failed", "unparsed", "skipped"):
        reasons = [rec.provenance.error or rec.status]
        return rec.model_copy(update={"status_reason": "; ".join(reasons)})
    kept, reasons = [], []
    for tag in rec.role_tags:
        ok, what = role_test(tag, rec.evidence, thresholds)
        if ok:
            kept.append(tag)
        else:
            reasons.append(f"role '{tag}' removed: its test failed ({what})")
    kept = [t for t in kept if t != "other"] or ["other"]
    for score in rec.scores.values():
        ok, why = beats_baseline(score)
        if not ok:
            reasons.append(why)
    if not rec.scores:
        reasons.append("no held-out score")
    status = "ok" if not reasons else "unverified"
    return rec.model_copy(update={"role_tags": kept, "status": status,
                                  "status_reason": "; ".join(reasons) if reasons else None,
                                  "confidence": rec.confidence if status == "ok" else min(rec.confidence, 0.5)})
