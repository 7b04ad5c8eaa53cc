"""What the diagnosis rule (:mod:`tb_gradflow.diagnosis`) is about: its kinds
of finding (``KINDS``), its parameters (:class:`Thresholds`), what it reads
from a run (:class:`RunLike`) and what its findings say (the messages of the
kinds that the rule modules do not word themselves). No torch, and nothing of
the rule: the rule modules and every user of the thresholds import it without
importing the rule.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

__all__ = [
    "EXACTLY_ZERO_MESSAGE",
    "KINDS",
    "MESSAGES",
    "RunLike",
    "Thresholds",
    "all_zero_message",
    "exploding_message",
]

KINDS = (
    "no_gradient",
    "blocked",
    "all_zero",
    "nonfinite",
    "nonfinite_origin",
    "exploding",
    "spike",
    "skipped",
    "update_too_large",
    "not_updating",
)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The documented defaults of the rule; every one is a query parameter of the
    tab's ``alerts`` route and an option of ``tb-gradflow report``."""

    patience: int = 3  # consecutive logged steps before blocked/no_gradient
    min_ratio_to_others: float = 1e-2  # of the other layers' median abs_mean
    min_ratio_to_own_peak: float = 1e-2  # of the layer's own earlier peak
    floor_ratio_to_others: float = 1e-6  # this far below the others: blocked outright
    explode_ratio: float = 100.0  # norm over the median of its recent norms
    explode_window: int = 20  # earlier logged steps in that median
    # spike: Hampel identifier on log10(norm); 7 SDs as OLMo 2's spike score
    # (arXiv:2501.00656); the window and the floor: see docs/logging.md
    spike_k: float = 7.0  # robust SDs (MAD x 1.4826) above the window's median
    spike_window: int = 50  # earlier logged steps in the median and the MAD
    spike_min_ratio: float = 2.0  # and at least this multiple of the median
    # update_ratio: about 1e-3 is healthy (CS231n's rule of thumb; Karpathy's
    # makemore plots of log10 update/data ratios around -3): 100x above it the
    # step is too large; 1e4x below it the layer does not move
    max_update_ratio: float = 1e-1
    min_update_ratio: float = 1e-7

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"Invalid patience: {self.patience} (an int >= 1)")
        for field in (
            "min_ratio_to_others",
            "min_ratio_to_own_peak",
            "floor_ratio_to_others",
        ):
            value = getattr(self, field)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Invalid {field}: {value} (between 0 and 1)")
        if not self.explode_ratio > 1.0:
            raise ValueError(f"Invalid explode_ratio: {self.explode_ratio} (> 1)")
        if self.explode_window < 3:
            raise ValueError(f"Invalid explode_window: {self.explode_window} (>= 3)")
        if not 0.0 < self.spike_k < float("inf"):
            raise ValueError(f"Invalid spike_k: {self.spike_k} (> 0, finite)")
        if self.spike_window < 6:
            raise ValueError(f"Invalid spike_window: {self.spike_window} (>= 6)")
        if not 1.0 <= self.spike_min_ratio < float("inf"):
            raise ValueError(
                f"Invalid spike_min_ratio: {self.spike_min_ratio} (>= 1, finite)"
            )
        if not 0.0 < self.min_update_ratio < self.max_update_ratio:
            raise ValueError(
                f"Invalid min_update_ratio and max_update_ratio: "
                f"{self.min_update_ratio} and {self.max_update_ratio} "
                "(0 < min_update_ratio < max_update_ratio)"
            )


class RunLike(Protocol):
    """What :func:`tb_gradflow.diagnose` reads; :class:`tb_gradflow.GradFlowRun`
    is one. An ``absent`` attribute, ``(T, L)`` bool, is read when there is one,
    and the update findings need ``stats`` (and ``not_logged``) naming
    ``update_ratio``."""

    steps: np.ndarray
    layers: list[str]
    sparse: list[bool]
    skipped: np.ndarray

    def values(self, stat: str) -> np.ndarray: ...


# The message of each kind worded here, by kind (``spike`` and the update
# kinds: :mod:`tb_gradflow.spike_rule`, :mod:`tb_gradflow.update_rule`).
MESSAGES = {
    "no_gradient": "no gradient (.grad is None): detached or unused",
    "blocked": "gradient near zero: it does not flow into this layer",
    "nonfinite": "NaN/Inf in the gradient",
    "skipped": "optimizer step skipped by the AMP grad scaler (inf/NaN in it)",
}
# A ``blocked`` finding's message when the layer's value was exactly zero at
# every step of the streak where it was usable.
EXACTLY_ZERO_MESSAGE = "gradient exactly zero: it does not flow into this layer"


def exploding_message(th: Thresholds) -> str:
    """The message of an ``exploding`` finding under ``th``."""
    return f"gradient norm above {th.explode_ratio:g}x its recent median"


def all_zero_message(first_step: int) -> str:
    """The message of an ``all_zero`` finding whose streak begins at ``first_step``."""
    return (
        f"every layer's gradient is exactly zero from step {first_step}: the loss "
        "does not depend on the parameters (detached, constant, or every unit dead)"
    )
