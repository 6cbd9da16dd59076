"""Transcoder files on disk: find them, read their raw tensors, write them.

Three formats are read (names checked against circuit-tracer 0.5's `transcoder/` loaders and
`utils/hf_utils.py`, and EleutherAI sparsify 1.3's `sparse_coder.py`):

- circuit-tracer **transcoder_set**: `config.yaml` (`model_kind: transcoder_set`, `feature_input_hook`,
  `feature_output_hook`, `scan`, optionally `transcoders:` a list of per-layer file paths) beside
  `layer_{i}.safetensors`, each holding `W_enc` [F, d_model], `W_dec` [F, d_model], `b_enc` [F],
  `b_dec` [d_model], optional `W_skip` [d_model, d_model] (applied as x @ W_skipᵀ) and optional
  `activation_function.threshold` [F] (then JumpReLU, else ReLU).
- circuit-tracer **cross_layer_transcoder**: `config.yaml` (`model_kind: cross_layer_transcoder`) beside
  `W_enc_{l}.safetensors` (`W_enc_{l}` [F, d_model], `b_enc_{l}` [F], `b_dec_{l}` [d_model], optional
  `threshold_{l}` [F]) and `W_dec_{l}.safetensors` (`W_dec_{l}` [F, n_layers - l, d_model]: feature
  writes of layer l into layers l..n_layers-1). circuit-tracer's file format has no skip; circuitry adds
  an optional `W_skip_{l}` [d_model, d_model] (x @ W_skip_{l}ᵀ, like the per-layer files) to
  `W_enc_{l}.safetensors`, which circuit-tracer 0.5's `load_clt` ignores.
- EleutherAI **sparsify** transcoders: one folder per hookpoint (`<hookpoint>/cfg.json` +
  `<hookpoint>/sae.safetensors`, or the two files in the folder itself); cfg.json has `d_in`, `k`,
  `activation` ("topk"), `transcode` (must be true), `skip_connection`; sae.safetensors has
  `encoder.weight` [F, d_in], `encoder.bias` [F], `W_dec` [F, d_in], `b_dec` [d_in], optional `W_skip`
  [d_in, d_in] (x @ W_skipᵀ). The hookpoint must be an MLP module (`layers.3.mlp`, `h.3.mlp`, ...): its
  input is the MLP input after the norm, its output the MLP output; the layer is the number in the name.

circuitry's own extra `config.yaml` keys (other readers ignore them): `activation` (relu, jumprelu,
topk), `topk_k`, `n_layers`, `d_model`, `n_features`, `model`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import torch

from ..core.errors import UserError

CONFIG = "config.yaml"
MLP_IN, MLP_OUT = "mlp.hook_in", "mlp.hook_out"  # circuit-tracer's hooks for the MLP's input (after its norm) / output


@dataclass
class RawLayer:
    """One layer's tensors as stored, under circuitry's names, and the file each came from."""

    tensors: dict[str, torch.Tensor]
    files: dict[str, str]


@dataclass
class RawTranscoders:
    kind: str  # "transcoder_set", "cross_layer_transcoder" or "sparsify"
    layers: list[RawLayer]
    input_hook: str
    output_hook: str
    activation: str  # relu, jumprelu, topk
    k: int | None = None
    scan: str | None = None
    config: dict = field(default_factory=dict)


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise UserError(f"transcoder file '{path}' is missing")
    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # safetensors raises its own error types for damaged files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"transcoder file '{path}' is not a readable safetensors file: {first}") from None


def _read_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"'{path}' is not readable YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"'{path}' must be a YAML mapping (model_kind, feature_input_hook, ...)")
    return cfg


def _take(tensors: dict, key: str, path: str, required: bool = True):
    if key in tensors:
        return tensors[key]
    if required:
        raise UserError(f"transcoder file '{path}' has no tensor '{key}'")
    return None


def _layer_files(folder: str, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    found = sorted(int(m.group(1)) for name in os.listdir(folder) if (m := rx.fullmatch(name)))
    if found != list(range(len(found))):
        raise UserError(f"transcoder folder '{folder}': layer files must be numbered 0..N-1 without gaps; found {found}")
    return found


def _read_transcoder_set(folder: str, cfg: dict) -> list[RawLayer]:
    if cfg.get("transcoders"):
        paths = []
        for p in cfg["transcoders"]:
            p = str(p)
            if p.startswith("hf://"):
                p = _download_hf_uri(p)
            elif not os.path.isabs(p):
                p = os.path.join(folder, p)
            paths.append(p)
    else:
        paths = [os.path.join(folder, f"layer_{i}.safetensors") for i in _layer_files(folder, r"layer_(\d+)\.safetensors")]
    if not paths:
        raise UserError(f"transcoder folder '{folder}' has no layer_{{i}}.safetensors files")
    layers = []
    for path in paths:
        if path.endswith(".npz"):
            raise UserError(f"'{path}': GemmaScope .npz transcoders are not supported; convert them to layer_{{i}}.safetensors")
        t = _read_safetensors(path)
        names = {"W_enc": "W_enc", "W_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec"}
        got = {ours: _take(t, theirs, path) for ours, theirs in names.items()}
        for ours, theirs, in (("W_skip", "W_skip"), ("threshold", "activation_function.threshold")):
            if theirs in t:
                got[ours] = t[theirs]
        layers.append(RawLayer(got, {k: path for k in got}))
    return layers


def _read_clt(folder: str) -> list[RawLayer]:
    n = len(_layer_files(folder, r"W_enc_(\d+)\.safetensors"))
    if n == 0:
        raise UserError(f"cross-layer transcoder folder '{folder}' has no W_enc_{{l}}.safetensors files")
    layers = []
    for i in range(n):
        enc_path = os.path.join(folder, f"W_enc_{i}.safetensors")
        dec_path = os.path.join(folder, f"W_dec_{i}.safetensors")
        enc, dec = _read_safetensors(enc_path), _read_safetensors(dec_path)
        got = {"W_enc": _take(enc, f"W_enc_{i}", enc_path), "b_enc": _take(enc, f"b_enc_{i}", enc_path),
               "b_dec": _take(enc, f"b_dec_{i}", enc_path), "W_dec": _take(dec, f"W_dec_{i}", dec_path)}
        files = {k: enc_path for k in got}
        files["W_dec"] = dec_path
        for ours, theirs in (("threshold", f"threshold_{i}"), ("W_skip", f"W_skip_{i}")):
            if theirs in enc:
                got[ours], files[ours] = enc[theirs], enc_path
        layers.append(RawLayer(got, files))
    return layers


_HOOK_LAYER = re.compile(r"(?:^|\.)(\d+)\.(?:[A-Za-z_]*mlp|feed_forward|ffn)$")


def _read_sparsify(folder: str) -> RawTranscoders:
    if os.path.isfile(os.path.join(folder, "cfg.json")):
        coders = {os.path.basename(os.path.normpath(folder)): folder}
    else:
        coders = {d: os.path.join(folder, d) for d in os.listdir(folder)
                  if os.path.isfile(os.path.join(folder, d, "cfg.json"))}
    by_layer: dict[int, RawLayer] = {}
    ks, skip = set(), set()
    for hookpoint, sub in coders.items():
        cfg_path = os.path.join(sub, "cfg.json")
        try:
            with open(cfg_path, encoding="utf-8") as f:
                cfg = json.load(f)
        except (OSError, ValueError) as exc:
            raise UserError(f"'{cfg_path}' is not readable JSON: {str(exc).splitlines()[0]}") from None
        if not cfg.get("transcode", False):
            raise UserError(f"'{cfg_path}': this sparsify coder is an autoencoder (transcode false), not a transcoder")
        if cfg.get("activation", "topk") != "topk":
            raise UserError(f"'{cfg_path}': activation '{cfg.get('activation')}' is not supported (topk only)")
        m = _HOOK_LAYER.search(hookpoint)
        if m is None:
            raise UserError(f"sparsify hookpoint '{hookpoint}' in '{folder}' is not an MLP module with a layer number "
                            "(like layers.3.mlp)")
        layer = int(m.group(1))
        if layer in by_layer:
            raise UserError(f"'{folder}' has two sparsify transcoders for layer {layer}")
        path = os.path.join(sub, "sae.safetensors")
        t = _read_safetensors(path)
        got = {"W_enc": _take(t, "encoder.weight", path), "b_enc": _take(t, "encoder.bias", path),
               "W_dec": _take(t, "W_dec", path), "b_dec": _take(t, "b_dec", path)}
        if "W_skip" in t:
            got["W_skip"] = t["W_skip"]
        by_layer[layer] = RawLayer(got, {k: path for k in got})
        ks.add(int(cfg.get("k", 32)))
        skip.add("W_skip" in t)
    if sorted(by_layer) != list(range(len(by_layer))):
        raise UserError(f"sparsify transcoders in '{folder}' cover layers {sorted(by_layer)}; feature circuits need "
                        "one at every MLP layer 0..N-1")
    if len(ks) > 1 or len(skip) > 1:
        raise UserError(f"sparsify transcoders in '{folder}' differ in k or skip connection across layers")
    return RawTranscoders("sparsify", [by_layer[i] for i in range(len(by_layer))], MLP_IN, MLP_OUT, "topk",
                          k=ks.pop(), scan=os.path.abspath(folder))


def detect_format(folder: str) -> str:
    """'transcoder_set', 'cross_layer_transcoder' or 'sparsify' (a UserError when none fits)."""
    if os.path.isfile(os.path.join(folder, CONFIG)):
        kind = _read_yaml(os.path.join(folder, CONFIG)).get("model_kind")
        if kind not in ("transcoder_set", "cross_layer_transcoder"):
            raise UserError(f"'{os.path.join(folder, CONFIG)}': model_kind '{kind}' is not one of transcoder_set, "
                            "cross_layer_transcoder")
        return kind
    if os.path.isfile(os.path.join(folder, "cfg.json")) or any(
            os.path.isfile(os.path.join(folder, d, "cfg.json")) for d in os.listdir(folder)):
        return "sparsify"
    raise UserError(f"'{folder}' holds no transcoders: expected circuit-tracer's config.yaml + layer_{{i}}.safetensors "
                    "(or W_enc_{l}/W_dec_{l}.safetensors), or sparsify's <hookpoint>/cfg.json + sae.safetensors")


def read_transcoders(folder: str) -> RawTranscoders:
    """The raw tensors of the transcoders in a local folder, in whichever format it holds."""
    kind = detect_format(folder)
    if kind == "sparsify":
        return _read_sparsify(folder)
    cfg = _read_yaml(os.path.join(folder, CONFIG))
    for key in ("feature_input_hook", "feature_output_hook"):
        if not isinstance(cfg.get(key), str):
            raise UserError(f"'{os.path.join(folder, CONFIG)}' needs a '{key}' string")
    layers = _read_transcoder_set(folder, cfg) if kind == "transcoder_set" else _read_clt(folder)
    has_threshold = {"threshold" in layer.tensors for layer in layers}
    if len(has_threshold) > 1:
        raise UserError(f"transcoders in '{folder}': some layers have a JumpReLU threshold and some do not")
    activation = cfg.get("activation") or ("jumprelu" if has_threshold.pop() else "relu")
    if activation not in ("relu", "jumprelu", "topk"):
        raise UserError(f"'{os.path.join(folder, CONFIG)}': activation '{activation}' is not relu, jumprelu or topk")
    k = cfg.get("topk_k")
    if activation == "topk" and not (isinstance(k, int) and k > 0):
        raise UserError(f"'{os.path.join(folder, CONFIG)}': activation topk needs a positive integer topk_k")
    scan = cfg.get("scan")
    return RawTranscoders(kind, layers, cfg["feature_input_hook"], cfg["feature_output_hook"], activation,
                          k=k, scan=str(scan) if scan is not None else None, config=cfg)


def _save(tensors: dict[str, torch.Tensor], path: str) -> None:
    from safetensors.torch import save_file

    tmp = path + ".tmp"
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp)
    os.replace(tmp, path)


def write_config(folder: str, cfg: dict) -> None:
    import yaml

    tmp = os.path.join(folder, CONFIG + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    os.replace(tmp, os.path.join(folder, CONFIG))


def write_layer_file(folder: str, layer: int, tensors: dict[str, torch.Tensor]) -> str:
    """layer_{layer}.safetensors in circuit-tracer's names (W_enc, W_dec, b_enc, b_dec, W_skip,
    activation_function.threshold) from circuitry's (threshold for the last)."""
    names = {"threshold": "activation_function.threshold"}
    path = os.path.join(folder, f"layer_{layer}.safetensors")
    _save({names.get(k, k): v for k, v in tensors.items() if v is not None}, path)
    return path


def write_clt_files(folder: str, layer: int, tensors: dict[str, torch.Tensor]) -> None:
    enc = {f"W_enc_{layer}": tensors["W_enc"], f"b_enc_{layer}": tensors["b_enc"], f"b_dec_{layer}": tensors["b_dec"]}
    if tensors.get("threshold") is not None:
        enc[f"threshold_{layer}"] = tensors["threshold"]
    if tensors.get("W_skip") is not None:
        enc[f"W_skip_{layer}"] = tensors["W_skip"]
    _save(enc, os.path.join(folder, f"W_enc_{layer}.safetensors"))
    _save({f"W_dec_{layer}": tensors["W_dec"]}, os.path.join(folder, f"W_dec_{layer}.safetensors"))


def _split_hub_ref(ref: str) -> tuple[str, str | None, str | None]:
    """'owner/repo[/sub/folder][@revision]' -> (repo_id, subfolder, revision), as circuit-tracer reads it."""
    path, _, revision = ref.partition("@")
    parts = path.split("/")
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None), (revision or None)


def _download_hf_uri(uri: str) -> str:
    """hf://owner/repo/path/file?revision=R -> a local file (the hub download of that file)."""
    from urllib.parse import parse_qs, urlparse

    from huggingface_hub import hf_hub_download

    parsed = urlparse(uri)
    repo_name, _, file_path = parsed.path.lstrip("/").partition("/")
    revision = parse_qs(parsed.query).get("revision", [None])[0]
    try:
        return hf_hub_download(f"{parsed.netloc}/{repo_name}", file_path, revision=revision)
    except Exception as exc:  # network, auth and not-found errors of the hub client
        raise UserError(f"could not download '{uri}': {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None


def download_hub_transcoders(ref: str, revision: str | None = None) -> str:
    """A hub transcoder repository (circuit-tracer or sparsify layout) as a local folder."""
    from huggingface_hub import snapshot_download

    repo_id, sub, rev = _split_hub_ref(ref)
    prefix = f"{sub}/" if sub else ""
    patterns = [prefix + p for p in (CONFIG, "*.safetensors", "cfg.json", "*/cfg.json", "*/sae.safetensors")]
    try:
        local = snapshot_download(repo_id, revision=revision or rev, allow_patterns=patterns)
    except Exception as exc:  # network, auth and not-found errors of the hub client
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"could not download transcoders '{ref}': {first}") from None
    return os.path.join(local, sub) if sub else local
