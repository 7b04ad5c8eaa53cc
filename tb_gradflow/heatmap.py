"""The ``heatmap`` and ``lines`` answers: a layers-by-steps matrix of one
statistic binned to at most N step columns (the heatmap: each bin's largest
value; the lines: its largest and smallest), the model's total gradient norm
binned the same way (the tab's strip above the heatmap), and their JSON and
binary encodings (the rules and the formats: ``http_api.md``).

Pure numpy and the standard library (plus TensorBoard's JSON cleaning): no
request, no cache, no data provider, so it is tested on its own.

Shape letters: ``L`` layers, ``S`` kept steps, ``N`` step columns.
"""

from __future__ import annotations

import gzip
import json
import struct
from typing import Any

import numpy as np
from tensorboard import errors
from tensorboard.backend import json_util

from tb_gradflow.reader import GradFlowRun

__all__ = [
    "DEFAULT_COLUMNS",
    "MAX_COLUMNS",
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
    run: GradFlowRun, tag: str, stat: str, columns: int
) -> tuple[dict[str, Any], np.ndarray]:
    """The ``heatmap`` matrix: :func:`bin_extremes` without the smallest values.

    Returns:
        ``(header, values)``: the JSON answer without ``values`` (builtins
        only), and ``values``, the bins' largest values.

    Shape:
        - values: ``(L, N)`` float32, ``N = min(columns, S)``
    """
    header, largest, _ = bin_extremes(run, tag, stat, columns)
    return header, largest


def bin_extremes(
    run: GradFlowRun, tag: str, stat: str, columns: int
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Bins the kept steps of ``stat`` into at most ``columns`` columns of
    (nearly) equal count, and gives each layer's largest and smallest value per
    bin, in one pass over the steps.

    ``largest`` (the heatmap's values): the largest finite value in the bin,
    +inf when any was non-finite, NaN when the layer had no gradient at any of
    its steps where it was in the layer set, -inf when it was in none.
    ``smallest``: the smallest finite value in the bin where the layer had a
    gradient; NaN where there is none.

    The header's ``total_norm``: per column, the largest of the bin's
    :func:`total_norms` (+inf when any was non-finite), whatever ``stat`` is;
    None for a run whose files lack ``norm``.

    Returns:
        ``(header, largest, smallest)``: the JSON answer without its matrices
        (builtins only), and the two matrices.

    Shape:
        - largest, smallest: ``(L, N)`` float32, ``N = min(columns, S)``

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
    steps = run.steps
    n_steps = len(steps)
    n = min(columns, n_steps)
    starts = (np.arange(n, dtype=np.int64) * n_steps) // n  # first index of each bin
    ends = np.append(starts[1:], n_steps) - 1  # last index of each bin
    values = run.values(stat)  # (S, L)
    has_grad = ~(run.no_grad | run.absent)  # (S, L)
    usable = has_grad & np.isfinite(values)  # (S, L)
    best = np.maximum.reduceat(np.where(usable, values, -np.inf), starts, axis=0)
    least = np.minimum.reduceat(np.where(usable, values, np.inf), starts, axis=0)
    bad = np.logical_or.reduceat(has_grad & ~usable, starts, axis=0)  # (N, L)
    seen = np.logical_or.reduceat(has_grad, starts, axis=0)
    present = np.logical_or.reduceat(~run.absent, starts, axis=0)
    # NaN: no gradient in the bin; -inf: the layer is in none of its steps'
    # layer sets (no statistic is negative, so -inf is never a value)
    empty = np.where(present, np.nan, -np.inf)
    largest = np.where(bad, np.inf, np.where(seen, best, empty)).astype(np.float32)
    smallest = np.where(np.isfinite(least), least, np.nan).astype(np.float32)
    header = {
        "run": run.path,
        "tag": tag,
        "stat": stat,
        "layers": list(run.layers),
        "types": list(run.types),
        "steps": steps[starts].tolist(),
        "first_steps": steps[starts].tolist(),
        "last_steps": steps[ends].tolist(),
        "downsampled": bool(n < n_steps),
        "logged": stat not in run.not_logged,
        "total_norm": _bin_total_norm(run, starts),
    }
    return header, np.ascontiguousarray(largest.T), np.ascontiguousarray(smallest.T)


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


def _bin_total_norm(run: GradFlowRun, starts: np.ndarray) -> list[float] | None:
    """The largest :func:`total_norms` of each bin starting at ``starts``
    (one kept step's spike survives); None without ``norm``."""
    totals = total_norms(run)
    if totals is None or not len(starts):
        return None if totals is None else []
    return np.maximum.reduceat(totals, starts).tolist()


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
