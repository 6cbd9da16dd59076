"""Planted circuits: random-weight models whose true edge set is known by construction.

`plant(family, circuit, noise, seed)` builds a small random-weight Hugging Face causal LM of a
supported family and calibrates it so that every component matters (random init is near-silent: its
attention is almost uniform and its writes are tiny). Then it multiplies the writes of every head and
MLP *not* in the circuit by `noise`: a head's slice of the attention output projection (GPT-2 `c_proj`
rows, NeoX `dense` / Llama `o_proj` columns, through the adapter's per-head views) and an MLP's output
projection weight and bias. At noise 0 the model computes exactly what the circuit computes, so every
edge out of or into a non-circuit component has zero effect; as the noise grows the other components
leak back in. The result is an ordinary HF model (`Planted.save` writes it for the CLI).

The task (token rows) pairs clean and corrupted prompts that are independent random sequences of
equal length, so every position differs and every edge of the circuit carries a difference; the answer
and wrong tokens are the noise-0 model's top next token on the clean and on the corrupted prompt. It
depends on the seed and the circuit only, so a noise sweep compares one task across noise levels.

Node ids are those of `discovery.core.graph`: `a{L}.h{H}` (query head H of layer L) and `m{L}` (an MLP).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core import nodes
from ..core.errors import UserError
from ..core.graph import Graph
from ..model.adapters import LoadedModel, check_supported, wrap_model
from ..model.tasks import Task, task_from_rows

FAMILIES = ("gpt2", "neox", "llama", "qwen2", "mistral")
_ALIASES = {"gpt_neox": "neox"}
VOCAB = 64


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{name} must be an integer >= {low} (got {value!r})")


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UserError(f"{name} must be a positive number (got {value!r})")


def planted_config(family: str, n_layers: int = 3, d_model: int = 32, n_heads: int = 4,
                   n_kv_heads: int | None = None, vocab_size: int = VOCAB, max_positions: int = 64):
    """A small config of one family. Llama and Mistral default to grouped-query attention (2 key/value
    heads; Mistral with a sliding window of 4), Qwen2 to one key/value head; NeoX uses the parallel
    residual with partial rotary. Embeddings are untied: with tied ones the direct path makes "repeat
    the last token" the top prediction, and the task's answers would hardly depend on the circuit."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig, Qwen2Config

    fam = _ALIASES.get(family, family)
    if fam not in FAMILIES:
        raise UserError(f"unknown family '{family}'; choose one of {', '.join(FAMILIES)} or pass a transformers config")
    for name, value, low in (("n_layers", n_layers, 1), ("d_model", d_model, 1), ("n_heads", n_heads, 1),
                             ("vocab_size", vocab_size, 2), ("max_positions", max_positions, 1)):
        _check_int(name, value, low)
    if d_model % n_heads:
        raise UserError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
    d_mlp = 2 * d_model
    if fam == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_positions=max_positions, n_embd=d_model, n_layer=n_layers,
                          n_head=n_heads, n_inner=d_mlp, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0,
                          embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False)
    common = dict(vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=n_layers,
                  num_attention_heads=n_heads, intermediate_size=d_mlp, max_position_embeddings=max_positions,
                  tie_word_embeddings=False)
    if fam == "neox":
        return GPTNeoXConfig(**common, use_parallel_residual=True, rotary_pct=0.5, hidden_dropout=0.0,
                             attention_dropout=0.0)
    kv = n_kv_heads if n_kv_heads is not None else (1 if fam == "qwen2" else min(2, n_heads))
    if isinstance(kv, bool) or not isinstance(kv, int) or kv < 1 or n_heads % kv:
        raise UserError(f"n_kv_heads must be a positive divisor of n_heads ({n_heads}) (got {kv!r})")
    if fam == "llama":
        return LlamaConfig(**common, num_key_value_heads=kv)
    if fam == "qwen2":
        return Qwen2Config(**common, num_key_value_heads=kv)
    return MistralConfig(**common, num_key_value_heads=kv, sliding_window=4)


# --- the model's own modules, per family -------------------------------------------------------------

def _blocks(model):
    t = model.config.model_type
    return model.transformer.h if t == "gpt2" else model.gpt_neox.layers if t == "gpt_neox" else model.model.layers


def _attn(model, layer: int):
    block, t = _blocks(model)[layer], model.config.model_type
    return block.attn if t == "gpt2" else block.attention if t == "gpt_neox" else block.self_attn


def _attn_out_proj(model, layer: int):
    """The attention output projection; its input is the heads' outputs z, head-major."""
    block, t = _blocks(model)[layer], model.config.model_type
    return block.attn.c_proj if t == "gpt2" else block.attention.dense if t == "gpt_neox" else block.self_attn.o_proj


def _mlp(model, layer: int):
    return _blocks(model)[layer].mlp


def _mlp_out_proj(model, layer: int):
    mlp, t = _mlp(model, layer), model.config.model_type
    return mlp.c_proj if t == "gpt2" else mlp.dense_4h_to_h if t == "gpt_neox" else mlp.down_proj


def _capture(model, ids, module, pre: bool) -> torch.Tensor:
    """A module's input (pre=True) or output in one forward pass of the model."""
    seen = {}
    if pre:
        hook = module.register_forward_pre_hook(
            lambda m, args, kwargs: seen.__setitem__("x", args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True)
    else:
        hook = module.register_forward_hook(lambda m, args, out: seen.__setitem__("x", out))
    try:
        model(input_ids=ids)
    finally:
        hook.remove()
    return seen["x"]


# --- nodes ---------------------------------------------------------------------------------------------

def component_ids(n_layers: int, n_heads: int) -> list[str]:
    """Every head and MLP, in the graph's source order."""
    out = []
    for layer in range(n_layers):
        out += [nodes.head_id(layer, h) for h in range(n_heads)] + [nodes.mlp_id(layer)]
    return out


def parse_node(node, n_layers: int, n_heads: int) -> tuple[int, int | None]:
    """(layer, head) of `a{L}.h{H}`, (layer, None) of `m{L}`; a UserError saying what to fix otherwise."""
    fmt = "circuit nodes are 'a{L}.h{H}' (head H of layer L) or 'm{L}' (the MLP of layer L), e.g. 'a0.h1', 'm2'"
    if not isinstance(node, str):
        raise UserError(f"circuit node {node!r} is not a string; {fmt}")
    try:
        parsed = nodes.parse_node(node)
    except ValueError:
        parsed = None
    if parsed is None or parsed.kind not in ("attention", "mlp"):
        raise UserError(f"unknown circuit node '{node}'; {fmt}")
    layer, head = parsed.layer, parsed.head
    if not 0 <= layer < n_layers:
        raise UserError(f"circuit node '{node}': layer {layer} is out of range; this model has layers 0..{n_layers - 1}")
    if head is not None and not 0 <= head < n_heads:
        raise UserError(f"circuit node '{node}': head {head} is out of range; this model has heads 0..{n_heads - 1}")
    return layer, head


def default_circuit(n_layers: int, n_heads: int, seed: int) -> list[str]:
    """One head per layer (so every later head reads an earlier one) and one MLP, drawn from the seed."""
    g = torch.Generator().manual_seed(10_007 * seed + 1)
    heads = [f"a{layer}.h{int(torch.randint(n_heads, (1,), generator=g))}" for layer in range(n_layers)]
    return heads + [f"m{int(torch.randint(n_layers, (1,), generator=g))}"]


# --- building ------------------------------------------------------------------------------------------

@torch.no_grad()
def _scale_writes(model, adapter, nodes, factor: float) -> None:
    """Multiply the residual-stream writes of the given heads/MLPs by factor, in place."""
    for node in nodes:
        layer, head = parse_node(node, adapter.n_layers, adapter.n_heads)
        if head is not None:
            adapter.heads(layer).out[head].mul_(factor)  # a view of the output projection's weight
        else:
            proj = _mlp_out_proj(model, layer)
            proj.weight.mul_(factor)
            if proj.bias is not None:
                proj.bias.mul_(factor)


@torch.no_grad()
def _score_std(model, adapter, ids, layer: int) -> torch.Tensor:
    """Standard deviation of one layer's causal attention scores q.k * scale (before rotary)."""
    x = _capture(model, ids, _attn(model, layer), pre=True)  # the normalised attention input
    w = adapter.heads(layer)
    q = torch.einsum("npm,hkm->nhpk", x, w.q) + (w.q_bias[None, :, None] if w.q_bias is not None else 0)
    k = torch.einsum("npm,hkm->nhpk", x, w.k) + (w.k_bias[None, :, None] if w.k_bias is not None else 0)
    k = k.repeat_interleave(adapter.n_heads // adapter.n_kv_heads, dim=1)
    scores = (q @ k.transpose(-1, -2)) * adapter.attn_scale(layer)
    causal = torch.tril(torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool, device=ids.device))
    return scores[..., causal].std()


@torch.no_grad()
def _component_writes(model, ids, layer: int) -> dict[str, torch.Tensor]:
    """Each head's and the MLP's write to the residual stream at one layer."""
    proj, n_heads = _attn_out_proj(model, layer), model.config.num_attention_heads
    z = _capture(model, ids, proj, pre=True).unflatten(-1, (n_heads, -1))  # [N, P, H, d_head]
    w_out = proj.weight if model.config.model_type == "gpt2" else proj.weight.T  # [H * d_head, d]
    per_head = torch.einsum("nphk,hkm->nphm", z, w_out.reshape(n_heads, z.shape[-1], -1))
    out = {f"a{layer}.h{h}": per_head[:, :, h] for h in range(n_heads)}
    out[f"m{layer}"] = _capture(model, ids, _mlp(model, layer), pre=False)
    return out


def _build_base(config, seed: int, weight_scale: float, write_gain: float, score_std: float) -> LoadedModel:
    """The unplanted model. HF init under a fixed seed (the global RNG is left as it was), every 2-D
    weight times weight_scale; then, layer by layer on random tokens, (1) the layer's query and key
    weights are scaled so its attention scores have standard deviation score_std (random init attends
    almost uniformly, so queries and keys would hardly matter) and (2) each head's and the MLP's write
    is rescaled to write_gain times the embedding's RMS (random init leaves the writes near-silent)."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(weight_scale)
    lm = wrap_model(model.eval(), name=f"planted-{config.model_type}-seed{seed}")
    adapter = lm.adapter
    ids = torch.randint(lm.vocab_size, (32, 16), generator=torch.Generator().manual_seed(10_007 * seed + 3))
    with torch.no_grad():
        target = write_gain * model.get_input_embeddings()(ids).pow(2).mean().sqrt()
        for layer in range(adapter.n_layers):
            root = float((score_std / _score_std(model, adapter, ids, layer).clamp_min(1e-12)) ** 0.5)
            w = adapter.heads(layer)
            for t in (w.q, w.k, w.q_bias, w.k_bias):
                if t is not None:
                    t.mul_(root)
            for node, write in _component_writes(model, ids, layer).items():
                _scale_writes(model, adapter, [node], float(target / write.pow(2).mean().sqrt().clamp_min(1e-12)))
    return lm


@torch.no_grad()
def _make_rows(model, vocab: int, n_rows: int, seq_len: int, seed: int) -> list[dict]:
    """Independent random clean and corrupted prompts; answer = the model's top next token on clean,
    wrong = on corrupted (pairs where the two coincide are skipped)."""
    g = torch.Generator().manual_seed(10_007 * seed + 2)
    rows = []
    for _ in range(100):
        clean, corrupted = torch.randint(vocab, (2, 2 * n_rows, seq_len), generator=g)
        answer = model(input_ids=clean).logits[:, -1].argmax(-1)
        wrong = model(input_ids=corrupted).logits[:, -1].argmax(-1)
        for c, k, a, w in zip(clean.tolist(), corrupted.tolist(), answer.tolist(), wrong.tolist()):
            if a != w and len(rows) < n_rows:
                rows.append({"clean_ids": c, "corrupted_ids": k, "answer_id": a, "wrong_id": w})
        if len(rows) == n_rows:
            return rows
    raise UserError("could not draw task rows whose clean and corrupted top tokens differ; try another seed")


# --- the independent ablation --------------------------------------------------------------------------

@torch.no_grad()
def ablation_effects(model, task: Task, nodes=None) -> dict[str, float]:
    """Mean change of the task's logit difference (last token) when one component's output is replaced,
    at every position, by its output on the corrupted prompt; one component at a time.

    Independent of discovery's patching core: plain forwards of the HF model with hooks on its own
    modules (a head: its slice of the attention output projection's input; an MLP: the module's
    output). Needs clean and corrupted prompts of one common length, as planted tasks have."""
    cfg = model.config
    n_layers, n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
    d_head = _attn_out_proj(model, 0).weight.numel() // cfg.hidden_size // n_heads
    nodes = component_ids(n_layers, n_heads) if nodes is None else list(nodes)
    lengths = {len(x) for x in task.clean_ids + task.corrupted_ids}
    if len(lengths) != 1:
        raise UserError("ablation_effects needs clean and corrupted prompts all of one length")
    device = next(model.parameters()).device
    clean, corrupted = torch.tensor(task.clean_ids, device=device), torch.tensor(task.corrupted_ids, device=device)

    def metric(logits) -> torch.Tensor:
        last = logits[:, -1].double()
        right = torch.stack([last[i, a].mean() for i, a in enumerate(task.answer_ids)])
        wrong = torch.stack([last[i, w].mean() for i, w in enumerate(task.wrong_ids)])
        return (right - wrong).mean()

    recorded, handles = {}, []
    for layer in range(n_layers):
        handles.append(_attn_out_proj(model, layer).register_forward_pre_hook(
            lambda m, args, layer=layer: recorded.__setitem__(("z", layer), args[0].clone())))
        handles.append(_mlp(model, layer).register_forward_hook(
            lambda m, args, out, layer=layer: recorded.__setitem__(("mlp", layer), out.clone())))
    try:
        model(input_ids=corrupted)
    finally:
        for h in handles:
            h.remove()
    base = metric(model(input_ids=clean).logits)

    def patch_head(m, args, layer, head):
        z = args[0].clone()
        cols = slice(head * d_head, (head + 1) * d_head)
        z[..., cols] = recorded[("z", layer)][..., cols]
        return (z,) + tuple(args[1:])

    effects = {}
    for node in nodes:
        layer, head = parse_node(node, n_layers, n_heads)
        if head is None:
            handle = _mlp(model, layer).register_forward_hook(lambda m, a, out, layer=layer: recorded[("mlp", layer)])
        else:
            handle = _attn_out_proj(model, layer).register_forward_pre_hook(
                lambda m, args, layer=layer, head=head: patch_head(m, args, layer, head))
        try:
            effects[node] = float(metric(model(input_ids=clean).logits) - base)
        finally:
            handle.remove()
    return effects


# --- the planted model ---------------------------------------------------------------------------------

@dataclass
class Planted:
    """A planted-circuit model, its task and its ground truth.

    circuit_effects: each circuit component's ablation effect in the noise-0 model (ablation_effects),
    which sets the scale of noise_bound()."""

    model: LoadedModel
    task: Task
    circuit: tuple[str, ...]  # in the graph's source order
    noise: float
    seed: int
    circuit_effects: dict[str, float]
    params: dict  # the calibration: weight_scale, write_gain, score_std

    @property
    def graph(self) -> Graph:
        return Graph.from_adapter(self.model.adapter)

    def components(self) -> list[str]:
        a = self.model.adapter
        return component_ids(a.n_layers, a.n_heads)

    def node_roles(self) -> dict[str, str]:
        """Every head and MLP -> 'circuit', or 'noise' (its write scaled by the noise factor)."""
        return {c: "circuit" if c in self.circuit else "noise" for c in self.components()}

    def true_edges(self, graph: Graph | None = None) -> np.ndarray:
        """Bool per edge in the graph's edge order: the source is `input` or a circuit node, and the
        reader belongs to a circuit node or to the logits. A grouped key/value reader
        `a{L}.kv{G}<k|v>` belongs to every query head of group G, so it is true when any is in the circuit."""
        a = self.model.adapter
        g = graph if graph is not None else self.graph
        if (g.n_layers, g.n_heads, g.n_kv_heads, g.parallel) != (a.n_layers, a.n_heads, a.n_kv_heads, a.parallel):
            raise UserError(f"the graph ({g.n_layers} layers, {g.n_heads} heads, {g.n_kv_heads} kv heads, "
                            f"parallel={g.parallel}) is not this model's ({a.n_layers}, {a.n_heads}, {a.n_kv_heads}, "
                            f"parallel={a.parallel}); pass Graph.from_adapter(planted.model.adapter) or no graph")
        circuit, group = set(self.circuit), g.n_heads // g.n_kv_heads

        def reader_true(owner: str) -> bool:
            if owner == "logits" or owner in circuit:
                return True
            kv = nodes.parse_node(owner)
            if kv.kind == "kv_head":
                return any(h in circuit for h in nodes.group_heads(kv.layer, kv.head, group))
            return False

        src = np.array([s == "input" or s in circuit for s in g.sources])
        dst = np.array([reader_true(o) for o in g.reader_owner])
        return src[g.edge_src] & dst[g.edge_dst]

    def true_edge_names(self) -> list[str]:
        g = self.graph
        return [name for name, t in zip(g.edge_names, self.true_edges(g)) if t]

    def ablation_effects(self, nodes=None) -> dict[str, float]:
        """Each component's ablation effect on the task metric in this model (see ablation_effects)."""
        return ablation_effects(self.model.hf_model, self.task, nodes)

    def noise_bound(self) -> float:
        """2 * noise * M, with M = the largest |ablation effect| of a circuit component in the noise-0
        model. Every component's write is calibrated to the same RMS, so a full-strength non-circuit
        component would matter about as much as a circuit one; its write scaled by `noise` changes the
        metric, to first order, by noise times that. First order only: the factor 2 is slack for the
        rest (the residual stream, hence every norm, shifts with the noise). Over 5 families x 5 seeds
        (default sizes, noise 0.01, 0.1 and 0.3) the largest non-circuit effect was at most 0.54 of
        this bound; with M taken from the unplanted (noise 1) model instead, the bound failed by up
        to 3x (Llama), because the circuit alone is more sensitive than the full model."""
        return 2.0 * self.noise * max(abs(v) for v in self.circuit_effects.values())

    def save(self, directory) -> Path:
        """Write `model/` (HF format, for `circuitry --model`), `task.jsonl` and `truth.json`."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.model.hf_model.save_pretrained(out / "model")
        with open(out / "task.jsonl", "w") as f:
            for c, k, a, w in zip(self.task.clean_ids, self.task.corrupted_ids, self.task.answer_ids,
                                  self.task.wrong_ids):
                f.write(json.dumps({"clean_ids": c, "corrupted_ids": k, "answer_id": a, "wrong_id": w}) + "\n")
        truth = {"circuit": list(self.circuit), "noise": self.noise, "seed": self.seed, **self.params,
                 "noise_bound": self.noise_bound(), "true_edges": self.true_edge_names()}
        (out / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
        return out


def plant(family_or_config="gpt2", circuit: list[str] | None = None, noise: float = 0.0, seed: int = 0, *,
          n_layers: int = 3, d_model: int = 32, n_heads: int = 4, n_kv_heads: int | None = None,
          vocab_size: int = VOCAB, n_rows: int = 16, seq_len: int = 8, weight_scale: float = 3.0,
          write_gain: float = 1.0, score_std: float = 3.0, device=None) -> Planted:
    """A planted-circuit model of a family (`gpt2`, `neox`, `llama`, `qwen2`, `mistral`; sized by
    n_layers, d_model, n_heads, n_kv_heads, vocab_size) or of a given transformers config.

    circuit: head and MLP ids (`a{L}.h{H}`, `m{L}`); None draws one from the seed (default_circuit).
    noise: the factor (>= 0) on every other component's write; 0 makes the circuit exact.
    seed: fixes the weights, the default circuit and the task (n_rows rows of seq_len tokens).
    weight_scale, write_gain, score_std: the calibration (see _build_base). The model is built on the
    CPU (so a seed gives the same weights everywhere), then moved to `device`."""
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise UserError(f"noise must be a finite number >= 0 (got {noise!r}); 0 plants an exact circuit")
    _check_int("seed", seed, 0)
    _check_int("n_rows", n_rows, 1)
    _check_int("seq_len", seq_len, 1)
    for name, value in (("weight_scale", weight_scale), ("write_gain", write_gain), ("score_std", score_std)):
        _check_positive(name, value)
    if isinstance(family_or_config, str):
        config = planted_config(family_or_config, n_layers, d_model, n_heads, n_kv_heads, vocab_size,
                                max_positions=max(64, seq_len))
    else:
        check_supported(getattr(family_or_config, "model_type", type(family_or_config).__name__))
        config = family_or_config
    n_layers, n_heads = config.num_hidden_layers, config.num_attention_heads
    if circuit is None:
        circuit = default_circuit(n_layers, n_heads, seed)
    if isinstance(circuit, str) or not isinstance(circuit, (list, tuple, set, frozenset)):
        raise UserError(f"circuit must be a list of node ids such as ['a0.h1', 'm2'] (got {circuit!r})")
    for node in circuit:
        parse_node(node, n_layers, n_heads)
    if not circuit:
        raise UserError("circuit is empty; give at least one head ('a{L}.h{H}') or MLP ('m{L}'), or None for a default")
    order = {c: i for i, c in enumerate(component_ids(n_layers, n_heads))}
    chosen = tuple(sorted(set(circuit), key=order.__getitem__))
    others = [c for c in order if c not in chosen]
    params = {"weight_scale": float(weight_scale), "write_gain": float(write_gain), "score_std": float(score_std)}

    lm = _build_base(config, seed, **params)
    exact = copy.deepcopy(lm.hf_model)  # the noise-0 model: it picks the task's answers and sets M
    _scale_writes(exact, wrap_model(exact).adapter, others, 0.0)
    name = f"planted-{config.model_type}-seed{seed}"
    task = task_from_rows(_make_rows(exact, lm.vocab_size, n_rows, seq_len, seed), vocab_size=lm.vocab_size,
                          name=name)
    circuit_effects = ablation_effects(exact, task, chosen)
    del exact
    _scale_writes(lm.hf_model, lm.adapter, others, float(noise))
    if device is not None:  # re-wrapped: the adapter's per-head views belong to the parameters they came from
        lm = wrap_model(lm.hf_model.to(torch.device(device)))
    lm.name = f"{name}-noise{noise:g}"
    return Planted(lm, task, chosen, float(noise), seed, circuit_effects, params)
