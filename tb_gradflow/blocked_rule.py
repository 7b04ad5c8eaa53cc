"""The ``blocked`` rule's arithmetic: a layer's value against the median of the
other layers' and against its own earlier peak, computed only where a cheap
exact bound cannot rule it out (see :func:`tb_gradflow.diagnose`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tb_gradflow.rule_spec import Thresholds

__all__ = [
    "blocked_mask",
    "earlier_peak",
    "is_blocked",
    "median_of_others",
    "median_of_others_at",
]

_ROWS = 1024  # steps at a time, as the medians are computed: temporaries stay small


def is_blocked(
    judged: np.ndarray, others: np.ndarray, peak: np.ndarray, th: Thresholds
) -> np.ndarray:
    """The ``blocked`` condition where a layer has a usable value (any shapes that
    broadcast).

    ``others``: the median of the other layers' values (NaN: none); ``peak``: the
    layer's largest earlier value (NaN: none).
    """
    with np.errstate(invalid="ignore"):
        tiny_vs_others = judged < th.min_ratio_to_others * others
        fell = judged < th.min_ratio_to_own_peak * peak
        far_below = judged < th.floor_ratio_to_others * others
    return (judged == 0) | (tiny_vs_others & fell) | far_below


def blocked_mask(judged: np.ndarray, valid: np.ndarray, th: Thresholds) -> np.ndarray:
    """:func:`blocked` at every step and layer with a usable value.

    Exact; the others' medians and the earlier peaks are computed only at the
    few cells that :func:`_small_vs_others` cannot rule out (elsewhere only a
    zero is blocked). float32 values are compared and averaged in float64, as
    float64 ones are.

    Shape:
        - judged, valid: ``(T, L)``
        - returns: ``(T, L)`` bool
    """
    mask = valid & (judged == 0)
    ratios = (th.min_ratio_to_others, th.floor_ratio_to_others)
    t, j, others = _small_vs_others(judged, valid, ratios)  # (N,) each
    cols, col = np.unique(j, return_inverse=True)  # (C,), (N,)
    peak = earlier_peak(np.where(valid[:, cols], judged[:, cols], np.nan))  # (T, C)
    mask[t, j] = is_blocked(
        judged[t, j].astype(np.float64), others, peak[t, col].astype(np.float64), th
    )
    return mask


def _small_vs_others(
    judged: np.ndarray, valid: np.ndarray, ratios: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The usable cells whose value may be below ``ratio`` x the median of the
    other layers' usable values, for some ``ratio >= 0``, with that median.

    Rows with the same number ``n`` of usable values are sorted, or
    partitioned at the middle ranks :func:`_median_without` reads
    (:func:`_middle_ranks`). No median of ``n - 1`` of the values exceeds the
    one at rank ``(n + 1) // 2`` (0-based), so the cells above ``ratio`` x
    that value are left out (rounding keeps the order). Works through
    ``_ROWS`` steps at a time.

    Shape:
        - judged, valid: ``(T, L)``
        - returns: step and layer indices ``(N,)``, and the medians ``(N,)``
    """
    empty = np.zeros(0, dtype=np.intp)
    found = [(empty, empty, np.zeros(0))]
    for r0 in range(0, len(judged), _ROWS):
        part, usable = judged[r0 : r0 + _ROWS], valid[r0 : r0 + _ROWS]  # (R, L)
        filled = np.where(usable, part, np.inf)  # unusable values sort last
        for n, rows, pick in _row_groups(np.count_nonzero(usable, axis=1)):
            if n < 2:
                continue  # a layer with a value has no others
            s = _middle_ranks(np.array(filled[pick]), n)  # rank -> (R', 1) float64
            limit = np.maximum.reduce([ratio * s[(n + 1) // 2] for ratio in ratios])
            # x < limit, for values of filled's dtype: x < limit rounded up
            above = np.nextafter(limit.astype(filled.dtype), np.inf)
            # (N_n,) each (unusable: inf); np.nonzero of 2-D arrays is slower
            i, j = np.divmod(np.flatnonzero(filled[pick] < above), filled.shape[1])
            at = {p: v[i, 0] for p, v in s.items()}  # rank -> (N_n,)
            x = part[rows[i], j].astype(np.float64)
            found.append((r0 + rows[i], j, _median_without(at, x, n)))
    t, j, others = (np.concatenate(parts) for parts in zip(*found))
    return t, j, others


def median_of_others(mean: np.ndarray) -> np.ndarray:
    """Per step and layer, the median of the *other* layers' finite values.

    Exact, O(L) per step: rows with the same number ``n`` of finite values are
    partitioned at the few middle ranks needed, or sorted
    (:func:`_middle_ranks`, :func:`_median_without`); a layer without a value
    removes nothing.

    Shape:
        - mean: ``(T, L)``, NaN where a layer has no usable value
        - returns: ``(T, L)``, NaN where no other layer has a value
    """
    valid = np.isfinite(mean)
    filled = np.where(valid, mean, np.inf)  # (T, L): NaN sorts last
    out = np.full(mean.shape, np.nan)
    for n, _, pick in _row_groups(valid.sum(axis=1)):
        if n == 0:
            continue
        s = _middle_ranks(filled[pick], n)  # rank -> (R, 1)
        with np.errstate(invalid="ignore"):
            with_value = _median_without(s, mean[pick], n)  # (R, L)
            without = (s[(n - 1) // 2] + s[n // 2]) / 2  # (R, 1)
        out[pick] = np.where(valid[pick], with_value, without)
    return out


def median_of_others_at(
    values: np.ndarray, usable: np.ndarray, t: np.ndarray, j: np.ndarray
) -> np.ndarray:
    """:func:`median_of_others` of ``values`` where ``usable``, at the cells
    ``(t, j)`` only: computed on the rows those cells are in, ``_ROWS`` at a
    time.

    Shape:
        - values, usable: ``(T, L)``
        - t, j, returns: ``(N,)``
    """
    rows, row = np.unique(t, return_inverse=True)  # (R,), (N,)
    out = np.empty(len(t))
    for r0 in range(0, len(rows), _ROWS):
        some = rows[r0 : r0 + _ROWS]
        others = median_of_others(np.where(usable[some], values[some], np.nan))
        here = np.flatnonzero((row >= r0) & (row < r0 + _ROWS))
        out[here] = others[row[here] - r0, j[here]]
    return out


def _row_groups(
    counts: np.ndarray,
) -> list[tuple[int, np.ndarray, slice | np.ndarray]]:
    """``(n, rows, pick)`` for each distinct ``n`` in ``counts`` ``(T,)``: the
    indices of the rows with ``n`` usable values, and an index that selects them
    (a slice when they are all the rows: views, not copies)."""
    groups = []
    for n in np.unique(counts):
        rows = np.flatnonzero(counts == n)
        groups.append((int(n), rows, slice(None) if len(rows) == len(counts) else rows))
    return groups


def _middle_ranks(filled: np.ndarray, n: int) -> dict[int, np.ndarray]:
    """The values at the ranks that the medians of ``n`` values, and of ``n - 1``
    of them, read: ``{rank: (R, 1)}``, in float64. Sorts ``filled`` in place
    when it is float32 (a vectorized sort is faster than a selection there),
    else partitions it.

    Shape:
        - filled: ``(R, L)``, ``n`` usable values per row, ``inf`` elsewhere
    """
    need = {(n - 2) // 2, (n - 1) // 2, n // 2, (n + 1) // 2}
    need = sorted(p for p in need if 0 <= p < filled.shape[1])
    if filled.dtype == np.float32:
        filled.sort(axis=1)
    else:
        filled.partition(need, axis=1)
    return {p: filled[:, p : p + 1].astype(np.float64) for p in need}


def _median_without(s: dict[int, np.ndarray], x: np.ndarray, n: int) -> np.ndarray:
    """The median of ``n`` values less ``x``, one of them (NaN if ``n == 1``).

    With ``s[i]`` the ``i``-th smallest of the ``n`` values, the ``i``-th smallest
    of the others is ``s[i]`` if ``s[i + 1] <= x`` else ``s[i + 1]`` (leaving out
    any copy of ``x`` leaves the same values). ``s``'s arrays broadcast with ``x``.
    """
    k = n - 1  # how many others
    if k == 0:
        return np.full(np.shape(x), np.nan)

    def other(i: int) -> np.ndarray:
        return np.where(s[i + 1] <= x, s[i], s[i + 1])

    return (other((k - 1) // 2) + other(k // 2)) / 2


def earlier_peak(mean: np.ndarray) -> np.ndarray:
    """Per step and layer, the largest value at an earlier step (NaN at the first)."""
    filled = np.where(np.isfinite(mean), mean, -np.inf)
    running = np.maximum.accumulate(filled, axis=0)  # (T, L), includes step t
    peak = np.full_like(mean, np.nan)
    peak[1:] = running[:-1]
    peak[np.isinf(peak)] = np.nan
    return peak
