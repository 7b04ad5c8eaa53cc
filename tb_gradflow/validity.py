"""What the logged statistics can be: a record outside it is damaged, not data.

TensorBoard's Rust data server reads event files without checking their
checksums, so flipped bits in a record's values arrive as values (a negative
``abs_mean`` of -1.2e9, say). :func:`invalid_records` checks every record
against what the statistics are by definition, with float32 rounding allowed
for, and names what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tb_gradflow import stats as stats_module

__all__ = ["invalid_records"]

# float32 rounding of values computed in float64, and of the loss-scale division
_RTOL = 1e-5
_ROWS = 256  # records checked at a time: the checks' temporaries stay in cache


def invalid_records(
    values: np.ndarray,
    stats: Sequence[str],
    layers: Sequence[str],
    numel: Sequence[int] = (),
) -> list[str | None]:
    """Why each record's statistics cannot be real, or None where they can.

    The checks, for each layer that has a gradient (``nonfinite`` not NaN):
    each registered statistic within its valid range (whole numbers where it
    counts, at most the layer's number of elements for a count, with
    ``numel``; see :mod:`tb_gradflow.stats`), and where the gradient is finite
    ``abs_mean <= abs_max <= norm <= sqrt(numel) * abs_max`` (the last with
    ``numel``). A statistic a layout lacks, or one this version does not know,
    is not checked. NaN, the value of a layer without gradient, is always
    allowed.

    Args:
        values: ``(N, K, L)``, statistics of N records in ``stats`` order.
        stats: the ``K`` statistic names.
        layers: the ``L`` layer names.
        numel: the ``L`` layers' numbers of elements, or () if unknown.

    Returns:
        ``N`` entries: None for a valid record, else the first problem found,
        naming the statistic and the layer.
    """
    n = values.shape[0]
    reasons: list[str | None] = [None] * n
    at = {s: values[:, k, :] for k, s in enumerate(stats)}  # (N, L) views
    size = np.asarray(numel, dtype=np.float32) if len(numel) else None
    checks = [(m, c) for m, c in _checks(stats) if c.needs <= at.keys()]
    checks = [(m, c) for m, c in checks if size is not None or not c.with_numel]
    if n == 0 or not checks:
        return reasons
    with np.errstate(invalid="ignore", over="ignore"):
        # One pass over every record, _ROWS at a time; the reasons only for
        # the bad ones.
        bad = np.zeros(n, dtype=bool)
        for r0 in range(0, n, _ROWS):
            part = {s: v[r0 : r0 + _ROWS] for s, v in at.items()}  # (R, L) views
            for _, check in checks:
                bad[r0 : r0 + _ROWS] |= check(part, size).any(axis=1)
        rows = np.flatnonzero(bad)
        if not len(rows):
            return reasons
        some = {s: v[rows] for s, v in at.items()}
        for message, check in checks:
            hit = check(some, size)  # (R, L)
            for r in np.flatnonzero(hit.any(axis=1)).tolist():
                i = int(rows[r])
                if reasons[i] is None:
                    layer = layers[int(np.flatnonzero(hit[r])[0])]
                    reasons[i] = f"{message} (layer {layer!r})"
    return reasons


class _Check:
    """One rule: ``fn(at, numel) -> (N, L) bool`` (True: impossible), the
    statistics it reads, and whether it needs the layers' sizes. Comparisons
    with NaN are False, so a layer without gradient passes every rule."""

    def __init__(self, fn, needs: set[str], with_numel: bool = False) -> None:
        self.fn, self.needs, self.with_numel = fn, needs, with_numel

    def __call__(self, at: dict[str, np.ndarray], numel: np.ndarray | None):
        return self.fn(at, numel)


def _finite(at: dict[str, np.ndarray]) -> np.ndarray:
    """Layers whose gradient was finite (nonfinite == 0; all if not logged)."""
    nonfinite = at.get("nonfinite")
    return True if nonfinite is None else nonfinite == 0


def _range_checks(statistic: stats_module.Statistic) -> list[tuple[str, _Check]]:
    """The rules of one statistic's valid range (see :mod:`tb_gradflow.stats`)."""
    name, low, high = statistic.name, statistic.low, statistic.high
    out = []
    if high is not None and math.isfinite(high):  # a bounded range: one rule
        out.append(
            (
                f"{name} is outside [{low:g}, {high:g}]",
                _Check(lambda at, _: (at[name] < low) | (at[name] > high), {name}),
            )
        )
    else:
        said = "negative" if low == 0 else f"below {low:g}"
        out.append((f"{name} is {said}", _Check(lambda at, _: at[name] < low, {name})))
    if statistic.integer:
        out.append(
            (
                f"{name} is not a whole number",
                _Check(
                    lambda at, _: (np.floor(at[name]) < at[name]) | np.isinf(at[name]),
                    {name},
                ),
            )
        )
    if high is None:  # at most the layer's number of elements
        out.append(
            (
                f"{name} is more than the layer's elements",
                _Check(lambda at, size: at[name] > size, {name}, True),
            )
        )
    return out


# How the built-in statistics relate where the gradient is finite.
_RELATIONS = [
    (
        "abs_mean is above abs_max",
        _Check(
            lambda at, _: (at["abs_mean"] > at["abs_max"] * (1 + _RTOL)) & _finite(at),
            {"abs_mean", "abs_max"},
        ),
    ),
    (
        "norm is below abs_max",
        _Check(
            lambda at, _: (at["norm"] < at["abs_max"] * (1 - _RTOL)) & _finite(at),
            {"abs_max", "norm"},
        ),
    ),
    (
        "norm is above sqrt(numel) x abs_max",
        _Check(
            lambda at, size: (
                (at["norm"] > np.sqrt(size) * at["abs_max"] * (1 + _RTOL)) & _finite(at)
            ),
            {"abs_max", "norm"},
            True,
        ),
    ),
]


def _checks(names: Sequence[str]) -> list[tuple[str, _Check]]:
    """The range rules of the registered statistics among ``names``, then the
    relations between them (a statistic this version does not know is not
    checked)."""
    out = []
    for name in names:
        statistic = stats_module.get(name)
        if statistic is not None:
            out += _range_checks(statistic)
    return out + _RELATIONS
