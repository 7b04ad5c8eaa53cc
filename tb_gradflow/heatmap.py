"""The ``heatmap`` and ``lines`` answers: a layers-by-steps matrix of one
statistic binned to at most N step columns (the heatmap: each bin's largest
value; the lines: its largest and smallest), the model's total gradient norm
binned the same way (the tab's strip above the heatmap), and their JSON and
binary encodings (the rules and the formats: ``docs/format.md``, HTTP API). Where
TensorBoard did not keep every logged step, the watcher's overview blocks
(:mod:`tb_gradflow.overview_merge`) stand for the steps of their ranges.
Binned per group of layers (per block, per role: :mod:`tb_gradflow.layer_groups`),
a block's values for a group of several layers are bounds.

Pure numpy and the standard library (plus TensorBoard's JSON cleaning): no
request, no cache, no data provider, so it is tested on its own.

Shape letters: ``L`` layers (or groups of layers), ``S`` kept steps, ``U``
units binned (kept steps and overview blocks), ``N`` step columns.
"""

from __future__ import annotations

import gzip
import json
import struct
from typing import Any, NamedTuple

import numpy as np
from tensorboard import errors
from tensorboard.backend import json_util

from tb_gradflow.layer_groups import LayerGroups, bound_extremes
from tb_gradflow.overview_merge import Overview
from tb_gradflow.reader import GradFlowRun

__all__ = [
    "DEFAULT_COLUMNS",
    "MAX_COLUMNS",
    "Grouping",
    "bin_extremes",
    "bin_steps",
    "check_format",
    "encode",
    "matrices",
    "total_norms",
]

DEFAULT_COLUMNS = 1000  # step columns
MAX_COLUMNS = 100_000  # step columns
_FORMATS = ("json", "binary")
_MATRICES = {"heatmap": ("values",), "lines": ("max", "min")}  # by answer


def bin_steps(
    run: GradFlowRun,
    tag: str,
    stat: str,
    columns: int,
    overview: Overview | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """The ``heatmap`` matrix: :func:`bin_extremes` without the smallest values.

    Returns:
        ``(header, values)``: the JSON answer without ``values`` (builtins
        only), and ``values``, the bins' largest values.

    Shape:
        - values: ``(L, N)`` float32, ``N <= columns``
    """
    header, largest, _ = bin_extremes(run, tag, stat, columns, overview)
    return header, largest


class Grouping(NamedTuple):
    """A run's layers in groups, to bin per group.

    Attributes:
        run: the run of groups (:meth:`GradFlowRun.grouped`).
        groups: which of the run's layers each group holds.
    """

    run: GradFlowRun
    groups: LayerGroups


def bin_extremes(
    run: GradFlowRun,
    tag: str,
    stat: str,
    columns: int,
    overview: Overview | None = None,
    grouping: Grouping | None = None,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Bins the logged steps of ``stat`` into at most ``columns`` columns of
    (nearly) equal count, and gives each layer's largest and smallest value per
    bin, in one pass.

    What is binned: each kept step, one by one; with ``overview`` (the
    watcher's overview blocks), each block that holds logged steps TensorBoard
    did not keep takes the place of the kept steps in its range
    (:meth:`Overview.in_use`), so a bin's extremes are those of every logged
    step. Bins hold (nearly) equal counts of logged steps (a block counts its
    logged steps) and never split a block. Without such a block (every
    logged step kept, or no overview records) the columns are the kept
    steps' alone, and the header says nothing more; with one, it adds
    ``"from": "overview"`` and ``logged_steps``, the logged steps the columns
    hold.

    ``largest`` (the heatmap's values): the largest finite value in the bin,
    +inf when any was non-finite, NaN when the layer had no gradient at any of
    its steps where it was in the layer set, -inf when it was in none.
    ``smallest``: the smallest finite value in the bin where the layer had a
    gradient; NaN where there is none.

    The header's ``total_norm``: per column, the largest of the bin's
    :func:`total_norms` and of its blocks' largest totals (+inf when any was
    non-finite), whatever ``stat`` is; None for a run whose files lack
    ``norm``.

    With ``grouping``, the rows are its groups: their values at the kept
    steps are those of its run of groups (exact), the header adds ``group``
    and ``members`` (each group's layer names). An overview block's values
    for a group are :func:`tb_gradflow.layer_groups.bound_extremes`' bounds:
    where a column holds a block and a group has several layers, the header
    adds ``bounds``: ``{"columns": [...], "max": "upper" | "exact", "min":
    "lower"}``, those columns and what ``largest`` and ``smallest`` are
    there.

    Returns:
        ``(header, largest, smallest)``: the JSON answer without its matrices
        (builtins only), and the two matrices.

    Shape:
        - largest, smallest: ``(L, N)`` float32, ``N <= columns``

    Raises:
        InvalidArgumentError: for a statistic the run lacks, or ``columns``
            outside ``[1, MAX_COLUMNS]``.
    """
    if stat not in run.stats:
        raise errors.InvalidArgumentError(
            f"Invalid stat: {stat!r} (one of {', '.join(run.stats)})"
        )
    if not 1 <= columns <= MAX_COLUMNS:
        raise errors.InvalidArgumentError(
            f"Invalid max_steps: {columns!r} (from 1 to {MAX_COLUMNS})"
        )
    units = _units(run, stat, overview, grouping)
    count = len(units.first)
    starts = _starts(units.weights, min(columns, count))  # first unit of each bin
    ends = np.append(starts[1:], count) - 1  # last unit of each bin
    largest, smallest = _extremes(units, starts)
    logged = int(units.weights.sum())
    rows = run if grouping is None else grouping.run
    header = {
        "run": run.path,
        "tag": tag,
        "stat": stat,
        "layers": list(rows.layers),
        "types": list(rows.types),
        "steps": units.first[starts].tolist(),
        "first_steps": units.first[starts].tolist(),
        "last_steps": units.last[ends].tolist(),
        "downsampled": bool(len(starts) < logged),
        "logged": stat not in run.not_logged,
        "total_norm": _bin_totals(units.totals, starts),
    }
    if units.blocks:
        header |= {"from": "overview", "logged_steps": logged}
    if grouping is not None:
        header |= _grouped_header(run, grouping.groups, units, starts)
    return header, np.ascontiguousarray(largest.T), np.ascontiguousarray(smallest.T)


def _grouped_header(
    run: GradFlowRun, groups: LayerGroups, units: _Units, starts: np.ndarray
) -> dict[str, Any]:
    """What a grouped answer's header adds: ``group``, ``members`` (layer
    names), and ``bounds`` where a column holds an overview block and a group
    has several layers (see :func:`bin_extremes`)."""
    out: dict[str, Any] = {
        "group": groups.by,
        "members": [[run.layers[j] for j in m] for m in groups.members],
    }
    if units.blocks and any(len(m) > 1 for m in groups.members):
        held = np.logical_or.reduceat(units.is_block, starts)  # (N,)
        out["bounds"] = {
            "columns": np.flatnonzero(held).tolist(),
            "max": "exact" if units.exact_max else "upper",
            "min": "lower",
        }
    return out


class _Units(NamedTuple):
    """What a binning takes, one row per unit: a kept step, or an overview
    block standing for the logged steps of its range, by first step.

    Shape:
        - first, last, weights (logged steps), totals: ``(U,)``
        - high, low, has_grad, present: ``(U, L)``
    """

    first: np.ndarray
    last: np.ndarray
    weights: np.ndarray
    high: np.ndarray  # the largest value (a kept step's own value)
    low: np.ndarray  # the smallest value
    has_grad: np.ndarray  # a gradient at some step of the unit
    present: np.ndarray  # in the layer set at some step of the unit
    totals: np.ndarray | None
    blocks: int  # how many units are overview blocks
    is_block: np.ndarray | None = None  # (U,) bool; None: no unit is
    exact_max: bool = True  # blocks' high values exact (not group bounds)


def _units(
    run: GradFlowRun,
    stat: str,
    overview: Overview | None,
    grouping: Grouping | None = None,
) -> _Units:
    """The kept steps of ``run`` (of ``grouping``'s run of groups, with it),
    with the blocks of ``overview`` that hold steps TensorBoard did not keep
    in place of the kept steps of their ranges (per group: bounds)."""
    steps = run.steps
    totals = total_norms(run)  # the model's, per layer, grouped or not
    rows = run if grouping is None else grouping.run
    use, covered = (
        (None, None) if overview is None else overview.in_use(np.asarray(steps))
    )
    if use is None or not use.any():
        values = rows.values(stat)  # (S, L)
        return _Units(
            first=steps,
            last=steps,
            weights=np.ones(len(steps), dtype=np.int64),
            high=values,
            low=values,
            has_grad=~(rows.no_grad | rows.absent),
            present=~rows.absent,
            totals=totals,
            blocks=0,
        )
    kept = np.flatnonzero(~covered)  # kept steps no block in use stands for
    largest, smallest, grad = overview.extremes(stat)  # (B, L) each
    present = ~overview.absent  # (B, L)
    exact = True
    if grouping is not None:
        groups = grouping.groups
        largest, smallest, grad, exact = bound_extremes(
            stat, largest, smallest, grad, groups
        )
        present = np.stack([present[:, list(m)].any(axis=1) for m in groups.members], 1)
    values = rows.values(stat)[kept]  # (S', L)
    absent = rows.absent[kept]
    first = np.concatenate([steps[kept], overview.first_steps[use]])
    order = np.argsort(first, kind="stable")

    def units(per_step: np.ndarray, per_block: np.ndarray) -> np.ndarray:
        return np.concatenate([per_step, per_block[use]])[order]

    no_grad = np.isnan(rows.values("nonfinite")[kept]) & ~absent
    return _Units(
        first=first[order],
        last=units(steps[kept], overview.last_steps),
        weights=units(np.ones(len(kept), dtype=np.int64), overview.steps),
        high=units(values, largest),
        low=units(values, smallest),
        has_grad=units(~(no_grad | absent), grad),
        present=units(~absent, present),
        totals=None if totals is None else units(totals[kept], overview.totals),
        blocks=int(use.sum()),
        is_block=units(np.zeros(len(kept), bool), np.ones(len(use), bool)),
        exact_max=exact,
    )


def _starts(weights: np.ndarray, n: int) -> np.ndarray:
    """The first unit of each of at most ``n`` bins of (nearly) equal total
    weight, never splitting a unit: bin ``c`` starts at the unit holding
    logged step ``c * T // n`` of ``T`` (with unit weights, unit ``c * U //
    n``), and bins that would start at the same unit are one; each unit a
    bin of its own when ``n`` is their count.

    Shape:
        - weights: ``(U,)`` int64, each unit's logged steps
        - returns: ``(N,)`` int64, ``N <= n``
    """
    if n == len(weights):
        return np.arange(n, dtype=np.int64)
    ends = np.cumsum(weights)  # logged steps up to and including each unit
    targets = (np.arange(n, dtype=np.int64) * int(ends[-1])) // n
    return np.unique(np.searchsorted(ends, targets, side="right"))


def _extremes(units: _Units, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each bin's largest and smallest values (see :func:`bin_extremes`).

    Shape:
        - returns: two ``(N, L)`` float32
    """
    has_grad = units.has_grad
    usable = has_grad & np.isfinite(units.high)  # (U, L)
    low_usable = (
        usable if units.low is units.high else has_grad & np.isfinite(units.low)
    )
    best = np.maximum.reduceat(np.where(usable, units.high, -np.inf), starts, axis=0)
    least = np.minimum.reduceat(np.where(low_usable, units.low, np.inf), starts, axis=0)
    bad = np.logical_or.reduceat(has_grad & ~usable, starts, axis=0)  # (N, L)
    seen = np.logical_or.reduceat(has_grad, starts, axis=0)
    present = np.logical_or.reduceat(units.present, starts, axis=0)
    # NaN: no gradient in the bin; -inf: the layer is in none of its steps'
    # layer sets (no statistic is negative, so -inf is never a value)
    empty = np.where(present, np.nan, -np.inf)
    largest = np.where(bad, np.inf, np.where(seen, best, empty)).astype(np.float32)
    smallest = np.where(np.isfinite(least), least, np.nan).astype(np.float32)
    return largest, smallest


def total_norms(run: GradFlowRun) -> np.ndarray | None:
    """The model's total gradient norm at each kept step: the square root of
    the sum over layers of ``norm`` squared, in float64. A layer without a
    gradient or absent from the step's layer set adds 0; a step where a layer
    with a gradient has a non-finite ``norm`` is +inf.

    Returns:
        the totals, None when the run's files lack ``norm``.

    Shape:
        - output: ``(S,)`` float64
    """
    if "norm" not in run.stats or "norm" in run.not_logged:
        return None
    norm = run.values("norm")  # (S, L)
    has_grad = ~(run.no_grad | run.absent)  # (S, L)
    finite = np.isfinite(norm)
    usable = np.where(has_grad & finite, norm, norm.dtype.type(0))
    # float64 accumulation, chunk by chunk: no float64 copy of the matrix
    squares = np.einsum("ij,ij->i", usable, usable, dtype=np.float64)  # (S,)
    bad = (has_grad & ~finite).any(axis=1)
    return np.where(bad, np.inf, np.sqrt(squares))


def _bin_totals(totals: np.ndarray | None, starts: np.ndarray) -> list[float] | None:
    """The largest total norm of each bin starting at ``starts`` (one kept
    step's spike survives; a block's NaN, a layer set without ``norm``, does
    not hide the others'); None without ``norm``."""
    if totals is None or not len(starts):
        return None if totals is None else []
    return np.fmax.reduceat(totals, starts).tolist()


def matrices(
    answer: str, largest: np.ndarray, smallest: np.ndarray
) -> dict[str, np.ndarray]:
    """The matrices of an answer by name, in the order of its binary body:
    ``"heatmap"``, ``values`` (the bins' largest values); ``"lines"``, ``max``
    then ``min``.

    Raises:
        ValueError: for another answer.
    """
    if answer not in _MATRICES:
        raise ValueError(f"Invalid answer: {answer!r} (heatmap or lines)")
    by_name = {"values": largest, "max": largest, "min": smallest}
    return {name: by_name[name] for name in _MATRICES[answer]}


def check_format(fmt: str) -> None:
    """Raises InvalidArgumentError unless ``fmt`` is ``"json"`` or ``"binary"``."""
    if fmt not in _FORMATS:
        raise errors.InvalidArgumentError(f"Invalid format: {fmt!r} (json or binary)")


def encode(
    header: dict[str, Any], matrices: dict[str, np.ndarray], fmt: str
) -> tuple[bytes, str, str | None]:
    """The body of an answer: ``(body, content type, content encoding)``.

    ``"json"``: ``{**header, **matrices}`` with NaN and infinities as strings
    (as ``http_util.Respond`` cleans them), gzipped; ``"binary"``: a
    little-endian ``uint32`` length, the UTF-8 JSON header (NaN and
    infinities as strings, as in ``"json"``), zero bytes up to a multiple of
    4, then each matrix in the order of ``matrices`` as little-endian
    float32, row-major (``fmt`` as :func:`check_format` allows).
    """
    if fmt == "binary":
        cleansed = json_util.Cleanse(header)
        head = json.dumps(cleansed, ensure_ascii=False, allow_nan=False).encode("utf-8")
        pad = b"\0" * (-(4 + len(head)) % 4)  # float32 values start 4-byte aligned
        parts = [struct.pack("<I", len(head)), head, pad]
        parts += [m.astype("<f4").tobytes() for m in matrices.values()]
        return b"".join(parts), "application/octet-stream", None
    lists = {name: m.tolist() for name, m in matrices.items()}
    text = json.dumps(json_util.Cleanse({**header, **lists}))
    return (
        gzip.compress(text.encode("ascii"), compresslevel=3, mtime=0),
        "application/json",
        "gzip",
    )
