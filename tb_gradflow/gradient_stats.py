"""The statistics of a list of gradients, one host copy per device.

The built-in partials (Σ|g|, max|g|, Σg², the non-finite count, rows) come from
the fused reduction of :mod:`tb_gradflow._reduce`; statistics are finished from
them by the registry (:mod:`tb_gradflow.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from tb_gradflow import _reduce, _sharded, stats

__all__ = ["dense_sums", "layer_stats"]


@torch.no_grad()
def layer_stats(
    grads: Sequence[Tensor | None],
    *,
    scratch: dict[torch.device, Tensor] | None = None,
    extras: Tensor | None = None,
    statistics: Sequence[stats.Statistic] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The statistics of a list of gradients, one host copy per device.

    The built-in partials (Σ|g|, max|g|, Σg², non-finite count, rows) come from
    the fused reduction; a partial a registered statistic brings is run per
    layer (see :mod:`tb_gradflow.stats`).

    Args:
        grads: one gradient per layer (None: the layer had none); dense or
            sparse COO, any floating dtype, any devices.
        scratch: reusable CPU buffers (kept by the caller between calls).
        extras: ``(E,)`` device scalars to copy along with the statistics.
        statistics: the statistics to make, all computed from the gradient
            (default: the registry's).

    Returns:
        ``(K, L)`` float64, one row per statistic (NaN columns for None
        gradients), and the host copy of ``extras`` (None without).
    """
    statistics = (
        stats.statistics("gradient") if statistics is None else tuple(statistics)
    )
    scratch = {} if scratch is None else scratch
    n_layers = len(grads)
    sharded = _sharded.dtensor_indices(grads)
    local = list(grads)
    for i in sharded:  # FSDP2: each rank reduces its own shard first
        local[i] = grads[i].to_local()
    dense: dict[torch.device, tuple[list[Tensor], list[int]]] = {}
    parts: list[_reduce.Partials] = []
    rows = np.ones(n_layers)
    has_grad = np.array([g is not None for g in grads], dtype=bool)
    for i, g in enumerate(local):
        if g is None:
            continue
        if g.is_sparse:
            part, touched = _reduce.reduce_sparse(g, i)
            parts.append(part)
            rows[i] = touched / g.shape[0] if g.shape[0] else 0.0
        else:
            batch, owners = dense.setdefault(g.device, ([], []))
            batch.append(g)  # read under no_grad: no detach() needed
            owners.append(i)
    parts += [_reduce.reduce_dense(g, o, scratch) for g, o in dense.values()]
    totals, host_extras = _reduce.combine(parts, n_layers, extras)  # (3, L)
    numel = np.array([0 if g is None else g.numel() for g in grads])
    local_numel = numel.copy()
    for i in sharded:
        local_numel[i] = local[i].numel()
    redo = np.flatnonzero(has_grad & _reduce.float32_unsafe(totals, local_numel))
    if redo.size:  # rare: huge or tiny gradients
        exact = _reduce.sums_float64([local[i] for i in redo]).cpu().numpy()
        totals[0, redo], totals[2, redo] = exact
    partials = {"abs_sum": totals[0], "abs_max": totals[1], "sq_sum": totals[2]}
    partials.update(_own_partials(statistics, local, has_grad))
    group = None
    if sharded:  # one SUM and one MAX all-reduce for all sharded layers
        group = _sharded.shard_group(grads[sharded[0]])
        device = local[sharded[0]].device
        _sharded.reduce_partials(partials, sharded, device, group)
    totals = np.stack([partials["abs_sum"], partials["abs_max"], partials["sq_sum"]])
    nonfinite = np.zeros(n_layers)
    bad = np.flatnonzero(has_grad & ~np.isfinite(totals[0])).tolist()
    if bad:  # only here: a finite sum of |g| proves that no element is NaN/Inf
        counts = _reduce.count_nonfinite([local[i] for i in bad])
        bad_sharded = [k for k, i in enumerate(bad) if i in sharded]
        if bad_sharded:  # every rank sees the same reduced sums: all join in
            counts = counts.to(torch.float64)
            counts[bad_sharded] = _sharded.reduce_counts(counts[bad_sharded], group)
        nonfinite[bad] = counts.cpu().numpy()
    partials.update(nonfinite=nonfinite, rows=rows)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        record = np.stack(
            [np.asarray(s.finish(partials, numel), np.float64) for s in statistics]
        )  # (K, L)
    record[:, ~has_grad] = math.nan
    return record, host_extras


def dense_sums(
    tensors: Sequence[Tensor], scratch: dict[torch.device, Tensor]
) -> np.ndarray:
    """Σ|x|, max|x| and Σx² of each dense tensor, combined in float64 (the
    fused reduction, with the float64 rescue of sums float32 cannot hold): the
    gradient's partials, used for the parameters and the applied update too.

    Shape:
        - returns: ``(3, N)`` float64.
    """
    dense: dict[torch.device, tuple[list[Tensor], list[int]]] = {}
    for i, t in enumerate(tensors):
        batch, owners = dense.setdefault(t.device, ([], []))
        batch.append(t)
        owners.append(i)
    parts = [_reduce.reduce_dense(t, o, scratch) for t, o in dense.values()]
    totals, _ = _reduce.combine(parts, len(tensors))  # (3, N)
    numel = np.array([t.numel() for t in tensors])
    redo = np.flatnonzero(_reduce.float32_unsafe(totals, numel))
    if redo.size:
        exact = _reduce.sums_float64([tensors[i] for i in redo]).cpu().numpy()
        totals[0, redo], totals[2, redo] = exact
    return totals


def _own_partials(
    statistics: Sequence[stats.Statistic],
    grads: Sequence[Tensor | None],
    has_grad: np.ndarray,
) -> dict[str, np.ndarray]:
    """The partials registered statistics bring, per layer: ``local(grad)`` of
    each dense gradient (a sparse one: of its stored values), NaN without one.
    One host copy for all of them."""
    names = [
        n
        for n in dict.fromkeys(p for s in statistics for p in s.partials)
        if n not in stats.PARTIALS
    ]
    if not names:
        return {}
    out = {}
    for name in names:
        local = stats.partial(name).local
        values = [
            local(g.coalesce().values() if g.is_sparse else g).to(torch.float64)
            for g in grads
            if g is not None
        ]
        column = np.full(len(grads), math.nan)
        if values:
            column[has_grad] = torch.stack(values).cpu().numpy()
        out[name] = column
    return out
