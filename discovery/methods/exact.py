"""Exact patching: switch each edge alone to its reference value and measure the metric change.

Slow by nature (one evaluation per edge), so many single-edge masks share one forward pass.
`edges` restricts the measurement to those edge indices (the others' scores are NaN)."""

from __future__ import annotations

import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from .common import Setup, masked_metric_sums


@torch.no_grad()
def exact(setup: Setup, max_rows: int = 512, edges=None):
    graph = setup.graph
    which = np.arange(graph.n_edges) if edges is None else np.asarray(edges, dtype=np.int64)
    n_edges = len(which)
    coords = tuple(torch.as_tensor(c[which]) for c in graph.edge_coords())  # (src, dst[, src_pos, dst_pos])
    totals = torch.zeros(n_edges, dtype=torch.float64)
    n_examples = 0
    bar = tqdm(total=n_edges * (-(-len(setup.task) // setup.batch_size)), desc="exact", file=sys.stderr,
               disable=not setup.progress, leave=False)
    for batch in setup.batches():
        b = len(batch.rows)
        ref = setup.reference(batch)
        clean_logits = setup.clean_run(batch).logits
        base = setup.metric(clean_logits, batch, clean_logits).double().sum()
        per_pass = max(1, max_rows // b)
        for start in range(0, n_edges, per_pass):
            k = min(per_pass, n_edges - start)
            off = torch.zeros(k, *graph.valid.shape)
            off[(torch.arange(k),) + tuple(c[start:start + k] for c in coords)] = 1.0
            totals[start:start + k] += (masked_metric_sums(setup, batch, ref, off, clean_logits) - base).cpu()
            bar.update(k)
        n_examples += b
    bar.close()
    scores = (totals / n_examples).float()
    if edges is None:
        return scores
    out = torch.full((graph.n_edges,), float("nan"))
    out[torch.as_tensor(which)] = scores
    return out
