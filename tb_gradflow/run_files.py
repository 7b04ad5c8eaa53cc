"""Reading a run directory's event files: every gradflow record and
non-finite origin of each watcher, record by record past damaged records
(:mod:`tb_gradflow.records`), in file order (files sorted with numbers
compared as numbers). :mod:`tb_gradflow.reader` merges them into runs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
from tensorboard.backend.event_processing import io_wrapper
from tensorboard.compat.proto import event_pb2
from tensorboard.util import tensor_util

from tb_gradflow import metadata, segments
from tb_gradflow.records import Damage, read_records, record_spans

__all__ = ["LeftOut", "WatcherRecords", "last_written_step", "read_run_dir"]


class LeftOut(NamedTuple):
    """A record left out of a run: its step (None when its bytes do not tell)
    and why (a damaged record, or values no statistic can have)."""

    step: int | None
    reason: str


@dataclasses.dataclass
class WatcherRecords:
    """One watcher's records in arrival order; ``part[i]`` indexes the layout
    (``layouts``, in order of first appearance) of record ``i``."""

    layouts: list[metadata.Layout] = dataclasses.field(default_factory=list)
    steps: list[int] = dataclasses.field(default_factory=list)
    rows: list[np.ndarray] = dataclasses.field(default_factory=list)
    part: list[int] = dataclasses.field(default_factory=list)
    walls: list[float] = dataclasses.field(default_factory=list)
    sessions: list[int] = dataclasses.field(default_factory=list)
    damaged: list[LeftOut] = dataclasses.field(default_factory=list)
    origins: list[metadata.NonfiniteOrigin] = dataclasses.field(default_factory=list)

    def add(
        self,
        layout: metadata.Layout,
        step: int,
        row: np.ndarray,
        wall: float,
        session: int = 0,
    ) -> None:
        """One record; ``session``: the first step of its writer session
        (:class:`tb_gradflow.segments.Segment`)."""
        known = [lo.columns for lo in self.layouts]
        key = layout.columns
        if key not in known:
            self.layouts.append(layout)
            known.append(key)
        i = known.index(key)
        self.steps.append(step)
        self.rows.append(row)
        self.part.append(i)
        self.walls.append(wall)
        self.sessions.append(session)

    def drop_abandoned(self) -> None:
        """Leaves out the records of abandoned timelines
        (``segments.abandoned``), layer set by layer set."""
        part = np.asarray(self.part)
        drop = np.zeros(len(part), dtype=bool)
        for p in range(len(self.layouts)):
            mine = np.flatnonzero(part == p)
            sessions = np.asarray(self.sessions)[mine]
            drop[mine] = segments.abandoned(sessions, np.asarray(self.steps)[mine])
        if drop.any():
            keep = np.flatnonzero(~drop).tolist()
            for field in ("steps", "rows", "part", "walls", "sessions"):
                values = getattr(self, field)
                setattr(self, field, [values[i] for i in keep])


def _event_files(run_dir: str) -> list[str]:
    """The run's event files, oldest first: names hold the creation time (and
    torch's a per-process counter), compared as numbers. Other files are left
    alone, whatever their names."""
    paths = [os.path.join(run_dir, n) for n in os.listdir(run_dir)]
    events = [
        p for p in paths if io_wrapper.IsSummaryEventsFile(p) and os.path.isfile(p)
    ]
    return sorted(events, key=lambda p: _natural_key(os.path.basename(p)))


_DIGITS = re.compile(r"([0-9]+)")  # ASCII only: str.isdigit() also takes "²", "٣"


def _natural_key(name: str) -> tuple[list[str | int], str]:
    """Sorts runs of ASCII digits as numbers; a total order on any names.

    Splitting on a capturing group alternates text and digits, so two keys hold
    text at the same (even) places and ints at the same (odd) places; the name
    itself breaks ties such as ``"x01"`` and ``"x1"``.
    """
    parts = _DIGITS.split(name)
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], name


def _read_events(path: str, damage: list[Damage]) -> Iterator[event_pb2.Event]:
    """Every sound event of one file; damaged records go to ``damage`` (see
    :func:`tb_gradflow.records.read_records`), as does a record whose checksum
    matched but which does not parse."""
    for raw in read_records(path, damage):
        try:
            yield event_pb2.Event.FromString(raw)
        except Exception as e:
            damage.append(Damage(-1, len(raw), None, f"unreadable event ({e})"))


_TAIL_EVENTS = 2000  # events parsed, at most, from a file's end


def last_written_step(run_dir: str, tags: set[str]) -> tuple[int, str] | None:
    """The largest step of a record of ``tags`` in the last records of each of
    the run's event files, and its file; None if there is none. Reads only
    record headers and, from each file's end, the events back to the first one
    with such a tag: a quick way to tell whether a reader that stopped early
    (at a damaged record) has served every step."""
    best: tuple[int, str] | None = None
    for path in _event_files(run_dir):
        spans = record_spans(path)
        with open(path, "rb") as f:
            # a file without such records near its end has none worth the time
            for offset, length in reversed(spans[-_TAIL_EVENTS:]):
                f.seek(offset)
                try:
                    event = event_pb2.Event.FromString(f.read(length))
                except Exception:
                    continue
                if any(v.tag in tags for v in event.summary.value):
                    if best is None or event.step > best[0]:
                        best = (int(event.step), path)
                    break
    return best


def _damaged_steps(damage: Sequence[Damage]) -> list[tuple[Damage, int | None, set]]:
    """Per damaged stretch: its step and tags when its bytes still parse as an
    event (a record whose data checksum failed), else None and no tags."""
    out = []
    for d in damage:
        step, tags = None, set()
        if d.data is not None:
            try:
                event = event_pb2.Event.FromString(d.data)
                step = int(event.step)
                tags = {v.tag for v in event.summary.value}
            except Exception:
                pass
        out.append((d, step, tags))
    return out


def read_run_dir(
    run_dir: str, checker: metadata.VersionChecker
) -> dict[str | None, WatcherRecords]:
    """Reads every gradflow record of one directory, keyed by watcher name (the
    ``name`` of each tag's layout)."""
    series: dict[str | None, WatcherRecords] = {}
    # Per tag, the layout of its latest metadata. A writer attaches it to its
    # first record only, so records in a later file (the writer was closed and
    # reopened) follow the layout of an earlier one, as in TensorBoard.
    layouts: dict[str, metadata.Layout | None] = {}
    sessions: dict[str, int] = {}  # tag -> its segment's session
    origin_tags: dict[str, str | None] = {}  # non-finite origins: tag -> watcher
    bad_origins: list[tuple[str | None, LeftOut]] = []
    damaged: list[tuple[str, Damage, int | None, set]] = []
    for path in _event_files(run_dir):
        damage: list[Damage] = []
        for event in _read_events(path, damage):
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == metadata.EVENTS_PLUGIN_NAME or value.tag in origin_tags:
                    _read_origin(path, event, value, origin_tags, series, bad_origins)
                    continue
                if plugin == metadata.PLUGIN_NAME:
                    try:
                        layout = metadata.parse_plugin_metadata(
                            value.metadata.plugin_data.content
                        )
                    except metadata.FormatError as e:
                        warnings.warn(f"{path}: tag {value.tag!r}: {e}", stacklevel=3)
                        layout = None
                    layouts[value.tag] = (
                        layout if layout and checker.ok(layout) else None
                    )
                    try:
                        sessions[value.tag] = segments.parse_segment(
                            value.metadata.plugin_data.content
                        ).session
                    except metadata.FormatError as e:
                        if layouts[value.tag] is not None:
                            warnings.warn(
                                f"{path}: tag {value.tag!r}: {e}", stacklevel=3
                            )
                        layouts[value.tag] = None
                if value.tag not in layouts:
                    continue
                layout = layouts[value.tag]
                if layout is None:
                    continue
                flat = tensor_util.make_ndarray(value.tensor).reshape(-1)
                if flat.size != layout.size:
                    warnings.warn(
                        f"{path}: step {event.step} of tag {value.tag!r} has "
                        f"{flat.size} values, its layout needs {layout.size}; skipped",
                        stacklevel=3,
                    )
                    continue
                # Grouped by the watcher name of the layout: a watcher's
                # layer sets have tags of their own (metadata.layout_tag).
                s = series.setdefault(layout.name, WatcherRecords())
                s.add(
                    layout,
                    int(event.step),
                    flat.astype(np.float32, copy=False),
                    event.wall_time,
                    sessions.get(value.tag, 0),
                )
        damaged += [(path, d, step, tags) for d, step, tags in _damaged_steps(damage)]
    for path, d, step, tags in damaged:
        where = f"{os.path.basename(path)} at byte {d.offset}"
        if d.offset < 0:
            where = os.path.basename(path)
        # A damaged record of a known tag belongs to its watcher; one whose
        # bytes tell nothing, to every watcher of the directory.
        names = {lo.name for t, lo in layouts.items() if t in tags and lo}
        if tags and not names:
            continue  # another plugin's record
        what = f"step {step}" if step is not None else f"{d.size} bytes"
        warnings.warn(
            f"{path}: {d.reason} at byte {d.offset}: {what} left out; reading "
            "went on after it",
            stacklevel=3,
        )
        for name in names or series:
            series[name].damaged.append(LeftOut(step, f"{d.reason} ({where})"))
    for name, left_out in bad_origins:
        if name in series:
            series[name].damaged.append(left_out)
    # a watcher shown as a run has statistics; origins alone make none
    for s in series.values():
        s.drop_abandoned()
    return {name: s for name, s in series.items() if s.layouts}


def _read_origin(
    path: str,
    event: event_pb2.Event,
    value,
    origin_tags: dict[str, str | None],
    series: dict[str | None, WatcherRecords],
    bad: list[tuple[str | None, LeftOut]],
) -> None:
    """Reads one record of a non-finite origins tag into its watcher's series;
    one that cannot be read is warned of and left out (``bad``)."""
    if value.metadata.plugin_data.plugin_name == metadata.EVENTS_PLUGIN_NAME:
        try:
            origin_tags[value.tag] = metadata.parse_events_metadata(
                value.metadata.plugin_data.content
            )
        except metadata.FormatError as e:
            warnings.warn(f"{path}: tag {value.tag!r}: {e}", stacklevel=4)
            origin_tags.pop(value.tag, None)
            return
    if value.tag not in origin_tags:
        return
    name = origin_tags[value.tag]
    try:
        if len(value.tensor.string_val) != 1:
            raise metadata.FormatError(
                f"{len(value.tensor.string_val)} strings in a record, not 1"
            )
        origin = metadata.NonfiniteOrigin.from_json(value.tensor.string_val[0])
    except metadata.FormatError as e:
        warnings.warn(f"{path}: step {event.step}: {e}; left out", stacklevel=4)
        bad.append((name, LeftOut(int(event.step), str(e))))
        return
    series.setdefault(name, WatcherRecords()).origins.append(origin)
