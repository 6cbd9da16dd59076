"""Model adapters: name a family's modules once, so the patching core never needs to.

We wrap the Hugging Face model's own modules and weights (no conversion into another library's
classes). Each adapter exposes the per-head views of the attention weights that the patching core
needs; the norms, MLPs and rotary embeddings are the model's own modules, called as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.errors import UnsupportedModelError, UserError
from ..core.names import TOY_MODELS, check_model_ref, toy_model_dir  # noqa: F401 (re-exported)

SUPPORTED = {
    "gpt2": "GPT-2",
    "gpt_neox": "GPT-NeoX / Pythia",
    "llama": "Llama",
    "qwen2": "Qwen2",
    "mistral": "Mistral",
}


def default_device() -> torch.device:
    """CUDA when present, else CPU; never hard-coded."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class HeadWeights:
    """One layer's attention weights viewed per head (views of the model's parameters, no copies).

    q/k/v: [heads, d_head, d_model] so that q_h = x @ W_q[h].T; out: [heads, d_head, d_model] so that
    a head's write to the residual is z_h @ W_o[h]."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    out: torch.Tensor
    q_bias: torch.Tensor | None
    k_bias: torch.Tensor | None
    v_bias: torch.Tensor | None
    out_bias: torch.Tensor | None


@dataclass
class NormAffine:
    """A norm of the form y -> weight * c(y) / sqrt(mean(c(y)^2) + eps) + bias over the last dim, with
    c(y) = y - mean(y) (LayerNorm, centered) or c(y) = y (RMSNorm); bias None for none."""

    centered: bool
    weight: torch.Tensor
    bias: torch.Tensor | None
    eps: float


_RMS_NORMS = {"LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm"}  # weight * y / rms(y), eps variance_epsilon


def norm_affine(module: nn.Module) -> NormAffine | None:
    """The module as a NormAffine, or None when it is not one we know to be of that form."""
    if type(module) is nn.LayerNorm and len(module.normalized_shape) == 1:
        weight = module.weight if module.weight is not None else torch.ones(module.normalized_shape[0])
        return NormAffine(True, weight, module.bias, float(module.eps))
    if type(module).__name__ in _RMS_NORMS and hasattr(module, "variance_epsilon"):
        return NormAffine(False, module.weight, None, float(module.variance_epsilon))
    return None


class Adapter:
    """What the patching core needs from a causal LM, for one architecture family."""

    family: str

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        self.n_layers: int = self.config.num_hidden_layers
        self.n_heads: int = self.config.num_attention_heads
        self.n_kv_heads: int = getattr(self.config, "num_key_value_heads", None) or self.n_heads
        self.d_model: int = self.config.hidden_size
        self.d_head: int = getattr(self.config, "head_dim", None) or self.d_model // self.n_heads
        self.parallel: bool = False  # attention and MLP of one layer read the same residual
        self._heads = [self._head_weights(layer) for layer in range(self.n_layers)]

    # --- per-family pieces -------------------------------------------------------------------
    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def attn_norm_module(self, layer: int) -> nn.Module:
        raise NotImplementedError

    def attn_norm(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.attn_norm_module(layer)(x)

    def attn_norm_affine(self, layer: int) -> NormAffine | None:
        """The attention norm's weights when it is a LayerNorm or RMSNorm (methods/qk.py's fast path)."""
        return norm_affine(self.attn_norm_module(layer))

    def mlp_norm_module(self, layer: int) -> nn.Module:
        raise NotImplementedError

    def mlp_norm(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.mlp_norm_module(layer)(x)

    def final_norm_module(self) -> nn.Module:
        raise NotImplementedError

    def token_embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The token embedding alone (no learned positions): the embedding nodes of a feature graph."""
        return self.model.get_input_embeddings()(ids)

    def mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks()[layer].mlp(x)

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _head_weights(self, layer: int) -> HeadWeights:
        raise NotImplementedError

    def rotary(self, x: torch.Tensor, positions: torch.Tensor):
        """(cos, sin) of shape [batch, pos, rotary_dims], or None for learned positions."""
        return None

    def attn_scale(self, layer: int) -> float:
        return self.d_head**-0.5

    def sliding_window(self, layer: int) -> int | None:
        return None

    # --- shared -------------------------------------------------------------------------------
    def heads(self, layer: int) -> HeadWeights:
        return self._heads[layer]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


class GPT2Adapter(Adapter):
    family = "gpt2"

    def __init__(self, model):
        cfg = model.config
        if getattr(cfg, "add_cross_attention", False):
            raise UnsupportedModelError("GPT-2 with cross-attention is not supported (decoder-only models only)")
        super().__init__(model)
        self.t = model.transformer
        self.d_head = self.d_model // self.n_heads

    def blocks(self):
        return self.t.h

    def embed(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.t.wte(ids) + self.t.wpe(pos)[None]

    def attn_norm_module(self, layer):
        return self.t.h[layer].ln_1

    def mlp_norm_module(self, layer):
        return self.t.h[layer].ln_2

    def final_norm_module(self):
        return self.t.ln_f

    def unembed(self, x):
        return self.model.lm_head(self.t.ln_f(x))

    def attn_scale(self, layer):
        scale = self.d_head**-0.5 if self.config.scale_attn_weights else 1.0
        if self.config.scale_attn_by_inverse_layer_idx:
            scale /= float(layer + 1)
        return scale

    def _head_weights(self, layer):
        attn = self.model.transformer.h[layer].attn
        h, dh, d = self.n_heads, self.d_model // self.n_heads, self.d_model
        w, b = attn.c_attn.weight, attn.c_attn.bias  # Conv1D: [d_in, 3 * d_out]

        def split(i):
            return w[:, i * d:(i + 1) * d].T.reshape(h, dh, d), b[i * d:(i + 1) * d].view(h, dh)

        (q, qb), (k, kb), (v, vb) = split(0), split(1), split(2)
        out = attn.c_proj.weight.view(h, dh, d)  # Conv1D: [d_in = heads * d_head, d_out]
        return HeadWeights(q, k, v, out, qb, kb, vb, attn.c_proj.bias)


class NeoXAdapter(Adapter):
    family = "gpt_neox"

    def __init__(self, model):
        super().__init__(model)
        self.m = model.gpt_neox
        self.parallel = bool(self.config.use_parallel_residual)

    def blocks(self):
        return self.m.layers

    def embed(self, ids):
        return self.m.embed_in(ids)

    def attn_norm_module(self, layer):
        return self.m.layers[layer].input_layernorm

    def mlp_norm_module(self, layer):
        return self.m.layers[layer].post_attention_layernorm

    def final_norm_module(self):
        return self.m.final_layer_norm

    def unembed(self, x):
        return self.model.get_output_embeddings()(self.m.final_layer_norm(x))

    def rotary(self, x, positions):
        return self.m.rotary_emb(x, positions)

    def _head_weights(self, layer):
        attn = self.model.gpt_neox.layers[layer].attention
        h, dh, d = self.n_heads, self.d_head, self.d_model
        # query_key_value output is laid out per head as [q | k | v] (each d_head wide)
        w = attn.query_key_value.weight.view(h, 3, dh, d)
        b = attn.query_key_value.bias
        b = b.view(h, 3, dh) if b is not None else None
        out = attn.dense.weight.T.view(h, dh, d)
        pick = (lambda i: b[:, i]) if b is not None else (lambda i: None)
        return HeadWeights(w[:, 0], w[:, 1], w[:, 2], out, pick(0), pick(1), pick(2), attn.dense.bias)


class LlamaAdapter(Adapter):
    """Llama, Qwen2 and Mistral: RoPE, RMSNorm, grouped-query attention, gated MLP."""

    family = "llama"

    def __init__(self, model):
        super().__init__(model)
        self.m = model.model

    def blocks(self):
        return self.m.layers

    def embed(self, ids):
        return self.m.embed_tokens(ids)

    def attn_norm_module(self, layer):
        return self.m.layers[layer].input_layernorm

    def mlp_norm_module(self, layer):
        return self.m.layers[layer].post_attention_layernorm

    def final_norm_module(self):
        return self.m.norm

    def unembed(self, x):
        return self.model.lm_head(self.m.norm(x))

    def rotary(self, x, positions):
        return self.m.rotary_emb(x, positions)

    def attn_scale(self, layer):
        return self.m.layers[layer].self_attn.scaling

    def sliding_window(self, layer):
        window = getattr(self.config, "sliding_window", None)
        if window is None:
            return None
        layer_types = getattr(self.config, "layer_types", None)
        if layer_types is not None:
            return window if layer_types[layer] == "sliding_attention" else None
        if self.config.model_type == "qwen2" and not getattr(self.config, "use_sliding_window", False):
            return None
        return window

    def _head_weights(self, layer):
        attn = self.model.model.layers[layer].self_attn
        h, kv, dh, d = self.n_heads, self.n_kv_heads, self.d_head, self.d_model

        def bias(lin, n):
            return lin.bias.view(n, dh) if lin.bias is not None else None

        return HeadWeights(
            attn.q_proj.weight.view(h, dh, d),
            attn.k_proj.weight.view(kv, dh, d),
            attn.v_proj.weight.view(kv, dh, d),
            attn.o_proj.weight.T.view(h, dh, d),
            bias(attn.q_proj, h), bias(attn.k_proj, kv), bias(attn.v_proj, kv), attn.o_proj.bias,
        )


ADAPTERS: dict[str, type[Adapter]] = {
    "gpt2": GPT2Adapter,
    "gpt_neox": NeoXAdapter,
    "llama": LlamaAdapter,
    "qwen2": LlamaAdapter,
    "mistral": LlamaAdapter,
}


def check_supported(model_type: str) -> None:
    if model_type not in ADAPTERS:
        names = ", ".join(f"{k} ({v})" for k, v in SUPPORTED.items())
        raise UnsupportedModelError(f"architecture '{model_type}' is not supported; supported: {names}")


@dataclass
class LoadedModel:
    """A Hugging Face causal LM with its adapter, tokenizer (or None) and provenance."""

    hf_model: nn.Module
    adapter: Adapter
    tokenizer: Any
    name: str
    revision: str | None

    @property
    def config(self):
        return self.hf_model.config

    @property
    def architecture(self) -> str:
        archs = getattr(self.config, "architectures", None)
        return archs[0] if archs else type(self.hf_model).__name__

    @property
    def vocab_size(self) -> int:
        return self.hf_model.get_output_embeddings().weight.shape[0]

    def config_hash(self) -> str:
        """Hash of the architecture config; load-time settings (dtype, path, library version) excluded."""
        skip = {"dtype", "torch_dtype", "_name_or_path", "transformers_version", "_attn_implementation_autoset"}
        cfg = {k: v for k, v in self.config.to_diff_dict().items() if k not in skip}
        blob = json.dumps(cfg, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def wrap_model(hf_model: nn.Module, tokenizer=None, name: str = "<in-memory>", revision=None) -> LoadedModel:
    """Wrap an already-constructed HF causal LM (tests and notebooks build models in code)."""
    check_supported(hf_model.config.model_type)
    hf_model.eval()
    hf_model.requires_grad_(False)  # we take gradients with respect to activations only
    return LoadedModel(hf_model, ADAPTERS[hf_model.config.model_type](hf_model), tokenizer, name, revision)


def parse_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise UserError(f"unknown dtype '{dtype}'; use one of {', '.join(table)}")
    return table[dtype]


def check_device(device) -> None:
    """A UserError for a device this machine does not have (--device cuda without CUDA) or cannot name."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"--device '{device}' is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine; use --device cpu (or leave "
                            "--device out: CUDA when present, else the CPU)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type not in ("cpu", "mps"):
        raise UserError(f"--device '{device}' is not supported; use cpu or cuda")


def load_model(name_or_path: str, revision: str | None = None, dtype=None, device=None) -> LoadedModel:
    """Load a causal LM from a local directory, a hub id or a shipped toy model `toy:NAME` (whose
    `revision` names one of its training checkpoints); trust_remote_code stays off."""
    from transformers import AutoConfig, AutoModelForCausalLM

    check_device(device)  # before the (possibly slow) load
    if name_or_path.startswith("toy:"):
        loaded = load_model(toy_model_dir(name_or_path, revision), dtype=dtype, device=device)
        loaded.name, loaded.revision = name_or_path, revision
        return loaded
    check_model_ref(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name_or_path, revision=revision, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 (a damaged or missing config.json is the user's file, in any way)
        raise UserError(f"could not load model config for '{name_or_path}'{_file_hint(name_or_path, 'config.json')}: "
                        f"{_first_line(exc)}") from None
    check_supported(config.model_type)
    torch_dtype = parse_dtype(dtype) or torch.float32
    check_weight_files(name_or_path)  # damaged safetensors named before transformers reads them
    if not sys.stderr.isatty():  # Hugging Face's loading bar redraws: a log gets core.progress's plain lines only
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its multi-line load report would bury our one line
    try:
        hf_model, info = AutoModelForCausalLM.from_pretrained(
            name_or_path, revision=revision, dtype=torch_dtype, trust_remote_code=False,
            ignore_mismatched_sizes=True, output_loading_info=True)  # mismatches are reported below, not ignored
    except Exception as exc:  # noqa: BLE001 (weights files are the user's: any failure to read them is one line)
        raise UserError(f"could not load model weights for '{name_or_path}': {_first_line(exc)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    check_loading_info(name_or_path, info, hf_model)
    hf_model.to(torch.device(device) if device is not None else default_device())
    return wrap_model(hf_model, _load_tokenizer(name_or_path, revision), name_or_path, revision)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text and not isinstance(exc, (OSError, ValueError)) \
        else (text.splitlines()[0] if text else type(exc).__name__)


def _file_hint(name_or_path: str, file: str) -> str:
    return f" ({os.path.join(name_or_path, file)})" if os.path.isdir(name_or_path) else ""


def check_weight_files(name_or_path: str) -> None:
    """Every *.safetensors file of a local model directory has a readable header that covers the file
    (safetensors' own check): a damaged, truncated, empty or bad-header file is one UserError naming it."""
    if not os.path.isdir(name_or_path):
        return
    from safetensors import safe_open

    if not any(f.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack"))
               for f in os.listdir(name_or_path)):
        raise UserError(f"model directory '{name_or_path}' has no weights file (model.safetensors or "
                        "pytorch_model.bin); copy the weights there")
    for f in sorted(os.listdir(name_or_path)):
        if not f.endswith(".safetensors"):
            continue
        path = os.path.join(name_or_path, f)
        try:
            with safe_open(path, framework="pt"):
                pass
        except Exception as exc:  # noqa: BLE001 (SafetensorError and OSError alike)
            size = os.path.getsize(path) if os.path.exists(path) else 0
            raise UserError(f"weights file '{path}' is damaged ({size} bytes; safetensors says: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); "
                            "copy it again") from None


def check_loading_info(name_or_path: str, info: dict, model) -> None:
    """Weights whose shapes disagree with config.json, or parameters the weights files do not have (which
    transformers would initialise at random): one UserError naming the first."""
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda m: m[0])
    if mismatched:
        key, in_file, by_config = mismatched[0]
        raise UserError(f"{_file_hint(name_or_path, 'config.json').strip(' ()') or 'the config'} disagrees with the "
                        f"weights of '{name_or_path}': {key} is {list(in_file)} in the weights but "
                        f"{list(by_config)} by the config ({len(mismatched)} tensor(s) differ); fix config.json")
    params = dict(model.named_parameters())
    missing = sorted(k for k in info.get("missing_keys") or [] if k in params)
    if missing:
        raise UserError(f"the weights of '{name_or_path}' lack {len(missing)} parameter(s) the config needs, e.g. "
                        f"{missing[0]} (they would be random); use complete weights files")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")


def _load_tokenizer(name_or_path: str, revision: str | None):
    """The model's tokenizer, or None when it has none (token-id tasks still work).

    transformers 5 builds an empty tokenizer for a directory without tokenizer files instead of
    failing, which would silently tokenise text to nothing; so look for the files first."""
    from transformers import AutoTokenizer

    local = os.path.isdir(name_or_path)
    if local and not any(os.path.exists(os.path.join(name_or_path, f)) for f in TOKENIZER_FILES):
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=False)
    except (OSError, ValueError, TypeError):
        return None
    return tokenizer if len(tokenizer) > len(set(tokenizer.all_special_ids)) else None
