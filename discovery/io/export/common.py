"""What several exporters read from a circuit document: its label records, the sign of its metric,
and its edges under MIB's per-query-head names."""

from __future__ import annotations

import re

from ...core.errors import UserError

# a grouped-query k/v reader, `a{L}.kv{G}<k>`: the key/value head G that query heads share
_KV_READER = re.compile(r"^(?P<src>.+)->a(?P<layer>\d+)\.kv(?P<group>\d+)<(?P<slot>[kv])>$")

LOWER_IS_BETTER = {"kl"}  # distance from the clean behaviour (discovery.model.metrics: higher_is_better False)


def labels(data: dict) -> dict[str, dict]:
    """Label records by component id (`labels[]` of a labeled circuit; empty for a plain one)."""
    return {r["component"]: r for r in data.get("labels") or [] if isinstance(r, dict) and "component" in r}


def metric_name(data: dict) -> str:
    return (data.get("metrics") or {}).get("metric") or (data.get("method") or {}).get("params", {}).get(
        "metric") or "logit_diff"


def loss_sign(data: dict) -> float:
    """+1 or -1 such that sign * score is the change of the *loss* when the edge is corrupted.

    circuitry's score is the change of the metric; MIB's attribution runs on the loss (the metric
    negated when higher is better: logit and probability differences), so its important edges are
    positive. KL is already a loss."""
    return 1.0 if metric_name(data) in LOWER_IS_BETTER else -1.0


def model_shape(data: dict) -> tuple[int, int, int, bool]:
    m = data.get("model") or {}
    try:
        n_layers, n_heads = int(m["n_layers"]), int(m["n_heads"])
    except (KeyError, TypeError, ValueError):
        raise UserError("the circuit file has no model.n_layers / model.n_heads; is it a circuitry circuit file?") \
            from None
    return n_layers, n_heads, int(m.get("n_kv_heads") or n_heads), bool(m.get("parallel_residual"))


def refuse_positional(data: dict, fmt: str) -> None:
    if data.get("positions"):
        raise UserError(f"a position-aware circuit (--positions) has no {fmt} form: its graphs have one edge per "
                        "component pair, not per position pair; export a circuit discovered without --positions "
                        "(or use neuronpedia, node-link or graphml)")


def per_head_edges(data: dict) -> list[tuple[str, float | None, bool, float]]:
    """Every edge of the circuit under MIB's names: (name, score, in_circuit, share).

    A grouped-query k/v edge into key/value head G (`src->a2.kv0<k>`) becomes one edge into each
    query head of the group (`src->a2.h0<k>`, `src->a2.h1<k>`, ...), each with the group edge's
    membership and `share` = 1 / group size of its score: attribution is linear in the shared k/v
    input, so the group's score is the sum of its query heads' scores. Other edges have share 1."""
    n_layers, n_heads, n_kv, _ = model_shape(data)
    size = n_heads // n_kv if n_kv and n_heads % n_kv == 0 else 1
    out = []
    for e in data.get("edges") or []:
        m = _KV_READER.match(e["name"])
        if m is None:
            out.append((e["name"], e.get("score"), bool(e.get("in_circuit")), 1.0))
            continue
        layer, group = int(m["layer"]), int(m["group"])
        for h in range(group * size, (group + 1) * size):
            out.append((f"{m['src']}->a{layer}.h{h}<{m['slot']}>", e.get("score"), bool(e.get("in_circuit")), 1 / size))
    return out
