"""The transcoders shipped with the toy models (discovery/toy/models/NAME/transcoders, loaded as `toy:NAME`):
they load against their model, explain the MLP outputs of rows the training never saw (FVU below a stated
bound, computed here from the safetensors files with plain hooks, not by the loader or the trainer), their
report is the one in the model card, the intervention check of a graph over them measures and predicts what a
recomputation does, and circuit-tracer's own loader reads them (when the peer venv is present)."""

import json
import os
import subprocess
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from discovery.cli import main
from discovery.core.names import toy_model_dir
from discovery.features import load_transcoders
from discovery.features.mlp_data import load_sequences
from discovery.features.run import run_attribution
from discovery.model.adapters import load_model

PEER = "/work/peers/ct/venv/bin/python"
# toy -> (training task, MLP layers, activation, bound on the held-out pooled FVU of every layer)
SHIPPED = {"toy:ioi": ("ioi", 4, "jumprelu", 0.05), "toy:llama-induction": ("induction", 2, "relu", 0.25)}


# The intervention check's correlation (10 features) on the shipped sets is low: -0.31 on toy:ioi ("When Mary
# and John went to the store, John gave a drink to"), 0.43 on toy:llama-induction (an `induction` row, seed
# 777). Not a bug of either side (test_intervention_check_on_a_shipped_toy recomputes both on llama-induction):
# the graph is linear with norm denominators and attention frozen, and a switch-off lets them recompute; with
# a confident target (demeaned logit ~19) the final norm's rescaling outweighs a last-layer feature's direct
# write. On toy:ioi the top features sit in layer 0, where recomputed attention is in play too (not separated).


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def toy(request):
    return request.param, load_model(request.param, device="cpu")


def _mlps(hf):
    return hf.transformer.h if hf.config.model_type == "gpt2" else hf.model.layers


def _held_out_fvu(name, model):
    """Σ||y - ŷ||² / Σ||y - ȳ||² per layer over task rows of a seed the training never used, with
    ŷ = act(x W_encᵀ + b_enc) W_dec + b_dec read from layer_{i}.safetensors (act: JumpReLU where the file
    holds a threshold, else ReLU); position 0 left out."""
    task, n_layers = SHIPPED[name][:2]
    folder = os.path.join(toy_model_dir(name), "transcoders")
    files = [load_file(os.path.join(folder, f"layer_{i}.safetensors")) for i in range(n_layers)]
    seqs = load_sequences(task, model, n=80, seed=12345)
    by_len = {}
    for s in seqs:
        by_len.setdefault(len(s), []).append(s)
    xs, ys = [[] for _ in range(n_layers)], [[] for _ in range(n_layers)]
    store = {}
    hooks = [mlp.mlp.register_forward_hook(lambda m, a, o, i=i: store.__setitem__(i, (a[0], o)))
             for i, mlp in enumerate(_mlps(model.hf_model))]
    try:
        with torch.no_grad():
            for group in by_len.values():
                model.hf_model(input_ids=torch.tensor(group))
                for i in range(n_layers):
                    xs[i].append(store[i][0][:, 1:].reshape(-1, store[i][0].shape[-1]).float())
                    ys[i].append(store[i][1][:, 1:].reshape(-1, store[i][1].shape[-1]).float())
    finally:
        for h in hooks:
            h.remove()
    fvu = []
    for i, t in enumerate(files):
        x, y = torch.cat(xs[i]).double(), torch.cat(ys[i]).double()
        pre = x @ t["W_enc"].double().T + t["b_enc"].double()
        threshold = t.get("activation_function.threshold")
        f = pre.clamp_min(0) if threshold is None else pre * (pre > threshold.double())
        yhat = f @ t["W_dec"].double() + t["b_dec"].double()
        fvu.append(float((y - yhat).pow(2).sum() / (y - y.mean(0)).pow(2).sum()))
    return fvu, sum(len(s) - 1 for s in seqs)


def test_shipped_set_loads_and_explains_held_out_rows(toy):
    name, model = toy
    tc = load_transcoders(name, model=model, device="cpu")
    _, n_layers, activation, bound = SHIPPED[name]
    assert tc.n_layers == n_layers and tc.d_model == model.adapter.d_model
    assert tc.activation == activation and not tc.cross_layer and not tc.has_skip
    fvu, n_tokens = _held_out_fvu(name, model)
    assert n_tokens >= 500
    assert max(fvu) < bound, fvu
    report = json.loads(open(os.path.join(toy_model_dir(name), "transcoders", "report.json")).read())
    assert [r["layer"] for r in report["layers"]] == list(range(tc.n_layers))
    assert all(r["fvu"] < bound for r in report["layers"])
    card = open(os.path.join(toy_model_dir(name), "README.md"), encoding="utf-8").read()
    for r in report["layers"]:  # the model card carries the report's figures
        assert f"| {r['layer']} | {r['fvu']:.4f} | {r['mean_l0']:.2f} | {r['dead_features']}/" in card, r


def _last_layer_effects(model, tc, ids, target, feats):
    """Switch-offs of last-layer features at the last position, recomputed here: measured in the real model
    (a forward hook subtracting a_f W_dec[f] from the MLP output), and the linear prediction with the final
    RMSNorm's denominator frozen (what the graph's edge from the feature to the logit node is)."""
    hf, last = model.hf_model, tc.n_layers - 1
    seen = {}
    hooks = [hf.model.layers[last].mlp.register_forward_hook(lambda m, a, o: seen.__setitem__("x", a[0])),
             hf.model.norm.register_forward_hook(lambda m, a, o: seen.__setitem__("r", a[0]))]
    with torch.no_grad():
        base = hf(ids).logits[0, -1].double()
    for h in hooks:
        h.remove()
    x, r = seen["x"][0, -1].double(), seen["r"][0, -1].double()
    t = load_file(os.path.join(toy_model_dir("toy:llama-induction"), "transcoders", f"layer_{last}.safetensors"))
    acts = (x @ t["W_enc"].double().T + t["b_enc"].double()).clamp_min(0)
    W = hf.lm_head.weight.double() * hf.model.norm.weight.double()
    rms = (r.pow(2).mean() + hf.config.rms_norm_eps).sqrt()
    out = []
    for f in feats:
        write = acts[f] * t["W_dec"][f].double()

        def off(m, a, o, write=write):
            o = o.clone()
            o[0, -1] -= write.to(o.dtype)
            return o
        h = hf.model.layers[last].mlp.register_forward_hook(off)
        with torch.no_grad():
            logits = hf(ids).logits[0, -1].double()
        h.remove()
        lin = W @ (-write / rms)
        out.append((float((logits[target] - logits.mean()) - (base[target] - base.mean())),
                    float(lin[target] - lin.mean())))
    return out


def test_intervention_check_on_a_shipped_toy():
    """The check's measured and predicted switch-offs equal a recomputation on toy:llama-induction's shipped
    transcoders. Their correlation is recorded but not bounded: it is low on both toys (module text below)."""
    model = load_model("toy:llama-induction", device="cpu")
    ids = load_sequences("induction", model, n=4, seed=777)[0]
    doc = run_attribution(model, "toy:llama-induction", prompt_ids=ids, check=10)
    check = doc["intervention"]
    assert len(check["features"]) == 10 and check["correlation"] is not None
    circuit = check["circuit"]  # every feature kept: the replacement is the model itself
    assert abs(circuit["replacement_all"] - circuit["target_logit"]) < 1e-3 * max(1, abs(circuit["target_logit"]))
    rows = [f for f in check["features"] if f["layer"] == 1 and f["pos"] == len(ids) - 1]
    assert len(rows) >= 3
    tc = load_transcoders("toy:llama-induction", device="cpu")
    again = _last_layer_effects(model, tc, torch.tensor([ids]), check["target"]["token"], [f["feature"] for f in rows])
    for f, (measured, predicted) in zip(rows, again):
        assert abs(f["measured"] - measured) < 1e-3 + 1e-3 * abs(measured), (f, measured)
        assert abs(f["predicted"] - predicted) < 1e-4 + 1e-3 * abs(predicted), (f, predicted)
    # the frozen final norm is what separates them (see the note above the fixture)
    assert any(abs(m - p) > abs(m) for m, p in again), again


def test_show_prints_the_shipped_report(capsys):
    assert main(["transcoders", "show", "toy:ioi", "--model", "toy:ioi"]) == 0
    out = capsys.readouterr().out
    report = json.loads(open(os.path.join(toy_model_dir("toy:ioi"), "transcoders", "report.json")).read())
    for r in report["layers"]:
        assert f"layer {r['layer']}: FVU {r['fvu']:.4f}" in out
    assert main(["transcoders", "show", "toy:induction"]) == 2  # attention-only: no MLPs, nothing shipped
    assert "ships no transcoders" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists(PEER), reason="circuit-tracer peer venv not present")
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_circuit_tracer_loads_the_shipped_files(tmp_path, name):
    tc = load_transcoders(name, device="cpu")
    x = torch.randn(tc.n_layers, 5, tc.d_model, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    torch.save(torch.stack(tc.reconstruct(list(x))), tmp_path / "ours.pt")
    folder = os.path.join(toy_model_dir(name), "transcoders")
    script = textwrap.dedent(f"""
        import torch
        from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
        x = torch.load("{tmp_path}/x.pt")
        tcs, cfg = load_transcoder_from_hub("{folder}", device=torch.device("cpu"), dtype=torch.float32,
                                            lazy_encoder=False, lazy_decoder=False)
        out = torch.stack([t.decode(t.encode(x[i]), x[i]) for i, t in enumerate(tcs)])
        print(type(tcs).__name__, float((out - torch.load("{tmp_path}/ours.pt")).abs().max()))
    """)
    run = subprocess.run([PEER, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    kind, err = run.stdout.split()
    assert kind == "TranscoderSet" and float(err) < 1e-4, run.stdout
