"""An independent, deliberately plain edge-patching forward for GPT-2, written from the definition
(no code shared with discovery/): every source's write is kept by name, and each reader's input is
the sum of its upstream sources' writes, live for edges in the circuit and reference for edges out,
plus the constant attention-output biases."""

import torch


def gpt2_edge_forward(model, ids, ref=None, off=frozenset()):
    t, cfg = model.transformer, model.config
    n_heads, d = cfg.n_head, cfg.n_embd
    dh = d // n_heads
    p = ids.shape[1]
    outs = {"input": t.wte(ids) + t.wpe(torch.arange(p))[None]}
    order = ["input"]
    bias = torch.zeros(d)
    causal = torch.tril(torch.ones(p, p, dtype=torch.bool))

    def reader(name):
        x = bias.clone()
        for s in order:
            x = x + (ref[s] if f"{s}->{name}" in off else outs[s])
        return x

    for layer in range(cfg.n_layer):
        blk = t.h[layer]
        w, b = blk.attn.c_attn.weight, blk.attn.c_attn.bias
        new = []
        for h in range(n_heads):
            cols = lambda i: slice(i * d + h * dh, i * d + (h + 1) * dh)
            q = blk.ln_1(reader(f"a{layer}.h{h}<q>")) @ w[:, cols(0)] + b[cols(0)]
            k = blk.ln_1(reader(f"a{layer}.h{h}<k>")) @ w[:, cols(1)] + b[cols(1)]
            v = blk.ln_1(reader(f"a{layer}.h{h}<v>")) @ w[:, cols(2)] + b[cols(2)]
            scores = (q @ k.transpose(-1, -2)) / dh**0.5
            pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
            outs[f"a{layer}.h{h}"] = (pattern @ v) @ blk.attn.c_proj.weight[h * dh:(h + 1) * dh]
            new.append(f"a{layer}.h{h}")
        order += new
        bias = bias + blk.attn.c_proj.bias
        outs[f"m{layer}"] = blk.mlp(blk.ln_2(reader(f"m{layer}")))
        order.append(f"m{layer}")
    return model.lm_head(t.ln_f(reader("logits"))), outs
