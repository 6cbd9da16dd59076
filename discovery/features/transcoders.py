"""A model's transcoders: sparse features that stand in for its MLPs (one torch module for all layers).

Definitions (layer l, x the MLP's input after its norm, shape [..., d_model]; all products in fp32):

    pre_l(x)  = x @ W_enc[l]ᵀ + b_enc[l]                       [..., F]
    f_l(x)    = relu(pre)                                       activation "relu"
              = pre * (pre > threshold[l])                      "jumprelu" (per-feature threshold; circuit-tracer's)
              = relu(pre) with all but the k largest set to 0   "topk" (sparsify's: top-k of relu(pre))
    skip_l(x) = x @ W_skip[l]ᵀ                                  (skip transcoders only)

Per-layer transcoders (PLT): decoder(l) is W_dec[l] [F, d_model] and the approximation of MLP l's output is
    y_l = f_l(x_l) @ W_dec[l] + b_dec[l] + skip_l(x_l).
Cross-layer transcoders (CLT): decoder(l) is W_dec[l] [F, n_layers - l, d_model], features of layer l write
to layers l..n_layers-1, and
    y_j = Σ_{l ≤ j} f_l(x_l) @ W_dec[l][:, j - l] + b_dec[j] + skip_j(x_j).

`input_hook` / `output_hook` are circuit-tracer's `feature_input_hook` / `feature_output_hook` strings
("mlp.hook_in" = the MLP's input after its norm, "mlp.hook_out" or "hook_mlp_out" = its output;
"hook_resid_mid" would mean the residual before the norm). Files: discovery/features/transcoder_files.py.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..core.errors import UserError
from .transcoder_files import (CONFIG, MLP_IN, MLP_OUT, RawTranscoders, download_hub_transcoders, read_transcoders,
                               write_clt_files, write_config, write_layer_file)

ACTIVATIONS = ("relu", "jumprelu", "topk")
TOY_TRANSCODERS = "transcoders"  # the folder inside a shipped toy model's directory


class Transcoders(nn.Module):
    """Transcoders for every MLP layer of one model (see the module docstring for the exact maps).

    Weights keep the dtype they were given (bf16 is fine); every method computes and returns fp32."""

    def __init__(self, W_enc, b_enc, W_dec, b_dec, *, W_skip=None, threshold=None, activation: str = "relu",
                 k: int | None = None, cross_layer: bool = False, input_hook: str = MLP_IN,
                 output_hook: str = MLP_OUT, scan: str | None = None):
        """W_enc [L, F, d], b_enc [L, F], b_dec [L, d], W_skip [L, d, d] or None, threshold [L, F] or None (tensors
        or per-layer lists); W_dec a list of L tensors, [F, d] each (PLT) or [F, L - l, d] (CLT)."""
        super().__init__()
        if activation not in ACTIVATIONS:
            raise UserError(f"activation '{activation}' is not one of {', '.join(ACTIVATIONS)}")
        if activation == "jumprelu" and threshold is None:
            raise UserError("a jumprelu transcoder needs a per-feature threshold")
        if activation == "topk" and not (isinstance(k, int) and k > 0):
            raise UserError("a topk transcoder needs a positive integer k")
        stack = (lambda t: t if isinstance(t, torch.Tensor) else torch.stack(list(t)))
        self.W_enc = nn.Parameter(stack(W_enc), requires_grad=False)
        self.b_enc = nn.Parameter(stack(b_enc), requires_grad=False)
        self.b_dec = nn.Parameter(stack(b_dec), requires_grad=False)
        self.W_dec = nn.ParameterList([nn.Parameter(w, requires_grad=False) for w in W_dec])
        self.W_skip = nn.Parameter(stack(W_skip), requires_grad=False) if W_skip is not None else None
        self.threshold = nn.Parameter(stack(threshold), requires_grad=False) \
            if threshold is not None and activation == "jumprelu" else None
        self.n_layers, self.n_features, self.d_model = self.W_enc.shape
        self.cross_layer, self.activation, self.k = bool(cross_layer), activation, k
        self.input_hook, self.output_hook, self.scan = input_hook, output_hook, scan

    @property
    def has_skip(self) -> bool:
        return self.W_skip is not None

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def extra_repr(self) -> str:
        kind = "CLT" if self.cross_layer else "PLT"
        act = f"topk (k={self.k})" if self.activation == "topk" else self.activation
        return (f"{kind}, {self.n_layers} layers x {self.n_features} features, d_model {self.d_model}, {act}"
                f"{', skip' if self.has_skip else ''}, {self.input_hook} -> {self.output_hook}")

    # --- the maps ------------------------------------------------------------------------------
    def pre_activation(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x @ W_enc[layer]ᵀ + b_enc[layer] in fp32, [..., n_features]."""
        return x.float() @ self.W_enc[layer].float().T + self.b_enc[layer].float()

    def activate(self, layer: int, pre: torch.Tensor) -> torch.Tensor:
        """The activation function of `layer` applied to pre-activations."""
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "jumprelu":
            return pre * (pre > self.threshold[layer].float())
        acts = torch.relu(pre)
        k = min(self.k, acts.shape[-1])
        values, idx = acts.topk(k, dim=-1)
        return torch.zeros_like(acts).scatter_(-1, idx, values)

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Feature activations [..., n_features] (fp32) from the MLP input x (after its norm)."""
        return self.activate(layer, self.pre_activation(layer, x))

    def decoder(self, layer: int) -> torch.Tensor:
        """PLT: [n_features, d_model]; CLT: [n_features, n_layers - layer, d_model] (writes to layers layer..)."""
        return self.W_dec[layer]

    def skip(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """x @ W_skip[layer]ᵀ in fp32, or None without a skip connection."""
        return None if self.W_skip is None else x.float() @ self.W_skip[layer].float().T

    def decode(self, layer: int, acts: list[torch.Tensor], x: torch.Tensor | None = None) -> torch.Tensor:
        """The approximation of MLP `layer`'s output from the activations of every layer ≤ `layer`
        (acts[l] for l ≤ layer; a PLT uses only acts[layer]) and, for skip transcoders, its input x."""
        if self.cross_layer:
            out = sum(acts[src] @ self.W_dec[src][:, layer - src].float() for src in range(layer + 1))
        else:
            out = acts[layer] @ self.W_dec[layer].float()
        out = out + self.b_dec[layer].float()
        if self.W_skip is not None:
            if x is None:
                raise ValueError("a skip transcoder's decode needs the layer's input x")
            out = out + self.skip(layer, x)
        return out

    def reconstruct(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-layer MLP-output approximations (fp32) from the per-layer MLP inputs (after the norm)."""
        if len(inputs) != self.n_layers:
            raise ValueError(f"reconstruct needs {self.n_layers} layer inputs, got {len(inputs)}")
        acts = [self.encode(layer, x) for layer, x in enumerate(inputs)]
        return [self.decode(layer, acts, inputs[layer]) for layer in range(self.n_layers)]

    def layer_tensors(self, layer: int) -> dict[str, torch.Tensor | None]:
        """One layer's tensors under circuitry's names (views, no copies)."""
        return {"W_enc": self.W_enc[layer], "W_dec": self.W_dec[layer], "b_enc": self.b_enc[layer],
                "b_dec": self.b_dec[layer], "W_skip": None if self.W_skip is None else self.W_skip[layer],
                "threshold": None if self.threshold is None else self.threshold[layer]}


# --- loading ---------------------------------------------------------------------------------
def _model_dims(model) -> tuple[int, int] | None:
    """(n_layers, d_model) of a LoadedModel, an Adapter or a HF model; None for no model."""
    if model is None:
        return None
    adapter = getattr(model, "adapter", None) or model
    if hasattr(adapter, "n_layers") and hasattr(adapter, "d_model"):
        return adapter.n_layers, adapter.d_model
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "num_hidden_layers"):
        return config.num_hidden_layers, config.hidden_size
    raise TypeError(f"model must be a LoadedModel, an Adapter or a Hugging Face model, not {type(model).__name__}")


def _model_device(model):
    for obj in (getattr(model, "hf_model", None), model):
        if isinstance(obj, nn.Module):
            try:
                return next(obj.parameters()).device
            except StopIteration:
                pass
    return None


def _check_shapes(raw: RawTranscoders, dims: tuple[int, int] | None, source: str) -> tuple[int, int, int]:
    """(n_layers, n_features, d_model) after checking every tensor; a one-line UserError naming the file
    and the tensor otherwise."""
    n = len(raw.layers)
    first = raw.layers[0]
    d_model = dims[1] if dims else first.tensors["b_dec"].shape[-1]
    n_feat = first.tensors["b_enc"].shape[-1]
    if dims and dims[0] != n:
        raise UserError(f"transcoders '{source}' cover {n} layers, the model has {dims[0]}")
    what = "the model's" if dims else "the transcoders'"
    for layer, entry in enumerate(raw.layers):
        expected = {"W_enc": (n_feat, d_model), "b_enc": (n_feat,), "b_dec": (d_model,), "W_skip": (d_model, d_model),
                    "threshold": (n_feat,),
                    "W_dec": (n_feat, n - layer, d_model) if raw.kind == "cross_layer_transcoder" else (n_feat, d_model)}
        for key, tensor in entry.tensors.items():
            got = tuple(tensor.shape)
            if got != expected[key]:
                raise UserError(f"transcoder file '{entry.files[key]}': tensor {key} has shape {list(got)}, expected "
                                f"{list(expected[key])} ({what} d_model {d_model}, {n_feat} features, {n} layers)")
        missing = {"W_skip"} & (set(first.tensors) ^ set(entry.tensors))
        if missing:
            raise UserError(f"transcoder file '{entry.files['W_enc']}': W_skip is present in some layers only")
    return n, n_feat, d_model


def resolve_source(source: str, revision: str | None = None) -> str:
    """A local folder for `source`: a folder, `toy:NAME` (the toy model's shipped transcoders) or a hub
    reference `owner/repo[/subfolder][@revision]` (downloaded)."""
    source = os.fspath(source)
    if source.startswith("toy:"):
        from ..core.names import toy_model_dir

        folder = os.path.join(toy_model_dir(source), TOY_TRANSCODERS)
        if not os.path.isdir(folder):
            raise UserError(f"toy model '{source}' ships no transcoders (it has no MLPs or none were trained)")
        return folder
    if os.path.isdir(source):
        return source
    looks_like_path = source.startswith((".", "/", "~")) or os.path.exists(source) or source.count("/") == 0
    if looks_like_path:
        raise UserError(f"transcoder folder '{source}' does not exist (give a folder, toy:NAME or a hub id owner/repo)")
    return download_hub_transcoders(source, revision)


def load_transcoders(source, *, model=None, device=None, dtype=None, revision=None) -> Transcoders:
    """Load transcoders from a local folder, `toy:NAME` or a hub id, detecting the format (circuit-tracer's
    transcoder_set or cross_layer_transcoder, or sparsify). With `model` (LoadedModel, Adapter or HF model)
    every tensor is checked against its layer count and d_model. `device`: default the model's, else CUDA
    when present; `dtype`: default the files' own."""
    from ..model.adapters import default_device

    folder = resolve_source(source, revision)
    raw = read_transcoders(folder)
    _check_shapes(raw, _model_dims(model), folder)
    dev = torch.device(device) if device is not None else (_model_device(model) or default_device())

    def stacked(key):
        if key not in raw.layers[0].tensors:
            return None
        return torch.stack([entry.tensors[key] for entry in raw.layers]).to(dev, dtype)

    tc = Transcoders(stacked("W_enc"), stacked("b_enc"), [e.tensors["W_dec"].to(dev, dtype) for e in raw.layers],
                     stacked("b_dec"), W_skip=stacked("W_skip"), threshold=stacked("threshold"),
                     activation=raw.activation, k=raw.k, cross_layer=raw.kind == "cross_layer_transcoder",
                     input_hook=raw.input_hook, output_hook=raw.output_hook, scan=raw.scan or str(source))
    return tc


def save_transcoders(tc: Transcoders, out_dir, *, model_name: str | None = None, overwrite: bool = False) -> str:
    """Write `tc` in circuit-tracer's format: `config.yaml` + `layer_{i}.safetensors` (per-layer) or
    `W_enc_{l}` / `W_dec_{l}.safetensors` (cross-layer). Refuses to replace existing transcoder files
    unless `overwrite`. Returns the folder."""
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"'{out_dir}' exists and is not a folder")
    os.makedirs(out_dir, exist_ok=True)
    if not overwrite:
        ours = {CONFIG} | {f"layer_{i}.safetensors" for i in range(tc.n_layers)} | \
            {f"W_{w}_{i}.safetensors" for w in ("enc", "dec") for i in range(tc.n_layers)}
        clash = sorted(ours & set(os.listdir(out_dir)))
        if clash:
            raise UserError(f"'{out_dir}' already holds transcoder files ({clash[0]}, ...); choose another folder")
    for layer in range(tc.n_layers):
        tensors = tc.layer_tensors(layer)
        (write_clt_files if tc.cross_layer else write_layer_file)(out_dir, layer, tensors)
    cfg = {"model_kind": "cross_layer_transcoder" if tc.cross_layer else "transcoder_set",
           "feature_input_hook": tc.input_hook, "feature_output_hook": tc.output_hook,
           "scan": tc.scan or os.path.abspath(out_dir), "activation": tc.activation,
           "n_layers": tc.n_layers, "d_model": tc.d_model, "n_features": tc.n_features}
    if tc.activation == "topk":
        cfg["topk_k"] = tc.k
    if model_name:
        cfg["model"] = model_name
    write_config(out_dir, cfg)  # last: a folder with config.yaml is complete
    return out_dir
