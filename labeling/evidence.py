"""Evidence for labels: deterministic measurements of the model itself (no LLM).

Heads: attention-pattern scores on seeded repeated random tokens `<bos> S S` and on the task's own
prompts, the OV copying score, the strongest (query token, key token) pairs, the direct logit
attribution of the head's write and its edges in the circuit. MLPs: the task contexts where the MLP
writes most (output norm) and the tokens that write promotes (logit lens). The task's rows are split
in two: even rows give the evidence, odd rows are held out for scoring the explanations
(labeling/scoring.py). Every item records the data and seed that regenerate it.

Attention-pattern definitions (per query position i of a prompt with tokens t; a score is the mean,
over the queries that have the target, of the attention weight on it):
- previous_token: key i-1 (queries i >= 2, so the step right after `<bos>` does not count);
- self_attention: key i (queries i >= 1); sink: key 0 (queries i >= 1);
- duplicate_token: every earlier key j < i with t[j] == t[i] (queries with such a j);
- induction: every key j < i right after an earlier copy of t[i] (t[j-1] == t[i]).
On `<bos> S S` these equal discovery/toy/ground_truth.py's positional definitions (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from discovery.core.circuit import Circuit
from discovery.core.graph import Graph
from discovery.core.nodes import parse_node
from discovery.model.adapters import LoadedModel
from discovery.engine.patching import run
from discovery.model.tasks import Task, iter_batches
from discovery.toy.ground_truth import attention_patterns, repeated_sequences

from .schema import (AnswerAttention, AttentionPair, Context, DataRef, DirectLogits, HeadEvidence, Importance, MLPEvidence,
                     OVCopying, PatternScores, TokenValue)

PATTERNS = ("previous_token", "duplicate_token", "induction", "sink", "self_attention")
REPEATED = "repeated_random_tokens"


@dataclass(frozen=True)
class EvidenceConfig:
    seed: int = 0  # repeated sequences, OV token sample, held-out decoys
    n_repeated: int = 64
    segment: int = 10
    max_task_rows: int = 64  # task rows used, both splits together
    top_pairs: int = 10
    top_tokens: int = 8
    ov_tokens: int = 512
    ov_k: int = 5
    n_heldout: int = 20  # held-out positives (and as many decoys) per component
    context_window: int = 8
    batch_size: int = 16

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class HeldOutPair:
    """A (query, key) position pair of a held-out prompt: positive = the head's strongest key there."""
    ids: list[int]
    query_pos: int
    key_pos: int
    weight: float
    positive: bool
    answer_ids: tuple = ()  # the row's answer and wrong tokens (for the answer-reading roles)
    wrong_ids: tuple = ()


@dataclass
class HeldOutContext:
    ids: list[int]
    pos: int
    activation: float
    positive: bool  # among the MLP's top-activating held-out positions


@dataclass
class EvidenceBundle:
    evidence: dict[str, HeadEvidence | MLPEvidence]
    pairs: dict[str, list[HeldOutPair]] = field(default_factory=dict)
    contexts: dict[str, list[HeldOutContext]] = field(default_factory=dict)
    heldout: DataRef | None = None
    info: dict = field(default_factory=dict)


# --- tokens and data -----------------------------------------------------------------------------

class TokenNames:
    """Token id -> display string (the tokenizer's piece, or `#id` without a tokenizer)."""

    def __init__(self, model: LoadedModel):
        self.tok = model.tokenizer

    def __call__(self, i: int) -> str:
        if self.tok is None:
            return f"#{i}"
        piece = self.tok.convert_ids_to_tokens(int(i))
        return f"#{i}" if piece is None else str(piece)

    def many(self, ids) -> list[str]:
        return [self(i) for i in ids]


def token_pool(model: LoadedModel) -> tuple[list[int], list[int]]:
    """Ordinary token ids, and the special prefix (e.g. BOS) the tokenizer puts before text; the same
    rule the built-in induction task uses."""
    from discovery.task_library.base import Lexicon
    from discovery.task_library.induction import TASK
    return TASK._pool(Lexicon(model.tokenizer, model.vocab_size))


def repeated_batch(model: LoadedModel, cfg: EvidenceConfig) -> torch.Tensor:
    pool, prefix = token_pool(model)
    bos = prefix[0] if len(prefix) == 1 else None
    return repeated_sequences(model.vocab_size, cfg.n_repeated, cfg.seed, cfg.segment, bos_id=bos, pool=pool)


def split_rows(task: Task, cfg: EvidenceConfig) -> tuple[list[int], list[int]]:
    rows = list(range(min(len(task), cfg.max_task_rows)))
    return rows[0::2], rows[1::2]


def answer_positions(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[b, p] masks of the clean prompt's positions before the last that hold an answer token / a
    wrong token, and [b] whether a row has any of them (rows without either do not count)."""
    ids = batch.clean.cpu()
    pos = torch.arange(ids.shape[1])
    earlier = pos[None] < batch.clean_last.cpu()[:, None]

    def holds(tokens, mask):
        hit = (ids[:, :, None] == tokens.cpu()[:, None, :]) & mask.cpu()[:, None, :]
        return hit.any(-1) & earlier

    to_answer, to_wrong = holds(batch.answers, batch.answer_mask), holds(batch.wrongs, batch.wrong_mask)
    return to_answer.float(), to_wrong.float(), (to_answer | to_wrong).any(-1)


def parse_head(node: str) -> tuple[int, int]:
    n = parse_node(node)
    return n.layer, n.head


# --- attention patterns ----------------------------------------------------------------------------

def pattern_masks(ids: torch.Tensor, lengths: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each pattern: (target mask [b, q, k], valid-query mask [b, q]) on right-padded ids."""
    b, p = ids.shape
    i = torch.arange(p)[:, None]
    j = torch.arange(p)[None, :]
    real = torch.arange(p)[None] < lengths[:, None]  # [b, p]
    real_k = real[:, None, :]
    same = (ids[:, :, None] == ids[:, None, :]) & (j < i) & real_k  # earlier copy of the query token
    after = torch.zeros_like(same)
    after[:, :, 1:] = (ids[:, :, None] == ids[:, None, :-1]) & (j[:, 1:] < i) & real_k[:, :, 1:]
    out = {
        "previous_token": ((j == i - 1).expand(b, p, p), real & (torch.arange(p) >= 2)[None]),
        "self_attention": ((j == i).expand(b, p, p), real & (torch.arange(p) >= 1)[None]),
        "sink": ((j == 0).expand(b, p, p), real & (torch.arange(p) >= 1)[None]),
        "duplicate_token": (same, real & same.any(-1)),
        "induction": (after, real & after.any(-1)),
    }
    return out


class PatternAccumulator:
    """Sums of attention on each pattern's targets, and query counts, per layer and head (fp64)."""

    def __init__(self, n_layers: int, n_heads: int):
        self.sums = {k: torch.zeros(n_layers, n_heads, dtype=torch.float64) for k in PATTERNS}
        self.counts = {k: 0 for k in PATTERNS}

    def add(self, atts: list[torch.Tensor], ids: torch.Tensor, lengths: torch.Tensor) -> None:
        masks = pattern_masks(ids.cpu(), lengths.cpu())
        for name, (target, valid) in masks.items():
            w = (target & valid[:, :, None]).double()  # [b, q, k]
            for layer, a in enumerate(atts):
                self.sums[name][layer] += torch.einsum("bhqk,bqk->h", a.double(), w)
            self.counts[name] += int(valid.sum())

    def scores(self, layer: int, head: int) -> dict:
        out = {k: (float(self.sums[k][layer, head] / self.counts[k]) if self.counts[k] else None) for k in PATTERNS}
        return {**out, "n_queries": dict(self.counts)}


# --- the collector -------------------------------------------------------------------------------

class Collector:
    def __init__(self, model: LoadedModel, task: Task, circuit: Circuit, cfg: EvidenceConfig):
        self.model, self.task, self.circuit, self.cfg = model, task, circuit, cfg
        self.a = model.adapter
        self.hf = model.hf_model
        self.graph = Graph.from_adapter(self.a, kv_edges=circuit.kv_edges)
        self.names = TokenNames(model)
        self.ev_rows, self.ho_rows = split_rows(task, cfg)
        self.device = self.a.device
        self.pad_id = token_pool(model)[0][0]
        src = task.source
        self.ev_ref = DataRef(source=src, split="evidence", rows=len(self.ev_rows), content_hash=task.content_hash)
        self.ho_ref = DataRef(source=src, split="held_out", rows=len(self.ho_rows), content_hash=task.content_hash,
                              seed=cfg.seed)
        self.rep_ref = DataRef(source=REPEATED, rows=cfg.n_repeated, seed=cfg.seed, segment=cfg.segment)

    def batches(self, rows):
        if not rows:
            return
        # padded with an ordinary token: pads are never read (causal, right padding), and HF warns on pad ids
        yield from iter_batches(self.task.subset(rows), self.cfg.batch_size, device=self.device, pad_id=self.pad_id)

    # attention ------------------------------------------------------------------------------
    @torch.no_grad()
    def repeated_patterns(self) -> PatternAccumulator:
        acc = PatternAccumulator(self.a.n_layers, self.a.n_heads)
        ids = repeated_batch(self.model, self.cfg)
        lengths = torch.full((ids.shape[0],), ids.shape[1])
        for start in range(0, ids.shape[0], self.cfg.batch_size):
            chunk = ids[start:start + self.cfg.batch_size]
            acc.add(attention_patterns(self.hf, chunk), chunk, lengths[start:start + len(chunk)])
        return acc

    @torch.no_grad()
    def task_attention(self, heads: list[str], rows: list[int], keep_all: bool):
        """Pattern scores on the given task rows, and per head every query's strongest key
        (weight, row, query pos, key pos, ids) or, with keep_all, the full attention row too."""
        acc = PatternAccumulator(self.a.n_layers, self.a.n_heads)
        best: dict[str, list] = {h: [] for h in heads}
        answer_mass = {h: [0.0, 0.0] for h in heads}  # summed attention to answer / wrong positions
        n_rows = 0
        for batch in self.batches(rows):
            ids, lengths = batch.clean.cpu(), batch.clean_last.cpu() + 1
            atts = attention_patterns(self.hf, batch.clean)
            acc.add(atts, ids, lengths)
            to_answer, to_wrong, present = answer_positions(batch)
            n_rows += int(present.sum())
            for node in heads:
                layer, head = parse_head(node)
                a = atts[layer][:, head]  # [b, q, k]
                last = a[torch.arange(a.shape[0]), batch.clean_last.cpu()].float()  # [b, k]
                answer_mass[node][0] += float((last * to_answer).sum())
                answer_mass[node][1] += float((last * to_wrong).sum())
                w, j = a.max(dim=-1)
                for r in range(ids.shape[0]):
                    n = int(lengths[r])
                    row_ids = ids[r, :n].tolist()
                    answers = tuple(batch.answers[r][batch.answer_mask[r]].tolist())
                    wrongs = tuple(batch.wrongs[r][batch.wrong_mask[r]].tolist())
                    for i in range(2, n):  # i = 1 can only choose between <bos> and itself
                        item = (float(w[r, i]), batch.rows[r], i, int(j[r, i]), row_ids, answers, wrongs)
                        best[node].append(item + ((a[r, i, :i + 1].clone(),) if keep_all else ()))
        answer = {h: AnswerAttention(data=self.ev_ref, to_answer=m[0] / max(n_rows, 1), to_wrong=m[1] / max(n_rows, 1),
                                     rows=n_rows) for h, m in answer_mass.items()}
        return acc, best, answer

    def top_pairs(self, items, rows) -> list[AttentionPair]:
        items = sorted(items, key=lambda x: (-x[0], x[1], x[2]))[:self.cfg.top_pairs]
        return [AttentionPair(query_token=self.names(ids[i]), key_token=self.names(ids[j]), query_pos=i, key_pos=j,
                              weight=round(w, 6), row=rows[r]) for w, r, i, j, ids, *_ in items]

    def heldout_pairs(self, items, node: str) -> list[HeldOutPair]:
        """Positives: the held-out queries (i >= 2) with the strongest single key. Decoys: for each, a
        key of the same query drawn (seeded) among those with little attention."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + sum(map(ord, node)))
        cands = sorted(items, key=lambda x: (-x[0], x[1], x[2]))[:self.cfg.n_heldout]
        out = []
        for w, _, i, j, ids, answers, wrongs, row_att in cands:
            out.append(HeldOutPair(ids, i, j, w, True, answers, wrongs))
            low = [k for k in range(i + 1) if k != j and float(row_att[k]) < min(0.1, w / 2)]
            choices = low or [k for k in range(i + 1) if k != j]
            k = choices[int(torch.randint(len(choices), (1,), generator=g))]
            out.append(HeldOutPair(ids, i, k, float(row_att[k]), False, answers, wrongs))
        return out

    # OV and direct logits ---------------------------------------------------------------------
    @torch.no_grad()
    def ov_copying(self, layer: int, head: int) -> OVCopying:
        pool, _ = token_pool(self.model)
        g = torch.Generator().manual_seed(self.cfg.seed)
        pool_t = torch.as_tensor(pool, dtype=torch.long)
        sample = pool_t[torch.randperm(len(pool_t), generator=g)[:self.cfg.ov_tokens]].sort().values
        w = self.a.heads(layer)
        group = self.a.n_heads // self.a.n_kv_heads
        kv = head // group
        emb = self.hf.get_input_embeddings().weight[sample.to(self.device)]
        x = self.a.attn_norm(layer, emb[None])[0]
        v = x @ w.v[kv].T + (w.v_bias[kv] if w.v_bias is not None else 0)
        logits = self.a.unembed((v @ w.out[head])[None])[0][:, sample.to(self.device)].float()
        diag = logits.diagonal()[:, None]
        k = min(self.cfg.ov_k, len(sample))
        # ranks with ties counted against the token itself (>= minus itself), so a constant row is no copy
        copying = float(((logits >= diag).sum(-1) - 1 < k).float().mean())
        suppression = float(((logits <= diag).sum(-1) - 1 < k).float().mean())
        emb_rms = emb.float().pow(2).mean().sqrt()
        silent = bool((v @ w.out[head]).float().abs().max() <= 1e-6 * emb_rms)
        return OVCopying(data=DataRef(source="token_embeddings", rows=len(sample), seed=self.cfg.seed),
                         copying=copying, suppression=suppression, k=k, n_tokens=len(sample),
                         chance=k / len(sample), silent=silent)

    def _direct(self, total: torch.Tensor, n: int, answer: float | None, data: DataRef) -> DirectLogits:
        mean = total / max(n, 1)
        k = self.cfg.top_tokens
        top, bottom = mean.topk(min(k, len(mean))), (-mean).topk(min(k, len(mean)))
        tv = lambda idx, vals: [TokenValue(token=self.names(int(i)), token_id=int(i), value=round(float(v), 6))  # noqa: E731
                                for i, v in zip(idx, vals)]
        return DirectLogits(data=data, promoted=tv(top.indices, top.values),
                            suppressed=tv(bottom.indices, -bottom.values),
                            answer_minus_wrong=None if answer is None else round(answer, 6))

    @torch.no_grad()
    def direct_and_mlp(self, heads: list[str], mlps: list[str]):
        """One recorded forward per batch of evidence rows: each head's direct logit effect at the last
        position; each MLP's output norm at every position."""
        v = self.model.vocab_size
        head_tot = {h: torch.zeros(v, dtype=torch.float32) for h in heads}
        head_ans = {h: 0.0 for h in heads}
        n_rows = 0
        mlp_acts: dict[str, list] = {m: [] for m in mlps}  # (norm, row, pos, ids)
        mlp_out: dict[str, dict] = {m: {} for m in mlps}  # (row, pos) -> (resid, out) kept for the logit lens
        for batch in self.batches(self.ev_rows):
            res = run(self.a, self.graph, batch.clean, record=True, record_resid=True)
            resid = res.acts.resid[-1]  # the residual the unembedding reads
            b = batch.clean.shape[0]
            idx = torch.arange(b, device=resid.device)
            last = batch.clean_last
            final = resid[idx, last]
            base = self.a.unembed(final).float()
            for node in heads:
                layer, head = parse_head(node)
                write = res.acts.z[layer][idx, last, head] @ self.a.heads(layer).out[head]
                delta = base - self.a.unembed(final - write).float()
                delta = delta - delta.mean(-1, keepdim=True)
                head_tot[node] += delta.sum(0).cpu()
                for r in range(b):
                    ans = batch.answers[r][batch.answer_mask[r]]
                    wr = batch.wrongs[r][batch.wrong_mask[r]]
                    head_ans[node] += float(delta[r, ans].mean() - delta[r, wr].mean())
            for node in mlps:
                layer = int(node[1:])
                out = res.acts.mlp[layer]
                norms = out.float().norm(dim=-1).cpu()
                for r in range(b):
                    n = int(last[r]) + 1
                    ids = batch.clean[r, :n].tolist()
                    for p in range(n):
                        mlp_acts[node].append((float(norms[r, p]), batch.rows[r], p, ids))
                        mlp_out[node][(batch.rows[r], p)] = (resid[r, p], out[r, p])
            n_rows += b
        heads_out = {h: self._direct(head_tot[h], n_rows, head_ans[h] / max(n_rows, 1), self.ev_ref) for h in heads}
        return heads_out, mlp_acts, mlp_out

    @torch.no_grad()
    def mlp_evidence(self, node: str, acts, outs, embed_rms: float) -> MLPEvidence:
        rows = self.ev_rows
        acts = sorted(acts, key=lambda x: (-x[0], x[1], x[2]))
        top = acts[:self.cfg.n_heldout]
        max_act = acts[0][0] if acts else 0.0
        ev = MLPEvidence(data=self.ev_ref, max_activation=round(max_act, 6))
        if max_act <= 1e-6 * embed_rms:
            ev.silent = True
            return ev
        w = self.cfg.context_window
        ev.top_contexts = [Context(tokens=self.names.many(ids[max(0, p - w + 1):p + 1]), token=self.names(ids[p]),
                                   row=rows[r], pos=p, activation=round(a, 6))
                           for a, r, p, ids in top[:self.cfg.top_pairs]]
        seen = []
        for _, _, p, ids in top:
            if ids[p] not in seen:
                seen.append(ids[p])
        ev.top_tokens = self.names.many(seen[:self.cfg.top_tokens])
        total = torch.zeros(self.model.vocab_size, dtype=torch.float32)
        for _, r, p, _ in top:
            resid, out = outs[(r, p)]
            d = self.a.unembed(resid[None]).float() - self.a.unembed((resid - out)[None]).float()
            total += (d - d.mean(-1, keepdim=True))[0].cpu()
        ev.logits = self._direct(total, len(top), None, self.ev_ref)
        return ev

    @torch.no_grad()
    def heldout_contexts(self, node: str) -> list[HeldOutContext]:
        """Held-out positions: the top-activating ones, and as many drawn (seeded) below the median."""
        layer = int(node[1:])
        acts = []
        for batch in self.batches(self.ho_rows):
            res = run(self.a, self.graph, batch.clean, record=True)
            norms = res.acts.mlp[layer].float().norm(dim=-1).cpu()
            for r in range(batch.clean.shape[0]):
                n = int(batch.clean_last[r]) + 1
                ids = batch.clean[r, :n].tolist()
                acts += [(float(norms[r, p]), batch.rows[r], p, ids) for p in range(n)]
        if not acts:
            return []
        acts.sort(key=lambda x: (-x[0], x[1], x[2]))
        k = min(self.cfg.n_heldout, len(acts) // 2)
        pos = acts[:k]
        median = acts[len(acts) // 2][0]
        low = [x for x in acts[k:] if x[0] <= median]
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + sum(map(ord, node)))
        neg = [low[int(i)] for i in torch.randperm(len(low), generator=g)[:k]]
        return [HeldOutContext(ids, p, a, True) for a, _, p, ids in pos] + \
               [HeldOutContext(ids, p, a, False) for a, _, p, ids in neg]

    # importance --------------------------------------------------------------------------------
    def importance(self, node: str) -> Importance:
        targets = {node}
        if node.startswith("a") and self.a.n_kv_heads != self.a.n_heads:
            layer, head = parse_head(node)
            targets.add(f"a{layer}.kv{head // (self.a.n_heads // self.a.n_kv_heads)}")
        ins = [e for e in self.circuit.edges if e.in_circuit and e.target in targets]
        outs = [e for e in self.circuit.edges if e.in_circuit and e.source == node]
        mag = lambda e: abs(e.score) if e.score is not None else 0.0  # noqa: E731
        by = lambda es: [e.name for e in sorted(es, key=lambda e: (-mag(e), e.name))][:5]  # noqa: E731
        return Importance(in_circuit_in=len(ins), in_circuit_out=len(outs),
                          in_abs_score=round(sum(map(mag, ins)), 9), out_abs_score=round(sum(map(mag, outs)), 9),
                          top_in=by(ins), top_out=by(outs))


def collect_evidence(model: LoadedModel, task: Task, circuit: Circuit, components: list[str],
                     cfg: EvidenceConfig | None = None, thresholds: dict | None = None) -> EvidenceBundle:
    """Evidence for the given heads (`a{L}.h{H}`) and MLPs (`m{L}`), and their held-out scoring data.
    thresholds: the heuristic's (overrides), for the name-mover set of the IOI measurements."""
    from .heuristic import THRESHOLDS
    from .ioi import collect_ioi

    cfg = cfg or EvidenceConfig()
    c = Collector(model, task, circuit, cfg)
    heads = [n for n in components if n.startswith("a")]
    mlps = [n for n in components if n.startswith("m")]
    bundle = EvidenceBundle(evidence={}, heldout=c.ho_ref,
                            info={**cfg.as_dict(), "evidence_rows": "even task rows", "held_out_rows": "odd task rows",
                                  "n_evidence_rows": len(c.ev_rows), "n_held_out_rows": len(c.ho_rows)})
    rep = c.repeated_patterns() if heads else None
    if heads:
        task_acc, best, answer_att = c.task_attention(heads, c.ev_rows, keep_all=False)
        _, ho_best, _ = c.task_attention(heads, c.ho_rows, keep_all=True)
    direct, mlp_acts, mlp_outs = c.direct_and_mlp(heads, mlps)
    ioi = collect_ioi(model, task, c.ev_rows, heads, {**THRESHOLDS, **(thresholds or {})}, c.ev_ref,
                      cfg.batch_size, c.pad_id) if heads else {}
    for node in heads:
        layer, head = parse_head(node)
        ev = HeadEvidence(
            patterns=[PatternScores(data=c.rep_ref, **rep.scores(layer, head)),
                      PatternScores(data=c.ev_ref, **task_acc.scores(layer, head))],
            ov=c.ov_copying(layer, head), top_pairs=c.top_pairs(best[node], c.ev_rows),
            top_pairs_data=c.ev_ref, answer_attention=answer_att[node], logits=direct[node],
            importance=c.importance(node), ioi=ioi.get(node))
        bundle.evidence[node] = ev
        bundle.pairs[node] = c.heldout_pairs(ho_best[node], node)
    if mlps:
        with torch.no_grad():
            embed_rms = float(model.hf_model.get_input_embeddings().weight.float().pow(2).mean().sqrt())
        for node in mlps:
            ev = c.mlp_evidence(node, mlp_acts[node], mlp_outs[node], embed_rms)
            ev.importance = c.importance(node)
            bundle.evidence[node] = ev
            bundle.contexts[node] = [] if ev.silent else c.heldout_contexts(node)
    return bundle
