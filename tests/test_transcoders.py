"""Transcoders: each file format loads (files written here by hand under the libraries' own tensor names,
not by our writer), round-trips through save_transcoders, refuses a wrong shape with one line, and
encode/reconstruct equal a direct recomputation from the raw tensors."""

import json
import os
import subprocess
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from discovery.core.errors import UserError
from discovery.features import Transcoders, load_transcoders, save_transcoders
from tests.tiny import build
from discovery.model.adapters import wrap_model

L, F, D = 3, 24, 16
PEER = "/work/peers/ct/venv/bin/python"


def _raw(seed=0, skip=False, threshold=False, clt=False):
    g = torch.Generator().manual_seed(seed)
    r = (lambda *s: torch.randn(*s, generator=g) * 0.3)
    layers = []
    for i in range(L):
        t = {"W_enc": r(F, D), "b_enc": r(F), "b_dec": r(D), "W_dec": r(F, L - i, D) if clt else r(F, D)}
        if skip:
            t["W_skip"] = r(D, D)
        if threshold:
            t["threshold"] = torch.rand(F, generator=g) * 0.3
        layers.append(t)
    return layers


def _config(folder, kind, extra=""):
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        f.write(f"model_kind: {kind}\nfeature_input_hook: mlp.hook_in\nfeature_output_hook: mlp.hook_out\n"
                f"scan: test-scan\n{extra}")


def _write_plt(folder, layers):
    os.makedirs(folder, exist_ok=True)
    for i, t in enumerate(layers):
        names = {"threshold": "activation_function.threshold"}
        save_file({names.get(k, k): v for k, v in t.items()}, os.path.join(folder, f"layer_{i}.safetensors"))
    _config(folder, "transcoder_set")


def _write_clt(folder, layers):
    os.makedirs(folder, exist_ok=True)
    for i, t in enumerate(layers):
        enc = {f"W_enc_{i}": t["W_enc"], f"b_enc_{i}": t["b_enc"], f"b_dec_{i}": t["b_dec"]}
        if "threshold" in t:
            enc[f"threshold_{i}"] = t["threshold"]
        save_file(enc, os.path.join(folder, f"W_enc_{i}.safetensors"))
        save_file({f"W_dec_{i}": t["W_dec"]}, os.path.join(folder, f"W_dec_{i}.safetensors"))
    _config(folder, "cross_layer_transcoder")


def _write_sparsify(folder, layers, k, prefix="layers"):
    for i, t in enumerate(layers):
        sub = os.path.join(folder, f"{prefix}.{i}.mlp")
        os.makedirs(sub)
        tensors = {"encoder.weight": t["W_enc"], "encoder.bias": t["b_enc"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
        if "W_skip" in t:
            tensors["W_skip"] = t["W_skip"]
        save_file(tensors, os.path.join(sub, "sae.safetensors"))
        with open(os.path.join(sub, "cfg.json"), "w") as f:
            json.dump({"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": F,
                       "k": k, "multi_topk": False, "skip_connection": "W_skip" in t, "transcode": True, "d_in": D}, f)


def _reference(layers, xs, act, clt=False, k=None):
    """MLP-output approximations straight from the definitions, one loop per term, in float64."""
    acts = []
    for t, x in zip(layers, xs):
        pre = x.double() @ t["W_enc"].double().T + t["b_enc"].double()
        if act == "relu":
            a = pre.clamp(min=0)
        elif act == "jumprelu":
            a = torch.where(pre > t["threshold"].double(), pre, torch.zeros_like(pre))
        else:
            a = pre.clamp(min=0)
            kth = a.sort(dim=-1, descending=True).values[..., k - 1:k]
            a = torch.where(a >= kth, a, torch.zeros_like(a))
        acts.append(a)
    outs = []
    for j, (t, x) in enumerate(zip(layers, xs)):
        if clt:
            y = sum(acts[s] @ layers[s]["W_dec"][:, j - s].double() for s in range(j + 1))
        else:
            y = acts[j] @ t["W_dec"].double()
        y = y + t["b_dec"].double()
        if "W_skip" in t:
            y = y + x.double() @ t["W_skip"].double().T
        outs.append(y)
    return acts, outs


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 5, D, generator=g) for _ in range(L)]


CASES = [  # (format, skip, activation)
    ("plt", False, "relu"), ("plt", True, "relu"), ("plt", False, "jumprelu"), ("plt", True, "jumprelu"),
    ("clt", False, "relu"), ("clt", False, "jumprelu"), ("sparsify", False, "topk"), ("sparsify", True, "topk"),
]


@pytest.mark.parametrize("fmt,skip,act", CASES)
def test_each_format_loads_and_matches_the_definitions(tmp_path, fmt, skip, act):
    layers = _raw(skip=skip, threshold=act == "jumprelu", clt=fmt == "clt")
    folder = str(tmp_path / "tc")
    k = 5
    {"plt": _write_plt, "clt": _write_clt}.get(fmt, lambda f, la: _write_sparsify(f, la, k))(folder, layers)
    tc = load_transcoders(folder, device="cpu")
    assert (tc.n_layers, tc.n_features, tc.d_model) == (L, F, D)
    assert tc.cross_layer == (fmt == "clt") and tc.has_skip == skip and tc.activation == act
    assert tc.input_hook == "mlp.hook_in" and tc.output_hook == "mlp.hook_out"
    xs = _inputs()
    acts, outs = _reference(layers, xs, act, clt=fmt == "clt", k=k)
    for layer in range(L):
        assert tc.encode(layer, xs[layer]).dtype == torch.float32
        torch.testing.assert_close(tc.encode(layer, xs[layer]).double(), acts[layer], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tc.pre_activation(layer, xs[layer]).double(),
                                   xs[layer].double() @ layers[layer]["W_enc"].double().T + layers[layer]["b_enc"].double(),
                                   rtol=1e-5, atol=1e-5)
        assert torch.equal(tc.decoder(layer), layers[layer]["W_dec"])
        if skip:
            torch.testing.assert_close(tc.skip(layer, xs[layer]), xs[layer] @ layers[layer]["W_skip"].T)
        else:
            assert tc.skip(layer, xs[layer]) is None
    for got, want in zip(tc.reconstruct(xs), outs):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    if act == "topk":
        assert ((tc.encode(0, xs[0]) > 0).sum(-1) <= k).all()


@pytest.mark.parametrize("fmt,skip,act", CASES)
def test_save_round_trips(tmp_path, fmt, skip, act):
    layers = _raw(skip=skip, threshold=act == "jumprelu", clt=fmt == "clt")
    folder = str(tmp_path / "tc")
    {"plt": _write_plt, "clt": _write_clt}.get(fmt, lambda f, la: _write_sparsify(f, la, 4))(folder, layers)
    tc = load_transcoders(folder, device="cpu")
    out = save_transcoders(tc, tmp_path / "out")
    again = load_transcoders(out, device="cpu")
    assert (again.cross_layer, again.has_skip, again.activation, again.k) == (tc.cross_layer, tc.has_skip, tc.activation, tc.k)
    for a, b in zip(tc.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    files = sorted(os.listdir(out))
    if fmt == "clt":
        assert files == sorted(["config.yaml"] + [f"W_{w}_{i}.safetensors" for w in ("dec", "enc") for i in range(L)])
    else:
        assert files == sorted(["config.yaml"] + [f"layer_{i}.safetensors" for i in range(L)])
        keys = set(load_file(os.path.join(out, "layer_0.safetensors")))
        want = {"W_enc", "W_dec", "b_enc", "b_dec"} | ({"W_skip"} if skip else set()) | \
            ({"activation_function.threshold"} if act == "jumprelu" else set())
        assert keys == want
    with pytest.raises(UserError, match="already holds transcoder files"):
        save_transcoders(tc, out)


def test_bf16_weights_compute_in_fp32(tmp_path):
    layers = _raw()
    _write_plt(str(tmp_path), layers)
    tc = load_transcoders(str(tmp_path), device="cpu", dtype=torch.bfloat16)
    assert tc.dtype == torch.bfloat16
    x = _inputs()[0]
    assert tc.encode(0, x).dtype == torch.float32 and tc.reconstruct(_inputs())[0].dtype == torch.float32


def test_a_wrong_shape_is_one_line_naming_file_and_tensor(tmp_path):
    model = wrap_model(build("gpt2", n_layers=L))  # d_model 32, transcoders have 16
    _write_plt(str(tmp_path / "tc"), _raw())
    with pytest.raises(UserError) as err:
        load_transcoders(str(tmp_path / "tc"), model=model)
    msg = str(err.value)
    assert "\n" not in msg and "layer_0.safetensors" in msg and "W_enc" in msg and "[24, 16]" in msg
    model2 = wrap_model(build("gpt2", n_layers=2))
    with pytest.raises(UserError, match="cover 3 layers, the model has 2"):
        load_transcoders(str(tmp_path / "tc"), model=model2)


def test_inconsistent_or_broken_files_are_one_line(tmp_path):
    layers = _raw(clt=True)
    layers[2]["W_dec"] = torch.zeros(F, 2, D)  # the last layer writes to 1 layer, not 2
    _write_clt(str(tmp_path / "clt"), layers)
    with pytest.raises(UserError, match=r"W_dec_2\.safetensors': tensor W_dec has shape \[24, 2, 16\], expected \[24, 1, 16\]"):
        load_transcoders(str(tmp_path / "clt"), device="cpu")
    _write_plt(str(tmp_path / "plt"), _raw())
    (tmp_path / "plt" / "layer_1.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="layer_1.safetensors' is not a readable safetensors file"):
        load_transcoders(str(tmp_path / "plt"), device="cpu")
    save_file({"W_enc": torch.zeros(F, D)}, str(tmp_path / "plt" / "layer_1.safetensors"))
    with pytest.raises(UserError, match="layer_1.safetensors' has no tensor 'W_dec'"):
        load_transcoders(str(tmp_path / "plt"), device="cpu")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(UserError, match="holds no transcoders"):
        load_transcoders(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="does not exist"):
        load_transcoders(str(tmp_path / "nowhere"))


def test_sparsify_layer_from_hookpoint_names(tmp_path):
    _write_sparsify(str(tmp_path / "gpt2"), _raw(), 3, prefix="h")
    tc = load_transcoders(str(tmp_path / "gpt2"), device="cpu")
    assert tc.n_layers == L and tc.k == 3
    layers = _raw()[:2]
    _write_sparsify(str(tmp_path / "partial"), layers, 3)
    os.rename(tmp_path / "partial" / "layers.1.mlp", tmp_path / "partial" / "layers.2.mlp")
    with pytest.raises(UserError, match=r"cover layers \[0, 2\]"):
        load_transcoders(str(tmp_path / "partial"))


def test_model_sets_device_and_checks_dims(tmp_path):
    model = wrap_model(build("llama", n_layers=L))
    layers = [{"W_enc": torch.randn(F, 32), "b_enc": torch.randn(F), "b_dec": torch.randn(32),
               "W_dec": torch.randn(F, 32)} for _ in range(L)]
    _write_plt(str(tmp_path), layers)
    tc = load_transcoders(str(tmp_path), model=model)
    assert tc.device == next(model.hf_model.parameters()).device and tc.d_model == 32


@pytest.mark.skipif(not os.path.exists(PEER), reason="circuit-tracer peer venv not present")
def test_circuit_tracer_loads_what_we_save(tmp_path):
    """circuit-tracer 0.5's own loader reads our per-layer (skip, JumpReLU) and cross-layer folders and its
    encode/decode equal ours."""
    xs = _inputs()
    for name, clt in (("plt", False), ("clt", True)):
        layers = _raw(skip=not clt, threshold=True, clt=clt)
        tc = Transcoders([t["W_enc"] for t in layers], [t["b_enc"] for t in layers], [t["W_dec"] for t in layers],
                         [t["b_dec"] for t in layers], W_skip=None if clt else [t["W_skip"] for t in layers],
                         threshold=[t["threshold"] for t in layers], activation="jumprelu", cross_layer=clt)
        save_transcoders(tc, tmp_path / name)
        torch.save(torch.stack(xs, 0)[:, 0], tmp_path / "x.pt")
        ours = torch.stack(tc.reconstruct([x[0] for x in xs]))
        torch.save(ours, tmp_path / f"{name}_ours.pt")
    script = textwrap.dedent(f"""
        import torch
        from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
        x = torch.load("{tmp_path}/x.pt")
        for name in ("plt", "clt"):
            tcs, cfg = load_transcoder_from_hub("{tmp_path}/" + name, device=torch.device("cpu"), dtype=torch.float32,
                                                lazy_encoder=False, lazy_decoder=False)
            if name == "plt":
                acts = torch.stack([t.encode(x[i]) for i, t in enumerate(tcs)])
                out = torch.stack([t.decode(acts[i], x[i]) for i, t in enumerate(tcs)])
            else:
                out = tcs.decode(tcs.encode(x).to_sparse())
            ours = torch.load("{tmp_path}/" + name + "_ours.pt")
            print(name, type(tcs).__name__, cfg["model_kind"], float((out - ours).abs().max()))
    """)
    run = subprocess.run([PEER, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert [ln.split()[:3] for ln in lines] == [["plt", "TranscoderSet", "transcoder_set"],
                                                ["clt", "CrossLayerTranscoder", "cross_layer_transcoder"]]
    assert all(float(ln.split()[3]) < 1e-4 for ln in lines), lines
