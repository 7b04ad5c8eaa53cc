"""Findings about a run's gradient flow: the one rule used by the TensorBoard tab,
``tb-gradflow report`` and the training checks (pure numpy; no torch).

Kinds of finding, each for a layer (``all_zero`` and ``skipped``: for the whole
model) and a streak of logged steps ``first_step..last_step``:

* ``no_gradient``: ``.grad`` was None (a detached or unused layer) for at least
  ``patience`` consecutive logged steps.
* ``blocked``: the gradient is there but does not flow, for at least
  ``patience`` consecutive logged steps: ``abs_mean`` is exactly zero, or it is
  tiny relative to the other layers (``< min_ratio_to_others`` x their median)
  *and* to the layer's own earlier peak (``< min_ratio_to_own_peak`` x that
  peak), or it is so far below the other layers (``< floor_ratio_to_others`` x
  their median) that no learning rate can make up for it. A sparse layer is
  judged by the rows that received a gradient (``abs_mean / rows``), so a large
  embedding is not flagged just for being large.
* ``all_zero``: every layer that has a gradient has exactly zero gradient, for
  at least ``patience`` consecutive logged steps: the loss does not depend on
  the parameters. Reported once for the model, instead of a ``blocked``
  finding per layer at those steps.
* ``nonfinite``: NaN/Inf elements, on steps that were not skipped.
* ``nonfinite_origin`` (runs watched with ``trace_nonfinite=True``): where the
  NaN/Inf first appeared, one finding per traced origin (the run's
  ``origins``), for the first watched layer of the module that made it (the
  model when it has none).
* ``exploding``: the L2 norm is more than ``explode_ratio`` x the median of the
  layer's previous ``explode_window`` finite norms (needs 3 earlier values). A
  window longer than the run takes all earlier steps.
* ``spike``: ``log10`` of the L2 norm is above the median of the layer's
  previous ``spike_window`` logged steps' values by more than ``spike_k``
  robust standard deviations (the MAD x 1.4826) and by ``spike_min_ratio`` x
  at least (needs ``spike_window // 2`` earlier values; a Hampel identifier,
  :mod:`tb_gradflow.spike_rule`). Only steps that count and layers with a
  finite, positive norm and no NaN/Inf element are judged or enter a window.
  A layer's ``exploding`` step has no ``spike`` finding besides. One finding
  for the model per spike event of two or more layers (spiking within a few
  logged steps of each other, exploding ones included) names them in the
  order their spike began, those of the same step by how far above their
  threshold they were: the first one is where it started.
* ``skipped``: steps the AMP grad scaler skipped (inf/NaN in the scaled
  gradient). They count as neither blocked nor healthy.
* ``update_too_large`` (runs that log ``update_ratio``): the step the optimizer
  applied is above ``max_update_ratio`` of the layer's weights for ``patience``
  steps: the learning rate is too high for this layer.
* ``not_updating`` (same): a layer with a gradient whose ``update_ratio`` stays
  below ``min_update_ratio`` for ``patience`` steps while the other layers
  update (a parameter the optimizer does not hold, a frozen group, a learning
  rate of 0, weight decay cancelling the step); when most layers are that low
  at once (warm-up from 0, a scheduler at 0), one finding for the model
  instead. A blocked layer does not count (its
  weights stand still for want of a gradient). A layer whose weights were zero
  (ratio inf, e.g. LoRA's B at its start) does not count; a sparse layer is
  judged by the rows that got a gradient (``update_ratio / sqrt(rows)``).

With fewer logged steps than ``patience``, a streak over all of them counts.

A streak of ``no_gradient``, ``blocked`` or ``all_zero`` ends only after
``patience`` healthy logged steps in a row (shorter healthy gaps are bridged),
and every other kind's after one. A streak that has not ended by the last
logged step is *ongoing* (``Finding.ongoing``): the condition may hold now,
even if the newest step or two looked healthy; ``last_step`` stays the last
step where it held.

A layer *absent* at a step (a run resumed with another layer set: the run's
``absent`` mask, when it has one) has no finding there: it is neither without
gradient nor blocked, and its steps break a streak.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tb_gradflow.blocked_rule import (
    blocked_mask,
    is_blocked,
    median_of_others,
)
from tb_gradflow.exploding_rule import exploding_mask
from tb_gradflow.metadata import NonfiniteOrigin
from tb_gradflow.rule_spec import (
    EXACTLY_ZERO_MESSAGE,
    KINDS,
    MESSAGES,
    RunLike,
    Thresholds,
    all_zero_message,
    exploding_message,
)
from tb_gradflow.spike_rule import SpikeWindow, spike_findings, spike_message
from tb_gradflow.streaks import Finding, find_streaks
from tb_gradflow.update_rule import update_findings, update_masks, update_messages

# re-exported: KINDS and Thresholds (tb_gradflow.rule_spec), Finding (streaks)
__all__ = [
    "KINDS",
    "Finding",
    "OnlineDiagnosis",
    "Thresholds",
    "diagnose",
    "origin_finding",
]

_ROWS = 256  # steps at a time for the per-cell masks (_cell_masks)
# kinds that need `patience` steps in a row
_PATIENT = ("no_gradient", "blocked", "all_zero", "update_too_large", "not_updating")


def _all_zero_steps(judged: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``(T,)`` bool: steps where some layer has a gradient and every layer that
    has one has exactly zero (``judged``, ``valid``: ``(T, L)``)."""
    return valid.any(axis=1) & ((judged == 0) | ~valid).all(axis=1)


def diagnose(run: RunLike, thresholds: Thresholds | None = None) -> list[Finding]:
    """All findings of a run: where NaN/Inf began (``nonfinite_origin``)
    first, then by first step, then layer order.

    Args:
        run: the logged statistics (``steps`` ``(T,)``, ``values(stat)`` ``(T, L)``).
        thresholds: the rule's parameters (default: :class:`Thresholds`).
    """
    th = thresholds or Thresholds()
    steps = np.asarray(run.steps)
    layers = list(run.layers)
    if len(steps) == 0:
        return []
    skipped = np.asarray(run.skipped, dtype=bool)  # (T,)
    live = ~skipped
    nonfinite = run.values("nonfinite")  # (T, L); NaN: no gradient
    judged = _judged_mean(run.values("abs_mean"), run.values("rows"), run.sparse)
    absent = getattr(run, "absent", None)  # (T, L) bool, optional
    present = None  # every layer at every step, or (T, L) bool
    if absent is not None and np.any(absent):
        present = ~np.asarray(absent, dtype=bool)
    valid, no_gradient, bad, counts, all_zero = _cell_masks(judged, nonfinite, present)
    if not live.all():
        counts &= live[:, None]
    blocked = blocked_mask(judged, valid, th)
    blocked[all_zero] = False  # one finding for the model instead
    masks = {  # in this order for findings of the same step and layer
        "no_gradient": no_gradient,
        "blocked": blocked,
        "nonfinite": bad,
        "exploding": exploding_mask(run.values("norm"), th),
    }
    patience = min(th.patience, max(int(live.sum()), 1))
    findings: list[Finding] = []
    for kind, mask in masks.items():
        message = exploding_message(th) if kind == "exploding" else MESSAGES[kind]
        min_length = patience if kind in _PATIENT else 1
        # (find_streaks reads only the live steps)
        found = find_streaks(kind, mask, live, steps, layers, min_length, message)
        if kind == "blocked":
            found = [_say_exactly_zero(f, judged, steps, layers) for f in found]
        findings += found
    findings += spike_findings(
        run.values("norm"),
        counts,
        live,
        steps,
        layers,
        th,
        superseded=masks["exploding"],
    )
    findings += [
        dataclasses.replace(f, message=all_zero_message(f.first_step))
        for f in find_streaks(
            "all_zero", (all_zero & live)[:, None], live, steps, [None], patience, ""
        )
    ]
    logged = set(getattr(run, "stats", ())) - set(getattr(run, "not_logged", ()))
    if "update_ratio" in logged:
        explained = masks["blocked"] | no_gradient  # a gradient that does not flow
        findings += update_findings(
            run, valid & ~explained, live, steps, layers, patience, th
        )
    findings += [origin_finding(o, layers) for o in getattr(run, "origins", ())]
    findings += find_streaks(
        "skipped",
        skipped[:, None],
        np.ones_like(skipped),
        steps,
        [None],
        1,
        MESSAGES["skipped"],
    )
    order = {name: i for i, name in enumerate(layers)}
    findings.sort(  # where NaN/Inf began first: what every other finding follows
        key=lambda f: (
            f.kind != "nonfinite_origin",
            f.first_step,
            -1 if f.layer is None else order[f.layer],
        )
    )
    return findings


def origin_finding(origin: NonfiniteOrigin, layers: Sequence[str]) -> Finding:
    """The ``nonfinite_origin`` finding of a traced origin, at its step, for
    the first of its layers that is one of ``layers`` (the watched ones;
    None, the model, when none is: a module without parameters, or a
    ``"weights"`` origin naming parameters that are not watched)."""
    watched = set(layers)
    return Finding(
        kind="nonfinite_origin",
        layer=next((n for n in origin.layers if n in watched), None),
        first_step=origin.step,
        last_step=origin.step,
        steps=1,
        message=origin.message,
    )


def _say_exactly_zero(
    finding: Finding, judged: np.ndarray, steps: np.ndarray, layers: list[str]
) -> Finding:
    """``finding`` (blocked), saying "exactly zero" if the layer's value was
    exactly zero at every step of the streak where it was usable."""
    j = layers.index(finding.layer)
    within = (steps >= finding.first_step) & (steps <= finding.last_step)
    values = judged[within, j]
    values = values[np.isfinite(values)]
    if values.size and not values.any():
        return dataclasses.replace(finding, message=EXACTLY_ZERO_MESSAGE)
    return finding


class OnlineDiagnosis:
    """The same rule, one logged step at a time, for alerts during training.

    Keeps O(layers x spike_window) state: each layer's earlier peak, its
    current streaks, which end as :func:`diagnose`'s do (``patience`` healthy
    steps in a row for ``no_gradient``, ``blocked`` and ``all_zero``), so a
    value hovering at a threshold does not flicker, and its last
    ``spike_window`` log10 norms (:class:`~tb_gradflow.spike_rule.SpikeWindow`).
    :meth:`update` returns the findings that become true at this step for the
    first time for their layer (or, ``all_zero`` and a model-wide
    ``not_updating``, for the model): a ``no_gradient``, ``blocked``,
    ``all_zero``, ``update_too_large`` or ``not_updating`` streak (the last two
    when the steps hold ``update_ratio``) that reaches ``patience`` steps, or a
    ``nonfinite`` step; each is ongoing, from its
    streak's first step. A ``spike`` is returned at the first step of each
    streak of spiking steps, the layers of one step by how far above their
    threshold they are; the model finding that ranks a spike event's layers
    needs the event's end, and is :func:`diagnose`'s only. (``exploding`` and
    ``skipped`` are shown by the tab and the report; they raise no alert.)
    Unlike :func:`diagnose`, which sees the whole run, a run shorter than
    ``patience`` never alerts.
    """

    ALERT_KINDS = (
        "no_gradient",
        "blocked",
        "all_zero",
        "nonfinite",
        "spike",
        "update_too_large",
        "not_updating",
    )
    # streak columns, in order: one per layer, or one for the model
    _STREAKS = (
        ("no_gradient", "layer"),
        ("blocked", "layer"),
        ("all_zero", "model"),
        ("update_too_large", "layer"),
        ("not_updating", "layer"),
        ("not_updating", "model"),
    )

    def __init__(
        self,
        layers: Sequence[str],
        sparse: Sequence[bool],
        thresholds: Thresholds | None = None,
    ) -> None:
        self.th = thresholds or Thresholds()
        self.layers = list(layers)
        self.sparse = list(sparse)
        n = len(self.layers)
        self._peak = np.full(n, np.nan)
        # One column per streak of _STREAKS (a layer's, or the model's); per
        # column the hits in its open streak (0: none), the healthy steps
        # since its last hit, and its first step.
        self._slices = []
        start = 0
        for kind, of in self._STREAKS:
            width = n if of == "layer" else 1
            self._slices.append((kind, of, slice(start, start + width)))
            start += width
        self._hits = np.zeros(start, dtype=np.int64)
        self._healthy = np.zeros(start, dtype=np.int64)
        self._first = np.zeros(start, dtype=np.int64)
        self._alerted = np.zeros(start, dtype=bool)
        # per layer: its open blocked streak was exactly zero wherever finite
        self._blocked_at = next(at for kind, _, at in self._slices if kind == "blocked")
        self._zero_streak = np.ones(n, dtype=bool)
        self._messages = {**MESSAGES, **update_messages(self.th)}
        self._alerted_nonfinite = np.zeros(n, dtype=bool)
        self._spikes = SpikeWindow(n, self.th)
        self._spiking = np.zeros(n, dtype=bool)  # at the last counted step

    def update(
        self, step: int, stats: dict[str, np.ndarray], *, skipped: bool = False
    ) -> list[Finding]:
        """Feeds one logged step; ``stats`` maps statistic names to ``(L,)`` arrays."""
        nonfinite = np.asarray(stats["nonfinite"], dtype=np.float64)[None]  # (1, L)
        judged = _judged_mean(
            np.asarray(stats["abs_mean"], dtype=np.float64)[None],
            np.asarray(stats["rows"])[None],
            self.sparse,
        )
        no_gradient, bad = _event_masks(nonfinite)
        valid = _usable(judged, no_gradient)
        others = median_of_others(np.where(valid, judged, np.nan))  # (1, L)
        all_zero = _all_zero_steps(judged, valid)  # (1,)
        blocked = valid & is_blocked(judged, others, self._peak[None], self.th)
        blocked[all_zero] = False  # one finding for the model instead
        self._peak = np.fmax(self._peak, np.where(valid, judged, np.nan)[0])
        counts = (nonfinite[0] == 0) & (not skipped)  # a norm that counts
        spike, excess = self._spikes.update(np.asarray(stats["norm"]), counts)
        if skipped:  # neither blocked nor healthy: streaks stay as they are
            return []
        step = int(step)
        new_spikes = np.flatnonzero(spike & ~self._spiking)
        new_spikes = new_spikes[np.argsort(-excess[new_spikes], kind="stable")]
        self._spiking = spike
        if "update_ratio" in stats:  # a layer that is blocked does not count
            too_large, not_updating, model_low = update_masks(
                np.asarray(stats["update_ratio"])[None],
                np.asarray(stats["rows"])[None],
                self.sparse,
                valid & ~blocked & ~no_gradient,
                self.th,
            )
        else:
            too_large = not_updating = np.zeros_like(blocked)
            model_low = np.zeros(1, dtype=bool)
        hit = np.concatenate(
            [
                no_gradient[0],
                blocked[0],
                all_zero,
                too_large[0],
                not_updating[0],
                model_low,
            ]
        )  # the columns of _STREAKS
        self._extend(hit, step)
        self._track_zero(judged[0], step)
        fire = (self._hits >= self.th.patience) & ~self._alerted
        self._alerted |= fire
        fire_nonfinite = bad[0] & ~self._alerted_nonfinite
        self._alerted_nonfinite |= fire_nonfinite
        if not (fire.any() or fire_nonfinite.any() or len(new_spikes)):
            return []
        new = [
            self._finding(kind, self.layers[j], step, 1, step)
            for kind, columns in (
                ("nonfinite", np.flatnonzero(fire_nonfinite)),
                ("spike", new_spikes),
            )
            for j in columns.tolist()
        ]
        for kind, of, at in self._slices:
            for j in np.flatnonzero(fire[at]).tolist():
                layer = self.layers[j] if of == "layer" else None
                first = int(self._first[at][j])
                hits = int(self._hits[at][j])
                found = self._finding(kind, layer, first, hits, step, of)
                if kind == "blocked" and self._zero_streak[j]:  # as diagnose says
                    found = dataclasses.replace(found, message=EXACTLY_ZERO_MESSAGE)
                new.append(found)
        order = {kind: i for i, kind in enumerate(self.ALERT_KINDS)}
        new.sort(key=lambda f: order[f.kind])  # stable: spikes by excess
        return new

    def _finding(
        self,
        kind: str,
        layer: str | None,
        first: int,
        steps: int,
        step: int,
        of: str = "layer",
    ) -> Finding:
        if kind == "all_zero":
            message = all_zero_message(first)
        elif kind == "spike":
            message = spike_message(self.th)
        elif kind == "not_updating" and of == "model":
            message = self._messages["not_updating_model"]
        else:
            message = self._messages[kind]
        return Finding(
            kind=kind,
            layer=layer,
            first_step=first,
            last_step=step,
            steps=steps,
            message=message,
            ongoing=True,
        )

    def _track_zero(self, judged: np.ndarray, step: int) -> None:
        """Whether each layer's open blocked streak has been exactly zero at
        every counted step where its value was finite (``judged``: ``(L,)``)."""
        at = self._blocked_at
        active = self._hits[at] > 0
        self._zero_streak[active & (self._first[at] == step)] = True  # begun now
        self._zero_streak[active] &= ~(np.isfinite(judged) & (judged != 0))[active]

    def _extend(self, hit: np.ndarray, step: int) -> None:
        """Advances every streak column by one counted step."""
        hits, healthy = self._hits, self._healthy
        fresh = hit & ((hits == 0) | (healthy >= self.th.patience))
        self._first[fresh] = step
        hits[hit] += 1
        hits[fresh] = 1
        healthy += 1
        healthy[hit] = 0
        hits[healthy >= self.th.patience] = 0  # the streak ended


def _judged_mean(
    abs_mean: np.ndarray, rows: np.ndarray, sparse: Sequence[bool]
) -> np.ndarray:
    """The value a layer is judged by.

    A sparse layer is judged by the rows that received a gradient
    (``abs_mean / rows``, in float64). Without one, ``abs_mean`` as it is (no
    copy) when it is float32 or float64. Shapes: all ``(T, L)`` (``sparse``:
    ``(L,)``).
    """
    mean = np.asarray(abs_mean)
    sparse = np.asarray(sparse, dtype=bool)
    if sparse.any() or mean.dtype not in (np.float32, np.float64):
        mean = mean.astype(np.float64)  # a copy
    if sparse.any():
        r = np.asarray(rows, dtype=np.float64)[:, sparse]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean[:, sparse] = np.where(r > 0, mean[:, sparse] / r, 0.0)
    return mean


def _usable(judged: np.ndarray, no_gradient: np.ndarray) -> np.ndarray:
    """Where a layer's judged value is usable: finite, with a gradient.
    Shapes: ``(T, L)``."""
    return np.isfinite(judged) & ~no_gradient


def _cell_masks(
    judged: np.ndarray, nonfinite: np.ndarray, present: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where a layer present at a step (``present``; None: every one) has a
    usable value (:func:`_usable`), has no gradient, has NaN/Inf elements
    (present or not), and a finite gradient (its norm counts), ``(T, L)`` bool
    each, and the ``all_zero`` steps, ``(T,)``: ``_ROWS`` steps at a time, so
    that each statistic is read from memory once.
    """
    valid, no_gradient, bad, finite = (np.empty(judged.shape, bool) for _ in range(4))
    all_zero = np.empty(len(judged), dtype=bool)
    for r0 in range(0, len(judged), _ROWS):
        at = slice(r0, r0 + _ROWS)
        nf = nonfinite[at]
        np.greater(nf, 0, out=bad[at])
        np.equal(nf, 0, out=finite[at])
        np.isnan(nf, out=no_gradient[at])
        np.isfinite(judged[at], out=valid[at])
        valid[at] &= ~no_gradient[at]  # as _usable
        if present is not None:
            for mask in (valid, no_gradient, finite):
                mask[at] &= present[at]
        all_zero[at] = _all_zero_steps(judged[at], valid[at])
    return valid, no_gradient, bad, finite, all_zero


def _event_masks(nonfinite: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``no_gradient`` and ``nonfinite`` per step and layer, ``(T, L)`` bool each."""
    return np.isnan(nonfinite), nonfinite > 0
