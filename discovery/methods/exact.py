"""Exact patching: switch each edge alone to its reference value and measure the metric change.

Slow by nature (one evaluation per edge), so many single-edge masks share one forward pass."""

from __future__ import annotations

import sys

import torch
from tqdm.auto import tqdm

from ..patching import run
from .common import Setup


@torch.no_grad()
def exact(setup: Setup, max_rows: int = 512):
    adapter, graph, metric = setup.adapter, setup.graph, setup.metric
    n_edges = graph.n_edges
    src, dst = torch.as_tensor(graph.edge_src), torch.as_tensor(graph.edge_dst)
    totals = torch.zeros(n_edges, dtype=torch.float64)
    n_examples = 0
    bar = tqdm(total=n_edges * (-(-len(setup.task) // setup.batch_size)), desc="exact", file=sys.stderr,
               disable=not setup.progress, leave=False)
    for batch in setup.batches():
        b = len(batch.rows)
        ref = setup.reference(batch)
        full = setup.clean_run(batch)
        base = metric(full.logits, batch, full.logits).double().sum()
        per_pass = max(1, max_rows // b)
        for start in range(0, n_edges, per_pass):
            k = min(per_pass, n_edges - start)
            off = torch.zeros(k, graph.n_sources, graph.n_readers, device=setup.device)
            off[torch.arange(k), src[start:start + k], dst[start:start + k]] = 1.0
            rep = lambda t: t.repeat(k, *([1] * (t.dim() - 1))) if t.shape[0] == b else t
            result = run(adapter, graph, batch.clean.repeat(k, 1), last=batch.clean_last.repeat(k),
                         ref=ref.map(rep), off=off.repeat_interleave(b, 0))
            big = _repeat_batch(batch, k)
            values = metric(result.logits, big, full.logits.repeat(k, 1)).double().view(k, b).sum(1)
            totals[start:start + k] += (values - base).cpu()
            bar.update(k)
        n_examples += b
    bar.close()
    return (totals / n_examples).float()


def _repeat_batch(batch, k):
    from dataclasses import replace
    return replace(batch, rows=batch.rows * k, answers=batch.answers.repeat(k, 1),
                   answer_mask=batch.answer_mask.repeat(k, 1), wrongs=batch.wrongs.repeat(k, 1),
                   wrong_mask=batch.wrong_mask.repeat(k, 1))
