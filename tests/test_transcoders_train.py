"""Training transcoders: the unexplained variance falls below a stated bound on a toy (measured here on
fresh data with plain hooks, not by the trainer's own report), an interrupted run resumes to the same
weights, the MLP inputs/outputs are read right on every family, and the CLI's bad input is one line."""

import json
import os

import pytest
import torch

from discovery.cli import main
from discovery.features import load_transcoders
from discovery.features.mlp_data import load_sequences, mlp_activations
from discovery.features.train import STATE, TrainConfig, train_transcoders
from discovery.model.adapters import load_model, wrap_model
from tests.tiny import build

FVU_BOUND = 0.1  # topk, 64 features, k 8, 150 steps on toy:ioi's own task (measured: 0.02-0.05 per layer)


@pytest.fixture(scope="module")
def toy():
    return load_model("toy:llama-induction", device="cpu")


@pytest.fixture(scope="module")
def ioi():
    return load_model("toy:ioi", device="cpu")


def _fresh_fvu(model, tc, seqs):
    """Σ||y - ŷ||² / Σ||y - ȳ||² per layer, with forward hooks written here on the HF modules."""
    store = {}
    hooks = [layer.mlp.register_forward_hook(lambda m, a, o, i=i: store.__setitem__(i, (a[0], o)))
             for i, layer in enumerate(model.hf_model.transformer.h)]
    fvu = []
    try:
        with torch.no_grad():
            ids = torch.tensor(seqs)
            model.hf_model(input_ids=ids)
            for i in range(tc.n_layers):
                x, y = (t[:, 1:].reshape(-1, t.shape[-1]) for t in store[i])
                f = torch.relu(x @ tc.W_enc[i].T + tc.b_enc[i])
                top = f.topk(tc.k, dim=-1)
                f = torch.zeros_like(f).scatter(-1, top.indices, top.values)
                yhat = f @ tc.W_dec[i] + tc.b_dec[i]
                fvu.append(float((y - yhat).pow(2).sum() / (y - y.mean(0)).pow(2).sum()))
    finally:
        for h in hooks:
            h.remove()
    return fvu


def test_training_lowers_unexplained_variance_below_bound(ioi, tmp_path):
    cfg = TrainConfig(activation="topk", n_features=64, k=8, steps=150, batch_size=16, save_every=1000)
    report = train_transcoders(ioi, "ioi", tmp_path / "tc", cfg, n=500, quiet=True)
    tc = load_transcoders(tmp_path / "tc", model=ioi, device="cpu")
    assert tc.activation == "topk" and tc.k == 8 and tc.n_layers == 4
    fresh = load_sequences("ioi", ioi, n=60, seed=12345)  # rows the training never saw
    same_len = [s for s in fresh if len(s) == len(fresh[0])]
    assert len(same_len) >= 10
    fvu = _fresh_fvu(ioi, tc, same_len)
    assert max(fvu) < FVU_BOUND, fvu
    untrained = TrainConfig(activation="topk", n_features=64, k=8, steps=1, lr=1e-9, save_every=1000)
    report0 = train_transcoders(ioi, "ioi", tmp_path / "tc0", untrained, n=500, quiet=True)
    assert all(r["fvu"] > 3 * FVU_BOUND for r in report0["layers"]), report0["layers"]
    on_disk = json.loads((tmp_path / "tc" / "report.json").read_text())
    assert on_disk["layers"] == report["layers"] and sorted(on_disk["layers"][0]) == \
        ["dead_features", "fvu", "layer", "mean_l0", "n_features"]
    assert all(r["mean_l0"] <= 8 for r in report["layers"]) and not os.path.exists(tmp_path / "tc" / STATE)


def test_an_interrupted_run_resumes_to_the_same_weights(toy, tmp_path):
    cfg = TrainConfig(kind="skip", activation="jumprelu", n_features=32, steps=12, batch_size=8, save_every=5)
    train_transcoders(toy, "induction", tmp_path / "straight", cfg, n=60, quiet=True)

    def stop(step, steps, info):
        if step == 8:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_transcoders(toy, "induction", tmp_path / "resumed", cfg, n=60, quiet=True, callback=stop)
    assert torch.load(tmp_path / "resumed" / STATE, weights_only=False)["step"] == 5
    assert main(["transcoders", "train", "--model", "toy:llama-induction", "--data", "induction", "--n", "60",
                 "--out", str(tmp_path / "resumed"), "--features", "32"]) == 2  # holds a run: --resume needed
    train_transcoders(toy, "induction", tmp_path / "resumed", cfg, n=60, quiet=True, resume=True)
    a = load_transcoders(tmp_path / "straight", device="cpu")
    b = load_transcoders(tmp_path / "resumed", device="cpu")
    assert a.has_skip and a.activation == "jumprelu"
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama", "qwen2", "mistral"])
def test_mlp_inputs_and_outputs_are_the_mlps_own(family):
    model = wrap_model(build(family))
    seqs = [[1, 5, 7, 9, 11], [3, 4, 6]]
    X, Y = mlp_activations(model, seqs)
    assert X.shape == (2, 4 + 2, 32) and Y.shape == X.shape  # position 0 and padding left out
    for layer in range(2):
        torch.testing.assert_close(model.adapter.mlp(layer, X[layer]), Y[layer], rtol=1e-5, atol=1e-5)
    if family == "neox":  # parallel attention/MLP: the MLP reads the norm of the layer's input residual
        out = model.hf_model(input_ids=torch.tensor([seqs[0]]), output_hidden_states=True)
        for layer in range(2):
            want = model.adapter.mlp_norm(layer, out.hidden_states[layer][0, 1:])
            torch.testing.assert_close(X[layer][:4], want, rtol=1e-5, atol=1e-5)


def test_cli_trains_and_refuses_bad_input_in_one_line(tmp_path, capsys):
    data = tmp_path / "d.txt"
    data.write_text("".join(f"Alice and Bob went to the store {i}\n" for i in range(3)))
    assert main(["transcoders", "train", "--model", "toy:ioi", "--data", str(data), "--out", str(tmp_path / "o"),
                 "--steps", "0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    rows = tmp_path / "r.jsonl"
    rows.write_text("".join(json.dumps({"input_ids": [2, 10 + i, 11, 12, 13, 14]}) + "\n" for i in range(12)))
    assert main(["transcoders", "train", "--model", "toy:ioi", "--data", str(rows), "--out", str(tmp_path / "o"),
                 "--steps", "3", "--features", "16", "--batch-size", "4", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("layer ") == 4 and "FVU" in out and (tmp_path / "o" / "layer_3.safetensors").exists()
    assert main(["transcoders", "train", "--model", "toy:ioi", "--data", str(rows), "--out", str(tmp_path / "o")]) == 2
    assert "already holds trained transcoders" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input_ids": [2, 5000, 3]}) + "\n" + json.dumps({"input_ids": [2, 7, 3]}) + "\n")
    assert main(["transcoders", "train", "--model", "toy:ioi", "--data", str(bad), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "token id 5000 is outside" in err and err.count("\n") == 1
    assert main(["transcoders", "show", str(tmp_path / "o")]) == 0
    assert "PLT, 4 layers x 16 features" in capsys.readouterr().out
