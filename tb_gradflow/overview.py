"""Overview records: each layer's smallest and largest value of every statistic
over blocks of logged steps, written by the watcher beside its per-step
records, so that a whole run's heatmap and lines can be drawn from every
logged step even where TensorBoard kept only a sample of the steps.

Why: TensorBoard keeps at most ``samples_per_plugin`` steps per tag (100,000
for gradflow, raised by :mod:`tb_gradflow.loader`) and one read of its data
server is limited (~192 MiB): past that, the plugin sees a sample, and a
one-step spike survives only by chance. A block of ``BLOCK`` logged steps is
one record of ``2 K L + 3`` float32 values: 300,000 logged steps make 3,000
overview records, which TensorBoard keeps in full, and a spike at any step
lives on in its block's maximum.

Format (version ``OVERVIEW_VERSION``): one summary value per block under the
tag ``gradflow_overview@<id>[/<name>]``, ``<id>`` the layout id of the
watcher's per-step tag (:func:`tb_gradflow.metadata.layout_tag`), with
``plugin_name == OVERVIEW_PLUGIN_NAME`` (readers that do not know it skip it),
at the block's last step. Its tensor: the ``(K, L)`` largest values, the
``(K, L)`` smallest, row-major in the layout's order, then how many steps
before the last one the block began (``last - first``), how many logged steps
it holds, and how many of them the AMP grad scaler skipped. A statistic's
largest value is ``+inf`` when any of the block's values was NaN/Inf for a
layer that had a gradient; the smallest is the smallest finite value; both
are NaN for a layer without a gradient at every step of the block. The
metadata content is ``{"version": 1, "name": <watcher name or null>,
"block": BLOCK}``. The last block of a session may hold fewer steps.

Pure numpy and the standard library (and TensorBoard's protos).

Shape letters: ``K`` statistics, ``L`` layers, ``B`` blocks.
"""

from __future__ import annotations

import json

import numpy as np
from tensorboard.compat.proto import summary_pb2

from tb_gradflow import metadata

__all__ = [
    "BLOCK",
    "OVERVIEW_PLUGIN_NAME",
    "OVERVIEW_VERSION",
    "BlockAccumulator",
    "Blocks",
    "decode",
    "overview_metadata",
    "overview_tag",
    "parse_overview_metadata",
]

OVERVIEW_PLUGIN_NAME = "gradflow_overview"
OVERVIEW_VERSION = 1
BLOCK = 100  # logged steps per overview record
_FIELDS = 3  # span, steps, skipped


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
    given as each step's ``(K, L)`` statistics; :meth:`take` gives the block's
    record and starts the next one.

    Attributes:
        steps: logged steps added since the last :meth:`take`.
        last_step: the step added last.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        self._shape = shape
        self._reset()

    def _reset(self) -> None:
        self.steps = 0
        self.last_step = 0
        self._first = 0
        self._skipped = 0
        self._max = np.full(self._shape, np.nan)
        self._min = np.full(self._shape, np.nan)
        self._bad = np.zeros(self._shape, dtype=bool)

    def add(self, step: int, stats: np.ndarray, skipped: bool) -> None:
        """One logged step's ``(K, L)`` statistics (NaN: no gradient)."""
        if self.steps == 0:
            self._first = step
        self.steps += 1
        self.last_step = step
        self._skipped += bool(skipped)
        finite = np.isfinite(stats)
        values = np.where(finite, stats, np.nan)
        self._max = np.fmax(self._max, values)
        self._min = np.fmin(self._min, values)
        # NaN/Inf where the layer had a gradient (its nonfinite count is a number)
        self._bad |= ~finite & ~np.isnan(stats).all(axis=0, keepdims=True)

    def take(self) -> np.ndarray:
        """The block's record, ``(2 K L + 3,)`` float32, to be written at
        :attr:`last_step`; then starts anew."""
        last_step = self.last_step
        largest = np.where(self._bad, np.inf, self._max)
        record = np.concatenate(
            [
                largest.reshape(-1),
                self._min.reshape(-1),
                [last_step - self._first, self.steps, self._skipped],
            ]
        ).astype(np.float32)
        self._reset()
        return record


class Blocks:
    """Overview records of one layout, decoded.

    Attributes:
        last_steps, first_steps: ``(B,)`` int64, each block's step range.
        steps: ``(B,)`` int64, logged steps in each block.
        maxima, minima: ``(B, K, L)`` float32.
    """

    def __init__(
        self,
        last_steps: np.ndarray,
        first_steps: np.ndarray,
        steps: np.ndarray,
        maxima: np.ndarray,
        minima: np.ndarray,
    ) -> None:
        self.last_steps = last_steps
        self.first_steps = first_steps
        self.steps = steps
        self.maxima = maxima
        self.minima = minima


def decode(
    layout: metadata.Layout, last_steps: list[int], rows: list[np.ndarray]
) -> Blocks:
    """Overview records of ``layout`` (each ``(2 K L + 3,)``) as
    :class:`Blocks`, ordered by last step.

    Raises:
        FormatError: for a record of another size.
    """
    k, n = len(layout.stats), len(layout.layers)
    size = 2 * k * n + _FIELDS
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
        first_steps=last - block[:, -3].astype(np.int64),
        steps=block[:, -2].astype(np.int64),
        maxima=block[:, : k * n].reshape(-1, k, n),
        minima=block[:, k * n : 2 * k * n].reshape(-1, k, n),
    )
