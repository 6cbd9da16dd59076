"""The position-aware graph's topology (definitions: discovery/engine/positions.py's docstring): every
edge of a base Graph once per (src_pos, dst_pos) pair that causal attention allows: s[p]->r[p] into q,
MLP and logits readers (the logits at the last position only), s[i]->r[j] for i <= j (within the
layer's sliding window) into k and v readers. Index arrays and dense [n_sources, n_readers, P, P]
masks, numpy only: a circuit file names its edges in this graph without loading torch."""

from __future__ import annotations

import numpy as np

from .errors import UserError
from .graph import Graph


def aligned_length(task) -> int:
    """The one prompt length P that every clean and corrupted row of the task has (UserError otherwise)."""
    lengths = {len(x) for x in task.clean_ids} | {len(x) for x in task.corrupted_ids}
    if len(lengths) != 1:
        first = len(task.clean_ids[0])
        row = next((i for i, (c, k) in enumerate(zip(task.clean_ids, task.corrupted_ids))
                    if len(c) != first or len(k) != first), 0)
        raise UserError(f"--positions needs rows that share one token layout, but row {row + 1} has "
                        f"{len(task.clean_ids[row])}/{len(task.corrupted_ids[row])} clean/corrupted tokens and row 1 "
                        f"has {first}; give prompts of equal length (a template)")
    return lengths.pop()


class PositionalGraph:
    """The edges of `base` once per allowed (src_pos, dst_pos) pair; everything else is the base graph's."""

    def __init__(self, base: Graph, n_positions: int, windows: list[int | None] | None = None,
                 names: list[str] | None = None):
        if n_positions < 1:
            raise UserError("--positions needs prompts of at least one token")
        if names is not None and len(names) != n_positions:
            raise UserError(f"{len(names)} position names given for prompts of {n_positions} tokens")
        self.base, self.n_positions, self.position_names = base, n_positions, names
        self.windows = list(windows) if windows is not None else [None] * base.n_layers
        p = n_positions
        i = np.arange(p)
        causal = i[:, None] <= i[None, :]  # [src_pos, dst_pos]
        local = np.eye(p, dtype=bool)
        last = np.zeros((p, p), dtype=bool)
        last[p - 1, p - 1] = True
        valid = np.zeros((base.n_sources, base.n_readers, p, p), dtype=bool)
        for stage in base.stages:
            for r in range(stage.start, stage.stop):
                slot = base.reader_slot[r]
                if slot in ("k", "v"):
                    pairs = causal.copy()
                    window = self.windows[stage.layer]
                    if window is not None:
                        pairs &= i[:, None] > i[None, :] - window
                else:
                    pairs = last if slot == "logits" else local
                valid[:stage.n_upstream, r] = pairs
        self.valid = valid
        r, s, ps, pd = np.nonzero(valid.transpose(1, 0, 2, 3))  # base edge order: reader, then source
        self.edge_src, self.edge_dst, self.edge_src_pos, self.edge_dst_pos = s, r, ps, pd
        base_index = np.full((base.n_sources, base.n_readers), -1, dtype=np.int64)
        base_index[base.edge_src, base.edge_dst] = np.arange(base.n_edges)
        self.edge_base = base_index[s, r]  # the base edge of each positional edge
        self._names = None
        self._index = None

    def __getattr__(self, name):  # sources, readers, stages, node ids ... are the base graph's
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def n_edges(self) -> int:
        return len(self.edge_src)

    @property
    def edge_names(self) -> list[str]:
        if self._names is None:
            self._names = [self.edge_name(e) for e in range(self.n_edges)]
        return self._names

    @property
    def edge_index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {name: i for i, name in enumerate(self.edge_names)}
        return self._index

    def edge_name(self, e: int) -> str:
        """`a0.h1[2]->a1.h3<k>[5]`: source a0.h1 writing at position 2, head a1.h3's key for its query at 5."""
        b = self.base
        return (f"{b.sources[self.edge_src[e]]}[{self.edge_src_pos[e]}]->"
                f"{b.readers[self.edge_dst[e]]}[{self.edge_dst_pos[e]}]")

    def edge_coords(self) -> tuple:
        return self.edge_src, self.edge_dst, self.edge_src_pos, self.edge_dst_pos

    def edge_mask_matrix(self, in_circuit) -> np.ndarray:
        matrix = np.zeros(self.valid.shape, dtype=bool)
        matrix[self.edge_coords()] = np.asarray(in_circuit, dtype=bool)
        return matrix

    def edge_vector(self, matrix) -> np.ndarray:
        return np.asarray(matrix)[self.edge_coords()]

    def base_scores(self, scores) -> np.ndarray:
        """Positional scores summed over position pairs: one per base edge."""
        return np.bincount(self.edge_base, weights=np.asarray(scores, np.float64), minlength=self.base.n_edges)
