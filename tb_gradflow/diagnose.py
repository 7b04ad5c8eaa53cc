"""Findings about a run's gradient flow: the one rule used by the TensorBoard tab,
``tb-gradflow report`` and the training checks (pure numpy; no torch).

Kinds of finding, each for a layer (``skipped``: for the whole model) and a
streak of logged steps ``first_step..last_step``:

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
* ``nonfinite``: NaN/Inf elements, on steps that were not skipped.
* ``exploding``: the L2 norm is more than ``explode_ratio`` x the median of the
  layer's previous ``explode_window`` finite norms (needs 3 earlier values).
* ``skipped``: steps the AMP grad scaler skipped (inf/NaN in the scaled
  gradient). They count as neither blocked nor healthy.

With fewer logged steps than ``patience``, a streak over all of them counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

__all__ = ["KINDS", "Finding", "OnlineDiagnosis", "Thresholds", "diagnose"]

KINDS = ("no_gradient", "blocked", "nonfinite", "exploding", "skipped")


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


@dataclasses.dataclass(frozen=True)
class Finding:
    """One finding: a kind, a layer (None for the whole model) and a streak of steps."""

    kind: str
    layer: str | None
    first_step: int
    last_step: int
    steps: int  # logged steps in the streak
    message: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class RunLike(Protocol):
    """What :func:`diagnose` reads; :class:`tb_gradflow.GradFlowRun` is one."""

    steps: np.ndarray
    layers: list[str]
    sparse: list[bool]
    skipped: np.ndarray

    def values(self, stat: str) -> np.ndarray: ...


_MESSAGES = {
    "no_gradient": "no gradient (.grad is None): detached or unused",
    "blocked": "gradient near zero: it does not flow into this layer",
    "nonfinite": "NaN/Inf in the gradient",
    "skipped": "optimizer step skipped by the AMP grad scaler (inf/NaN in it)",
}
_PATIENT = ("no_gradient", "blocked")  # kinds that need `patience` steps in a row


def _exploding_message(th: Thresholds) -> str:
    return f"gradient norm above {th.explode_ratio:g}x its recent median"


def diagnose(run: RunLike, thresholds: Thresholds | None = None) -> list[Finding]:
    """All findings of a run, ordered by first step, then layer order.

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
    nonfinite = run.values("nonfinite")  # (T, L); NaN: no gradient
    judged, valid = _judged_mean(
        run.values("abs_mean"), run.values("rows"), run.sparse, nonfinite
    )
    norm = run.values("norm").astype(np.float64)
    masks = _step_masks(
        judged,
        valid,
        norm,
        nonfinite,
        _earlier_peak(np.where(valid, judged, np.nan)),
        _recent_median(norm, th.explode_window),
        th,
    )
    live = ~skipped
    patience = min(th.patience, max(int(live.sum()), 1))
    findings: list[Finding] = []
    for kind, mask in masks.items():
        message = _exploding_message(th) if kind == "exploding" else _MESSAGES[kind]
        min_length = patience if kind in _PATIENT else 1
        findings += _streaks(
            kind, mask & live[:, None], live, steps, layers, min_length, message
        )
    findings += _streaks(
        "skipped",
        skipped[:, None],
        np.ones_like(skipped),
        steps,
        [None],
        1,
        _MESSAGES["skipped"],
    )
    order = {name: i for i, name in enumerate(layers)}
    findings.sort(
        key=lambda f: (f.first_step, -1 if f.layer is None else order[f.layer])
    )
    return findings


class OnlineDiagnosis:
    """The same rule, one logged step at a time, for alerts during training.

    Keeps O(layers x explode_window) state: each layer's earlier peak, its recent
    norms and its current streaks. :meth:`update` returns the findings that
    become true at this step for the first time for their layer: a
    ``no_gradient`` or ``blocked`` streak that reaches ``patience`` steps, or a
    ``nonfinite`` step. (``exploding`` and ``skipped`` are shown by the tab and
    the report; they raise no alert.)
    """

    ALERT_KINDS = ("no_gradient", "blocked", "nonfinite")

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
        self._norms = np.full((self.th.explode_window, n), np.nan)  # ring buffer
        self._seen = 0
        self._streak = {kind: np.zeros(n, dtype=np.int64) for kind in _PATIENT}
        self._alerted = {kind: np.zeros(n, dtype=bool) for kind in self.ALERT_KINDS}

    def update(
        self, step: int, stats: dict[str, np.ndarray], *, skipped: bool = False
    ) -> list[Finding]:
        """Feeds one logged step; ``stats`` maps statistic names to ``(L,)`` arrays."""
        nonfinite = np.asarray(stats["nonfinite"], dtype=np.float64)[None]  # (1, L)
        judged, valid = _judged_mean(
            np.asarray(stats["abs_mean"])[None],
            np.asarray(stats["rows"])[None],
            self.sparse,
            nonfinite,
        )
        norm = np.asarray(stats["norm"], dtype=np.float64)[None]  # (1, L)
        history = self._norms[: min(self._seen, len(self._norms))]  # (W', L)
        recent = _median_of_window(history.T[None])  # (1, L)
        masks = _step_masks(
            judged, valid, norm, nonfinite, self._peak[None], recent, self.th
        )
        self._peak = np.fmax(self._peak, np.where(valid, judged, np.nan)[0])
        finite_norm = np.where(np.isfinite(norm[0]), norm[0], np.nan)
        self._norms[self._seen % len(self._norms)] = finite_norm
        self._seen += 1
        if skipped:  # neither blocked nor healthy: streaks stay as they are
            return []
        new: list[Finding] = []
        for kind in self.ALERT_KINDS:
            hit = masks[kind][0]
            length = np.ones(len(hit), dtype=np.int64)
            if kind in _PATIENT:
                length = self._streak[kind] = np.where(hit, self._streak[kind] + 1, 0)
                hit = length >= self.th.patience
            fire = hit & ~self._alerted[kind]
            self._alerted[kind] |= fire
            new += [
                Finding(
                    kind=kind,
                    layer=self.layers[j],
                    first_step=int(step),
                    last_step=int(step),
                    steps=int(length[j]),
                    message=_MESSAGES[kind],
                )
                for j in np.flatnonzero(fire)
            ]
        return new


def _judged_mean(
    abs_mean: np.ndarray,
    rows: np.ndarray,
    sparse: Sequence[bool],
    nonfinite: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The value a layer is judged by, and where it is usable.

    A sparse layer is judged by the rows that received a gradient
    (``abs_mean / rows``). Shapes: all ``(T, L)`` (``sparse``: ``(L,)``).
    """
    mean = np.asarray(abs_mean, dtype=np.float64).copy()
    sparse = np.asarray(sparse, dtype=bool)
    if sparse.any():
        r = np.asarray(rows, dtype=np.float64)[:, sparse]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean[:, sparse] = np.where(r > 0, mean[:, sparse] / r, 0.0)
    valid = np.isfinite(mean) & ~np.isnan(nonfinite)
    return mean, valid


def _step_masks(
    judged: np.ndarray,
    valid: np.ndarray,
    norm: np.ndarray,
    nonfinite: np.ndarray,
    peak: np.ndarray,
    recent: np.ndarray,
    th: Thresholds,
) -> dict[str, np.ndarray]:
    """Per-step conditions of every kind, ``(T, L)`` bool each.

    ``peak``: each layer's largest earlier judged value (NaN: none);
    ``recent``: the median of its previous norms (NaN: fewer than 3).
    """
    others = _median_of_others(np.where(valid, judged, np.nan))  # (T, L)
    with np.errstate(invalid="ignore", divide="ignore"):
        tiny_vs_others = judged < th.min_ratio_to_others * others
        fell = judged < th.min_ratio_to_own_peak * peak
        far_below = judged < th.floor_ratio_to_others * others
        too_big = np.isfinite(norm) & (recent > 0) & (norm > th.explode_ratio * recent)
    return {
        "no_gradient": np.isnan(nonfinite),
        "blocked": valid & ((judged == 0) | (tiny_vs_others & fell) | far_below),
        "nonfinite": np.nan_to_num(nonfinite, nan=0.0) > 0,
        "exploding": too_big,
    }


def _median_of_others(mean: np.ndarray) -> np.ndarray:
    """Per step and layer, the median of the *other* layers' finite values.

    Exact, O(L) per step: rows with the same number ``n`` of finite values are
    partitioned at the few middle positions needed. With ``s`` a row sorted (NaN
    last), the i-th smallest of the values other than ``x`` is ``s[i]`` if
    ``s[i + 1] <= x`` else ``s[i + 1]`` (leaving out any copy of ``x`` leaves
    the same values); a layer without a value removes nothing.

    Shape:
        - mean: ``(T, L)``, NaN where a layer has no usable value
        - returns: ``(T, L)``, NaN where no other layer has a value
    """
    n_layers = mean.shape[1]
    valid = np.isfinite(mean)
    counts = valid.sum(axis=1)  # (T,)
    out = np.full(mean.shape, np.nan)
    for n in np.unique(counts):
        if n == 0:
            continue
        rows = np.flatnonzero(counts == n)
        x, ok = mean[rows], valid[rows]  # (R, L)
        k = n - 1  # how many others a layer with a value has
        need = {
            (k - 1) // 2,
            k // 2,
            (k - 1) // 2 + 1,
            k // 2 + 1,
            (n - 1) // 2,
            n // 2,
        }
        need = sorted(p for p in need if 0 <= p < n_layers)
        part = np.partition(np.where(ok, x, np.inf), need, axis=1)
        s = {p: part[:, p : p + 1] for p in need}  # (R, 1) each

        def other(i: int, x: np.ndarray = x, s: dict = s) -> np.ndarray:
            nxt = s.get(i + 1)
            if nxt is None:
                return np.broadcast_to(s[i], x.shape)
            return np.where(nxt <= x, s[i], nxt)

        with np.errstate(invalid="ignore"):
            if k > 0:
                with_value = (other((k - 1) // 2) + other(k // 2)) / 2
            else:
                with_value = np.full(x.shape, np.nan)
            without = np.broadcast_to((s[(n - 1) // 2] + s[n // 2]) / 2, x.shape)
        out[rows] = np.where(ok, with_value, without)
    return out


def _earlier_peak(mean: np.ndarray) -> np.ndarray:
    """Per step and layer, the largest value at an earlier step (NaN at the first)."""
    filled = np.where(np.isfinite(mean), mean, -np.inf)
    running = np.maximum.accumulate(filled, axis=0)  # (T, L), includes step t
    peak = np.full_like(mean, np.nan)
    peak[1:] = running[:-1]
    peak[np.isinf(peak)] = np.nan
    return peak


def _recent_median(norm: np.ndarray, window: int) -> np.ndarray:
    """Per step and layer, the median of the previous ``window`` finite norms
    (NaN with fewer than 3 of them).

    Shape:
        - norm: ``(T, L)``
        - returns: ``(T, L)``
    """
    n_steps, n_layers = norm.shape
    # float32 halves the sorting work; a 100x threshold needs no more precision
    finite = np.where(np.isfinite(norm), norm, np.nan).astype(np.float32)
    padded = np.concatenate([np.full((window, n_layers), np.nan, np.float32), finite])
    out = np.empty((n_steps, n_layers))
    chunk = max(1, 2_000_000 // (n_layers * window))  # bounds the windows' memory
    for t0 in range(0, n_steps, chunk):
        t1 = min(t0 + chunk, n_steps)
        windows = np.lib.stride_tricks.sliding_window_view(
            padded[t0 : t1 + window - 1], window, axis=0
        )  # (t1 - t0, L, window): the `window` steps before each step
        out[t0:t1] = _median_of_window(windows)
    return out


def _median_of_window(windows: np.ndarray) -> np.ndarray:
    """Median over the last axis of the finite values; NaN with fewer than 3.

    A sort (NaN last) and two gathers: ``np.nanmedian`` goes through masked
    arrays and is ~7x slower here.
    """
    if windows.shape[-1] == 0:
        return np.full(windows.shape[:-1], np.nan)
    srt = np.sort(windows, axis=-1)  # NaN last
    n = np.isfinite(windows).sum(axis=-1)
    last = windows.shape[-1] - 1
    lo = np.take_along_axis(srt, np.maximum((n - 1) // 2, 0)[..., None], -1)[..., 0]
    hi = np.take_along_axis(srt, np.minimum(n // 2, last)[..., None], -1)[..., 0]
    return np.where(n >= 3, (lo + hi) / 2, np.nan)


def _streaks(
    kind: str,
    mask: np.ndarray,
    counted: np.ndarray,
    steps: np.ndarray,
    layers: Sequence[str | None],
    min_length: int,
    message: str,
) -> list[Finding]:
    """Runs of consecutive counted steps where ``mask`` holds, per layer column.

    Steps not ``counted`` (skipped ones) neither extend nor break a streak. With
    ``min_length > 1`` a streak also bridges gaps shorter than ``min_length``
    (hysteresis: a blocked layer must look healthy for ``min_length`` steps in a
    row to end its streak), so a value hovering at a threshold gives one finding.
    """
    idx = np.flatnonzero(counted)
    found = []
    for j, layer in enumerate(layers):
        column = mask[idx, j]
        if not column.any():
            continue
        edges = np.diff(np.concatenate([[0], column.astype(np.int8), [0]]))
        starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        runs: list[list[int]] = []
        for start, stop in zip(starts.tolist(), stops.tolist()):
            if runs and min_length > 1 and start - runs[-1][1] < min_length:
                runs[-1][1] = stop  # bridge a short healthy gap
            else:
                runs.append([start, stop])
        for start, stop in runs:
            hits = int(column[start:stop].sum())
            if hits >= min_length:
                found.append(
                    Finding(
                        kind=kind,
                        layer=layer,
                        first_step=int(steps[idx[start]]),
                        last_step=int(steps[idx[stop - 1]]),
                        steps=hits,
                        message=message,
                    )
                )
    return found
