"""The heuristic labeler (default, offline): labels from thresholded evidence.

A head gets an attention role when its pattern score reaches the threshold on the repeated random
tokens or on the task prompts; copying roles need its OV circuit to copy (or anti-copy) and its direct
write to move the answer. When nothing reaches a threshold the label says so: role `other`, status
`heuristic_only`, and a description of what was measured, never an invented role. On tasks with the
IOI structure (labeling/ioi.py) the IOI roles are tested first: name mover, negative and backup name
mover, S-inhibition (path patching into the name movers' queries), or a fixed-offset head whose
attention from the prediction position follows a position, not the name there; the copying roles of
the generic path are then not assigned (the IOI tests decide them).
"""

from __future__ import annotations

from .ioi import IOI_ROLES, fixed_offset, ioi_role_test, reads
from .schema import HeadEvidence, IOIEvidence, LabelRecord, MLPEvidence, Provenance

LABELER_VERSION = "heuristic-v2"  # v2: induction only from repeated random tokens; statuses by labeling/verify.py

THRESHOLDS = {
    "previous_token": 0.4,  # mean attention to the previous token (as discovery/toy/ground_truth.py)
    "induction": 0.4,  # mean attention to the token after the earlier copy of the current token
    "duplicate_token": 0.4,  # mean attention to earlier copies of the current token
    "self_attention": 0.4,  # mean attention to its own position (a "current-token" head: tag positional)
    "sink": 0.5,  # mean attention to the first position
    "ov_copying": 0.5,  # share of sampled tokens whose own logit is in the top k of the OV map
    "ov_suppression": 0.5,
    "direct_relative": 0.25,  # |direct effect on answer - wrong| vs the largest among the labeled heads
    "answer_attention": 0.4,  # mean attention from the prediction position to the answer's / wrong token's positions
    "ov_relative": 5.0,  # with such attention, an OV copying / suppression score this many times chance suffices
    "min_queries": 20,  # a dataset's pattern score counts only when averaged over at least this many queries
    # IOI roles (labeling/ioi.py), fixed before looking at any model's numbers:
    "end_attention": 0.4,  # attention from the prediction position on the target (IO, S or S2) positions
    "content_margin": 0.1,  # ... above the fixed-offset and the corrupted-prompt attention (not positional)
    "name_copy": 0.5,  # the paper's copy score: share of name positions whose token the OV map puts in the top 5
    "s_inhibition_effect": 0.1,  # share of the behaviour lost by patching it into the name movers' queries
    "backup_gain": 0.1,  # rise of its direct effect with the name movers knocked out, x their summed direct effect
}

# pattern -> (role tag, label, what the head does)
PATTERN_ROLES = {
    "induction": ("induction", "Induction head",
                  "attends from each token to the token right after that token's previous occurrence"),
    "previous_token": ("previous_token", "Previous-token head", "attends from each token to the token before it"),
    "duplicate_token": ("duplicate_token", "Duplicate-token head",
                        "attends from each token to earlier occurrences of the same token"),
    "self_attention": ("positional", "Current-token (self-attention) head", "attends from each token to itself"),
    "sink": ("attention_sink", "Attention-sink head (attends to first token)",
             "puts most of its attention on the first position"),
}
PATTERN_NAMES = {"previous_token": "previous-token", "induction": "induction", "duplicate_token": "duplicate-token",
                 "self_attention": "self-attention", "sink": "first-token (sink)"}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def pattern_score(ev: HeadEvidence, name: str, min_queries: int = THRESHOLDS["min_queries"],
           repeated_only: bool = False) -> tuple[float, str]:
    """The best score of a pattern over the datasets that measured it on enough queries (a score over
    a handful of chance repeats in short random prompts is noise), and a phrase naming the values.
    repeated_only: only the repeated random tokens count (induction's own test, labeling/verify.py)."""
    vals = [(getattr(p, name), p.n_queries.get(name, min_queries),
             "repeated random tokens" if p.data.source == "repeated_random_tokens" else "the task prompts")
            for p in ev.patterns if not repeated_only or p.data.source == "repeated_random_tokens"]
    vals = [(v, n, w) for v, n, w in vals if v is not None and n >= min_queries]
    best = max((v for v, _, _ in vals), default=0.0)
    text = ", ".join(f"{_fmt(v)} on {w}" for v, _, w in vals)
    return best, text


def _provenance() -> Provenance:
    return Provenance(backend="heuristic", labeler_version=LABELER_VERSION)


def label_head(node: str, ev: HeadEvidence, max_direct: float, thresholds: dict | None = None) -> LabelRecord:
    th = {**THRESHOLDS, **(thresholds or {})}
    if ev.ov is not None and ev.ov.silent:
        return LabelRecord(component=node, kind="head", label="Silent head: writes nothing",
                           description="Its output projection writes nothing (the OV map is zero), so whatever it "
                                       "attends to cannot affect the model.",
                           role_tags=["other"], confidence=0.0, status="heuristic_only", evidence=ev,
                           provenance=_provenance())
    fired = []  # (score, pattern)
    for name in PATTERN_ROLES:
        best, _ = pattern_score(ev, name, th["min_queries"], repeated_only=name == "induction")
        if best >= th[name]:
            fired.append((best, name))
    fired.sort(key=lambda x: -x[0])
    if ev.ioi is not None and ev.ioi.rows:
        rec = _ioi_label(node, ev, th, [PATTERN_ROLES[n][0] for _, n in fired])
        if rec is not None:
            return rec
    ov, direct = ev.ov, (ev.logits.answer_minus_wrong if ev.logits else None)
    strong = direct is not None and max_direct > 0 and abs(direct) >= th["direct_relative"] * max_direct
    copies = ov is not None and ov.copying >= th["ov_copying"]
    aa = ev.answer_attention
    # A head that, at the prediction position, reads the answer (or the wrong answer) where it occurred
    # earlier only needs its OV map to copy (or suppress) well above chance for its direct effect to be
    # explained: that is what a name mover (or a copy-suppression head) is on a task like IOI.
    looks_at = None
    if aa is not None and aa.rows and ov is not None and not ov.silent:
        if aa.to_answer >= th["answer_attention"] and aa.to_answer >= aa.to_wrong:
            looks_at = "answer"
        elif aa.to_wrong >= th["answer_attention"]:
            looks_at = "wrong"
    relative = th["ov_relative"] * ov.chance if ov is not None else 1.0
    if looks_at is not None and ev.ioi is not None and ev.ioi.rows and not _content(ev.ioi, looks_at, th):
        looks_at = None  # a fixed-offset pattern that lands on the name, not a reader of it (_ioi_label)
    if looks_at is not None and strong and "induction" not in [PATTERN_ROLES[n][0] for _, n in fired]:
        role = _attended_role(looks_at, ov, direct, relative)
        if role is not None:
            return _answer_reader(node, ev, role, looks_at, direct, [PATTERN_ROLES[n][0] for _, n in fired])
    tags = [PATTERN_ROLES[name][0] for _, name in fired]
    sentences = []
    if fired:
        score, name = fired[0]
        _, where = pattern_score(ev, name, th["min_queries"], repeated_only=name == "induction")
        label = PATTERN_ROLES[name][1]
        sentences.append(f"It {PATTERN_ROLES[name][2]} ({PATTERN_NAMES[name]} score {where}).")
        confidence = min(1.0, max(0.0, score))
        if len(fired) > 1:
            also = "; ".join(f"{PATTERN_NAMES[n]} {s:.2f}" for s, n in fired[1:])
            sentences.append(f"It also passes the threshold as: {also}.")
    else:
        label, confidence = None, 0.0
    # Copying roles: an induction head already copies by definition, so it is not also a name mover.
    copy_note = None
    ioi_task = ev.ioi is not None and ev.ioi.rows > 0  # the IOI tests decide the copying roles there
    if not ioi_task and copies and strong and direct > 0 and "induction" not in tags:
        tags.append("name_mover")
        if label is None:
            label, confidence = "Copying (name-mover) head", min(1.0, ov.copying)
        copy_note = "name_mover"
    elif not ioi_task and ov is not None and ov.suppression >= th["ov_suppression"] and strong and direct < 0:
        tags.append("copy_suppression")
        if label is None:
            label, confidence = "Copy-suppression head", min(1.0, ov.suppression)
        copy_note = "copy_suppression"
    if ov is not None and direct is not None:
        if copy_note == "copy_suppression":
            what = (f"its OV circuit maps tokens to their own negative logit (suppression score "
                    f"{ov.suppression:.2f}, chance {ov.chance:.2f})")
        elif copies:
            what = f"its OV circuit copies tokens (copying score {ov.copying:.2f}, chance {ov.chance:.2f})"
        else:
            what = f"its OV circuit does not copy (copying score {ov.copying:.2f}, chance {ov.chance:.2f})"
        sentences.append(f"{what[0].upper()}{what[1:]}, and its direct write changes logit(answer) - logit(wrong) "
                         f"by {direct:+.2f}.")
    if label is None:
        best_name, best_val = max(((n, pattern_score(ev, n, th["min_queries"])[0]) for n in PATTERN_ROLES),
                                  key=lambda x: x[1])
        sentences.insert(0, f"No tested attention pattern reaches its threshold (highest: {PATTERN_NAMES[best_name]} "
                            f"{best_val:.2f}; previous-token, duplicate-token, induction and self-attention need "
                            f"{th['previous_token']:.2f}, sink {th['sink']:.2f}).")
        return LabelRecord(component=node, kind="head", label="Unclassified head: no tested pattern",
                           description=" ".join(sentences[:3]), role_tags=["other"], confidence=0.0,
                           status="heuristic_only", evidence=ev, provenance=_provenance())
    return LabelRecord(component=node, kind="head", label=label, description=" ".join(sentences[:3]),
                       role_tags=tags, confidence=round(confidence, 4), status="ok", evidence=ev,
                       provenance=_provenance())


IOI_LABELS = {
    "name_mover": ("Name mover head", "At the prediction position it reads the indirect object and copies it"),
    "negative_name_mover": ("Negative name mover head",
                            "At the prediction position it reads the indirect object and writes against it"),
    "backup_name_mover": ("Backup name mover head",
                          "It takes over copying the indirect object when the name movers are knocked out"),
    "s_inhibition": ("S-inhibition head", "At the prediction position it reads the repeated subject (S2), and its "
                     "output steers the name movers' queries away from the subject"),
}


def _content(ioi: IOIEvidence, target: str, th: dict) -> bool:
    if target == "answer":
        return reads(ioi.to_io, ioi.offset_attention, ioi.to_io_corrupted, th)[0]
    return reads(ioi.to_s, ioi.offset_attention, ioi.to_s_corrupted, th)[0]


def _ioi_label(node: str, ev: HeadEvidence, th: dict, pattern_tags: list[str]) -> LabelRecord | None:
    """The first IOI role whose test passes (labeling/ioi.py), or a fixed-offset label for a head whose
    attention from the prediction position is positional, or None."""
    ioi = ev.ioi
    for role in IOI_ROLES:
        ok, what = ioi_role_test(role, ioi, th)
        if ok:
            label, does = IOI_LABELS[role]
            share = {"s_inhibition": ioi.to_s2, "backup_name_mover": ioi.knockout_to_io or 0.0}.get(role, ioi.to_io)
            return LabelRecord(component=node, kind="head", label=label, description=f"{does} ({what}).",
                               role_tags=[role] + pattern_tags, confidence=round(min(1.0, max(0.0, share)), 4),
                               status="ok", evidence=ev, provenance=_provenance())
    target, share = ("IO", ioi.to_io) if ioi.to_io >= ioi.to_s else ("S", ioi.to_s)
    if fixed_offset(ioi, th)[0]:
        return LabelRecord(
            component=node, kind="head", label=f"Fixed-offset head: {ioi.offset} tokens back",
            description=(f"From the prediction position it attends {ioi.offset} tokens back ({ioi.offset_attention:.2f} "
                         f"of its attention), which is where the {target} name sits in these prompts ({share:.2f}); "
                         f"it attends there as much on the corrupted prompts, where another token sits, so its attention "
                         f"follows the position and these prompts cannot show that it reads the name. "
                         f"Its OV map {_ov_phrase(ioi)}, and its direct write changes logit(IO) - logit(S) by "
                         f"{ioi.direct:+.2f}."),
            role_tags=["positional"] + [t for t in pattern_tags if t != "positional"],
            confidence=round(min(1.0, ioi.offset_attention), 4), status="ok", evidence=ev, provenance=_provenance())
    return None


def _ov_phrase(ioi: IOIEvidence) -> str:
    if ioi.name_suppression >= 0.5 > ioi.name_copy:
        return f"suppresses the name it reads (suppression score {ioi.name_suppression:.2f})"
    if ioi.name_copy >= 0.5:
        return f"copies the name it reads (copy score {ioi.name_copy:.2f})"
    return f"neither copies nor suppresses names (copy {ioi.name_copy:.2f}, suppression {ioi.name_suppression:.2f})"


def _attended_role(looks_at: str, ov, direct: float, relative: float) -> str | None:
    """name_mover: reads the answer and copies it (raises answer - wrong), or reads the wrong token and
    copies it (lowers it: a name mover for the wrong name). copy_suppression: reads a token and
    suppresses it: the wrong one (raises answer - wrong) or the answer (lowers it)."""
    copies, suppresses = ov.copying >= relative, ov.suppression >= relative
    helps = direct > 0
    if copies and helps == (looks_at == "answer"):
        return "name_mover"
    if suppresses and helps == (looks_at == "wrong"):
        return "copy_suppression"
    return None


def _answer_reader(node: str, ev: HeadEvidence, role: str, looks_at: str, direct: float, tags: list[str]) -> LabelRecord:
    aa, ov = ev.answer_attention, ev.ov
    target = "the answer" if looks_at == "answer" else "the wrong answer"
    share = aa.to_answer if looks_at == "answer" else aa.to_wrong
    if role == "name_mover":
        label = "Name mover: copies the attended answer" if looks_at == "answer" else "Name mover for the wrong answer"
        ov_text = f"its OV circuit copies the token it reads (copying score {ov.copying:.2f}, chance {ov.chance:.3f})"
        score = min(1.0, share)
    else:
        label = "Copy suppression of the wrong answer" if looks_at == "wrong" else "Copy suppression of the answer"
        ov_text = (f"its OV circuit suppresses the token it reads (suppression score {ov.suppression:.2f}, "
                   f"chance {ov.chance:.3f})")
        score = min(1.0, share)
    description = (f"At the prediction position it attends to earlier occurrences of {target} ({share:.2f} of its "
                   f"attention, over {aa.rows} task rows), {ov_text}, and its direct write changes logit(answer) - "
                   f"logit(wrong) by {direct:+.2f}.")
    return LabelRecord(component=node, kind="head", label=label, description=description,
                       role_tags=tags + [role], confidence=round(score, 4), status="ok", evidence=ev,
                       provenance=_provenance())


def _quote(tokens: list[str], n: int) -> str:
    return ", ".join("'" + t[:20].replace(" ", "\u2423") + "'" for t in tokens[:n])  # one word per token


def label_mlp(node: str, ev: MLPEvidence) -> LabelRecord:
    """MLPs have no role in the vocabulary: the label states where it writes and what it promotes."""
    if ev.silent:
        return LabelRecord(
            component=node, kind="mlp", label="Silent MLP: writes nothing",
            description=f"Its output is zero (largest output norm {ev.max_activation:.2g}) at every position of "
                        "the evidence prompts, so it cannot affect the model's output on this task.",
            role_tags=["other"], confidence=0.0, status="heuristic_only", evidence=ev, provenance=_provenance())
    tokens = ev.top_tokens
    desc = [f"It writes most (output norm up to {ev.max_activation:.2f}) at positions whose token is "
            f"{_quote(tokens, 5)} in the task prompts."]
    if ev.logits is not None and ev.logits.promoted:
        desc.append(f"Read through the unembedding, its output there promotes "
                    f"{_quote([t.token for t in ev.logits.promoted], 4)} and suppresses "
                    f"{_quote([t.token for t in ev.logits.suppressed], 4)}.")
    label = f"MLP most active on {_quote(tokens, 2)}" if tokens else "MLP with no distinctive context"
    if len(label.split()) > 8:
        label = f"MLP most active on {_quote(tokens, 1)}"
    return LabelRecord(component=node, kind="mlp", label=label, description=" ".join(desc), role_tags=["other"],
                       confidence=0.0, status="heuristic_only", evidence=ev, provenance=_provenance())


def heuristic_labels(evidence: dict, thresholds: dict | None = None) -> dict[str, LabelRecord]:
    """A label per component of the evidence bundle, in its order."""
    directs = [abs(ev.logits.answer_minus_wrong) for ev in evidence.values()
               if ev.kind == "head" and ev.logits is not None and ev.logits.answer_minus_wrong is not None]
    max_direct = max(directs, default=0.0)
    return {node: (label_head(node, ev, max_direct, thresholds) if ev.kind == "head" else label_mlp(node, ev))
            for node, ev in evidence.items()}
