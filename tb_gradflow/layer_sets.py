"""Merges the records of a watcher's layer sets into one run
(:func:`merge_records`), by the rule that the tab and
:func:`tb_gradflow.reader.load_run` share: layer sets in order of first step,
then first wall time, then columns; the later layer set wins a repeated step;
layers matched by name. Needs neither TensorFlow nor torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tb_gradflow import metadata
from tb_gradflow.gradflow_run import GradFlowRun, from_records

__all__ = ["merge_records"]


def _union(layouts: Sequence[metadata.Layout]) -> metadata.Layout:
    """One layout holding every layer (statistic, step field) of ``layouts``, in
    order of first appearance; a layer's ``sparse`` flag, size and module type
    from the last layout that has them (sizes only if every layer has one),
    ``every`` the largest (the expected number of logged steps is then not
    overstated); the rest from the first layout."""

    def union(field: str) -> tuple:
        return tuple(dict.fromkeys(x for lo in layouts for x in getattr(lo, field)))

    sparse: dict[str, bool] = {}
    types: dict[str, str] = {}
    numel: dict[str, int] = {}
    for lo in layouts:
        for layer, is_sparse in zip(lo.layers, lo.sparse):
            sparse[layer] = is_sparse
        for layer, kind in zip(lo.layers, lo.types):
            types[layer] = kind or types.get(layer, "")
        for layer, n in zip(lo.layers, lo.numel):
            numel[layer] = n
    layers = union("layers")
    return dataclasses.replace(
        layouts[0],
        every=max(lo.every for lo in layouts),
        layers=layers,
        stats=union("stats"),
        step_fields=union("step_fields"),
        sparse=tuple(sparse.get(n, False) for n in layers),
        numel=tuple(numel[n] for n in layers) if numel.keys() >= set(layers) else (),
        types=tuple(types.get(n, "") for n in layers) if types else (),
    )


def _realign(
    flat: np.ndarray, src: metadata.Layout, dst: metadata.Layout
) -> tuple[np.ndarray, np.ndarray]:
    """Moves step vectors from ``src``'s columns to ``dst``'s, by name.

    Shape:
        - flat: ``(N, src.size)``
        - returns: ``(N, dst.size)`` float32 (NaN where ``src`` has no such
          column) and the absent mask ``(L_dst,)`` bool: layers ``src`` lacks.
    """
    values, fields = metadata.split_values(flat, src)  # (N, K_src, L_src), (N, F)
    n = len(flat)
    out = np.full((n, len(dst.stats), len(dst.layers)), np.nan, dtype=np.float32)
    dst_layers = [dst.layers.index(name) for name in src.layers]
    for k, stat in enumerate(src.stats):
        out[:, dst.stats.index(stat), dst_layers] = values[:, k, :]
    out_fields = np.full((n, len(dst.step_fields)), np.nan, dtype=np.float32)
    for f, field in enumerate(src.step_fields):
        out_fields[:, dst.step_fields.index(field)] = fields[:, f]
    absent = np.ones(len(dst.layers), dtype=bool)
    absent[dst_layers] = False
    return np.concatenate([out.reshape(n, -1), out_fields], axis=1), absent


def merge_records(
    path: str,
    layouts: Sequence[metadata.Layout],
    steps: Sequence[int],
    rows: Sequence[np.ndarray],
    part: Sequence[int],
    walls: Sequence[float] | None = None,
) -> GradFlowRun:
    """Builds one run from the records of several layer sets of one watcher,
    by one rule that the tab (records as TensorBoard's data provider serves
    them) and :func:`tb_gradflow.reader.load_run` (records as the files hold
    them) share, and that no clock can upset:

    - layer sets in order of their first step, then of their first wall
      time (when two start at the same step), then of their columns;
    - of a step logged more than once, the record of the last layer set in
      that order wins, and within one layer set the record written last;
    - layers matched by name, in order of first appearance in that order; at
      a step whose layout lacks a layer, the layer is *absent*
      (:attr:`GradFlowRun.absent`; NaN values, not "no gradient").

    A run resumed from a checkpoint starts its layer set at a later step than
    the first session did, so its records win the steps it logged again, as
    in the files' order, whatever the clocks of the two machines said.

    Args:
        path: where the records came from (a run directory or a run name).
        layouts: the layouts, each with the records of ``part``.
        steps, rows: each record's step and flat vector, each layer set's in
            the order written.
        part: each record's index into ``layouts``.
        walls: each record's wall time (None: all equal).
    """
    part = np.asarray(part, dtype=np.int64)
    if len(layouts) == 1:
        return from_records(path, layouts[0], steps, rows)
    order = _layer_set_order(layouts, np.asarray(steps), part, walls)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    records = np.lexsort((np.arange(len(part)), rank[part]))  # stable by rank
    layouts = [layouts[i] for i in order]
    part = rank[part][records]
    steps = np.asarray(steps)[records]
    rows = [rows[j] for j in records.tolist()]
    merged = _union(layouts)
    flat = np.empty((len(rows), merged.size), dtype=np.float32)
    absent = np.empty((len(rows), len(merged.layers)), dtype=bool)
    for i, layout in enumerate(layouts):
        idx = np.flatnonzero(part == i)
        if not len(idx):
            continue
        block = np.stack([rows[j] for j in idx.tolist()], dtype=np.float32)
        flat[idx], absent[idx] = _realign(block, layout, merged)
    return from_records(path, merged, steps, flat, absent=absent)


def _layer_set_order(
    layouts: Sequence[metadata.Layout],
    steps: np.ndarray,
    part: np.ndarray,
    walls: Sequence[float] | None,
) -> list[int]:
    """Indices of ``layouts`` by (first step, first wall time, columns)."""
    walls = np.zeros(len(part)) if walls is None else np.asarray(walls, float)
    keys = []
    for i in range(len(layouts)):
        mine = part == i
        if mine.any():
            keys.append((int(steps[mine].min()), float(walls[mine].min())))
        else:
            keys.append((np.iinfo(np.int64).max, np.inf))
    return sorted(range(len(layouts)), key=lambda i: (*keys[i], layouts[i].columns))
