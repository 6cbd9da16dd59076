"""An independent re-implementation of the EAP-IG library's node attribution (hannamw/EAP-IG,
src/eap/attribute_node.py, read on GitHub; no code copied) with plain torch hooks on the Hugging Face
model, sharing nothing with discovery/ (GPT-2 and Llama-style modules).

Its procedure: source nodes are the input (the token embedding, `hook_embed`), each head's write to
the residual (`attn.hook_result`: z_h through its slice of the output projection) and each MLP's
output (`hook_mlp_out`). The activation difference is corrupted - clean; a node's score is
sum over examples, positions (and, for node scores, hidden dims) of difference * gradient, divided
by the number of examples (and of steps for IG). The gradient is taken at the node's output hook for
the input and the heads, but for MLPs at the MLP's *input* hook (`hook_mlp_in`: the copy of the
residual the MLP reads, so only the gradient through the MLP itself). `mlp_grad="input"` follows the
library there; `mlp_grad="output"` takes it at the MLP's output, as the definition of the score
(and discovery/methods/node.py) does. EAP: the clean run's gradients; EAP-IG-inputs: the token
embedding interpolated from corrupted to clean in `steps` steps, k/steps for k = 1..steps.

Also `patched_logits`: a plain re-run with one node's output (or some of its output dimensions)
replaced by the corrupted run's, for exact node and neuron patching.
"""

from __future__ import annotations

import torch


class Parts:
    """The modules a node lives in, per family."""

    def __init__(self, model):
        self.model = model
        if model.config.model_type == "gpt2":
            t = model.transformer
            self.embed, self.blocks = t.wte, list(t.h)
            self.out_proj = [b.attn.c_proj for b in self.blocks]
            self.mlp = [b.mlp for b in self.blocks]
            self.mlp_norm = [b.ln_2 for b in self.blocks]
            self.n_heads = model.config.n_head
        else:  # llama / qwen2 / mistral
            m = model.model
            self.embed, self.blocks = m.embed_tokens, list(m.layers)
            self.out_proj = [b.self_attn.o_proj for b in self.blocks]
            self.mlp = [b.mlp for b in self.blocks]
            self.mlp_norm = [b.post_attention_layernorm for b in self.blocks]
            self.n_heads = model.config.num_attention_heads

    def head_weight(self, layer: int, head: int) -> torch.Tensor:
        """[d_head, d_model]: head's slice of the output projection (x @ W convention)."""
        proj = self.out_proj[layer]
        d_head = proj.weight.shape[0 if self.model.config.model_type == "gpt2" else 1] // self.n_heads
        rows = slice(head * d_head, (head + 1) * d_head)
        return proj.weight[rows] if self.model.config.model_type == "gpt2" else proj.weight[:, rows].T

    def head_writes(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """z [N, P, H * d_head] (the output projection's input) -> per-head writes [N, P, H, d_model]."""
        n, p, _ = z.shape
        zh = z.view(n, p, self.n_heads, -1)
        return torch.stack([zh[:, :, h] @ self.head_weight(layer, h) for h in range(self.n_heads)], 2)


def _record(parts: Parts, ids: torch.Tensor):
    """Node outputs of a plain run: input [N, P, d], per layer head writes [N, P, H, d] and MLP outputs."""
    acts, handles = {"heads": {}, "mlp": {}}, []
    handles.append(parts.embed.register_forward_hook(lambda m, i, o: acts.__setitem__("input", o.detach())))
    for layer in range(len(parts.blocks)):
        handles.append(parts.out_proj[layer].register_forward_hook(
            lambda m, i, o, layer=layer: acts["heads"].__setitem__(layer, parts.head_writes(layer, i[0].detach()))))
        handles.append(parts.mlp[layer].register_forward_hook(
            lambda m, i, o, layer=layer: acts["mlp"].__setitem__(layer, o.detach())))
    with torch.no_grad():
        parts.model(ids)
    for h in handles:
        h.remove()
    return acts


def library_node_scores(model, clean, corrupted, metric, *, method="EAP", steps=5, mlp_grad="input",
                        neuron=False):
    """Scores in discovery's source order (input, then per layer heads then MLP): [n_sources] or
    [n_sources, d_model]. metric(logits [N, P, V]) -> scalar (summed over examples)."""
    parts = Parts(model)
    n_layers, h = len(parts.blocks), parts.n_heads
    clean_acts, corr_acts = _record(parts, clean), _record(parts, corrupted)
    diff_input = corr_acts["input"] - clean_acts["input"]
    diff_heads = {l: corr_acts["heads"][l] - clean_acts["heads"][l] for l in range(n_layers)}
    diff_mlp = {l: corr_acts["mlp"][l] - clean_acts["mlp"][l] for l in range(n_layers)}
    d = diff_input.shape[-1]
    scores = torch.zeros(1 + n_layers * (h + 1), d, dtype=torch.float64)
    alphas = [1.0] if method == "EAP" else [k / steps for k in range(1, steps + 1)]

    for alpha in alphas:
        grads, handles = {}, []

        def keep_grad(key):
            def hook(module, inputs, output):
                output.register_hook(lambda g: grads.__setitem__(key, g.detach()))
            return hook

        def embed_hook(module, inputs, output):
            x = (corr_acts["input"] + alpha * (clean_acts["input"] - corr_acts["input"])).requires_grad_(True)
            x.register_hook(lambda g: grads.__setitem__("input", g.detach()))
            return x

        handles.append(parts.embed.register_forward_hook(embed_hook))
        for layer in range(n_layers):
            handles.append(parts.out_proj[layer].register_forward_hook(keep_grad(("attn", layer))))
            if mlp_grad == "output":
                handles.append(parts.mlp[layer].register_forward_hook(keep_grad(("mlp", layer))))
            else:  # hook_mlp_in: a separate copy of the residual feeds the MLP (its norm), and the gradient there
                def pre(module, inputs, layer=layer):
                    x = inputs[0] * 1.0
                    x.register_hook(lambda g: grads.__setitem__(("mlp", layer), g.detach()))
                    return (x,) + tuple(inputs[1:])
                handles.append(parts.mlp_norm[layer].register_forward_pre_hook(pre))
        metric(model(clean).logits).backward()
        for hd in handles:
            hd.remove()
        model.zero_grad(set_to_none=True)

        def contract(diff, grad):
            return torch.einsum("np...m,npm->...m", diff.double(), grad.double())

        scores[0] += contract(diff_input, grads["input"])
        for layer in range(n_layers):
            row = 1 + layer * (h + 1)
            scores[row:row + h] += contract(diff_heads[layer], grads[("attn", layer)])
            scores[row + h] += contract(diff_mlp[layer], grads[("mlp", layer)])
    scores /= clean.shape[0] * len(alphas)
    return scores if neuron else scores.sum(1)


def patched_logits(model, clean, corrupted, node, dims=None):
    """Logits of a clean run in which `node`'s output (only its output dimensions `dims`, when given)
    is the corrupted run's; everything downstream is recomputed. node: one node's name, or a list of
    nodes whose outputs are all the corrupted run's (a node circuit's out-of-circuit nodes)."""
    parts = Parts(model)
    corr = _record(parts, corrupted)
    mask = None
    if dims is not None:
        mask = torch.zeros(corr["input"].shape[-1], dtype=torch.bool)
        mask[list(dims)] = True

    def mix(live, patched):
        return patched if mask is None else torch.where(mask, patched, live)

    handles = []
    for node in [node] if isinstance(node, str) else node:
        if node == "input":
            handles.append(parts.embed.register_forward_hook(lambda m, i, o: mix(o, corr["input"])))
        elif node.startswith("m"):
            layer = int(node[1:])
            handles.append(parts.mlp[layer].register_forward_hook(
                lambda m, i, o, layer=layer: mix(o, corr["mlp"][layer])))
        else:
            layer, head = (int(x) for x in node[1:].split(".h"))

            def hook(module, inputs, output, layer=layer, head=head):
                live = parts.head_writes(layer, inputs[0])[:, :, head]
                return output - live + mix(live, corr["heads"][layer][:, :, head])
            handles.append(parts.out_proj[layer].register_forward_hook(hook))
    with torch.no_grad():
        logits = model(clean).logits
    for handle in handles:
        handle.remove()
    return logits
