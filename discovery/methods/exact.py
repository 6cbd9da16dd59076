"""Exact patching: switch each edge alone to its reference value and measure the metric change.

Slow by nature (one evaluation per edge), so many single-edge masks share one forward pass.
`edges` restricts the measurement to those edge indices (the others' scores are NaN)."""

from __future__ import annotations

import sys

import numpy as np
import torch
from ..core.progress import progress as progress_bar

from .common import Setup, masked_metric_sums


@torch.no_grad()
def measured_effects(setup: Setup, n_items: int, masks, desc: str, max_rows: int = 512) -> torch.Tensor:
    """Mean over examples of metric(items start..stop switched off) - metric(clean) for every item, each
    alone: `masks(start, stop)` gives their off masks [stop - start, ...]; as many per forward pass as
    fit in max_rows. float32 [n_items]."""
    totals = torch.zeros(n_items, dtype=torch.float64)
    n_examples = 0
    bar = progress_bar(total=n_items * (-(-len(setup.task) // setup.batch_size)), desc=desc, file=sys.stderr,
               disable=not setup.progress, leave=False)
    for batch in setup.batches():
        b = len(batch.rows)
        ref = setup.reference(batch)
        clean_logits = setup.clean_run(batch).logits
        base = setup.metric(clean_logits, batch, clean_logits).double().sum()
        per_pass = max(1, max_rows // b)
        for start in range(0, n_items, per_pass):
            stop = min(start + per_pass, n_items)
            totals[start:stop] += (masked_metric_sums(setup, batch, ref, masks(start, stop), clean_logits) - base).cpu()
            bar.update(stop - start)
        n_examples += b
    bar.close()
    return (totals / n_examples).float()


def exact(setup: Setup, max_rows: int = 512, edges=None):
    graph = setup.graph
    which = np.arange(graph.n_edges) if edges is None else np.asarray(edges, dtype=np.int64)
    coords = tuple(torch.as_tensor(c[which]) for c in graph.edge_coords())  # (src, dst[, src_pos, dst_pos])

    def masks(start, stop):
        off = torch.zeros(stop - start, *graph.valid.shape)
        off[(torch.arange(stop - start),) + tuple(c[start:stop] for c in coords)] = 1.0
        return off

    scores = measured_effects(setup, len(which), masks, "exact", max_rows)
    if edges is None:
        return scores
    out = torch.full((graph.n_edges,), float("nan"))
    out[torch.as_tensor(which)] = scores
    return out
