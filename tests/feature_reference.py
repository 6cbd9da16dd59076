"""Test helpers for feature attribution: tiny transcoders as plain tensors, and an independent reference.

The reference recomputes the adjacency from the definitions, source by source: it adds one source's
write (a feature's a * W_dec, an error vector, a token embedding) to a zero residual stream, runs the
frozen *linear* replacement model forwards, and reads every target (feature pre-activations, demeaned
logits). It is built from the Hugging Face modules themselves (their own value/output projections,
attention patterns from `output_attentions`, norm inputs from forward hooks), not from discovery's
adapters or its backward engine."""

from __future__ import annotations

import torch


class TinyTranscoders(torch.nn.Module):
    """Per-layer (PLT) or cross-layer (CLT) transcoders with the agreed interface, random weights."""

    def __init__(self, n_layers, d_model, n_features, *, cross_layer=False, skip=False, activation="relu",
                 input_hook="mlp.hook_in", seed=0, density=0.5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.n_layers, self.d_model, self.n_features = n_layers, d_model, n_features
        self.cross_layer, self.has_skip, self.activation = cross_layer, skip, activation
        self.input_hook, self.output_hook = input_hook, "mlp.hook_out"
        self.W_enc = torch.randn(n_layers, n_features, d_model, generator=g) / d_model**0.5
        self.b_enc = torch.randn(n_layers, n_features, generator=g) * 0.3 - density * 0.3
        if cross_layer:
            self.W_dec = [torch.randn(n_features, n_layers - l, d_model, generator=g) * 0.2 for l in range(n_layers)]
        else:
            self.W_dec = [torch.randn(n_features, d_model, generator=g) * 0.2 for _ in range(n_layers)]
        self.b_dec = torch.randn(n_layers, d_model, generator=g) * 0.1
        self.W_skip = torch.randn(n_layers, d_model, d_model, generator=g) * 0.1 if skip else None
        self.threshold = torch.rand(n_layers, n_features, generator=g) * 0.3

    def as_transcoders(self):
        """The same weights as discovery's Transcoders module (what attribute() is given)."""
        from discovery.features.transcoders import Transcoders

        return Transcoders(self.W_enc, self.b_enc, self.W_dec, self.b_dec, W_skip=self.W_skip,
                           threshold=self.threshold, activation=self.activation, cross_layer=self.cross_layer,
                           input_hook=self.input_hook, output_hook=self.output_hook)

    def pre_activation(self, layer, x):
        return x.float() @ self.W_enc[layer].T + self.b_enc[layer]

    def encode(self, layer, x):
        pre = self.pre_activation(layer, x)
        if self.activation == "jumprelu":
            return pre * (pre > self.threshold[layer])
        return torch.relu(pre)

    def decoder(self, layer):
        return self.W_dec[layer]

    def skip(self, layer, x):
        return None if self.W_skip is None else x.float() @ self.W_skip[layer].T

    def reconstruct(self, inputs):
        acts = [self.encode(layer, x) for layer, x in enumerate(inputs)]
        out = []
        for layer, x in enumerate(inputs):
            y = self.b_dec[layer].expand(x.shape[0], -1).clone()
            if self.cross_layer:
                for src in range(layer + 1):
                    y = y + acts[src] @ self.W_dec[src][:, layer - src]
            else:
                y = y + acts[layer] @ self.W_dec[layer]
            if self.W_skip is not None:
                y = y + self.skip(layer, x)
            out.append(y)
        return out


# --- the frozen model, from the HF modules ------------------------------------------------------------

def _parts(hf):
    """Per-family module names: (blocks, attn norm, mlp norm, attention, final norm, parallel)."""
    t = hf.config.model_type
    if t == "gpt2":
        return hf.transformer.h, "ln_1", "ln_2", "attn", hf.transformer.ln_f, False
    if t == "gpt_neox":
        return hf.gpt_neox.layers, "input_layernorm", "post_attention_layernorm", "attention", \
            hf.gpt_neox.final_layer_norm, bool(hf.config.use_parallel_residual)
    return hf.model.layers, "input_layernorm", "post_attention_layernorm", "self_attn", hf.model.norm, False


def values_out(hf, attn, x, pattern):
    """The attention's output with a given pattern [H, P, P] on inputs x [S, P, d], via its own modules."""
    t, cfg = hf.config.model_type, hf.config
    d, h = cfg.hidden_size, cfg.num_attention_heads
    dh = d // h
    s, p = x.shape[:2]
    if t == "gpt2":
        v = attn.c_attn(x)[..., 2 * d:].view(s, p, h, dh)
    elif t == "gpt_neox":
        v = attn.query_key_value(x).view(s, p, h, 3 * dh)[..., 2 * dh:]
    else:
        kv = cfg.num_key_value_heads
        v = attn.v_proj(x).view(s, p, kv, 1, dh).expand(s, p, kv, h // kv, dh).reshape(s, p, h, dh)
    z = torch.einsum("hqk,skhe->sqhe", pattern, v).reshape(s, p, d)
    return attn.c_proj(z) if t == "gpt2" else (attn.dense(z) if t == "gpt_neox" else attn.o_proj(z))


def _norm_linear(module, y_seen):
    """The norm at its operating point as a linear map (scale frozen from its recorded input)."""
    centered = isinstance(module, torch.nn.LayerNorm)
    y_seen = y_seen.float()
    if centered:
        scale = torch.sqrt(y_seen.var(-1, unbiased=False) + module.eps)
    else:
        scale = torch.sqrt(y_seen.pow(2).mean(-1) + module.variance_epsilon)
    w = module.weight.float()

    def lin(y):
        c = y - y.mean(-1, keepdim=True) if centered else y
        return w * c / scale[: y.shape[-2], None]

    bias = module.bias.float() if getattr(module, "bias", None) is not None else torch.zeros_like(w)
    return lin, bias


class FrozenReference:
    """The model on one prompt with patterns and norm scales frozen, built from the HF modules."""

    def __init__(self, hf, ids, tc):
        self.hf, self.tc, self.ids = hf, tc, ids
        blocks, n1, n2, attn, final, self.parallel = _parts(hf)
        self.blocks, self.attn_name = blocks, attn
        seen = {}
        hooks = []
        for i, b in enumerate(blocks):
            for name in (n1, n2):
                hooks.append(getattr(b, name).register_forward_pre_hook(
                    lambda m, a, key=(i, name): seen.__setitem__(key, a[0][0].detach())))
            hooks.append(b.mlp.register_forward_hook(
                lambda m, a, o, i=i: seen.__setitem__((i, "mlp"), (a[0][0].detach(), o[0].detach()))))
        hooks.append(final.register_forward_pre_hook(lambda m, a: seen.__setitem__("final", a[0][0].detach())))
        hf.set_attn_implementation("eager")
        with torch.no_grad():
            out = hf(ids[None], output_attentions=True)
        for hk in hooks:
            hk.remove()
        self.logits = out.logits[0].float()
        self.patterns = [a[0].float() for a in out.attentions]
        self.n1 = [_norm_linear(getattr(b, n1), seen[(i, n1)]) for i, b in enumerate(blocks)]
        self.n2 = [_norm_linear(getattr(b, n2), seen[(i, n2)]) for i, b in enumerate(blocks)]
        self.nf = _norm_linear(final, seen["final"])
        self.mlp_in = [seen[(i, "mlp")][0].float() for i in range(len(blocks))]
        self.mlp_out = [seen[(i, "mlp")][1].float() for i in range(len(blocks))]
        self.resid_mid = [seen[(i, n2)].float() for i in range(len(blocks))]
        pre = "resid_mid" in tc.input_hook
        self.tc_in = self.resid_mid if pre else self.mlp_in

    def attn_linear(self, layer, x):
        attn = getattr(self.blocks[layer], self.attn_name)
        return values_out(self.hf, attn, x, self.patterns[layer]) - values_out(
            self.hf, attn, torch.zeros_like(x[:1]), self.patterns[layer])

    def run(self, writes, embed=None):
        """Linear frozen forward of S perturbations. writes: {layer: [S, P, d]} added to the MLP
        outputs; embed [S, P, d] the residual's start. Returns (per layer the transcoder input
        perturbation [S, P, d], final-norm output perturbation [S, P, d])."""
        S, P, d = embed.shape
        r = embed
        tc_in = []
        pre = "resid_mid" in self.tc.input_hook
        for layer in range(len(self.blocks)):
            a = self.attn_linear(layer, self.n1[layer][0](r))
            mid = r if self.parallel else r + a
            x = self.n2[layer][0](mid)
            xin = mid if pre else x
            tc_in.append(xin)
            m = writes.get(layer, torch.zeros_like(r))
            if self.tc.has_skip:
                m = m + self.tc.skip(layer, xin)
            r = mid + m + (a if self.parallel else 0)
        return tc_in, self.nf[0](r)


def reference_adjacency(graph, hf, tc):
    """R [n_features + n_logits, n_sources] recomputed source by source from the definitions."""
    ids = torch.tensor(graph.tokens)
    ref = FrozenReference(hf, ids, tc)
    L, P, d = graph.n_layers, graph.n_pos, hf.config.hidden_size
    feats, acts = graph.features, graph.activations
    errors = [m - r for m, r in zip(ref.mlp_out, tc.reconstruct(ref.tc_in))]
    tok = hf.get_input_embeddings()(ids).float()
    n_src = graph.n_sources
    embed = torch.zeros(n_src, P, d)
    writes = {layer: torch.zeros(n_src, P, d) for layer in range(L)}
    for s, (layer, pos, f) in enumerate(feats.tolist()):
        dec = tc.decoder(layer)[f].float() * acts[s]
        if tc.cross_layer:
            for k in range(L - layer):
                writes[layer + k][s, pos] += dec[k]
        else:
            writes[layer][s, pos] += dec
    nf = graph.n_features
    for layer in range(L):
        for pos in range(1, P):  # position 0 has no error node
            writes[layer][nf + layer * P + pos, pos] = errors[layer][pos]
    for pos in range(P):
        embed[nf + L * P + pos, pos] = tok[pos]
    tc_in, final = ref.run(writes, embed)
    rows = torch.zeros(graph.n_features + graph.n_logits, n_src)
    for t, (layer, pos, f) in enumerate(feats.tolist()):
        rows[t] = tc_in[layer][:, pos] @ tc.W_enc[layer][f]
    w = hf.get_output_embeddings().weight.float()
    for i, tok_id in enumerate(graph.logit_tokens):
        rows[nf + i] = final[:, -1] @ (w[tok_id] - w.mean(0))
    return rows, ref, errors
