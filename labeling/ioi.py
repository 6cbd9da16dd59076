"""IOI roles (Wang et al. 2022, "Interpretability in the Wild"), measured on the model and the task.

Positions, per evidence row: END is the prediction position (the prompt's last token); IO the earlier
positions holding the answer token(s); S those holding the wrong token(s) (the subject); S2 the last S
position. Only rows with the IOI structure count (`rows`): the answer occurs earlier in the prompt (IO)
and the wrong token at least twice (S1 and S2). On other tasks (induction: the wrong token does not
occur) no head gets IOI measurements and the IOI roles are not tested.

Measured for every head h of the model (layer l), on the evidence rows:
- to_io, to_s, to_s2: h's mean attention from END on the IO / S / S2 positions.
- content control (to_io_corrupted, to_s2_corrupted): h's attention from END on the corrupted prompt at
  the positions that held IO / S2 in the clean one. The task's corruption replaces S2's name (IOI: by a
  third name), so a head that reads S2 for what it holds attends there less; a positional head attends
  there as before. Only when clean and corrupted prompts have equal lengths.
- positional control (offset, offset_attention): the distance d >= 1 back from END (not reaching
  position 0, whose attention is the sink pattern) whose position gets h's largest mean attention, over
  the rows that long, and that attention.
- name copy (the paper's copy score): at every IO and S position p, the residual stream that layer l
  reads there, through h's layer norm, V and O maps and the unembedding (with its final norm):
  name_copy is the share of positions whose own token's logit is among the 5 largest of the
  vocabulary, name_suppression the share among the 5 smallest (the paper's negative copy score). Ties
  count against.
- direct: the direct effect of h's write at END on logit(IO) - logit(S), logits(resid) - logits(resid -
  write) at the last residual (as evidence.py's direct logit attribution); max_direct the largest |direct|
  over the model's heads.
- s_inhibition_effect (path patching, the paper's definition for S-inhibition heads): h's output
  reaches the queries of the name movers of later layers with its corrupted-run value (those edges only,
  every other edge clean: discovery's edge patching); the share of the behaviour (logit(IO) - logit(S),
  clean minus corrupted) lost.
- knockout_direct, knockout_to_io (the paper's backup name movers): h's direct effect and END -> IO
  attention when every name mover's output is replaced by its mean over the evidence prompts' positions
  (mean ablation, on every edge out of it).

Role tests (thresholds: labeling/heuristic.py THRESHOLDS):
- reads(target) = attention on the target >= end_attention, and the content decides it: that attention
  exceeds the fixed-offset attention by content_margin, or the corrupted-prompt attention at the same
  positions by content_margin. A layer-0 head attending a fixed distance back fails both controls.
- name_mover: reads(IO), to_io >= to_s, name_copy >= name_copy, direct > 0 and
  direct >= direct_relative x max_direct.
- negative_name_mover: reads(IO), to_io >= to_s, name_suppression >= name_copy, direct < 0 and
  |direct| >= direct_relative x max_direct.
- backup_name_mover: not a name mover; with the name movers knocked out its direct effect rises by at
  least backup_gain x their summed direct effect, it then reads IO (knockout_to_io >= end_attention) and
  name_copy >= name_copy.
- s_inhibition: reads(S2) and s_inhibition_effect >= s_inhibition_effect (needs name movers after it).
Duplicate-token, previous-token and induction heads keep their attention-pattern tests (evidence.py),
which are the paper's definitions (S2 -> S1, S1+1 -> S1 and S2 -> S1+1 on repeated tokens)."""

from __future__ import annotations

import torch

from discovery.core.errors import TaskError
from discovery.core.graph import Graph
from discovery.core.nodes import head_id, parse_node
from discovery.engine.patching import Activations, run
from discovery.model.tasks import check_equal_lengths, iter_batches

from .schema import DataRef, IOIEvidence

IOI_ROLES = ("name_mover", "negative_name_mover", "backup_name_mover", "s_inhibition")
TOP_K = 5
MAX_NAME_POSITIONS = 256


# --- role tests on the measurements ------------------------------------------------------------------

def reads(to: float, offset_attention: float, corrupted: float | None, th: dict) -> tuple[bool, str]:
    """(passes, what) for 'the head reads this target for its content'."""
    if to < th["end_attention"]:
        return False, f"{to:.2f} of its attention (needs {th['end_attention']:.2f})"
    m = th["content_margin"]
    if to - offset_attention >= m:
        return True, f"{to:.2f} of its attention, more than at any fixed distance back ({offset_attention:.2f})"
    if corrupted is not None and to - corrupted >= m:
        return True, f"{to:.2f} of its attention, {corrupted:.2f} on the corrupted prompt at the same positions"
    shown = "not measured" if corrupted is None else f"{corrupted:.2f}"
    return False, (f"{to:.2f} of its attention, but as much goes to a fixed distance back ({offset_attention:.2f}) "
                   f"and to the same positions of the corrupted prompt ({shown}): a positional pattern")


def fixed_offset(ev: IOIEvidence | None, th: dict) -> tuple[bool, str]:
    """(is it, what): the head's attention from END is positional: at least end_attention on one fixed
    distance >= 2 back, and its attention on the names there (IO or S, whichever is larger) fails the
    content controls of reads()."""
    if ev is None or not ev.rows:
        return False, "no IOI measurements"
    io = ev.to_io >= ev.to_s
    to, corrupted = (ev.to_io, ev.to_io_corrupted) if io else (ev.to_s, ev.to_s_corrupted)
    content, _ = reads(to, ev.offset_attention, corrupted, th)
    what = (f"{ev.offset_attention:.2f} of its attention from the prediction position goes {ev.offset} tokens back "
            f"(needs {th['end_attention']:.2f}); on the {'IO' if io else 'S'} name {to:.2f}, "
            f"{'which its content decides' if content else 'as much on the corrupted prompts'}")
    return ev.offset >= 2 and ev.offset_attention >= th["end_attention"] and not content, what


def ioi_role_test(tag: str, ev: IOIEvidence | None, th: dict) -> tuple[bool, str]:
    if ev is None or not ev.rows:
        return False, "no IOI measurements (the task's prompts hold neither the answer nor the wrong token)"
    strong = ev.max_direct > 0 and abs(ev.direct) >= th["direct_relative"] * ev.max_direct
    io_ok, io_what = reads(ev.to_io, ev.offset_attention, ev.to_io_corrupted, th)
    io_first = ev.to_io >= ev.to_s
    if tag in ("name_mover", "negative_name_mover"):
        copy = ev.name_copy if tag == "name_mover" else ev.name_suppression
        sign = ev.direct > 0 if tag == "name_mover" else ev.direct < 0
        what = (f"END -> IO {io_what}; END -> S {ev.to_s:.2f}; name {'copy' if tag == 'name_mover' else 'suppression'} "
                f"score {copy:.2f} (needs {th['name_copy']:.2f}); direct effect {ev.direct:+.2f} (largest "
                f"{ev.max_direct:.2f})")
        return io_ok and io_first and copy >= th["name_copy"] and sign and strong, what
    if tag == "backup_name_mover":
        if not ev.name_movers:
            return False, "no name mover heads to knock out"
        if ev.knockout_direct is None:
            return False, "; ".join(ev.notes) or "the knockout was not measured"
        gain = ev.knockout_direct - ev.direct
        need = th["backup_gain"] * (ev.name_movers_direct or 0.0)
        to = ev.knockout_to_io or 0.0
        what = (f"with the name movers {', '.join(ev.name_movers)} knocked out its direct effect goes from "
                f"{ev.direct:+.2f} to {ev.knockout_direct:+.2f} (needs a rise of {need:.2f}), END -> IO "
                f"{to:.2f}, name copy score {ev.name_copy:.2f}")
        is_nm = ioi_role_test("name_mover", ev, th)[0]
        return (not is_nm and gain >= need and to >= th["end_attention"] and ev.name_copy >= th["name_copy"]), what
    if tag == "s_inhibition":
        s2_ok, s2_what = reads(ev.to_s2, ev.offset_attention, ev.to_s2_corrupted, th)
        if ev.s_inhibition_effect is None:
            return False, f"END -> S2 {s2_what}; " + ("; ".join(ev.notes) or "the path patching was not measured")
        what = (f"END -> S2 {s2_what}; patching its output into the queries of the name movers "
                f"{', '.join(ev.name_movers)} loses {ev.s_inhibition_effect:.2f} of the behaviour (needs "
                f"{th['s_inhibition_effect']:.2f})")
        return s2_ok and ev.s_inhibition_effect >= th["s_inhibition_effect"], what
    raise ValueError(tag)


# --- measurements ---------------------------------------------------------------------------------

def _parse(node: str) -> tuple[int, int]:
    n = parse_node(node)
    return n.layer, n.head


class _Patterns:
    """pattern_hook collecting each layer's attention [N, H, P, P]."""

    def __init__(self):
        self.by_layer: dict[int, torch.Tensor] = {}

    def __call__(self, layer: int, pattern: torch.Tensor) -> None:
        n, kv, g, p, _ = pattern.shape
        self.by_layer[layer] = pattern.reshape(n, kv * g, p, p).detach()


def _logit_diff(logits: torch.Tensor, batch) -> torch.Tensor:
    """[N] mean logit of the answers minus mean logit of the wrong tokens."""
    def mean(ids, mask):
        vals = logits.float().gather(-1, ids.to(logits.device))
        m = mask.to(logits.device).float()
        return (vals * m).sum(-1) / m.sum(-1).clamp(min=1)
    return mean(batch.answers, batch.answer_mask) - mean(batch.wrongs, batch.wrong_mask)


def _direct(a, z: list[torch.Tensor], final: torch.Tensor, last: torch.Tensor, batch) -> torch.Tensor:
    """[N, L, H] direct effect of each head's write at END on logit(answer) - logit(wrong)."""
    n = final.shape[0]
    idx = torch.arange(n, device=final.device)
    end = final[idx, last]  # [N, d]
    base = _logit_diff(a.unembed(end), batch)
    out = []
    for layer, zl in enumerate(z):
        write = torch.einsum("nhk,hkd->nhd", zl[idx, last], a.heads(layer).out)  # [N, H, d]
        without = a.unembed(end[:, None] - write)  # [N, H, V]
        diffs = torch.stack([_logit_diff(without[:, h], batch) for h in range(write.shape[1])], 1)
        out.append(base[:, None] - diffs)
    return torch.stack(out, 1).float().cpu()


def _masks(batch):
    """[N, P] IO, S and S2 position masks (before END), and [N] whether a row has the IOI structure
    (the answer earlier in the prompt, the wrong token at least twice)."""
    ids = batch.clean.cpu()
    pos = torch.arange(ids.shape[1])
    earlier = pos[None] < batch.clean_last.cpu()[:, None]

    def holds(tokens, mask):
        return ((ids[:, :, None] == tokens.cpu()[:, None, :]) & mask.cpu()[:, None, :]).any(-1) & earlier

    io, s = holds(batch.answers, batch.answer_mask), holds(batch.wrongs, batch.wrong_mask)
    last_s = torch.where(s, pos[None].expand_as(s), torch.full_like(s, -1, dtype=torch.long)).max(-1).values
    s2 = (pos[None] == last_s[:, None]) & s
    return io.float(), s.float(), s2.float(), io.any(-1) & (s.sum(-1) >= 2)


def _end_rows(pattern: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """[N, H, P] attention from each row's END."""
    n = pattern.shape[0]
    return pattern[torch.arange(n), :, last.to(pattern.device)].float().cpu()


def _name_copy(a, stage_resid: torch.Tensor, layer: int, pos: list[tuple[int, int, int]]):
    """[H] counts of name positions copied (top 5) and suppressed (bottom 5) by each head's OV map."""
    w = a.heads(layer)
    group = a.n_heads // a.n_kv_heads
    x = a.attn_norm(layer, torch.stack([stage_resid[r, p] for r, p, _ in pos]))  # [M, d]
    tokens = torch.tensor([t for *_, t in pos], device=x.device)
    copy, supp = torch.zeros(a.n_heads), torch.zeros(a.n_heads)
    for h in range(a.n_heads):
        kv = h // group
        v = x @ w.v[kv].T + (w.v_bias[kv] if w.v_bias is not None else 0)
        logits = a.unembed((v @ w.out[h])[None])[0].float()  # [M, V]
        own = logits.gather(-1, tokens[:, None])
        copy[h] = float((((logits >= own).sum(-1) - 1) < TOP_K).sum())
        supp[h] = float((((logits <= own).sum(-1) - 1) < TOP_K).sum())
    return copy, supp


@torch.no_grad()
def collect_ioi(model, task, rows: list[int], heads: list[str], thresholds: dict, data: DataRef,
                batch_size: int = 16, pad_id: int = 0) -> dict[str, IOIEvidence]:
    """IOIEvidence for the given heads (measured over every head of the model, so that the name movers
    that S-inhibition and backup heads act on are the model's); {} when no row has the IOI structure."""
    a = model.adapter
    graph = Graph.from_adapter(a)
    sub = task.subset(rows)
    try:
        check_equal_lengths(sub)
        paired = True
    except TaskError:
        paired = False
    L, H = a.n_layers, a.n_heads
    attn_stage = {st.layer: i for i, st in enumerate(graph.stages) if st.kind == "attn"}
    acc = {k: torch.zeros(L, H) for k in ("io", "s", "s2", "io_c", "s_c", "s2_c", "direct")}
    off_sum: dict[int, torch.Tensor] = {}
    off_cnt: dict[int, int] = {}
    copy, supp = torch.zeros(L, H), torch.zeros(L, H)
    n_rows, n_pos, m_clean, m_corr = 0, 0, 0.0, 0.0
    mean_z = [torch.zeros(H, a.d_head, dtype=torch.float64) for _ in range(L)]
    n_tokens = 0
    batches = list(iter_batches(sub, batch_size, device=a.device, pad_id=pad_id))
    corrupted_acts = []
    for batch in batches:
        last = batch.clean_last
        io, s, s2, present = _masks(batch)
        hook = _Patterns()
        res = run(a, graph, batch.clean, last=last, record=True, record_resid=True, pattern_hook=hook)
        keep = present.float()
        n_rows += int(present.sum())
        m_clean += float((_logit_diff(res.logits, batch).cpu() * keep).sum())
        direct = _direct(a, res.acts.z, res.acts.resid[-1], last, batch)  # [N, L, H]
        acc["direct"] += torch.einsum("n,nlh->lh", keep, direct)
        for layer in range(L):
            end = _end_rows(hook.by_layer[layer], last)  # [N, H, P]
            for key, mask in (("io", io), ("s", s), ("s2", s2)):
                acc[key][layer] += torch.einsum("nhp,np->h", end, mask * keep[:, None])
            for r in range(end.shape[0]):
                if not present[r]:
                    continue
                e = int(last[r])
                for d in range(1, e):  # not back to position 0: attention there is the sink's pattern
                    off_sum.setdefault(d, torch.zeros(L, H))[layer] += end[r, :, e - d]
                    if layer == 0:
                        off_cnt[d] = off_cnt.get(d, 0) + 1
        # name copy scores at the IO and S positions
        pos = [(r, p, int(batch.clean[r, p])) for r in range(len(batch.rows)) for p in range(int(last[r]))
               if io[r, p] or s[r, p]][:max(0, MAX_NAME_POSITIONS - n_pos)]
        if pos:
            for layer in range(L):
                c, u = _name_copy(a, res.acts.resid[attn_stage[layer]], layer, pos)
                copy[layer] += c
                supp[layer] += u
            n_pos += len(pos)
        # the mean head outputs over every real position (the knockout's reference)
        real = (torch.arange(batch.clean.shape[1], device=last.device)[None] <= last[:, None]).double()
        for layer in range(L):
            mean_z[layer] += torch.einsum("np,nphk->hk", real, res.acts.z[layer].double()).cpu()
        n_tokens += int(real.sum())
        if paired:
            hook_c = _Patterns()
            cor = run(a, graph, batch.corrupted, last=batch.corrupted_last, record=True, pattern_hook=hook_c)
            corrupted_acts.append(cor.acts)
            m_corr += float((_logit_diff(cor.logits, batch).cpu() * keep).sum())
            for layer in range(L):
                end_c = _end_rows(hook_c.by_layer[layer], batch.corrupted_last)
                acc["io_c"][layer] += torch.einsum("nhp,np->h", end_c, io * keep[:, None])
                acc["s_c"][layer] += torch.einsum("nhp,np->h", end_c, s * keep[:, None])
                acc["s2_c"][layer] += torch.einsum("nhp,np->h", end_c, s2 * keep[:, None])
    if not n_rows:
        return {}
    mean = {k: v / n_rows for k, v in acc.items()}
    valid_d = [d for d, c in off_cnt.items() if c >= max(1, n_rows // 2)]
    offs = torch.stack([off_sum[d] / off_cnt[d] for d in valid_d], -1) if valid_d else torch.zeros(L, H, 1)
    best_att, best_i = offs.max(-1)
    max_direct = float(mean["direct"].abs().max())
    behaviour = m_clean / n_rows
    gap = behaviour - m_corr / n_rows if paired else None

    def evidence(layer: int, head: int) -> IOIEvidence:
        return IOIEvidence(
            data=data, rows=n_rows, to_io=float(mean["io"][layer, head]), to_s=float(mean["s"][layer, head]),
            to_s2=float(mean["s2"][layer, head]),
            to_io_corrupted=float(mean["io_c"][layer, head]) if paired else None,
            to_s_corrupted=float(mean["s_c"][layer, head]) if paired else None,
            to_s2_corrupted=float(mean["s2_c"][layer, head]) if paired else None,
            offset=valid_d[int(best_i[layer, head])] if valid_d else 0, offset_attention=float(best_att[layer, head]),
            name_copy=float(copy[layer, head] / max(n_pos, 1)), name_suppression=float(supp[layer, head] / max(n_pos, 1)),
            n_name_positions=n_pos, direct=float(mean["direct"][layer, head]), max_direct=max_direct,
            behaviour=behaviour)

    every = {head_id(layer, h): evidence(layer, h) for layer in range(L) for h in range(H)}
    movers = [n for n, ev in every.items() if ioi_role_test("name_mover", ev, thresholds)[0]]
    nm_total = sum(every[n].direct for n in movers)
    out = {n: every[n] for n in heads}
    for n, ev in out.items():
        ev.name_movers = movers
    if not movers:
        for ev in out.values():
            ev.notes.append("no head of the model passes the name-mover test, so there is nothing for an "
                            "S-inhibition head to act on or a backup head to replace")
        return out
    # S-inhibition: path patching from each head into the later name movers' queries
    if not paired or gap is None or abs(gap) < 1e-6:
        why = ("clean and corrupted prompts differ in length" if not paired else
               "the corrupted prompts do not change the behaviour")
        for ev in out.values():
            ev.notes.append(f"path patching needs the corrupted prompts, but {why}")
    else:
        for n, ev in out.items():
            layer, _ = _parse(n)
            receivers = [m for m in movers if _parse(m)[0] > layer]
            if not receivers:
                ev.notes.append("no name mover head in a later layer receives its output")
                continue
            off = torch.zeros(1, graph.n_sources, graph.n_readers, device=a.device)
            for m in receivers:
                off[0, graph.source_index[n], graph.reader_index[f"{m}<q>"]] = 1
            patched = 0.0
            for batch, ref in zip(batches, corrupted_acts):
                _, _, _, present = _masks(batch)
                lg = run(a, graph, batch.clean, last=batch.clean_last, ref=ref, off=off).logits
                patched += float((_logit_diff(lg, batch).cpu() * present.float()).sum())
            ev.s_inhibition_effect = (behaviour - patched / n_rows) / gap
    # backup name movers: every name mover's output mean-ablated on all its edges
    ref = Activations(torch.zeros(1, 1, a.d_model, dtype=a.dtype, device=a.device),
                      [(z / n_tokens).to(a.dtype).to(a.device)[None, None] for z in mean_z],
                      [torch.zeros(1, 1, a.d_model, dtype=a.dtype, device=a.device)] * L)
    off = torch.zeros(1, graph.n_sources, graph.n_readers, device=a.device)
    valid = torch.as_tensor(graph.valid, dtype=torch.float32, device=a.device)
    for m in movers:
        off[0, graph.source_index[m]] = valid[graph.source_index[m]]
    ko_direct, ko_io = torch.zeros(L, H), torch.zeros(L, H)
    for batch in batches:
        io, _, _, present = _masks(batch)
        keep = present.float()
        hook = _Patterns()
        res = run(a, graph, batch.clean, last=batch.clean_last, ref=ref, off=off, record=True, record_resid=True,
                  pattern_hook=hook)
        # the recorded residual still holds the live name-mover writes that its readers no longer see
        final = res.acts.resid[-1].clone()
        for m in movers:
            ml, mh = _parse(m)
            delta = res.acts.z[ml][:, :, mh] - ref.z[ml][0, 0, mh]
            final -= delta @ a.heads(ml).out[mh]
        ko_direct += torch.einsum("n,nlh->lh", keep, _direct(a, res.acts.z, final, batch.clean_last, batch))
        for layer in range(L):
            ko_io[layer] += torch.einsum("nhp,np->h", _end_rows(hook.by_layer[layer], batch.clean_last),
                                         io * keep[:, None])
    for n, ev in out.items():
        layer, head = _parse(n)
        ev.knockout_direct = float(ko_direct[layer, head] / n_rows)
        ev.knockout_to_io = float(ko_io[layer, head] / n_rows)
        ev.name_movers_direct = nm_total
    return out
