"""Overview records: each layer's smallest and largest value of every statistic
over blocks of logged steps, written by the watcher beside its per-step
records, so that a whole run's heatmap and lines can be drawn from every
logged step even where TensorBoard kept only a sample of the steps.

Why: TensorBoard keeps at most ``samples_per_plugin`` steps per tag (100,000
for gradflow, raised by :mod:`tb_gradflow.loader`) and one read of its data
server is limited (~192 MiB): past that, the plugin sees a sample, and a
one-step spike survives only by chance. A block of ``BLOCK`` logged steps is
one record of ``2 K L + 4`` float32 values: 300,000 logged steps make 3,000
overview records, which TensorBoard keeps in full, and a spike at any step
lives on in its block's maximum.

Format (version ``OVERVIEW_VERSION``): one summary value per block under the
tag ``gradflow_overview@<id>[/<name>]``, ``<id>`` the layout id of the
watcher's per-step tag (:func:`tb_gradflow.metadata.layout_tag`), with
``plugin_name == OVERVIEW_PLUGIN_NAME`` (readers that do not know it skip it),
at the block's last step. Its tensor: the ``(K, L)`` largest values, the
``(K, L)`` smallest, row-major in the layout's order, then how many steps
before the last one the block began (``last - first``), how many logged steps
it holds, how many of them the AMP grad scaler skipped, and the largest total
gradient norm of its steps (each step's square root of the sum over layers
with a gradient of ``norm`` squared, as stored in float32, summed in float64;
``+inf`` when a layer with a gradient had a non-finite ``norm``; NaN when the
layout has no ``norm``). A statistic's largest value is ``+inf`` when any of
the block's values was NaN/Inf for a layer that had a gradient (its
``nonfinite`` count a number: :func:`had_gradient`); the smallest
is the smallest finite value; both are NaN for a layer without a gradient at
every step of the block. The
metadata content is ``{"version": 1, "name": <watcher name or null>,
"block": BLOCK}``. The last block of a session may hold fewer steps.

Pure numpy and the standard library (and TensorBoard's protos).

:func:`record_problems` says why a record cannot be real (its size, its
fields, values no statistic can have: :mod:`tb_gradflow.validity`), as the
plugin, which reads through TensorBoard's Rust data server without checksums,
needs.

Shape letters: ``K`` statistics, ``L`` layers, ``B`` blocks.
"""

from __future__ import annotations

import json

import numpy as np
from tensorboard.compat.proto import summary_pb2

from tb_gradflow import metadata
from tb_gradflow.validity import invalid_records

__all__ = [
    "BLOCK",
    "OVERVIEW_PLUGIN_NAME",
    "OVERVIEW_VERSION",
    "BlockAccumulator",
    "Blocks",
    "decode",
    "had_gradient",
    "overview_metadata",
    "overview_tag",
    "parse_overview_metadata",
    "record_problems",
    "record_size",
]

OVERVIEW_PLUGIN_NAME = "gradflow_overview"
OVERVIEW_VERSION = 1
BLOCK = 100  # logged steps per overview record
_FIELDS = 4  # span, steps, skipped, largest total norm


def overview_tag(layout: metadata.Layout) -> str:
    """The overview tag of a layout: ``gradflow_overview@<id>[/<name>]``."""
    tag = f"{metadata.TAG_PREFIX}_overview@{metadata.layout_id(layout)}"
    return tag if not layout.name else f"{tag}/{layout.name}"


def overview_metadata(layout: metadata.Layout) -> summary_pb2.SummaryMetadata:
    """The ``SummaryMetadata`` of a layout's overview records."""
    content = json.dumps(
        {"version": OVERVIEW_VERSION, "name": layout.name, "block": BLOCK}
    ).encode("utf-8")
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=OVERVIEW_PLUGIN_NAME, content=content
        ),
        summary_description="Per-layer gradient statistics over blocks of steps "
        "(tb-gradflow).",
        data_class=summary_pb2.DATA_CLASS_TENSOR,
    )


def parse_overview_metadata(content: bytes) -> str | None:
    """The watcher name of an overview tag's metadata.

    Raises:
        FormatError: naming what is wrong, or for a newer version.
    """
    return metadata.versioned_name(content, OVERVIEW_VERSION, _invalid)


def _invalid(problem: str) -> metadata.FormatError:
    return metadata.FormatError(f"Invalid gradflow overview: {problem}")


class BlockAccumulator:
    """The running smallest and largest values of a watcher's logged steps,
    given as each step's ``(K, L)`` statistics in ``layout``'s order, and
    their largest total gradient norm; :meth:`take` gives the block's record
    and starts the next one.

    Attributes:
        steps: logged steps added since the last :meth:`take`.
        last_step: the step added last.
    """

    def __init__(self, layout: metadata.Layout) -> None:
        self._layout = layout
        self._shape = (len(layout.stats), len(layout.layers))
        self._norm = layout.stats.index("norm") if "norm" in layout.stats else None
        self._reset()

    def _reset(self) -> None:
        self.steps = 0
        self.last_step = 0
        self._first = 0
        self._skipped = 0
        self._max = np.full(self._shape, np.nan, dtype=np.float32)
        self._min = np.full(self._shape, np.nan, dtype=np.float32)
        self._bad = np.zeros(self._shape, dtype=bool)
        self._total = np.nan

    def add(self, step: int, stats: np.ndarray, skipped: bool) -> None:
        """One logged step's ``(K, L)`` statistics (NaN: no gradient)."""
        if self.steps == 0:
            self._first = step
        self.steps += 1
        self.last_step = step
        self._skipped += bool(skipped)
        stats = np.asarray(stats, dtype=np.float32)  # as the per-step record stores it
        finite = np.isfinite(stats)
        values = np.where(finite, stats, np.nan)
        self._max = np.fmax(self._max, values)
        self._min = np.fmin(self._min, values)
        had = had_gradient(self._layout, stats)  # (L,)
        self._bad |= ~finite & had
        if self._norm is not None:
            self._total = np.fmax(self._total, _total_norm(stats[self._norm], had))

    def take(self) -> np.ndarray:
        """The block's record, ``(2 K L + 4,)`` float32, to be written at
        :attr:`last_step`; then starts anew."""
        last_step = self.last_step
        largest = np.where(self._bad, np.inf, self._max)
        record = np.concatenate(
            [
                largest.reshape(-1),
                self._min.reshape(-1),
                [last_step - self._first, self.steps, self._skipped, self._total],
            ]
        ).astype(np.float32)
        self._reset()
        return record


def had_gradient(layout: metadata.Layout, stats: np.ndarray) -> np.ndarray:
    """Where a layer had a gradient: its ``nonfinite`` count is a number (a
    layer without one has NaN in every statistic); for a layout without
    ``nonfinite``, where not all its statistics are NaN. For a block's
    largest values: at some step of the block.

    Shape:
        - stats: ``(..., K, L)`` in ``layout``'s order
        - returns: ``(..., L)`` bool
    """
    if "nonfinite" in layout.stats:
        return ~np.isnan(stats[..., layout.stats.index("nonfinite"), :])
    return ~np.isnan(stats).all(axis=-2)


def _total_norm(norm: np.ndarray, had: np.ndarray) -> float:
    """One step's total gradient norm from its ``(L,)`` float32 ``norm`` row:
    the layers without a gradient (``had`` False) add 0, a non-finite one
    with a gradient makes it ``+inf``."""
    if (had & ~np.isfinite(norm)).any():
        return np.inf
    used = norm[had].astype(np.float64)
    return float(np.sqrt(np.dot(used, used)))


class Blocks:
    """Overview records of one layout, decoded.

    Attributes:
        last_steps, first_steps: ``(B,)`` int64, each block's step range.
        steps: ``(B,)`` int64, logged steps in each block.
        maxima, minima: ``(B, K, L)`` float32.
        totals: ``(B,)`` float32, each block's largest total gradient norm
            (NaN: the layout has no ``norm``).
    """

    def __init__(
        self,
        last_steps: np.ndarray,
        first_steps: np.ndarray,
        steps: np.ndarray,
        maxima: np.ndarray,
        minima: np.ndarray,
        totals: np.ndarray,
    ) -> None:
        self.last_steps = last_steps
        self.first_steps = first_steps
        self.steps = steps
        self.maxima = maxima
        self.minima = minima
        self.totals = totals


def decode(
    layout: metadata.Layout, last_steps: list[int], rows: list[np.ndarray]
) -> Blocks:
    """Overview records of ``layout`` (each ``(2 K L + 4,)``) as
    :class:`Blocks`, ordered by last step.

    Raises:
        FormatError: for a record of another size.
    """
    k, n = len(layout.stats), len(layout.layers)
    size = record_size(layout)
    for step, row in zip(last_steps, rows):
        if row.size != size:
            raise _invalid(f"step {step} has {row.size} values, not {size}")
    block = (
        np.stack(rows).astype(np.float32) if rows else np.zeros((0, size), np.float32)
    )
    order = np.argsort(np.asarray(last_steps, dtype=np.int64), kind="stable")
    block = block[order]
    last = np.asarray(last_steps, dtype=np.int64)[order]
    return Blocks(
        last_steps=last,
        first_steps=last - block[:, -4].astype(np.int64),
        steps=block[:, -3].astype(np.int64),
        maxima=block[:, : k * n].reshape(-1, k, n),
        minima=block[:, k * n : 2 * k * n].reshape(-1, k, n),
        totals=block[:, -1],
    )


def record_size(layout: metadata.Layout) -> int:
    """The number of float32 values of one overview record of ``layout``."""
    return 2 * len(layout.stats) * len(layout.layers) + _FIELDS


def record_problems(
    layout: metadata.Layout, rows: list[np.ndarray]
) -> list[str | None]:
    """Why each overview record of ``layout`` cannot be real, or None where
    it can: another size; a step range, step count or skip count that is not
    a whole number in range (``0 <= last - first``, ``1 <= steps <= last -
    first + 1``, ``0 <= skipped <= steps``); a negative total norm; values
    no statistic can have (:func:`tb_gradflow.validity.invalid_records`, on
    the finite largest values and on the smallest values, which keep the
    relations between statistics of every step: the smallest ``abs_mean`` is
    at most the smallest ``abs_max``, and so on); a smallest value above the
    largest.

    Shape:
        - rows: each ``(2 K L + 4,)``
    """
    size = record_size(layout)
    reasons: list[str | None] = [
        f"has {row.size} values, not {size}"
        if row.size != size
        else None
        if row.dtype.kind in "fiu"
        else "its values are not numbers"
        for row in rows
    ]
    good = [i for i, r in enumerate(reasons) if r is None]
    if not good:
        return [_said(r) for r in reasons]
    block = np.stack([rows[i].reshape(-1) for i in good]).astype(np.float32)
    k, n = len(layout.stats), len(layout.layers)
    largest = block[:, : k * n].reshape(-1, k, n)
    smallest = block[:, k * n : 2 * k * n].reshape(-1, k, n)
    span, steps, skipped, total = block[:, -4:].T.astype(np.float64)
    with np.errstate(invalid="ignore"):
        whole = _whole(span) & _whole(steps) & _whole(skipped)
        ranged = (span >= 0) & (steps >= 1) & (steps <= span + 1)
        fields = ~(whole & ranged & (skipped >= 0) & (skipped <= steps))
        negative = total < 0
        crossed = (smallest > largest).any(axis=(1, 2))
    finite_largest = np.where(np.isfinite(largest), largest, np.nan)
    at_least = smallest.copy()
    if "nonfinite" in layout.stats:  # relations hold where every step was finite
        row = layout.stats.index("nonfinite")
        at_least[:, row] = largest[:, row]
    values = [
        invalid_records(v, layout.stats, layout.layers, layout.numel)
        for v in (finite_largest, at_least)
    ]
    for j, i in enumerate(good):
        if fields[j]:
            reasons[i] = "its step range, steps or skipped steps are impossible"
        elif negative[j]:
            reasons[i] = "its total norm is negative"
        elif values[0][j] or values[1][j]:
            reasons[i] = values[0][j] or values[1][j]
        elif crossed[j]:
            reasons[i] = "a smallest value is above the largest"
    return [_said(r) for r in reasons]


def _whole(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x) & (np.floor(x) == x)


def _said(reason: str | None) -> str | None:
    return None if reason is None else f"Invalid gradflow overview record: {reason}"
