"""The ``exploding`` rule's arithmetic: each norm against the median of the
layer's previous ``explode_window`` finite norms, computed only where the
window's minimum cannot rule it out, with window medians in O(log steps) for
long windows (a wavelet matrix, :class:`RangeSelect`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tb_gradflow.rule_spec import Thresholds

__all__ = ["RangeSelect", "exploding_mask"]

_BLOCK_CELLS = 200_000  # steps x layers per block of exploding_mask's work
_SORT_WINDOW = 32  # longer explode_windows: a RangeSelect, not a sort per cell


def exploding_mask(norm: np.ndarray, th: Thresholds) -> np.ndarray:
    """``exploding`` per step and layer: a finite norm above ``explode_ratio`` x
    the median of the layer's previous ``explode_window`` finite norms (which
    needs 3 of them).

    Exact; the window medians are computed only where the norm is above
    ``explode_ratio`` x the smallest norm of its window (no median is smaller),
    and each costs O(log(steps)) whatever the window (:func:`_too_big_at`), so
    that a window as long as the run costs no more time than a short one. A
    window longer than the run is the whole run (no step has more earlier
    norms). Works through chunks of about ``_BLOCK_CELLS`` cells, whose
    temporaries take a few tens of bytes per cell: for short windows chunks of
    steps (all layers, with the steps before them that their windows reach),
    for long ones blocks of layers (all steps); a long window's lookup
    structure takes ~4 log2(rows) bytes per row of its ``window + steps``.

    Shape:
        - norm: ``(T, L)``
        - returns: ``(T, L)`` bool
    """
    n_steps, n_layers = norm.shape
    window = min(th.explode_window, max(n_steps, 3))
    mask = np.zeros(norm.shape, dtype=bool)
    if window <= _SORT_WINDOW:  # chunks of steps
        steps = max(window, _BLOCK_CELLS // max(n_layers, 1))
        for t0 in range(0, n_steps, steps):
            lo = max(t0 - window, 0)
            t, j = _exploding_cells(norm[lo : t0 + steps], t0 - lo, window, th)
            mask[t0 + t, j] = True
    else:  # blocks of layers
        cols = max(1, _BLOCK_CELLS // max(n_steps, 1))
        for j0 in range(0, n_layers, cols):
            t, j = _exploding_cells(norm[:, j0 : j0 + cols], 0, window, th)
            mask[t, j0 + j] = True
    return mask


def _exploding_cells(
    norm: np.ndarray, before: int, window: int, th: Thresholds
) -> tuple[np.ndarray, np.ndarray]:
    """The ``exploding`` cells among the rows of ``norm`` after its first
    ``before`` (the steps before them that their windows reach; fewer than
    ``window`` only at the start of the run).

    Shape:
        - norm: ``(before + N, C)``
        - returns: row (counted after ``before``) and column indices, ``(E,)``
    """
    # (window + N, C): steps -window .. N - 1, NaN before the run
    recent = _padded_finite(norm, window - before)
    low = _rolling_fmin(recent[:-1], window)  # (N, C)
    block = norm[before:]  # (N, C)
    above = block > np.multiply(low, th.explode_ratio, dtype=np.float64)
    # (M,) each; np.nonzero of a 2-D array is several times slower
    t, j = np.divmod(np.flatnonzero(above), above.shape[1])
    # sorted windows: _SORT_WINDOW x as many floats as cells, so in chunks
    chunk = _BLOCK_CELLS if window <= _SORT_WINDOW else max(len(t), 1)
    big = np.zeros(len(t), dtype=bool)
    for c in range(0, len(t), chunk):
        tc, jc = t[c : c + chunk], j[c : c + chunk]
        big[c : c + chunk] = _too_big_at(block, recent, tc, jc, window, th)
    return t[big], j[big]


def _too_big_at(
    norm: np.ndarray,
    recent: np.ndarray,
    t: np.ndarray,
    j: np.ndarray,
    window: int,
    th: Thresholds,
) -> np.ndarray:
    """The ``exploding`` condition at the cells ``(t, j)``, with ``window`` (the
    clamped ``explode_window``) previous norms.

    The median of a window's ``n`` finite norms is its ``(n - 1) // 2``-th
    smallest, or with ``n`` even the mean of that one and the next (in float32,
    as ``np.median`` of float32 norms). Short windows are sorted; longer ones
    are looked up in a :class:`RangeSelect`, at O(log(steps)) a cell whatever
    the window, and there the upper one only where the lower one (no median is
    smaller) does not settle the condition.

    Shape:
        - norm: ``(T, C)``; recent: ``(window + T, C)``, each step's ``window``
          previous norms (:func:`_padded_finite`) in the rows from its index
        - t, j, returns: ``(N,)``
    """
    at = np.asarray(norm[t, j], dtype=np.float64)  # (N,)
    if window <= _SORT_WINDOW:
        windows = recent[t[:, None] + np.arange(window), j[:, None]]  # (N, window)
        n = np.isfinite(windows).sum(axis=1)  # (N,)
        srt = np.sort(windows, axis=1)  # NaN last
        lo = np.take_along_axis(srt, np.maximum((n - 1) // 2, 0)[:, None], 1)[:, 0]
        hi = np.take_along_axis(srt, np.minimum(n // 2, window - 1)[:, None], 1)[:, 0]
        upper = n % 2 == 0
    else:
        # rows r0 .. r1 - 1 of recent hold every window; one range per cell
        r0, r1 = int(t.min()), int(t.max()) + window
        column = recent[r0:r1].T.ravel()  # (C * (r1 - r0),): layer by layer
        start = j * (r1 - r0) + t - r0  # (N,)
        counted = np.concatenate([[0], np.cumsum(np.isfinite(column))])
        n = counted[start + window] - counted[start]  # (N,)
        lo = np.full(len(t), np.nan, dtype=np.float32)
        hi = lo.copy()
        ok = np.flatnonzero(n >= 3)
        if len(ok):
            select = RangeSelect(column)
            lo[ok] = select.kth(start[ok], start[ok] + window, (n[ok] - 1) // 2)
        # the lower one settles it where even the smallest median is not
        # exceeded; compared in float64, as the final condition is
        with np.errstate(invalid="ignore", over="ignore"):
            settled = at <= th.explode_ratio * lo.astype(np.float64)
            upper = (n >= 3) & (n % 2 == 0) & ~settled
        up = np.flatnonzero(upper)
        if len(up):
            hi[up] = select.kth(start[up], start[up] + window, n[up] // 2)
    with np.errstate(invalid="ignore", over="ignore"):
        median = np.where(upper, (lo + hi) / 2, lo).astype(np.float64)  # (N,)
        big = at > th.explode_ratio * median
    return np.isfinite(at) & (n >= 3) & (median > 0) & big


class RangeSelect:
    """The ``k``-th smallest of ``values[start:stop]``, for many ranges at once:
    a wavelet matrix over the values' ranks (NaN ranks last).

    Building it costs O(n log n) time and ``log2(n)`` arrays of ``n + 1`` ints;
    a query walks the ``log2(n)`` levels, whatever the length of its range.

    Shape:
        - values: ``(n,)``
    """

    def __init__(self, values: np.ndarray) -> None:
        n = len(values)
        dtype = np.int32 if n < 2**31 else np.int64
        order = np.argsort(values).astype(dtype)  # NaN last
        self.sorted = values[order]  # rank -> value
        rank = np.empty(n, dtype=dtype)
        rank[order] = np.arange(n, dtype=dtype)
        # per level, from the top bit: zeros[i] = how many of the first i ranks
        # (in this level's order) have a 0 bit; the 0s then go first, stably
        self.zeros = []
        for level in reversed(range(max(1, (n - 1).bit_length()))):
            one = (rank >> level) & 1 == 1
            zeros = np.zeros(n + 1, dtype=dtype)
            np.cumsum(~one, out=zeros[1:])
            self.zeros.append(zeros)
            rank = np.concatenate([np.compress(~one, rank), np.compress(one, rank)])
        self.rank = rank  # ranks in the last level's order

    def kth(self, start: np.ndarray, stop: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Each range's ``k``-th smallest value (``0 <= k < stop - start``).

        Shape:
            - start, stop, k, returns: ``(Q,)``
        """
        dtype = self.rank.dtype
        start, stop, k = (np.array(a, dtype=dtype) for a in (start, stop, k))
        for zeros in self.zeros:
            z0, z1 = zeros[start], zeros[stop]
            left = z1 - z0  # how many in the range have a 0 bit here
            one = k >= left
            np.subtract(k, left, out=k, where=one)
            # a 0 goes to its 0s' place, a 1 after all the 0s
            start += zeros[-1] - z0
            np.copyto(start, z0, where=~one)
            stop += zeros[-1] - z1
            np.copyto(stop, z1, where=~one)
        return self.sorted[self.rank[start]]  # one value is left in each range


def _padded_finite(norm: np.ndarray, pad: int) -> np.ndarray:
    """``pad`` rows of NaN, then ``norm`` with NaN for its non-finite values.

    float32 halves the sorting work; a 100x threshold needs no more precision.

    Shape:
        - norm: ``(T, L)``
        - returns: ``(pad + T, L)`` float32
    """
    padded = np.full((pad + len(norm), norm.shape[1]), np.nan, dtype=np.float32)
    np.copyto(padded[pad:], norm, casting="same_kind", where=np.isfinite(norm))
    return padded


def _rolling_fmin(values: np.ndarray, window: int) -> np.ndarray:
    """The smallest non-NaN value of each ``window`` consecutive rows (NaN: none).

    Shape:
        - values: ``(R, L)``, ``R >= window``
        - returns: ``(R - window + 1, L)``, row ``i`` over rows ``i .. i + window - 1``
    """
    low, width = values, 1
    while 2 * width <= window:
        # row i: over rows i .. i + 2 width - 1
        low = np.fmin(low[:-width], low[width:])
        width *= 2
    n = len(values) - window + 1
    return np.fmin(low[:n], low[window - width : window - width + n])
