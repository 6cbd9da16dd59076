"""A 4-layer GPT-2 whose weights are set by hand so that each head has one known IOI role.

Every vector lives in its own direction of an orthonormal basis orthogonal to the all-ones vector (so
LayerNorm only rescales). Subspaces: TOK (token identity; the unembedding is the tied embedding), POS
(position), PREV (the previous token), DUPF (one "my token occurred before" flag), INH (the inhibited
name), SCR (scratch), CP (a name a name mover has copied) and SUP (a suppressed token: the unembedding
reads TOK[t] - SUP[t] for token t, so writing SUP[t] lowers t's logit). MLPs write nothing. A "sink" term (query
bias against position 0) gives every head somewhere to look when its pattern has no target; position 0
holds BOS, whose value is zero for every head that copies names.

Heads (layer.head: role):
- a0.h0 previous-token: query position p -> key p-1; writes the key's token into PREV.
- a0.h1 duplicate-token: query token t -> earlier keys holding t (itself excluded); writes DUPF.
- a0.h2 positional shortcut: query p -> key p-2 whatever the tokens; writes minus the key's token
  (at END, 2 back is S2 in these prompts: a fixed-offset "suppress the subject" that a label must not
  call a semantic role).
- a1.h0 induction: query token t -> keys whose PREV is t; writes SCR.
- a1.h1 S-inhibition: at END attends to DUPF (S2); writes INH[S].
- a2.h0 name mover: at END attends to names, minus INH (so to IO); writes +TOK[name] and CP[name].
- a2.h1 negative name mover: the same attention; writes -TOK[name] (half as strongly).
- a3.h0 backup name mover: a name mover's attention minus CP (a name already copied): attends to the
  sink while the name mover works, to IO when it is knocked out; writes +TOK[name].
- a0.h3, a1.h2, a1.h3, a2.h2, a2.h3, a3.h1-3: zero weights (silent).

Task rows (token rows): [BOS, A, B, f1, S, f2, END] with {A, B} = {IO, S} (ABBA and BABA alternate),
answer IO, wrong S; corrupted: S2 replaced by a third name."""

from __future__ import annotations

import random

import torch
from transformers import GPT2Config, GPT2LMHeadModel

BOS, END = 0, 11
NAMES = list(range(1, 7))
FILLERS = list(range(7, 11))
V, P, D, H = 12, 24, 192, 4
DH = D // H
C = 8.0  # attention logit per matching pair (at a LayerNorm gain of about two unit vectors)
W = 0.1  # value scale: a copied unit vector comes out about unit-sized after LayerNorm's gain

EXPECTED = {  # head -> its IOI / attention roles
    "a0.h0": {"previous_token"}, "a0.h1": {"duplicate_token"}, "a0.h2": {"positional"},
    "a1.h0": {"induction"}, "a1.h1": {"s_inhibition"}, "a2.h0": {"name_mover"},
    "a2.h1": {"negative_name_mover"}, "a3.h0": {"backup_name_mover"},
}
ROLES = ("previous_token", "duplicate_token", "induction", "name_mover", "negative_name_mover",
         "backup_name_mover", "s_inhibition", "copy_suppression")


class Basis:
    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        m = torch.randn(D, D, generator=g, dtype=torch.float64)
        m[:, 0] = 1.0
        q, _ = torch.linalg.qr(m)
        self.cols = q[:, 1:].T.float()  # orthonormal rows, all orthogonal to the ones vector
        self.next = 0
        self.spaces: dict[str, torch.Tensor] = {}

    def space(self, name: str, n: int) -> torch.Tensor:
        self.spaces[name] = self.cols[self.next:self.next + n]
        self.next += n
        return self.spaces[name]


def expected(shift: int = 0) -> dict[str, set[str]]:
    """EXPECTED for the model built with `shift` (each head index moved to (h + shift) mod H)."""
    return {f"a{n[1]}.h{(int(n[4:]) + shift) % H}": roles for n, roles in EXPECTED.items()}


def build(shift: int = 0) -> GPT2LMHeadModel:
    """The model; shift moves every head to index (h + shift) mod H in its layer (the roles follow)."""
    cfg = GPT2Config(vocab_size=V, n_positions=P, n_embd=D, n_layer=4, n_head=H, bos_token_id=BOS,
                     eos_token_id=BOS, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False)
    model = GPT2LMHeadModel(cfg)
    b = Basis()
    tok, pos, prev = b.space("TOK", V), b.space("POS", P), b.space("PREV", V)
    dupf, inh, scr, cp = b.space("DUPF", 1)[0], b.space("INH", V), b.space("SCR", V), b.space("CP", V)
    sup = b.space("SUP", V)
    names_dir = tok[NAMES].sum(0)
    gain2 = D / 2.0  # LayerNorm gain squared for a residual of about two unit vectors
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for blk in model.transformer.h:
            for ln in (blk.ln_1, blk.ln_2):
                ln.weight.fill_(1.0)
        model.transformer.ln_f.weight.fill_(1.0)
        model.transformer.wte.weight.copy_(tok)
        model.transformer.wpe.weight.copy_(pos)
        model.lm_head.weight.copy_(tok - sup)

        def head(layer, h, qk=(), ov=(), sink=0.0):
            """qk: (query vec, key vec, weight); ov: (in vec, out vec, weight); sink: weight of position 0."""
            attn = model.transformer.h[layer].attn
            h = (h + shift) % H
            wq, wk, wv = (attn.c_attn.weight[:, i * D + h * DH:i * D + (h + 1) * DH] for i in range(3))
            bq = attn.c_attn.bias[h * DH:(h + 1) * DH]
            terms = list(qk)
            assert len(terms) + (sink > 0) <= DH and len(ov) <= DH
            for r, (q, k, w) in enumerate(terms):
                s = (abs(w) * DH ** 0.5 / gain2) ** 0.5
                wq[:, r] = q * s * (1 if w > 0 else -1)
                wk[:, r] = k * s
            if sink:
                r = len(terms)
                bq[r] = sink * DH ** 0.5 / gain2 ** 0.5
                wk[:, r] = pos[0]
            wo = attn.c_proj.weight[h * DH:(h + 1) * DH]
            for r, (x, y, w) in enumerate(ov):
                wv[:, r] = x
                wo[r] = y * w

        head(0, 0, qk=[(pos[p], pos[p - 1], 4 * C) for p in range(1, P)],
             ov=[(tok[t], prev[t], W) for t in range(V)])
        head(0, 1, qk=[(tok[t], tok[t], C) for t in range(V)] + [(pos[p], pos[p], -3 * C) for p in range(P)],
             ov=[(tok[t], dupf, W) for t in range(1, V)], sink=C / 2)
        head(0, 2, qk=[(pos[p], pos[p - 2], 4 * C) for p in range(2, P)],
             ov=[(tok[t], sup[t], 0.5 * W) for t in NAMES])
        head(1, 0, qk=[(tok[t], prev[t], 2 * C) for t in range(V)], ov=[(tok[t], scr[t], W) for t in range(V)],
             sink=C / 2)
        head(1, 1, qk=[(tok[END], dupf, 3 * C)], ov=[(tok[t], inh[t], W) for t in NAMES], sink=C / 2)
        nm_qk = [(tok[END], names_dir, 2 * C)] + [(inh[t], tok[t], -3 * C) for t in NAMES]
        head(2, 0, qk=nm_qk, ov=[(tok[t], tok[t] + cp[t], W) for t in NAMES], sink=C / 2)
        head(2, 1, qk=nm_qk, ov=[(tok[t], tok[t], -0.5 * W) for t in NAMES], sink=C / 2)
        head(3, 0, qk=nm_qk + [(cp[t], tok[t], -6 * C) for t in NAMES], ov=[(tok[t], tok[t], W) for t in NAMES],
             sink=C / 2)
    return model.eval()


def rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        io, s, c = rng.sample(NAMES, 3)
        f1, f2 = rng.sample(FILLERS, 2)
        a, b = (io, s) if i // 2 % 2 == 0 else (s, io)  # ABBA and BABA in the even (evidence) rows too
        clean = [BOS, a, b, f1, s, f2, END]
        out.append({"clean_ids": clean, "corrupted_ids": clean[:4] + [c] + clean[5:], "answer_id": io, "wrong_id": s})
    return out
