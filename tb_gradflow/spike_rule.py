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
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from tb_gradflow.streaks import Finding, find_streaks

if TYPE_CHECKING:
    from tb_gradflow.rule_spec import Thresholds

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
_BLOCK_CELLS = 500_000  # steps x layers per chunk of spike_cells' work


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
    norm = np.asarray(norm)
    ok = np.isfinite(norm) & (norm > 0)
    if usable is not None:
        ok &= np.asarray(usable, dtype=bool)
    z = np.full(norm.shape, np.nan)
    np.log10(norm, out=z, where=ok, dtype=np.float64)  # of the float64 value
    return z


def _log_norms_of(
    norm: np.ndarray, usable: np.ndarray | None
) -> Callable[[int, int], np.ndarray]:
    """``z_of(a, b)``: :func:`log_norms` of steps ``a .. b - 1`` (``(T, L)``
    each; ``usable`` None: every finite positive norm counts)."""
    norm = np.asarray(norm)
    if usable is None:
        return lambda a, b: log_norms(norm[a:b])
    usable = np.asarray(usable, dtype=bool)
    return lambda a, b: log_norms(norm[a:b], usable[a:b])


def window_thresholds(windows: np.ndarray, th: Thresholds) -> np.ndarray:
    """Each window's threshold: ``median + max(spike_k x MAD_TO_SD x MAD,
    log10(spike_min_ratio))`` of its values, as ``np.median`` computes them (NaN:
    fewer than :func:`spike_min_values` values).

    The floor keeps a layer whose norm barely moves (MAD near 0) from spiking
    on a rise of a few percent.

    Shape:
        - windows: ``(N, W)`` float64 log10 norms, NaN where there is none
          (float32 ones: the same, to within :func:`_rounding_slack`)
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
    return _spike_cells(lambda a, b: z[a:b], *np.shape(z), th)


def _spike_cells(
    z_of: Callable[[int, int], np.ndarray], n_steps: int, n_layers: int, th: Thresholds
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`spike_cells` of the log10 norms that ``z_of(a, b)`` gives for
    steps ``a .. b - 1`` (``(b - a, L)`` float64), a chunk of steps at a time:
    each chunk's log norms, with those of the steps before it that its windows
    reach, are made when it is judged."""
    window = min(th.spike_window, max(n_steps, 1))  # longer: the same windows
    steps = _STEP_BLOCK * max(1, _BLOCK_CELLS // max(n_layers * _STEP_BLOCK, 1))
    parts = [(np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0))]
    for t0 in range(0, n_steps, steps):
        t1 = min(t0 + steps, n_steps)
        t, j, excess = _chunk_spikes(z_of(max(t0 - window, 0), t1), t1 - t0, window, th)
        parts.append((t + t0, j, excess))
    t, j, excess = (np.concatenate(p) for p in zip(*parts))
    return t, j, excess


def _chunk_spikes(
    z: np.ndarray, n: int, window: int, th: Thresholds
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`spike_cells` for the last ``n`` rows of ``z``; the rows before
    them are the earlier steps their windows reach (fewer than ``window`` only
    at the start of the run).

    Prunes on the chunk's log norms transposed and in float32 (each layer's
    steps in a row: a block's windows are a run of memory); the thresholds
    left to compute are exact, in float64.

    Shape:
        - z: ``(before + n, L)`` float64, ``before <= window``
        - returns: as :func:`spike_cells`, steps counted from the chunk's first
    """
    before, n_layers = len(z) - n, z.shape[1]
    blocks = -(-n // _STEP_BLOCK)
    # (L, tiles x _STEP_BLOCK): steps -window .. of the chunk, NaN where there
    # is none (before the run, after the chunk), in whole tiles of steps
    tiles = blocks + (window + _STEP_BLOCK - 1) // _STEP_BLOCK + 1
    zt = np.full((n_layers, tiles * _STEP_BLOCK), np.nan, dtype=np.float32)
    zt[:, window - before : window + n] = z.T
    m = _union_counts(zt, window - before, n, window)  # (L, B)
    slack = _rounding_slack(zt, th)
    bound = _pruning_bounds(zt, m, window, th) - slack  # (L, B)
    # the blocks whose largest value is above their bound, then their steps
    # that are: (M,) and (N,) each
    with np.errstate(invalid="ignore"):
        # (np.nonzero of a 2-D array is several times slower)
        b, j = np.divmod(np.flatnonzero(_block_tops(z[before:]) > bound.T), n_layers)
        own = zt[:, window : window + blocks * _STEP_BLOCK]
        own = own.reshape(n_layers, blocks, _STEP_BLOCK)[j, b]  # (M, _STEP_BLOCK)
        i, s = np.divmod(np.flatnonzero(own > bound[j, b, None]), _STEP_BLOCK)
    j, t = j[i], b[i] * _STEP_BLOCK + s
    # their thresholds from the float32 values (each window a run of zt's
    # memory), then exactly where those do not settle it
    windows = np.lib.stride_tricks.sliding_window_view(zt, window, axis=1)
    at = z[before + t, j]  # (N,)
    near = np.zeros(len(t), dtype=bool)
    chunk = max(1, _BLOCK_CELLS // window)  # windows at a time
    for c in range(0, len(t), chunk):
        tc, jc = t[c : c + chunk], j[c : c + chunk]
        with np.errstate(invalid="ignore"):
            estimate = window_thresholds(windows[jc, tc], th)  # (n,)
            near[c : c + chunk] = at[c : c + chunk] > estimate - slack
    t, j, at = t[near], j[near], at[near]
    rows = before + t[:, None] + np.arange(-window, 0)  # (N', W) rows of z
    exact = np.where(rows >= 0, z[np.maximum(rows, 0), j[:, None]], np.nan)
    threshold = window_thresholds(exact, th)
    hit = np.flatnonzero(at > threshold)
    hit = hit[np.lexsort((j[hit], t[hit]))]  # by step, then layer
    return t[hit], j[hit], (at - threshold)[hit]


def _rounding_slack(zt: np.ndarray, th: Thresholds) -> float:
    """How far a threshold computed from the float32 values of ``zt``, or
    bounded from them (:func:`_pruning_bounds`), may fall from the exact one,
    and a log norm from its float32 value: ``2**-20 x (1 + the largest
    |value|) x (1 + spike_k x 1.4826)`` (16 times the rounding's worst case).
    """
    largest = max(
        float(np.fmax.reduce(zt, axis=None, initial=0.0)),
        -float(np.fmin.reduce(zt, axis=None, initial=0.0)),
    )
    return 2.0**-20 * (1 + largest) * (1 + th.spike_k * MAD_TO_SD)


def _block_tops(z: np.ndarray) -> np.ndarray:
    """The largest value of each block of ``_STEP_BLOCK`` rows (NaN: none).

    Shape:
        - z: ``(n, L)``; returns: ``(B, L)``, ``B = ceil(n / _STEP_BLOCK)``
    """
    whole = len(z) // _STEP_BLOCK
    blocks = z[: whole * _STEP_BLOCK].reshape(whole, _STEP_BLOCK, z.shape[1])
    tops = [np.fmax.reduce(blocks, axis=1)]
    if whole * _STEP_BLOCK < len(z):
        tops.append(np.fmax.reduce(z[whole * _STEP_BLOCK :], axis=0, keepdims=True))
    return np.concatenate(tops)


def _union_counts(zt: np.ndarray, first: int, n: int, window: int) -> np.ndarray:
    """How many values each block's union of windows holds (see
    :func:`_pruning_bounds`).

    Shape:
        - zt: ``(L, tiles x _STEP_BLOCK)`` float32 (:func:`_chunk_spikes`), the
          chunk's steps and those before it in columns ``first .. window + n -
          1``, NaN elsewhere
        - returns: ``(L, B)`` int64
    """
    blocks = -(-n // _STEP_BLOCK)
    span = window + _STEP_BLOCK - 1
    start = _STEP_BLOCK * np.arange(blocks)  # (B,): each union's first column
    # the union's columns that hold steps: its values, for a layer without gaps
    inside = np.minimum(start + span, window + n) - np.maximum(start, first)
    m = np.tile(np.maximum(inside, 0), (len(zt), 1))  # (L, B)
    gaps = np.flatnonzero(np.isnan(zt[:, first : window + n]).any(axis=1))
    if len(gaps):  # the others counted by tiles of steps: (G, tiles) each
        nan = np.isnan(zt[gaps]).reshape(len(gaps), -1, _STEP_BLOCK)
        ends = np.zeros((len(gaps), nan.shape[1] + 1), dtype=np.int64)
        np.cumsum(_STEP_BLOCK - nan.sum(axis=2), axis=1, out=ends[:, 1:])
        whole, part = divmod(span, _STEP_BLOCK)  # a union: whole tiles, and some
        head = part - nan[:, :, :part].sum(axis=2)  # values in a tile's first part
        m[gaps] = (
            ends[:, whole : whole + blocks]
            - ends[:, :blocks]
            + head[:, whole : whole + blocks]
        )
    return m


def _pruning_bounds(
    zt: np.ndarray, m: np.ndarray, window: int, th: Thresholds
) -> np.ndarray:
    """Per layer and block of ``_STEP_BLOCK`` steps, a number no larger than the
    threshold of any of the block's steps whose window is judged (has
    :func:`spike_min_values` values).

    The block's windows all lie in one union of ``U = W + _STEP_BLOCK - 1``
    steps, ``m`` of them with a value; each window lacks ``_STEP_BLOCK - 1``
    of them, so a judged one has ``n >= max(m - _STEP_BLOCK + 1,
    spike_min_values)`` values. Its median is at least the union's
    ``(n - 1) // 2``-th smallest value, and its MAD at least half the narrowest
    span of ``(n + 1) // 2`` of the union's values (at least half of a
    window's values lie within a MAD of its median). The union is sorted in
    float32 (half the work): the bound is that of the float32 values, which
    the caller lowers by :func:`_rounding_slack`.

    Shape:
        - zt: ``(L, tiles x _STEP_BLOCK)`` float32 (:func:`_chunk_spikes`): ``W``
          steps, then the ``B`` blocks', then NaN
        - m: ``(L, B)`` (:func:`_union_counts`)
        - returns: ``(L, B)``, inf where no window can be judged
    """
    n_layers, blocks = m.shape
    span = window + _STEP_BLOCK - 1
    m = m.ravel()  # (R,), R = L x B
    judged = m >= spike_min_values(th)
    fewest = np.maximum(m - _STEP_BLOCK + 1, spike_min_values(th))  # (R,)
    union = np.lib.stride_tricks.sliding_window_view(zt, span, axis=1)[
        :, : blocks * _STEP_BLOCK : _STEP_BLOCK
    ]  # (L, B, U): a view
    srt = np.sort(union, axis=-1).reshape(n_layers * blocks, span)  # (R, U), NaN last
    rows = np.arange(len(srt))
    low_median = srt[rows, np.minimum(fewest - 1, span - 1) // 2].astype(np.float64)
    half = (fewest + 1) // 2  # (R,)
    low_mad = np.full(len(srt), np.inf)
    sizes, count = np.unique(half[judged], return_counts=True)  # few sizes
    if len(sizes):  # the most common size for every row (no copy), then others
        common = int(sizes[np.argmax(count)])
        low_mad = _narrowest(srt, common).astype(np.float64) / 2
        for h in sizes.tolist():
            if h != common:
                pick = np.flatnonzero(half == h)
                low_mad[pick] = _narrowest(srt[pick], h) / 2
    k = th.spike_k * MAD_TO_SD
    with np.errstate(invalid="ignore"):
        bound = low_median + np.maximum(k * low_mad, np.log10(th.spike_min_ratio))
    return np.where(judged, bound, np.inf).reshape(n_layers, blocks)


def _narrowest(srt: np.ndarray, h: int) -> np.ndarray:
    """Each row's narrowest span of ``h`` of its values (NaN: fewer).

    Shape:
        - srt: ``(R, U)`` sorted, NaN last; returns: ``(R,)``
    """
    return np.fmin.reduce(srt[:, h - 1 :] - srt[:, : srt.shape[1] - h + 1], axis=1)


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
    t, j, _ = _spike_cells(_log_norms_of(norm, usable), *np.shape(norm), th)
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
    t, j, excess = _spike_cells(_log_norms_of(norm, usable), *np.shape(norm), th)
    mask = np.zeros(np.shape(norm), dtype=bool)
    own = np.ones(len(t), dtype=bool) if superseded is None else ~superseded[t, j]
    mask[t[own], j[own]] = True  # each a finding of its layer's
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
