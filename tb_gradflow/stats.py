"""The statistics, by name: one registry that collection, the sharded reduction,
the range checks, the diagnosis, the plugin, the report and the docs take the
list from.

A statistic is made from *partials*: per-layer reductions of the gradient that
combine across pieces and shards by a sum or a max (Σ|g|, max|g|, Σg², the
non-finite count), finished into the logged value (``abs_mean = Σ|g| /
numel``, ``norm = sqrt(Σg²)``). The built-in partials are computed together, in
as few passes over the gradients as possible (:mod:`tb_gradflow._reduce`); a
new statistic either finishes from them or brings a partial of its own (a
``local`` function of one dense gradient, run per layer).

Importing this module never imports torch (the plugin reads the registry).

Examples:
    A statistic from the built-in partials, registered before ``watch``:

    >>> from tb_gradflow import stats
    >>> rms = stats.Statistic(
    ...     name="rms",
    ...     meaning="root mean square of the gradient",
    ...     partials=("sq_sum",),
    ...     finish=lambda p, numel: (p["sq_sum"] / numel) ** 0.5,
    ...     group="norm",
    ...     unit="value",
    ...     bad="high",
    ... )
    >>> stats.register(rms)
    >>> "rms" in stats.names()
    True
    >>> stats.unregister("rms")
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "PARTIALS",
    "Partial",
    "Statistic",
    "get",
    "names",
    "record",
    "register",
    "statistics",
    "unregister",
]

_COMBINE = ("sum", "max")
_GROUPS = ("mean", "max", "norm", "sum", "partials")
_READS = ("gradient", "parameter", "update")
_UNITS = ("value", "count", "fraction")
_BAD = ("low", "high", "none")


@dataclasses.dataclass(frozen=True)
class Partial:
    """A per-layer reduction of a gradient that statistics are finished from.

    Attributes:
        name: its name, as statistics refer to it.
        combine: how two pieces' (or shards') values combine: ``"sum"`` or
            ``"max"``.
        local: for a partial of one's own, ``local(grad) -> 0-dim tensor`` of a
            dense gradient (or of one shard of it), run per layer on a logged
            step; None for the built-in ones, which the fused reduction makes.
    """

    name: str
    combine: str
    local: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if self.combine not in _COMBINE:
            raise ValueError(f"Invalid combine: {self.combine!r} (sum or max)")


PARTIALS: dict[str, Partial] = {
    p.name: p
    for p in (
        Partial("abs_sum", "sum"),  # Σ|g|
        Partial("abs_max", "max"),  # max|g|
        Partial("sq_sum", "sum"),  # Σg²
        Partial("nonfinite", "sum"),  # NaN/Inf elements
        Partial("rows", "max"),  # fraction of rows with a gradient (sparse)
        Partial("param_sq", "sum"),  # Σθ² before the step
        Partial("update_sq", "sum"),  # Σ(θ_after - θ_before)²
    )
}
"""The built-in partials: the gradient's, made together by the fused reduction,
and the parameter's and the applied update's, made around the optimizer step
(:mod:`tb_gradflow.update_stats`)."""


@dataclasses.dataclass(frozen=True)
class Statistic:
    """One logged statistic.

    Attributes:
        name: as it is written and read (a layout's ``stats``, a route's keys).
        meaning: one line, for the docs and the tab's menu.
        partials: the partials it is finished from (names in :data:`PARTIALS`,
            or partials registered with it).
        finish: ``finish(partials, numel) -> values``: ``partials`` maps each
            partial's name to ``(L,)`` float64 whole-layer values, ``numel`` is
            ``(L,)``; returns ``(L,)``.
        group: how layers combine into a group of layers: ``"mean"`` (weighted
            by size), ``"max"``, ``"norm"`` (root of the sum of squares),
            ``"sum"``, or ``"partials"`` (finished from the group's combined
            partials, as a ratio of norms is).
        unit: ``"value"`` (of the gradient), ``"count"`` or ``"fraction"``.
        bad: which direction is bad, for binning and alerts: ``"low"``,
            ``"high"`` or ``"none"``.
        loss_scaled: whether it scales with the gradient, so that a fused
            optimizer's still-scaled gradient is divided by the loss scale.
        low, high: its valid range; ``high=None`` is the layer's number of
            elements (a count).
        integer: whether valid values are whole numbers.
        reads: what it is computed from: ``"gradient"`` (always logged),
            ``"parameter"`` or ``"update"`` (the step the optimizer applied;
            measured around the optimizer step, chosen with ``watch(stats=)``).
    """

    name: str
    meaning: str
    partials: tuple[str, ...]
    finish: Callable[[Mapping[str, np.ndarray], np.ndarray], np.ndarray]
    group: str = "mean"
    unit: str = "value"
    bad: str = "none"
    loss_scaled: bool = True
    low: float = 0.0
    high: float | None = math.inf
    integer: bool = False
    reads: str = "gradient"

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"Invalid name: {self.name!r} (a non-empty str, no '/')")
        for field, allowed in (
            ("group", _GROUPS),
            ("unit", _UNITS),
            ("bad", _BAD),
        ):
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"Invalid {field}: {getattr(self, field)!r} (one of {allowed})"
                )
        if self.reads not in _READS:
            raise ValueError(f"Invalid reads: {self.reads!r} (one of {_READS})")


def _mean(p: Mapping[str, np.ndarray], numel: np.ndarray) -> np.ndarray:
    """Σ|g| / numel, 0 for an empty layer."""
    return np.divide(p["abs_sum"], np.maximum(numel, 1)) * (numel > 0)


_BUILT_IN = (
    Statistic(
        "abs_mean",
        "mean of |g| over all elements (the bar of the classic gradient-flow plot)",
        ("abs_sum",),
        _mean,
        group="mean",
        bad="low",
    ),
    Statistic(
        "abs_max",
        "largest |g|",
        ("abs_max",),
        lambda p, numel: p["abs_max"],
        group="max",
        bad="high",
    ),
    Statistic(
        "norm",
        "L2 norm of the gradient",
        ("sq_sum",),
        lambda p, numel: np.sqrt(p["sq_sum"]),
        group="norm",
        bad="high",
    ),
    Statistic(
        "nonfinite",
        "number of NaN/Inf elements",
        ("nonfinite",),
        lambda p, numel: p["nonfinite"],
        group="sum",
        unit="count",
        bad="high",
        loss_scaled=False,
        high=None,
        integer=True,
    ),
    Statistic(
        "rows",
        "fraction of rows (first dimension) that received a gradient: 1 for a "
        "dense gradient, unique rows / rows for a sparse one",
        ("rows",),
        lambda p, numel: p["rows"],
        group="mean",
        unit="fraction",
        loss_scaled=False,
        high=1.0,
    ),
)


def _update_ratio(p: Mapping[str, np.ndarray], numel: np.ndarray) -> np.ndarray:
    """‖Δθ‖ / ‖θ‖: inf for an update of a zero parameter, NaN for none."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(p["update_sq"]) / np.sqrt(p["param_sq"])


_BUILT_IN += (
    Statistic(
        "update_ratio",
        "size of the step the optimizer applied, relative to the weights: "
        "||theta_after - theta_before|| / ||theta_before|| (about 1e-3 is healthy)",
        ("update_sq", "param_sq"),
        _update_ratio,
        group="partials",
        bad="high",
        loss_scaled=False,
        reads="update",
    ),
    Statistic(
        "weight_norm",
        "L2 norm of the weights before the step",
        ("param_sq",),
        lambda p, numel: np.sqrt(p["param_sq"]),
        group="norm",
        loss_scaled=False,
        reads="parameter",
    ),
)

_LOCK = threading.Lock()
_REGISTRY: dict[str, Statistic] = {s.name: s for s in _BUILT_IN}
_EXTRA_PARTIALS: dict[str, Partial] = {}


def register(statistic: Statistic, *partials: Partial) -> None:
    """Adds a statistic (and the partials of its own it needs), logged by
    watchers created afterwards, after the built-in ones in registration order.

    Raises:
        ValueError: if its name is taken, or a partial it reads is unknown.
    """
    with _LOCK:
        if statistic.name in _REGISTRY:
            raise ValueError(f"A statistic named {statistic.name!r} is registered")
        known = {**PARTIALS, **_EXTRA_PARTIALS}
        for p in partials:
            if p.name in known and known[p.name] != p:
                raise ValueError(f"A partial named {p.name!r} is registered")
            if p.local is None:
                raise ValueError(f"Partial {p.name!r} needs a local function")
        known.update({p.name: p for p in partials})
        missing = [n for n in statistic.partials if n not in known]
        if missing:
            raise ValueError(
                f"Statistic {statistic.name!r} reads unknown partials {missing}"
            )
        _EXTRA_PARTIALS.update({p.name: p for p in partials})
        _REGISTRY[statistic.name] = statistic


def unregister(name: str) -> None:
    """Removes a registered statistic (not a built-in one), and the partials of
    its own no other statistic reads."""
    with _LOCK:
        if name in {s.name for s in _BUILT_IN}:
            raise ValueError(f"{name!r} is built in")
        statistic = _REGISTRY.pop(name)
        used = {p for s in _REGISTRY.values() for p in s.partials}
        for p in statistic.partials:
            if p in _EXTRA_PARTIALS and p not in used:
                del _EXTRA_PARTIALS[p]


def names(reads: str | None = None) -> tuple[str, ...]:
    """The registered statistics' names, in the order they are written (only
    those computed from ``reads``, if given: ``"gradient"`` for the ones every
    watcher logs)."""
    return tuple(s.name for s in statistics(reads))


def statistics(reads: str | None = None) -> tuple[Statistic, ...]:
    """The registered statistics, in the order they are written (only those
    computed from ``reads``, if given)."""
    with _LOCK:
        return tuple(s for s in _REGISTRY.values() if reads is None or s.reads == reads)


def get(name: str) -> Statistic | None:
    """The registered statistic ``name``, or None (a statistic this version
    does not know, read from a file: carried through by name)."""
    with _LOCK:
        return _REGISTRY.get(name)


def partial(name: str) -> Partial:
    """The partial ``name`` (built in, or registered with a statistic)."""
    with _LOCK:
        return PARTIALS.get(name) or _EXTRA_PARTIALS[name]


def record(values: Mapping[str, Any], layers: int, order=None) -> np.ndarray:
    """A ``(K, L)`` float64 record built by name: ``values`` maps each
    statistic of ``order`` (default: the gradient's, ``names("gradient")``, as
    a layout holds by default) to a number or ``(L,)`` values.

    Raises:
        KeyError: naming a statistic ``values`` lacks or one it has beyond
            ``order``.
    """
    order = tuple(order or names("gradient"))
    extra = sorted(set(values) - set(order))
    missing = [n for n in order if n not in values]
    if extra or missing:
        raise KeyError(f"record(): missing {missing}, unknown {extra}; order {order}")
    out = np.empty((len(order), layers), dtype=np.float64)
    for k, name in enumerate(order):
        out[k] = values[name]
    return out
