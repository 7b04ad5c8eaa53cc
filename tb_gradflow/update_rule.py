"""The ``update_too_large`` and ``not_updating`` rules: each layer's logged
``update_ratio`` (the step the optimizer applied over the layer's weights)
against fixed bounds and the other layers' (see :func:`tb_gradflow.diagnose`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tb_gradflow.blocked_rule import median_of_others_at
from tb_gradflow.streaks import Finding, find_streaks

if TYPE_CHECKING:
    from tb_gradflow.rule_spec import RunLike, Thresholds

__all__ = ["update_findings", "update_masks", "update_messages"]


def update_masks(
    ratio: np.ndarray,
    rows: np.ndarray,
    sparse: np.ndarray,
    valid: np.ndarray,
    th: Thresholds,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each rule holds, step by step: ``update_too_large`` and
    ``not_updating`` per layer, ``(T, L)`` each, and ``not_updating`` of the
    model (most layers below ``min_update_ratio`` at once), ``(T,)``.

    A sparse layer is judged by the rows that got a gradient
    (``update_ratio / sqrt(rows)``); a ratio of ``inf`` (weights that were 0)
    does not count.

    Shape:
        - ratio, rows, valid: ``(T, L)`` (``valid``: layers with a usable,
          flowing gradient); sparse: ``(L,)``.
    """
    ratio = np.asarray(ratio)
    sparse = np.asarray(sparse, dtype=bool)
    if sparse.any() or ratio.dtype not in (np.float32, np.float64):
        ratio = ratio.astype(np.float64)  # a copy
    if sparse.any():  # judged by the rows that got a gradient
        r = np.asarray(rows, dtype=np.float64)[:, sparse]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio[:, sparse] = np.where(r > 0, ratio[:, sparse] / np.sqrt(r), 0)
    usable = valid & np.isfinite(ratio)  # inf: the weights were zero
    # compared in float64, whatever the ratio's precision
    high, floor = np.float64(th.max_update_ratio), np.float64(th.min_update_ratio)
    with np.errstate(invalid="ignore"):
        too_large = usable & (ratio > high)
        low = usable & (ratio < floor)
    model_low = _model_low(ratio, usable, low, floor)  # (T,)
    not_updating = low & ~model_low[:, None]
    # where the other layers' median decides: few cells, their rows only
    t, j = np.divmod(np.flatnonzero(not_updating), not_updating.shape[1])
    with np.errstate(invalid="ignore"):
        not_updating[t, j] = median_of_others_at(ratio, usable, t, j) >= floor
    return too_large, not_updating, model_low


def _model_low(
    ratio: np.ndarray, usable: np.ndarray, low: np.ndarray, floor: np.float64
) -> np.ndarray:
    """``(T,)``: steps where the median of the usable ratios (``np.nanmedian``)
    is below ``floor``, from how many of them are (``low``): more than half,
    yes; at most half less one, no; the median itself only where exactly half
    are (its two middle values straddle ``floor``).

    Shape:
        - ratio, usable, low: ``(T, L)``
    """
    n = np.count_nonzero(usable, axis=1)  # (T,)
    below = np.count_nonzero(low, axis=1)
    model_low = (n > 0) & (below > n // 2)
    tied = np.flatnonzero((n > 0) & (n % 2 == 0) & (below == n // 2))
    if len(tied):
        some = np.where(usable[tied], ratio[tied].astype(np.float64), np.nan)
        model_low[tied] = np.nanmedian(some, axis=1) < floor
    return model_low


def update_messages(th: Thresholds) -> dict[str, str]:
    """The messages of the update findings: ``update_too_large``,
    ``not_updating`` (a layer) and ``not_updating_model``."""
    return {
        "update_too_large": (
            f"update_ratio above {th.max_update_ratio:g}: the step is too large "
            "for these weights (the learning rate is too high for this layer)"
        ),
        "not_updating": (
            f"update_ratio below {th.min_update_ratio:g} while the other layers "
            "update: the optimizer does not hold its parameter, or its learning "
            "rate is zero or tiny (a frozen group, weight decay cancelling the "
            "step)"
        ),
        "not_updating_model": (
            f"most layers' update_ratio is below {th.min_update_ratio:g}: the "
            "weights do not move (a learning rate of 0: warm-up, a scheduler at 0)"
        ),
    }


def update_findings(
    run: RunLike,
    valid: np.ndarray,
    live: np.ndarray,
    steps: np.ndarray,
    layers: list[str],
    patience: int,
    th: Thresholds,
) -> list[Finding]:
    """``update_too_large`` and ``not_updating`` (see :mod:`tb_gradflow.diagnosis`).

    A layer that is blocked or has no gradient at a step does not count there
    (its weights do not move because the gradient does not reach them; that
    finding says so).

    Shape:
        - valid: ``(T, L)``, layers with a usable, flowing gradient; live: ``(T,)``.
    """
    too_large, not_updating, model_low = update_masks(
        run.values("update_ratio"), run.values("rows"), run.sparse, valid, th
    )
    messages = update_messages(th)
    # (find_streaks reads only the live steps)
    found = find_streaks(
        "update_too_large",
        too_large,
        live,
        steps,
        layers,
        patience,
        messages["update_too_large"],
    )
    found += find_streaks(
        "not_updating",
        not_updating,
        live,
        steps,
        layers,
        patience,
        messages["not_updating"],
    )
    found += find_streaks(
        "not_updating",
        model_low[:, None],
        live,
        steps,
        [None],
        patience,
        messages["not_updating_model"],
    )
    return found
