"""Train per-layer transcoders (optionally with a skip connection) on a model's own MLPs.

All layers are trained together on the same tokens. Each step runs the model on `batch_size` sequences
(mlp_data.mlp_activations: MLP inputs after the norm, MLP outputs, position 0 left out) and takes one
Adam step on

    loss = Σ_l  FVU_l + c_t · S_l,        FVU_l = Σ_tokens ||y - ŷ||² / Σ_tokens ||y - ȳ||²  (ȳ: the batch mean)

with S_l, the sparsity term, by activation:
- relu:     mean over tokens of Σ_f f · ||W_dec[f]||, divided by the batch's RMS ||y - ȳ|| (scale-free L1);
- jumprelu: mean over tokens of the number of active features (L0), with straight-through gradients
            for the per-feature threshold (rectangle kernel of width BANDWIDTH, Rajamanoharan et al. 2024);
- topk:     none (k features per token by construction; sparsify's activation: top-k of relu(pre)).
c_t rises linearly from 0 to `sparsity` over the first quarter of the steps (fewer dead features). The
learning rate warms up over 5% of the steps and decays linearly to 0 over the last 20%.

Evaluation (the report, `report.json` beside the weights) is on held-out sequences (`eval_fraction` of
them, chosen by the seed): per layer the fraction of the MLP output's variance unexplained (pooled
FVU = Σ||y - ŷ||² / Σ||y - ȳ||², ȳ the held-out mean), the mean L0 (active features per token) and the
dead features (never active on a held-out token); and for the model as a whole, with every MLP replaced
by its transcoder at once, the mean KL divergence of the next-token distribution from the model's and
the top-1 agreement, over the held-out positions after position 0.

Resumable: every `save_every` steps the full training state goes to OUT/training_state.pt (atomically);
`resume=True` continues from it (same data and settings required; `steps` may grow). It is removed once
the transcoders and report are written.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch

from ..core.errors import UserError
from ..core.progress import progress as progress_bar
from .mlp_data import MLPTap, fingerprint, load_sequences, mlp_activations, pad_batch, pad_id_of
from .transcoder_files import CONFIG
from .transcoders import Transcoders, save_transcoders

STATE = "training_state.pt"
REPORT = "report.json"
BANDWIDTH = 0.05  # JumpReLU's straight-through kernel width, in units of pre-activation
DEFAULT_SPARSITY = {"relu": 0.1, "jumprelu": 0.02, "topk": 0.0}


@dataclass
class TrainConfig:
    kind: str = "plt"  # plt, or skip (a learned linear skip x @ W_skipᵀ)
    n_features: int = 256
    activation: str = "jumprelu"  # relu, jumprelu, topk
    k: int = 8  # topk only
    sparsity: float | None = None  # the sparsity coefficient; None: DEFAULT_SPARSITY[activation]
    steps: int = 1000
    batch_size: int = 32  # sequences per step
    lr: float = 2e-3
    seed: int = 0
    eval_fraction: float = 0.1
    save_every: int = 100

    def check(self) -> None:
        if self.kind not in ("plt", "skip"):
            raise UserError(f"--kind '{self.kind}' is not plt or skip")
        if self.activation not in DEFAULT_SPARSITY:
            raise UserError(f"--activation '{self.activation}' is not relu, jumprelu or topk")
        for name in ("n_features", "steps", "batch_size", "save_every", "k"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.activation == "topk" and self.k > self.n_features:
            raise UserError(f"--k {self.k} is more than --features {self.n_features}")
        if not 0 < self.eval_fraction < 1:
            raise UserError("the held-out fraction must be between 0 and 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError("--lr must be a positive number")
        if self.sparsity is not None and not (self.sparsity >= 0 and math.isfinite(self.sparsity)):
            raise UserError("--sparsity must be a non-negative number")

    @property
    def coeff(self) -> float:
        return DEFAULT_SPARSITY[self.activation] if self.sparsity is None else self.sparsity


class _JumpReLU(torch.autograd.Function):
    """pre · H(pre - θ): the gradient reaches pre where active, θ through a rectangle kernel."""

    @staticmethod
    def forward(ctx, pre, theta):
        ctx.save_for_backward(pre, theta)
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        near = ((pre - theta).abs() < BANDWIDTH / 2).to(grad.dtype)
        g_theta = -(theta / BANDWIDTH) * near * grad
        return grad * (pre > theta), g_theta  # theta arrives expanded to pre's shape; autograd sums it back


class _Step(torch.autograd.Function):
    """H(pre - θ) (counts active features): θ's gradient through the same rectangle kernel."""

    @staticmethod
    def forward(ctx, pre, theta):
        ctx.save_for_backward(pre, theta)
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        near = ((pre - theta).abs() < BANDWIDTH / 2).to(grad.dtype)
        g_theta = -(1.0 / BANDWIDTH) * near * grad
        return None, g_theta


class _Trainable(torch.nn.Module):
    """All layers' parameters stacked over the layer axis (batched einsums)."""

    def __init__(self, cfg: TrainConfig, n_layers: int, d: int, X: torch.Tensor, Y: torch.Tensor, gen):
        super().__init__()
        F = cfg.n_features
        x_rms = X.pow(2).sum(-1).mean(-1).sqrt().clamp_min(1e-6)  # [L]
        y_rms = (Y - Y.mean(1, keepdim=True)).pow(2).sum(-1).mean(-1).sqrt().clamp_min(1e-6)
        enc = torch.randn(n_layers, F, d, generator=gen)
        enc = enc / enc.norm(dim=-1, keepdim=True) * (math.sqrt(d) / x_rms)[:, None, None]  # pre ~ N(0, 1)
        dec = torch.randn(n_layers, F, d, generator=gen)
        dec = dec / dec.norm(dim=-1, keepdim=True) * (y_rms / math.sqrt(F))[:, None, None]
        self.W_enc = torch.nn.Parameter(enc)
        self.b_enc = torch.nn.Parameter(torch.zeros(n_layers, F))
        self.W_dec = torch.nn.Parameter(dec)
        self.b_dec = torch.nn.Parameter(Y.mean(1).clone())
        self.W_skip = torch.nn.Parameter(torch.zeros(n_layers, d, d)) if cfg.kind == "skip" else None
        self.log_theta = torch.nn.Parameter(torch.full((n_layers, F), math.log(0.5))) \
            if cfg.activation == "jumprelu" else None
        self.cfg = cfg

    def forward(self, X):
        """(reconstruction [L, T, d], activations [L, T, F], sparsity term's per-token counts or L1 [L, T])"""
        pre = torch.einsum("ltd,lfd->ltf", X, self.W_enc) + self.b_enc[:, None]
        act = self.cfg.activation
        if act == "relu":
            f = torch.relu(pre)
            sparse = (f * self.W_dec.norm(dim=-1)[:, None]).sum(-1)
        elif act == "jumprelu":
            theta = self.log_theta.exp()[:, None].expand_as(pre)
            f = _JumpReLU.apply(pre, theta)
            sparse = _Step.apply(pre, theta).sum(-1)
        else:
            r = torch.relu(pre)
            vals, idx = r.topk(self.cfg.k, dim=-1)
            f = torch.zeros_like(r).scatter(-1, idx, vals)
            sparse = pre.new_zeros(pre.shape[:2])
        y = torch.einsum("ltf,lfd->ltd", f, self.W_dec) + self.b_dec[:, None]
        if self.W_skip is not None:
            y = y + torch.einsum("ltd,led->lte", X, self.W_skip)
        return y, f, sparse

    def to_transcoders(self, model_name: str | None) -> Transcoders:
        t = {k: v.detach().clone() for k, v in self.state_dict().items()}
        threshold = t["log_theta"].exp() if self.log_theta is not None else None
        return Transcoders(t["W_enc"], t["b_enc"], list(t["W_dec"]), t["b_dec"], W_skip=t.get("W_skip"),
                           threshold=threshold, activation=self.cfg.activation,
                           k=self.cfg.k if self.cfg.activation == "topk" else None,
                           scan=f"circuitry:{model_name}" if model_name else None)


def _lr_factor(step: int, steps: int) -> float:
    warm, decay_from = max(1, steps // 20), int(steps * 0.8)
    if step < warm:
        return (step + 1) / warm
    if step >= decay_from:
        return max(0.0, (steps - step) / max(1, steps - decay_from))
    return 1.0


class _Progress:
    """The training bar (core.progress: tqdm on a terminal, plain lines at each tenth elsewhere), and the
    caller's callback once per step."""

    def __init__(self, total: int, start: int, desc: str, quiet: bool, callback=None):
        self.total, self.n, self.callback = total, start, callback
        self.bar = progress_bar(total=total, initial=start, desc=desc, file=sys.stderr, disable=quiet)

    def update(self, info: dict) -> None:
        self.n += 1
        if self.callback is not None:
            self.callback(self.n, self.total, info)
        self.bar.set_postfix(info, refresh=False)
        self.bar.update(1)

    def close(self):
        self.bar.close()


def _save_state(path: str, state: dict) -> None:
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _split(seqs, cfg: TrainConfig):
    order = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    n_eval = max(1, round(len(seqs) * cfg.eval_fraction))
    return [seqs[i] for i in order[n_eval:]], [seqs[i] for i in order[:n_eval]]


def _batch(train, step: int, cfg: TrainConfig):
    """The sequences of `step`: epochs of seeded permutations (the same for a resumed run)."""
    per_epoch = max(1, len(train) // cfg.batch_size)
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch + 1)).tolist()
    return [train[j] for j in perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]]


@torch.no_grad()
def evaluate(loaded, tc: Transcoders, seqs: list[list[int]], batch_size: int = 32) -> dict:
    """The report's numbers for `tc` on `seqs` (see the module docstring)."""
    L, F = tc.n_layers, tc.n_features
    err, sq, s, n_tok = torch.zeros(L, dtype=torch.float64), torch.zeros(L, dtype=torch.float64), None, 0
    l0, alive = torch.zeros(L, dtype=torch.float64), torch.zeros(L, F, dtype=torch.bool)
    kl_sum, agree, n_pos = 0.0, 0, 0
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        X, Y = mlp_activations(loaded, chunk)
        acts = [tc.encode(layer, X[layer]) for layer in range(L)]
        Yhat = torch.stack([tc.decode(layer, acts, X[layer]) for layer in range(L)])
        err += (Y - Yhat).double().pow(2).sum((1, 2)).cpu()
        sq += Y.double().pow(2).sum((1, 2)).cpu()
        s = Y.double().sum(1).cpu() + (0 if s is None else s)
        n_tok += Y.shape[1]
        stacked = torch.stack(acts) > 0
        l0 += stacked.sum((1, 2)).double().cpu()
        alive |= stacked.any(1).cpu()
        ids, mask = pad_batch(chunk, pad_id_of(loaded), loaded.adapter.device)
        keep = mask.clone()
        keep[:, 0] = False
        logits = loaded.hf_model(input_ids=ids, attention_mask=mask.long()).logits.float()

        replaced: list[torch.Tensor | None] = [None] * L

        def replace(layer, x):  # every MLP replaced at once: each transcoder reads the replaced model's input
            replaced[layer] = tc.encode(layer, x)
            return tc.decode(layer, replaced, x)
        with MLPTap(loaded, replace=replace):
            rlogits = loaded.hf_model(input_ids=ids, attention_mask=mask.long()).logits.float()
        logp, logq = logits.log_softmax(-1)[keep], rlogits.log_softmax(-1)[keep]
        kl_sum += float((logp.exp() * (logp - logq)).sum())
        agree += int((logp.argmax(-1) == logq.argmax(-1)).sum())
        n_pos += int(keep.sum())
    var = sq - s.pow(2).sum(-1) / n_tok  # Σ||y - ȳ||² = Σ||y||² - n||ȳ||²
    layers = [{"layer": layer, "fvu": round(float(err[layer] / var[layer]), 5),
               "mean_l0": round(float(l0[layer] / n_tok), 3), "dead_features": int((~alive[layer]).sum()),
               "n_features": F} for layer in range(L)]
    return {"layers": layers, "eval_tokens": n_tok,
            "replacement": {"kl": round(kl_sum / max(1, n_pos), 5), "top1_agreement": round(agree / max(1, n_pos), 4),
                            "positions": n_pos}}



def check_out_dir(out: str, resume: bool) -> None:
    """Before any work: OUT may be new or empty of transcoder files, or hold a run to resume."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out '{out}' exists and is not a folder")
    has_state = os.path.isfile(os.path.join(out, STATE))
    has_result = os.path.isfile(os.path.join(out, CONFIG))
    if resume and not has_state:
        raise UserError(f"--resume: '{out}' holds no interrupted run ({STATE})"
                        + ("; its transcoders are already finished" if has_result else ""))
    if not resume and (has_state or has_result):
        what = "an interrupted run (add --resume to continue it)" if has_state else "trained transcoders"
        raise UserError(f"--out '{out}' already holds {what}; choose another folder")


def train_transcoders(loaded, data: str, out: str, cfg: TrainConfig | None = None, *, n: int | None = None,
                      data_seed: int = 0, max_len: int = 128, resume: bool = False, quiet: bool = False,
                      callback=None) -> dict:
    """Train transcoders for every MLP layer of `loaded` on `data` (mlp_data.load_sequences), write them to
    `out` in circuit-tracer's per-layer format with `report.json` beside them, and return the report.
    `callback(step, steps, info)` is called after every step."""
    cfg = cfg or TrainConfig()
    cfg.check()
    out = os.fspath(out)
    check_out_dir(out, resume)
    seqs = load_sequences(data, loaded, n=n, seed=data_seed, max_len=max_len)
    train, held_out = _split(seqs, cfg)
    if len(train) < 1:
        raise UserError(f"--data '{data}' has too few sequences to hold some out for the report")
    data_id = {"data": os.path.abspath(data) if os.path.isfile(data) else data, "fingerprint": fingerprint(seqs),
               "sequences": len(seqs), "held_out": len(held_out), "max_len": max_len}
    torch.manual_seed(cfg.seed)
    state = None
    if resume:
        state = torch.load(os.path.join(out, STATE), map_location="cpu", weights_only=False)
        same = {k: v for k, v in state["config"].items() if k != "steps"} == \
            {k: v for k, v in asdict(cfg).items() if k != "steps"}
        if not same or state["data"] != data_id or state["model"] != loaded.name:
            raise UserError(f"--resume: '{out}' was started with other data, model or settings; give the same ones")
        if state["step"] >= cfg.steps:
            raise UserError(f"--resume: the run in '{out}' already reached {state['step']} steps; give --steps above that")
    X0, Y0 = mlp_activations(loaded, _batch(train, 0, cfg))
    n_layers, _, d_model = X0.shape
    net = _Trainable(cfg, n_layers, d_model, X0.cpu(), Y0.cpu(), torch.Generator().manual_seed(cfg.seed))
    device = loaded.adapter.device
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    start, seconds = 0, 0.0
    if state is not None:
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        start, seconds = state["step"], state["seconds"]
    os.makedirs(out, exist_ok=True)
    bar = _Progress(cfg.steps, start, f"transcoders {loaded.name}", quiet, callback)
    t0 = time.perf_counter()
    try:
        for step in range(start, cfg.steps):
            X, Y = mlp_activations(loaded, _batch(train, step, cfg))
            for group in opt.param_groups:
                group["lr"] = cfg.lr * _lr_factor(step, cfg.steps)
            c = cfg.coeff * min(1.0, step / max(1, cfg.steps // 4))
            yhat, f, sparse = net(X)
            centered = Y - Y.mean(1, keepdim=True)
            var = centered.pow(2).sum((1, 2)).clamp_min(1e-12)
            fvu = (Y - yhat).pow(2).sum((1, 2)) / var
            if cfg.activation == "relu":
                sparse = sparse / (var / Y.shape[1]).sqrt()[:, None]
            loss = (fvu + c * sparse.mean(1)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            l0 = float((f > 0).sum(-1).float().mean())
            bar.update({"fvu": f"{float(fvu.detach().mean()):.3f}", "l0": f"{l0:.1f}"})
            done = step + 1
            if done % cfg.save_every == 0 and done < cfg.steps:
                _save_state(os.path.join(out, STATE), {
                    "step": done, "net": net.state_dict(), "opt": opt.state_dict(), "config": asdict(cfg),
                    "data": data_id, "model": loaded.name, "seconds": seconds + time.perf_counter() - t0})
    finally:
        bar.close()
    seconds += time.perf_counter() - t0
    tc = net.to_transcoders(loaded.name)
    report = {"model": loaded.name, "revision": loaded.revision, **data_id, "config": asdict(cfg),
              "sparsity_coefficient": cfg.coeff, "train_seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(),
              **evaluate(loaded, tc, held_out, cfg.batch_size)}
    save_transcoders(tc, out, model_name=loaded.name, overwrite=True)
    tmp = os.path.join(out, REPORT + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, os.path.join(out, REPORT))
    if os.path.exists(os.path.join(out, STATE)):
        os.remove(os.path.join(out, STATE))
    return report
