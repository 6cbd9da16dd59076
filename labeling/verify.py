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
- name_mover (on tasks whose prompts hold the names: IOI), negative_name_mover, backup_name_mover,
  s_inhibition: the IOI tests of labeling/ioi.py (Wang et al. 2022: attention from the prediction
  position that the content decides, the copy score, the direct effect, path patching into the name
  movers' queries, the name movers knocked out); copy_suppression there also needs the content control;
- positional: self-attention at threshold, or (IOI-like tasks) attention from the prediction position a
  fixed distance >= 2 back at end_attention.
A tag that fails is removed (the reason recorded); a label left with no role is tagged `other`.

Status: `ok` only when every tag passed and every held-out score beats its random-label baseline
(labeling/stats.py: by MARGIN, with the interval above it); otherwise `unverified`, with the reasons in
`status_reason`. Labels the LLM could not give (`llm_failed`, `unparsed`) and `skipped` ones keep
their status."""

from __future__ import annotations

import re

from .heuristic import THRESHOLDS, pattern_score
from .ioi import fixed_offset, ioi_role_test, reads as read_content
from .schema import HeadEvidence, LabelRecord
from .stats import beats_baseline, sentence

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
        return False, "it is a head role and this is an MLP"
    if tag == "induction":
        v = _repeated(ev, "induction", th)
        return v >= th["induction"], f"induction attention {v:.2f} on repeated random tokens (needs {th['induction']:.2f})"
    if tag in ("negative_name_mover", "backup_name_mover", "s_inhibition") or \
            (tag == "name_mover" and ev.ioi is not None and ev.ioi.rows):
        return ioi_role_test(tag, ev.ioi, th)
    if tag == "positional" and fixed_offset(ev.ioi, th)[0]:
        return fixed_offset(ev.ioi, th)
    if tag in PATTERN_OF:
        name = PATTERN_OF[tag]
        v, _ = pattern_score(ev, name, th["min_queries"])
        return v >= th[name], f"{name.replace('_', '-')} attention {v:.2f} (needs {th[name]:.2f})"
    if tag in ("name_mover", "copy_suppression"):
        ov, aa = ev.ov, ev.answer_attention
        direct = ev.logits.answer_minus_wrong if ev.logits is not None else None
        if ov is None or direct is None or ov.silent:
            return False, "it needs the OV map and the direct write, which were not measured or are silent"
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
        if reads and ev.ioi is not None and ev.ioi.rows:  # the name it reads, not a position (labeling/ioi.py)
            io = reads == "answer"
            content, how = read_content(ev.ioi.to_io if io else ev.ioi.to_s, ev.ioi.offset_attention,
                                        ev.ioi.to_io_corrupted if io else ev.ioi.to_s_corrupted, th)
            if not content:
                return False, f"{what}; its attention on the {'answer' if io else 'wrong'} name: {how}"
        return suppresses and sign_ok, what
    return False, f"no test for '{tag}' in these measurements"


# The words that name each role in a label's text (lower case). A label may name only roles among its
# tags: when a role test removes a tag (or an LLM names a role it did not tag), the label is replaced.
ROLE_WORDS = {
    "previous_token": r"prev(ious)?[- ]token",
    "induction": r"induction",
    "duplicate_token": r"duplicate",
    "negative_name_mover": r"negative[- ]name[- ]mover",
    "backup_name_mover": r"backup[- ]name[- ]mover",
    "name_mover": r"(?<!negative )(?<!negative-)(?<!backup )(?<!backup-)name[- ]mover|copying head|copy head",
    "copy_suppression": r"copy[- ]suppress",
    "s_inhibition": r"\bs[- ]inhibit",
    "attention_sink": r"\bsink\b",
    "positional": r"positional|self[- ]attention|current[- ]token|fixed[- ]offset",
}
ROLE_LABELS = {"previous_token": "Previous-token head", "induction": "Induction head",
               "duplicate_token": "Duplicate-token head", "name_mover": "Name mover head",
               "negative_name_mover": "Negative name mover head", "backup_name_mover": "Backup name mover head",
               "copy_suppression": "Copy-suppression head", "s_inhibition": "S-inhibition head",
               "attention_sink": "Attention-sink head", "positional": "Positional head"}


def roles_named(text: str) -> list[str]:
    """The role tags whose names occur in a label's text."""
    low = re.sub(r"'[^']*'|\"[^\"]*\"", " ", text).lower()  # quoted tokens ("MLP most active on 'sink'") are data
    return [tag for tag, words in ROLE_WORDS.items() if re.search(words, low)]


def _replacement(rec: LabelRecord, kept: list[str]) -> str:
    """A label that names no role outside `kept`: the heuristic's (when the LLM's was withdrawn and the
    heuristic's fits), else the first kept role's name, else an unclassified label."""
    h = rec.provenance.heuristic_label
    if h and not set(roles_named(h)) - set(kept):
        return h
    roles = [t for t in kept if t in ROLE_LABELS]
    if roles:
        return ROLE_LABELS[roles[0]]
    return "Unclassified head: no tested pattern" if rec.kind == "head" else "MLP with no tested role"


def verify(rec: LabelRecord, thresholds: dict | None = None) -> LabelRecord:
    """The record with failing role tags removed, its label made to agree with its tags, and its final
    status and reason (status_reason: sentences)."""
    if rec.status in ("llm_failed", "unparsed", "skipped"):
        err = rec.provenance.error
        if rec.status == "skipped":
            why = "Not labeled here: " + (err or rec.description)
        elif rec.status == "llm_failed":
            why = f"The LLM gave no label ({err or 'no answer'}), so the heuristic label is kept"
        else:
            why = (f"The LLM's answer could not be read, even after one repair request ({err or 'no detail'}), so "
                   "the heuristic label is kept")
        return rec.model_copy(update={"status_reason": sentence(why)})
    kept, reasons, failed = [], [], {}
    for tag in rec.role_tags:
        ok, what = role_test(tag, rec.evidence, thresholds)
        if ok:
            kept.append(tag)
        else:
            failed[tag] = what
            reasons.append(sentence(f"role '{tag}' removed: its test failed ({what})"))
    kept = [t for t in kept if t != "other"] or ["other"]
    update = {}
    unsupported = [t for t in roles_named(rec.label) if t not in kept]
    if unsupported:
        new = _replacement(rec, kept)
        why = " and ".join(f"'{t}', {'whose test failed' if t in failed else 'which is not among its tags'}"
                           for t in unsupported)
        reasons.append(sentence(f"the label '{rec.label}' named the role {why}, so it was replaced by '{new}'"))
        update = {"label": new, "confidence": 0.0,
                  "description": sentence(f"The label '{rec.label}' was withdrawn: it named the role {why}") + " " +
                  rec.description}
    for score in rec.scores.values():
        ok, why = beats_baseline(score)
        if not ok:
            reasons.append(why)
    if not rec.scores:
        reasons.append("No held-out score was computed.")
    status = "ok" if not reasons else "unverified"
    confidence = update.get("confidence", rec.confidence)
    return rec.model_copy(update={**update, "role_tags": kept, "status": status,
                                  "status_reason": " ".join(reasons) if reasons else None,
                                  "confidence": confidence if status == "ok" else min(confidence, 0.5)})
