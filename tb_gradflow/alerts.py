"""Alerts while training: ``watch(..., on_alert="warn" | "raise")``.

The findings come from :class:`tb_gradflow.diagnosis.OnlineDiagnosis` (the
rule the tab and the report use, one logged step at a time) and from the
non-finite trace (``nonfinite_origin``). A warning points at the user's line,
past the frames of this package and of the frameworks that call its hooks.

Import-light: numpy and the standard library, never torch.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence

import numpy as np

from tb_gradflow.diagnosis import Finding, OnlineDiagnosis
from tb_gradflow.rule_spec import Thresholds

__all__ = [
    "ALERT_MODES",
    "GradFlowAlert",
    "GradFlowError",
    "OnlineAlerts",
]

ALERT_MODES = (None, "warn", "raise")


class GradFlowAlert(UserWarning):
    """Warned by ``watch(..., on_alert="warn")`` when a layer's gradient goes bad."""


class GradFlowError(RuntimeError):
    """Raised by ``watch(..., on_alert="raise")`` when a layer's gradient goes bad.

    Attributes:
        finding: the :class:`~tb_gradflow.diagnosis.Finding` that stopped the run.
    """

    def __init__(self, finding: Finding) -> None:
        super().__init__(alert_text(finding))
        self.finding = finding


def alert_text(f: Finding) -> str:
    """The alert's text, at the step that raised it (``last_step``; the streak
    began at ``first_step``)."""
    where = "the model" if f.layer is None else f"layer {f.layer!r}"
    return f"gradflow: {where} at step {f.last_step}: {f.kind}: {f.message}"


class OnlineAlerts:
    """Warns or raises for each new finding of a watcher's logged steps.

    Args:
        mode: ``"warn"`` or ``"raise"``.
        layers, sparse: the watcher's layers and which are sparse.
        thresholds: the rule's thresholds (default: :class:`Thresholds`).
    """

    def __init__(
        self,
        mode: str,
        layers: Sequence[str],
        sparse: Sequence[bool],
        thresholds: Thresholds | None = None,
    ) -> None:
        if mode not in ALERT_MODES[1:]:
            raise ValueError(f"Invalid on_alert: {mode!r} (None, 'warn' or 'raise')")
        self.mode = mode
        self._diagnosis = OnlineDiagnosis(layers, sparse, thresholds)

    def update(self, step: int, stats: dict[str, np.ndarray], *, skipped: bool) -> None:
        """Feeds one logged step (``stats``: ``(L,)`` per statistic name)."""
        for finding in self._diagnosis.update(step, stats, skipped=skipped):
            self.fire(finding)

    def fire(self, finding: Finding) -> None:
        """Warns of ``finding``, or raises :class:`GradFlowError`."""
        if self.mode == "raise":
            raise GradFlowError(finding)
        warnings.warn(alert_text(finding), GradFlowAlert, stacklevel=_user_stacklevel())


# Code that calls the hooks on the user's behalf: an alert points past it, at
# the user's line (a fixed stacklevel breaks when the depth of the calls changes).
_NOT_USER_CODE = (
    "tb_gradflow",
    "torch",
    "lightning",
    "pytorch_lightning",
    "lightning_fabric",
    "transformers",
    "accelerate",
    "contextlib",
    "functools",
)


def _user_stacklevel() -> int:
    """The ``stacklevel`` that makes ``warnings.warn``, called by our caller,
    name the innermost frame of the user's code (or the outermost frame)."""
    frame = sys._getframe(1)  # our caller: it calls warn
    level = 1
    while frame.f_back is not None:
        module = frame.f_globals.get("__name__", "")
        if module.split(".", 1)[0] not in _NOT_USER_CODE:
            return level
        frame = frame.f_back
        level += 1
    return level
