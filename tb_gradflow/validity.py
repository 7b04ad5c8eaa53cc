"""What the logged statistics can be: a record outside it is damaged, not data.

TensorBoard's Rust data server reads event files without checking their
checksums, so flipped bits in a record's values arrive as values (a negative
``abs_mean`` of -1.2e9, say). :func:`invalid_records` checks every record
against what the statistics are by definition, with float32 rounding allowed
for, and names what is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["invalid_records"]

# float32 rounding of values computed in float64, and of the loss-scale division
_RTOL = 1e-5


def invalid_records(
    values: np.ndarray,
    stats: Sequence[str],
    layers: Sequence[str],
    numel: Sequence[int] = (),
) -> list[str | None]:
    """Why each record's statistics cannot be real, or None where they can.

    The checks, for each layer that has a gradient (``nonfinite`` not NaN):
    ``abs_mean``, ``abs_max`` and ``norm`` are not negative; ``rows`` is in
    [0, 1]; ``nonfinite`` is a whole number, not negative and (with ``numel``)
    at most the layer's number of elements; and where the gradient is finite,
    ``abs_mean <= abs_max <= norm <= sqrt(numel) * abs_max`` (the last with
    ``numel``). A statistic a layout lacks is not checked. NaN, the value of a
    layer without gradient, is always allowed.

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
    if n == 0:
        return reasons
    at = {s: values[:, k, :] for k, s in enumerate(stats)}  # (N, L) views
    nonfinite = at.get("nonfinite")
    with np.errstate(invalid="ignore", over="ignore"):
        has_grad = (
            ~np.isnan(nonfinite)
            if nonfinite is not None
            else np.ones(values[:, 0].shape, bool)
        )
        finite = has_grad & (nonfinite == 0) if nonfinite is not None else has_grad
        checks: list[tuple[str, np.ndarray]] = []
        for stat in ("abs_mean", "abs_max", "norm"):
            if stat in at:
                checks.append((f"{stat} is negative", has_grad & (at[stat] < 0)))
        if "rows" in at:
            rows = at["rows"]
            checks.append(
                ("rows is outside [0, 1]", has_grad & ~((rows >= 0) & (rows <= 1)))
            )
        if nonfinite is not None:
            whole = np.isfinite(nonfinite) & (nonfinite >= 0)
            whole &= nonfinite == np.round(nonfinite)
            checks.append(("nonfinite is not a whole number >= 0", has_grad & ~whole))
        size = np.asarray(numel, dtype=np.float32) if len(numel) else None
        if nonfinite is not None and size is not None:
            checks.append(
                ("nonfinite is more than the layer's elements", nonfinite > size)
            )
        if {"abs_mean", "abs_max"} <= at.keys():
            checks.append(
                (
                    "abs_mean is above abs_max",
                    finite & (at["abs_mean"] > at["abs_max"] * (1 + _RTOL)),
                )
            )
        if {"abs_max", "norm"} <= at.keys():
            checks.append(
                (
                    "norm is below abs_max",
                    finite & (at["norm"] < at["abs_max"] * (1 - _RTOL)),
                )
            )
            if size is not None:
                top = np.sqrt(size) * at["abs_max"] * (1 + _RTOL)
                checks.append(
                    ("norm is above sqrt(numel) x abs_max", finite & (at["norm"] > top))
                )
    for message, bad in checks:
        for i in np.flatnonzero(bad.any(axis=1)).tolist():
            if reasons[i] is None:
                layer = layers[int(np.flatnonzero(bad[i])[0])]
                reasons[i] = f"{message} (layer {layer!r})"
    return reasons
