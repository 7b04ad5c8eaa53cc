"""The ``spike`` rule's arithmetic: each layer's gradient norm, on a log scale,
against a robust threshold over the layer's previous logged steps, and the
spike events that group the layers spiking within a few logged steps of each
other, ranked by when their spike began.

The threshold is a Hampel identifier (Hampel, JASA 69:383, 1974; Pearson,
IEEE Trans. Control Syst. Technol. 10:55, 2002): the median of the window plus
``spike_k`` robust standard deviations, the median absolute deviation (MAD)
times 1.4826, which makes it the standard deviation for normal data. It is
taken over ``log10(norm)``: norms change by factors, and their spread on a log
scale does not depend on the layer's size. OLMo 2 (arXiv:2501.00656, Sec. 3.2)
counts a value as a spike at 7 standard deviations from the mean of the
previous 1000 (``spike_k``'s default); per-layer gradient-norm spikes precede
loss spikes (there, and in "A Theory on Adam Instability", arXiv:2304.09871).

Shapes: ``T`` logged steps, ``L`` layers, ``W`` the window (``spike_window``).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

from tb_gradflow.streaks import Finding, find_streaks

if TYPE_CHECKING:
    from tb_gradflow.diagnosis import Thresholds

__all__ = [
    "EVENT_GAP",
    "MAD_TO_SD",
    "SpikeWindow",
    "log_norms",
    "spike_cells",
    "spike_findings",
    "spike_mask",
    "spike_message",
    "spike_min_values",
    "window_thresholds",
]

MAD_TO_SD = 1.4826  # 1 / the normal's 3rd quartile: MAD x this = SD for normal data
EVENT_GAP = 3  # logged steps: spikes this close to the previous one are one event
_NAMED = 10  # layers named in a spike event's message, in order
_STEP_BLOCK = 32  # logged steps that share one pruning bound in spike_cells
_BLOCK_CELLS = 500_000  # steps x layers per block of spike_cells' work


def spike_min_values(th: Thresholds) -> int:
    """How many earlier values a window needs: half of ``spike_window``."""
    return th.spike_window // 2


def spike_message(th: Thresholds) -> str:
    """The message of a layer's ``spike`` finding."""
    return (
        f"gradient norm spike: over {th.spike_k:g} robust SDs (log scale) and "
        f"{th.spike_min_ratio:g}x above its median of the previous "
        f"{th.spike_window} logged steps"
    )


def log_norms(norm: np.ndarray, usable: np.ndarray | None = None) -> np.ndarray:
    """``log10(norm)`` in float64 where the norm counts, NaN elsewhere: where
    ``usable`` is False, and where the norm is not finite or not positive.

    Shape:
        - norm, usable: ``(T, L)``
        - returns: ``(T, L)`` float64
    """
    norm = np.asarray(norm, dtype=np.float64)
    ok = np.isfinite(norm) & (norm > 0)
    if usable is not None:
        ok &= np.asarray(usable, dtype=bool)
    z = np.full(norm.shape, np.nan)
    np.log10(norm, out=z, where=ok)
    return z


def window_thresholds(windows: np.ndarray, th: Thresholds) -> np.ndarray:
    """Each window's threshold: ``median + max(spike_k x MAD_TO_SD x MAD,
    log10(spike_min_ratio))`` of its values, as ``np.median`` computes them (NaN:
    fewer than :func:`spike_min_values` values).

    The floor keeps a layer whose norm barely moves (MAD near 0) from spiking
    on a rise of a few percent.

    Shape:
        - windows: ``(N, W)`` float64 log10 norms, NaN where there is none
        - returns: ``(N,)``
    """
    n = np.count_nonzero(~np.isnan(windows), axis=1)  # (N,)
    srt = np.sort(windows, axis=1)  # NaN last
    median = _middle(srt, n)
    deviation = np.sort(np.abs(srt - median[:, None]), axis=1)  # NaN last
    mad = _middle(deviation, n)
    floor = np.log10(th.spike_min_ratio)
    threshold = median + np.maximum(th.spike_k * MAD_TO_SD * mad, floor)
    threshold[n < spike_min_values(th)] = np.nan
    return threshold


def _middle(srt: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The median of each row's first ``n`` values (sorted), as ``np.median``
    computes it: the middle one, or the mean of the middle two.

    Shape:
        - srt: ``(N, W)``; n, returns: ``(N,)``
    """
    rows = np.arange(len(srt))
    lo = srt[rows, np.maximum((n - 1) // 2, 0)]
    hi = srt[rows, np.minimum(n // 2, srt.shape[1] - 1)]
    return (lo + hi) / 2


def spike_cells(
    z: np.ndarray, th: Thresholds
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cells where a log10 norm is above its window's threshold
    (:func:`window_thresholds`), the window being the layer's previous
    ``spike_window`` logged steps (all earlier ones near the start), and by how
    much.

    Exact; the thresholds are computed only where a cheap lower bound on them,
    shared by ``_STEP_BLOCK`` steps, does not rule the cell out
    (:func:`_pruning_bounds`): on healthy runs a small fraction of the cells.

    Shape:
        - z: ``(T, L)`` float64 log10 norms, NaN where there is none
        - returns: step and layer indices ``(N,)``, in step order then layer
          order, and ``log10(norm / threshold)`` at each, ``(N,)``
    """
    n_steps, n_layers = z.shape
    window = min(th.spike_window, max(n_steps, 1))  # longer: the same windows
    # layers per block: the sorted unions take 1 + window / _STEP_BLOCK values
    # a cell
    cols = max(1, _BLOCK_CELLS // max(n_steps * (1 + window // _STEP_BLOCK), 1))
    parts = [(np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0))]
    for j0 in range(0, n_layers, cols):
        t, j, excess = _block_spikes(z[:, j0 : j0 + cols], window, th)
        parts.append((t, j + j0, excess))
    t, j, excess = (np.concatenate(p) for p in zip(*parts))
    order = np.lexsort((j, t))
    return t[order], j[order], excess[order]


def _block_spikes(
    z: np.ndarray, window: int, th: Thresholds
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`spike_cells` for a block of layers (``z``: ``(T, C)``)."""
    n_steps, n_cols = z.shape
    blocks = -(-n_steps // _STEP_BLOCK)
    # (window + blocks x _STEP_BLOCK, C): steps -window .. , NaN outside the run
    padded = np.full((window + blocks * _STEP_BLOCK, n_cols), np.nan)
    padded[window : window + n_steps] = z
    seen = np.zeros((len(padded) + 1, n_cols), dtype=np.int32)
    np.cumsum(~np.isnan(padded), axis=0, out=seen[1:])
    count = seen[window : window + n_steps] - seen[:n_steps]  # (T, C) per window
    judged = (count >= spike_min_values(th)) & ~np.isnan(z)
    bound = _pruning_bounds(padded, np.where(judged, count, window + 1), th)
    with np.errstate(invalid="ignore"):
        maybe = judged & (z > np.repeat(bound, _STEP_BLOCK, axis=0)[:n_steps])
    t, j = np.nonzero(maybe)  # (N,) each
    threshold = np.empty(len(t))
    chunk = max(1, _BLOCK_CELLS // window)  # windows at a time
    for c in range(0, len(t), chunk):
        tc, jc = t[c : c + chunk], j[c : c + chunk]
        windows = padded[tc[:, None] + np.arange(window), jc[:, None]]  # (n, W)
        threshold[c : c + chunk] = window_thresholds(windows, th)
    at = z[t, j]
    hit = at > threshold
    return t[hit], j[hit], (at - threshold)[hit]


def _pruning_bounds(padded: np.ndarray, count: np.ndarray, th: Thresholds):
    """Per block of ``_STEP_BLOCK`` steps and layer, a number no larger than the
    threshold of any of the block's judged steps.

    The block's windows all lie in one union of ``W + _STEP_BLOCK - 1`` rows.
    With ``n`` the fewest values of a judged window in the block, each window's
    median is at least the union's ``(n - 1) // 2``-th smallest value, and its
    MAD at least half the narrowest span of ``(n + 1) // 2`` of the union's
    values (at least half of a window's values lie within a MAD of its median).
    The union is sorted in float32 (half the work); for that rounding the bound
    gives up ``2**-20 x (1 + the largest |value|) x (1 + spike_k x 1.4826)``.

    Shape:
        - padded: ``(W + B x _STEP_BLOCK, C)`` (:func:`_block_spikes`)
        - count: ``(T, C)``, each judged step's count of values, else ``W + 1``
        - returns: ``(B, C)``, inf where no step is judged
    """
    blocks = -(-len(count) // _STEP_BLOCK)
    window = len(padded) - blocks * _STEP_BLOCK
    span = window + _STEP_BLOCK - 1
    union = np.lib.stride_tricks.sliding_window_view(
        padded.astype(np.float32), span, axis=0
    )[: blocks * _STEP_BLOCK : _STEP_BLOCK]  # (B, C, U): a view
    srt = np.sort(union, axis=-1).reshape(-1, span)  # (R, U), R = B x C; NaN last
    fewest = np.full((blocks * _STEP_BLOCK, count.shape[1]), window + 1)
    fewest[: len(count)] = count
    fewest = fewest.reshape(blocks, _STEP_BLOCK, -1).min(axis=1).ravel()  # (R,)
    judged = fewest <= window
    rows = np.arange(len(srt))
    low_median = srt[rows, np.maximum(fewest - 1, 0) // 2].astype(np.float64)
    low_mad = np.full(len(srt), np.inf)
    half = (fewest + 1) // 2  # (R,)
    for h in np.flatnonzero(np.bincount(half[judged])).tolist():  # few values
        pick = np.flatnonzero(judged & (half == h))
        part = srt if len(pick) == len(srt) else srt[pick]  # (P, U)
        spans = part[:, h - 1 :] - part[:, : span - h + 1]  # NaN past the values
        low_mad[pick] = np.fmin.reduce(spans, axis=1) / 2
    k = th.spike_k * MAD_TO_SD
    scale = np.maximum(k * low_mad, np.log10(th.spike_min_ratio))
    largest = np.nanmax(np.abs(padded), initial=0.0)
    with np.errstate(invalid="ignore"):
        bound = low_median + scale - 2.0**-20 * (1 + largest) * (1 + k)
    return np.where(judged, bound, np.inf).reshape(blocks, -1)


def spike_mask(
    norm: np.ndarray, th: Thresholds, usable: np.ndarray | None = None
) -> np.ndarray:
    """``spike`` per step and layer: ``log10(norm)`` above the median of the
    layer's previous ``spike_window`` logged steps' log10 norms plus
    ``max(spike_k`` robust SDs, ``log10(spike_min_ratio))`` (needs
    :func:`spike_min_values` of them; see :func:`spike_cells`).

    ``usable``: where a norm counts (default: every finite positive one); the
    others are neither judged nor part of a window.

    Shape:
        - norm, usable: ``(T, L)``
        - returns: ``(T, L)`` bool
    """
    t, j, _ = spike_cells(log_norms(norm, usable), th)
    mask = np.zeros(np.shape(norm), dtype=bool)
    mask[t, j] = True
    return mask


def spike_findings(
    norm: np.ndarray,
    usable: np.ndarray,
    counted: np.ndarray,
    steps: np.ndarray,
    layers: list[str],
    th: Thresholds,
    *,
    superseded: np.ndarray | None = None,
) -> list[Finding]:
    """The ``spike`` findings: one per layer and streak of spiking counted
    steps, and one for the model (layer None) per spike event of two or more
    layers.

    A spike event: counted steps with a spike, each within :data:`EVENT_GAP`
    counted steps of the previous one. Its message names the event's layers
    in the order their spike began, those of the same step by how far above
    their threshold they were. A ``superseded`` spike (one that ``exploding``
    reports) has no layer finding of its own, but takes its place in its
    event.

    Shape:
        - norm, usable, superseded: ``(T, L)``; ``usable`` only where ``counted``
        - counted, steps: ``(T,)``
    """
    t, j, excess = spike_cells(log_norms(norm, usable), th)
    mask = np.zeros(np.shape(norm), dtype=bool)
    mask[t, j] = True
    if superseded is not None:
        mask &= ~superseded
    found = find_streaks("spike", mask, counted, steps, layers, 1, spike_message(th))
    rank = np.cumsum(counted) - 1  # (T,): each step's index among counted steps
    at = rank[t]  # (N,), ascending
    if not len(at):
        return found
    starts = np.flatnonzero(np.diff(at, prepend=at[0] - EVENT_GAP - 1) > EVENT_GAP)
    for first, stop in zip(starts, [*starts[1:], len(at)]):
        tt, jj, ee = t[first:stop], j[first:stop], excess[first:stop]
        _, onset = np.unique(jj, return_index=True)  # each layer's first cell
        if len(onset) < 2:
            continue
        onset = sorted(onset.tolist(), key=lambda i: (tt[i], -ee[i], jj[i]))
        found.append(
            Finding(
                kind="spike",
                layer=None,
                first_step=int(steps[tt[0]]),
                last_step=int(steps[tt[-1]]),
                steps=len(np.unique(tt)),
                message=_event_message(
                    [(layers[jj[i]], int(steps[tt[i]])) for i in onset]
                ),
                ongoing=bool(at[stop - 1] == rank[-1]),
            )
        )
    return found


def _event_message(onsets: list[tuple[str, int]]) -> str:
    """A spike event's message; ``onsets``: ``(layer, step)`` in order."""
    parts = [
        ", ".join(name for name, _ in group) + f" (step {step})"
        for step, group in itertools.groupby(onsets[:_NAMED], key=lambda o: o[1])
    ]
    n = len(onsets)
    more = f", and {n - _NAMED} more" if n > _NAMED else ""
    s = "s" if n > 1 else ""
    return f"gradient spike in {n} layer{s}, began in {', then '.join(parts)}{more}"


class SpikeWindow:
    """The ``spike`` rule one logged step at a time: a ring buffer of each
    layer's last ``spike_window`` log10 norms (O(layers x window) state).

    Args:
        n_layers: ``L``.
        th: the rule's thresholds.
    """

    def __init__(self, n_layers: int, th: Thresholds) -> None:
        self.th = th
        self._recent = np.full((n_layers, th.spike_window), np.nan)  # (L, W)
        self._next = 0  # the column the next step overwrites

    def update(
        self, norm: np.ndarray, usable: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Judges one logged step, then adds it to the windows.

        Shape:
            - norm, usable: ``(L,)``; ``usable`` False for a step that does not
              count (skipped) or a layer without a usable norm
            - returns: spike ``(L,)`` bool, and ``log10(norm / threshold)``
              ``(L,)`` (NaN where not judged)
        """
        z = log_norms(np.asarray(norm)[None], np.asarray(usable)[None])[0]  # (L,)
        excess = z - window_thresholds(self._recent, self.th)
        with np.errstate(invalid="ignore"):
            spike = excess > 0
        self._recent[:, self._next] = z
        self._next = (self._next + 1) % self._recent.shape[1]
        return spike, excess
