"""The ``update_too_large`` and ``not_updating`` rules: each layer's logged
``update_ratio`` (the step the optimizer applied over the layer's weights)
against fixed bounds and the other layers' (see :func:`tb_gradflow.diagnose`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tb_gradflow.blocked_rule import median_of_others
from tb_gradflow.streaks import Finding, find_streaks

if TYPE_CHECKING:
    from tb_gradflow.diagnosis import RunLike, Thresholds

__all__ = ["update_findings"]


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
    ratio = np.array(run.values("update_ratio"), dtype=np.float64)  # (T, L)
    sparse = np.asarray(run.sparse, dtype=bool)
    if sparse.any():  # judged by the rows that got a gradient
        rows = np.asarray(run.values("rows"), dtype=np.float64)[:, sparse]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio[:, sparse] = np.where(rows > 0, ratio[:, sparse] / np.sqrt(rows), 0)
    usable = valid & np.isfinite(ratio)  # inf: the weights were zero
    moving = np.where(usable, ratio, np.nan)
    with np.errstate(invalid="ignore"):
        too_large = usable & (ratio > th.max_update_ratio)
        low = usable & (ratio < th.min_update_ratio)
        others = median_of_others(moving)  # (T, L)
        model_low = usable.any(axis=1) & (
            np.nanmedian(np.where(usable.any(axis=1)[:, None], moving, 0), axis=1)
            < th.min_update_ratio
        )  # (T,)
        not_updating = low & ~model_low[:, None] & (others >= th.min_update_ratio)
    low_message = (
        f"update_ratio below {th.min_update_ratio:g} while the other layers "
        "update: its learning rate is zero or tiny (a frozen group, weight decay "
        "cancelling the step)"
    )
    found = find_streaks(
        "update_too_large",
        too_large & live[:, None],
        live,
        steps,
        layers,
        patience,
        f"update_ratio above {th.max_update_ratio:g}: the step is too large for "
        "these weights (the learning rate is too high for this layer)",
    )
    found += find_streaks(
        "not_updating",
        not_updating & live[:, None],
        live,
        steps,
        layers,
        patience,
        low_message,
    )
    found += find_streaks(
        "not_updating",
        (model_low & live)[:, None],
        live,
        steps,
        [None],
        patience,
        f"most layers' update_ratio is below {th.min_update_ratio:g}: the weights "
        "do not move (a learning rate of 0: warm-up, a scheduler at 0)",
    )
    return found
