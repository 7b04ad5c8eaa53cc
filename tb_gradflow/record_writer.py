"""Writes a watcher's records into its ``SummaryWriter``: the statistics of
each logged step, an overview record per block of logged steps
(:mod:`tb_gradflow.overview`), and each non-finite origin (see
:mod:`tb_gradflow.metadata` for the format), the per-step records in one tag
per segment (:mod:`tb_gradflow.segments`). A tensorboardX writer gets the same
records in its own proto classes."""

from __future__ import annotations

from typing import Any

import numpy as np

from tb_gradflow import metadata, overview, segments, summary

__all__ = ["RecordWriter"]


class RecordWriter:
    """One watcher's records into ``writer``.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` or a
            ``tensorboardX.SummaryWriter`` (``library``: which, as
            :func:`tb_gradflow.writers.check_writer` tells).
        layout: the watcher's layout, written with its first record.
    """

    def __init__(self, writer: Any, layout: metadata.Layout, library: str) -> None:
        self.writer = writer
        self._layout = layout
        self._tensorboardx = library == "tensorboardX"  # its own proto classes
        self._segment: segments.Segment | None = None  # None: no step written
        self._segment_steps = segments.segment_steps(layout)
        self._in_segment = 0  # records written into the current segment
        self._wrote_events_metadata = False
        self._wrote_overview_metadata = False
        self._block = overview.BlockAccumulator(layout)

    def write_step(
        self, step: int, stats: np.ndarray, skipped: bool, loss_scale: float
    ) -> None:
        """One logged step: ``stats`` ``(K, L)`` in the layout's order."""
        first = self._next_segment(step)
        proto = summary.gradflow_pb(
            self._layout,
            stats,
            np.array([float(skipped), loss_scale]),
            with_metadata=first,
            segment=self._segment,
        )
        self._add(proto, step)
        self._in_segment += 1
        self._block.add(step, stats, skipped)
        if self._block.steps >= overview.BLOCK:
            self._write_block()

    def _next_segment(self, step: int) -> bool:
        """Moves to a new segment when the current one is full (or none was
        begun: the session's first, at ``step``); whether it did."""
        if self._segment is None:
            self._segment = segments.Segment(step, 0)
        elif self._segment_steps and self._in_segment >= self._segment_steps:
            self._segment = segments.Segment(
                self._segment.session, self._segment.index + 1
            )
        else:
            return False
        self._in_segment = 0
        return True

    def close(self) -> None:
        """Writes the overview record of the steps since the last one (the
        last block of a session may be shorter), unless the writer was closed
        already: writing would open a new event file (both SummaryWriters
        drop their file writer on ``close()`` and make a new one on the next
        write). The plugin shows those steps from the per-step records."""
        if self._block.steps and getattr(self.writer, "file_writer", None):
            self._write_block()

    def _write_block(self) -> None:
        step = self._block.last_step
        proto = summary.overview_pb(
            self._layout,
            self._block.take(),
            with_metadata=not self._wrote_overview_metadata,
        )
        self._add(proto, step)
        self._wrote_overview_metadata = True

    def write_origin(self, origin: metadata.NonfiniteOrigin) -> None:
        """One traced non-finite origin, at its step."""
        proto = summary.origin_pb(
            origin, self._layout.name, with_metadata=not self._wrote_events_metadata
        )
        self._add(proto, origin.step)
        self._wrote_events_metadata = True

    def _add(self, proto: Any, step: int) -> None:
        if self._tensorboardx:
            proto = summary.as_tensorboardx(proto)
        # Neither SummaryWriter has a public way to add a raw Summary;
        # _get_file_writer is what all of their add_* methods use.
        self.writer._get_file_writer().add_summary(proto, global_step=step)
