"""Edge Pruning (Bhaskar et al. 2024, "Finding Transformer Circuits with Edge Pruning"): learn a
continuous mask over the edges by gradient descent, with a hard-concrete relaxation of an L0 penalty
(Louizos et al. 2018) pushing it to a sparse circuit. The same family as auto-circuit's subnetwork
probing; here the mask sits on the patching core's edges (`patching.run` with fractional `off`).

Definition
----------
- Each edge e has a logit a_e (init `init_logit`: every edge kept). A training step draws, per edge,
  u ~ U(0, 1) and s = sigmoid((log u - log(1 - u) + a_e) / beta), stretches it to (gamma, zeta) and
  clamps: z_e = min(1, max(0, s (zeta - gamma) + gamma)), so z_e is exactly 0 or 1 with positive
  probability and differentiable in a_e in between (beta 2/3, gamma -0.1, zeta 1.1).
- The circuit under z: every edge carries z_e of its live value and 1 - z_e of its reference
  (off = 1 - z); the model's output at each row's last token is compared with the clean model's by
  the KL divergence KL(clean || circuit), the faithfulness loss of Edge Pruning (whatever the task
  metric: the circuit should behave as the model does).
- Density: d = mean over edges of P(z_e > 0) = sigmoid(a_e - beta log(-gamma / zeta)), the expected
  fraction of edges kept (the L0 norm over the edge count).
- Loss = KL + penalty. With a target `sparsity` t (fraction of edges removed), the penalty is the
  Lagrangian l1 (d - d*) + l2 (d - d*)^2 whose multipliers l1, l2 are raised by gradient ascent,
  with the target density d* going linearly from 1 to 1 - t over the first `warmup` of the steps
  (Bhaskar et al.'s schedule); with `lam` instead, the penalty is lam * d (a plain L0 penalty).
- Steps cycle over the task's data batches; Adam on the logits (lr) and on the multipliers.
- Result: scores = P(z_e > 0) of the final logits, signed as edge scores are (an edge that matters
  has a negative score for a higher-is-better metric, positive for KL), so |score| ranks edges by
  how surely they are kept and selection and curves work as for any method. The circuit: with a
  target sparsity, the round((1 - t) * n_edges) edges of highest logit (exactly the target); with
  lam, the edges whose deterministic mask min(1, max(0, sigmoid(a_e) (zeta - gamma) + gamma)) exceeds
  0.5. `sparsity` reports the fraction of edges outside that circuit.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from ..core.progress import progress as progress_bar

from ..core import registry
from ..core.errors import UserError
from ..engine.patching import run
from .common import Setup

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1
DEFAULT_SPARSITY = registry.method("edge-pruning").defaults["sparsity"]
DEFAULT_STEPS = registry.method("edge-pruning").defaults["train_steps"]


@dataclass
class EdgePruningResult:
    scores: np.ndarray  # float32 [n_edges]: signed P(z_e > 0)
    logits: np.ndarray  # float32 [n_edges]: the learned mask logits a_e
    in_circuit: np.ndarray  # bool [n_edges]
    sparsity: float  # fraction of edges outside in_circuit
    expected_density: float  # mean P(z_e > 0) at the end
    final_kl: float  # KL of the last step (a sampled mask)
    params: dict = field(default_factory=dict)
    wall_time_s: float = 0.0


def _check(sparsity, lam, steps, lr, warmup):
    if (sparsity is None) == (lam is None):
        raise UserError("edge-pruning needs exactly one of a target sparsity (--sparsity) or a penalty (--lam)")
    if sparsity is not None and not (isinstance(sparsity, (int, float)) and 0 <= sparsity < 1):
        raise UserError(f"--sparsity is the fraction of edges to remove, in [0, 1) (got {sparsity!r})")
    if lam is not None and not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise UserError(f"--lam must be a non-negative number (got {lam!r})")
    if not isinstance(steps, int) or steps < 1:
        raise UserError(f"edge-pruning steps must be at least 1 (got {steps!r})")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise UserError(f"edge-pruning learning rate must be positive (got {lr!r})")
    if not (0 <= warmup <= 1):
        raise UserError(f"edge-pruning warmup is a fraction of the steps, in [0, 1] (got {warmup!r})")


def keep_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(z > 0) of the hard-concrete gate."""
    return torch.sigmoid(logits - BETA * math.log(-GAMMA / ZETA))


def sample_gate(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + logits) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def deterministic_gate(logits: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(logits) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def edge_pruning(setup: Setup, sparsity: float | None = DEFAULT_SPARSITY, lam: float | None = None,
                 steps: int = DEFAULT_STEPS, lr: float = 0.1, warmup: float = 0.5, init_logit: float = 3.0,
                 seed: int = 0, progress: bool | None = None) -> EdgePruningResult:
    """Learn an edge mask (see the module docstring). Give a target `sparsity` (fraction of edges
    removed; default 0.95) or `lam` (L0 penalty weight; then pass sparsity=None)."""
    if lam is not None and sparsity == DEFAULT_SPARSITY:
        sparsity = None  # lam given: the default target does not apply
    _check(sparsity, lam, steps, lr, warmup)
    t0 = time.perf_counter()
    a, g, dev = setup.adapter, setup.graph, setup.device
    src = torch.as_tensor(g.edge_src, device=dev)
    dst = torch.as_tensor(g.edge_dst, device=dev)
    logits = torch.full((g.n_edges,), float(init_logit), device=dev, requires_grad=True)
    multipliers = torch.zeros(2, device=dev, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=lr)
    opt_lagrange = torch.optim.Adam([multipliers], lr=lr)
    gen = torch.Generator(device=dev).manual_seed(seed)

    data = []  # each batch's reference activations and clean log-probabilities, made once
    with torch.no_grad():
        for batch in setup.batches():
            clean = setup.clean_run(batch).logits
            data.append((batch, setup.reference(batch), F.log_softmax(clean.float(), -1)))
    n_warm = max(1, int(round(warmup * steps)))
    bar = progress_bar(range(steps), desc="edge-pruning", file=sys.stderr,
               disable=not (setup.progress if progress is None else progress), leave=False)
    kl_value = float("nan")
    for step in bar:
        setup.tick(step, steps, "edge-pruning")  # progress and cancellation, once per step
        batch, ref, clean_logp = data[step % len(data)]
        z = sample_gate(logits, gen)
        off = torch.zeros(1, g.n_sources, g.n_readers, device=dev, dtype=z.dtype)
        off = off.index_put((torch.zeros_like(src), src, dst), 1 - z)
        out = run(a, g, batch.clean, last=batch.clean_last, ref=ref, off=off).logits
        kl = F.kl_div(F.log_softmax(out.float(), -1), clean_logp, log_target=True, reduction="batchmean")
        density = keep_probability(logits).mean()
        if lam is not None:
            loss = kl + lam * density
        else:
            target = 1 - sparsity * min(1.0, (step + 1) / n_warm)
            gap = density - target
            lagrangian = multipliers[0] * gap + multipliers[1] * gap ** 2
            loss = kl + lagrangian
        opt.zero_grad()
        opt_lagrange.zero_grad()
        loss.backward()
        if lam is None:
            multipliers.grad.neg_()  # ascent: the multipliers grow while the density misses its target
        opt.step()
        if lam is None:
            opt_lagrange.step()
        kl_value = float(kl.detach())
        bar.set_postfix(kl=f"{kl_value:.3g}", density=f"{float(density.detach()):.3f}", refresh=False)
    bar.close()
    setup.tick(steps, steps, "edge-pruning")

    final = logits.detach()
    p = keep_probability(final)
    if sparsity is not None:
        n_keep = int(round((1 - sparsity) * g.n_edges))
        keep = np.zeros(g.n_edges, dtype=bool)
        keep[np.argsort(-final.cpu().numpy(), kind="stable")[:n_keep]] = True
    else:
        keep = (deterministic_gate(final) > 0.5).cpu().numpy()
    sign = -1.0 if setup.metric.higher_is_better else 1.0
    params = {"sparsity_target": sparsity, "lam": lam, "train_steps": steps, "lr": lr, "warmup": warmup,
              "init_logit": init_logit, "seed": seed, "loss": "kl"}
    return EdgePruningResult(scores=(sign * p).cpu().numpy().astype(np.float32),
                             logits=final.cpu().numpy().astype(np.float32), in_circuit=keep,
                             sparsity=float(1 - keep.mean()), expected_density=float(p.mean()), final_kl=kl_value,
                             params=params, wall_time_s=time.perf_counter() - t0)
