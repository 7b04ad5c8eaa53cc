"""A watcher's overview records (:mod:`tb_gradflow.overview`) as the plugin
reads them, merged across its layer sets by layer name: what the ``heatmap``
and ``lines`` answers draw from where TensorBoard did not keep every logged
step (:func:`tb_gradflow.heatmap.bin_extremes`).

The merge rule is that of the per-step records (``reader.merge_records``):
layer sets in order of their first step (their first block's first step),
then their first wall time, then their columns; within one layer set, records
in the order TensorBoard read them. A block that overlaps a block later in
that order is not used: its steps were logged again (a session resumed from
a checkpoint), and the later record wins, as a step logged twice keeps its
later record; nor is a block that ends after the last step of its layer
set's per-step records as TensorBoard served them (:class:`OverviewPart`'s
``until``). Layers are the merged run's; a layer not in a block's layer set
is absent from that block. A record that cannot be real is left out, with
why (:func:`tb_gradflow.overview.record_problems`).

Pure numpy and the standard library: no request, no data provider.

Shape letters: ``B`` blocks in use, ``L`` layers of the merged run, ``S``
kept steps.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence

import numpy as np

from tb_gradflow import metadata, overview
from tb_gradflow.reader import LeftOut

__all__ = ["Overview", "OverviewPart", "merge_overview"]


@dataclasses.dataclass
class OverviewPart:
    """One layout tag's overview records, as TensorBoard served them.

    Attributes:
        layout: the layer set's layout.
        last_steps: each record's step (its block's last step).
        walls: each record's wall time.
        rows: each record's values, ``(2 K L + 4,)``.
        until: the last step of the layer set's per-step records as
            TensorBoard served them (None: not known). A block that ends
            after it is not used: a watcher writes a block's record after
            the per-step record of its last step, so its steps are gone
            (TensorBoard's Rust data server drops a tag's records from the
            step where a resumed session logs again, and the blocks of the
            abandoned steps until the resumed session's first block).
    """

    layout: metadata.Layout
    last_steps: list[int]
    walls: list[float]
    rows: list[np.ndarray]
    until: int | None = None


class Overview:
    """The overview blocks in use of one watcher, by first step (their step
    ranges do not overlap).

    Attributes:
        layers: the merged run's layers.
        first_steps, last_steps: ``(B,)`` int64, each block's step range.
        steps: ``(B,)`` int64, logged steps in each block.
        totals: ``(B,)`` float64, each block's largest total gradient norm
            (NaN where its layer set has no ``norm``).
        absent: ``(B, L)`` bool, layers not in the block's layer set.
    """

    def __init__(
        self,
        layers: Sequence[str],
        parts: list[tuple[metadata.Layout, overview.Blocks]],
    ) -> None:
        self.layers = list(layers)
        column = {name: j for j, name in enumerate(self.layers)}
        first = np.concatenate([b.first_steps for _, b in parts])
        order = np.argsort(first, kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        self._parts = []  # (layout, blocks, rows (B_p,), columns (L_p,))
        start = 0
        for layout, blocks in parts:
            rows = rank[start : start + len(blocks.steps)]
            start += len(blocks.steps)
            cols = np.array([column[n] for n in layout.layers], dtype=np.int64)
            self._parts.append((layout, blocks, rows, cols))
        self.first_steps = first[order]
        self.last_steps = np.concatenate([b.last_steps for _, b in parts])[order]
        self.steps = np.concatenate([b.steps for _, b in parts])[order]
        totals = np.concatenate([b.totals for _, b in parts])
        self.totals = totals.astype(np.float64)[order]
        self.absent = np.ones((len(order), len(self.layers)), dtype=bool)
        for _, _, rows, cols in self._parts:
            self.absent[np.ix_(rows, cols)] = False

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded blocks (their largest and smallest values)."""
        return sum(b.maxima.nbytes + b.minima.nbytes for _, b, _, _ in self._parts)

    def extremes(self, stat: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each block's largest and smallest value of ``stat`` per layer, as
        the overview records hold them (largest: ``+inf`` where a value was
        NaN/Inf; both NaN where the layer had no gradient at any step of the
        block, or is absent from it, or its layer set lacks ``stat``), and
        where the layer had a gradient at some step of the block.

        Shape:
            - largest, smallest: ``(B, L)`` float32
            - has_grad: ``(B, L)`` bool
        """
        shape = (len(self.first_steps), len(self.layers))
        largest = np.full(shape, np.nan, dtype=np.float32)
        smallest = np.full(shape, np.nan, dtype=np.float32)
        has_grad = np.zeros(shape, dtype=bool)
        for layout, blocks, rows, cols in self._parts:
            at = np.ix_(rows, cols)
            has_grad[at] = overview.had_gradient(layout, blocks.maxima)
            if stat in layout.stats:
                k = layout.stats.index(stat)
                largest[at] = blocks.maxima[:, k, :]
                smallest[at] = blocks.minima[:, k, :]
        return largest, smallest, has_grad

    def in_use(self, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which blocks to draw instead of the kept ``steps`` (ascending): those
        holding more logged steps than were kept in their range; and which
        kept steps such a block stands for. Where every logged step of a block
        was kept, its kept steps are drawn one by one.

        Shape:
            - steps: ``(S,)`` int64
            - returns: ``(B,)`` bool, ``(S,)`` bool
        """
        lo = np.searchsorted(steps, self.first_steps, side="left")
        hi = np.searchsorted(steps, self.last_steps, side="right")
        use = hi - lo < self.steps
        edges = np.zeros(len(steps) + 1, dtype=np.int64)
        np.add.at(edges, lo[use], 1)
        np.add.at(edges, hi[use], -1)
        return use, np.cumsum(edges[:-1]) > 0


def merge_overview(
    layers: Sequence[str], parts: Sequence[OverviewPart]
) -> tuple[Overview | None, list[LeftOut]]:
    """One watcher's overview records merged by layer name (see the module's
    rule), and the records left out, with why.

    Args:
        layers: the merged run's layers (each layout's layers among them).
        parts: the records of each of the watcher's layer sets.

    Returns:
        ``(overview, left_out)``; overview None when no record can be used.
    """
    left_out: list[LeftOut] = []
    sound = []  # (part, indices of its sound records)
    for part in parts:
        rows = [np.asarray(r).reshape(-1) for r in part.rows]
        reasons = overview.record_problems(part.layout, rows)
        for step, reason in zip(part.last_steps, reasons):
            if reason is not None:
                left_out.append(LeftOut(int(step), reason))
        good = [
            i
            for i, r in enumerate(reasons)
            if r is None and (part.until is None or part.last_steps[i] <= part.until)
        ]
        if good:
            sound.append((dataclasses.replace(part, rows=rows), good))
    if not sound:
        return None, left_out
    ranked = sorted(sound, key=lambda s: _layer_set_key(*s))
    spans = []  # (first, last) of every sound record, in the merge order
    for part, good in ranked:
        for i in good:
            last = int(part.last_steps[i])
            spans.append((last - int(part.rows[i][-4]), last))
    first, last = (np.array(x, dtype=np.int64) for x in zip(*spans))
    dropped = _overlapped_later(first, last)
    merged, at = [], 0
    for part, good in ranked:
        kept = [i for j, i in enumerate(good) if not dropped[at + j]]
        at += len(good)
        if kept:
            steps = [int(part.last_steps[i]) for i in kept]
            blocks = overview.decode(part.layout, steps, [part.rows[i] for i in kept])
            merged.append((part.layout, blocks))
    return Overview(layers, merged), left_out


def _layer_set_key(part: OverviewPart, good: list[int]) -> tuple:
    """A layer set's place in the merge order: its first block's first step,
    its first wall time, its columns."""
    first = min(int(part.last_steps[i]) - int(part.rows[i][-4]) for i in good)
    wall = min(float(part.walls[i]) for i in good)
    return first, wall, part.layout.columns


def _overlapped_later(first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Which of the step ranges ``[first, last]`` (in merge order) overlap a
    range later in that order.

    Shape:
        - first, last: ``(N,)`` int64
        - returns: ``(N,)`` bool
    """
    dropped = np.zeros(len(first), dtype=bool)
    if len(first) < 2 or bool((first[1:] > last[:-1]).all()):
        return dropped  # one session's blocks, one after the other
    starts: list[int] = []  # the union of the later ranges: sorted, disjoint
    ends: list[int] = []
    for i in range(len(first) - 1, -1, -1):
        lo, hi = int(first[i]), int(last[i])
        j = bisect.bisect_left(ends, lo)  # the first later range ending at or after lo
        k = j
        while k < len(starts) and starts[k] <= hi:
            k += 1
        dropped[i] = k > j
        if k > j:
            lo, hi = min(lo, starts[j]), max(hi, ends[k - 1])
        starts[j:k] = [lo]
        ends[j:k] = [hi]
    return dropped
