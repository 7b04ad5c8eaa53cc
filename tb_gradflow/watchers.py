"""A run's gradflow tags as TensorBoard's data provider lists and serves them,
grouped by watcher and merged into one run per watcher: what the plugin's
routes and the triage share.

Each layer set of a watcher has a layout tag of its own (``metadata.layout_tag``);
tags are grouped by the watcher name in their layout (never parsed from the
tag), and a watcher's records are merged by layer name with
``reader.merge_records``. A layout of a newer format version is unreadable
here (the one version check of the plugin's side).

Import-light: numpy and TensorBoard only, never torch.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Mapping, Sequence

import numpy as np
from tensorboard import errors
from tensorboard.data import provider

from tb_gradflow import layer_sets, metadata, reader, segments

__all__ = [
    "LayoutCache",
    "LayoutMismatch",
    "group",
    "layout_of",
    "drop_abandoned",
    "merge_series",
    "tag_segments",
    "version",
]


class LayoutCache:
    """Parsed layouts by metadata content, least recently used dropped first.
    It holds at least twice as many as the most layer sets one run was read
    with (and 64): a request parses each of a run's layouts twice (listing,
    then reading), and a fixed size smaller than a run's count missed on every
    one of them."""

    def __init__(self, floor: int = 64) -> None:
        self._floor = floor
        self._size = floor
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def fit(self, count: int) -> None:
        """Makes room for ``count`` layouts of one run."""
        with self._lock:
            self._size = max(self._size, 2 * count, self._floor)

    def parse(self, content: bytes) -> metadata.Layout | str:
        """The layout in ``content``, or why it cannot be read."""
        return self._entry(content)[0]

    def segment(self, content: bytes) -> segments.Segment:
        """The segment in a readable layout's ``content``."""
        return self._entry(content)[1]

    def _entry(self, content: bytes) -> tuple[metadata.Layout | str, segments.Segment]:
        with self._lock:
            if content in self._items:
                self._items.move_to_end(content)
                return self._items[content]
        parsed = _parse(content)
        with self._lock:
            self._items[content] = parsed
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return parsed


def _parse(content: bytes) -> tuple[metadata.Layout | str, segments.Segment]:
    """The layout in ``content``, or why it cannot be read (malformed, or of a
    newer format version), and its segment."""
    try:
        layout = metadata.parse_plugin_metadata(content)
        segment = segments.parse_segment(content)
    except metadata.FormatError as e:
        return str(e), segments.Segment()
    if layout.version > metadata.FORMAT_VERSION:
        return (
            f"written with gradflow format version {layout.version}, newer than "
            f"this tb-gradflow understands ({metadata.FORMAT_VERSION}); upgrade it"
        ), segment
    return layout, segment


_LAYOUTS = LayoutCache()


def group(
    tags: Mapping[str, provider.TensorTimeSeries],
) -> tuple[dict[str, dict[str, metadata.Layout]], dict[str, str]]:
    """The tags of one run, each layout parsed once: the readable ones by
    watcher, ``{base tag: {tag: layout}}`` (the base tag from the watcher name
    in each tag's layout, never parsed from the tag; tags sorted), and
    ``{tag: why}`` for the rest."""
    watchers: dict[str, dict[str, metadata.Layout]] = {}
    unreadable: dict[str, str] = {}
    _LAYOUTS.fit(len(tags))
    for tag in sorted(tags):
        layout = _LAYOUTS.parse(tags[tag].plugin_content)
        if isinstance(layout, metadata.Layout):
            watchers.setdefault(metadata.tag_for(layout.name), {})[tag] = layout
        else:
            unreadable[tag] = layout
    return watchers, unreadable


def layout_of(content: bytes, run: str, tag: str) -> metadata.Layout:
    """The layout in a tag's metadata ``content``.

    Raises:
        NotFoundError: saying why it cannot be read.
    """
    layout = _LAYOUTS.parse(content)
    if isinstance(layout, str):
        raise errors.NotFoundError(f"Run {run!r}, tag {tag!r}: {layout}")
    return layout


def tag_segments(
    tags: Mapping[str, provider.TensorTimeSeries], members
) -> dict[str, segments.Segment]:
    """The segment (:mod:`tb_gradflow.segments`) of each of a watcher's layout
    tags ``members``, all of them readable (``group`` checked them)."""
    return {t: _LAYOUTS.segment(tags[t].plugin_content) for t in members}


def drop_abandoned(
    layouts: Mapping[str, metadata.Layout],
    series: Mapping[str, Sequence[provider.TensorDatum]],
    order: Mapping[str, segments.Segment],
) -> dict[str, Sequence[provider.TensorDatum]]:
    """``series`` without the records of an abandoned timeline
    (``segments.abandoned``): a session resumed from a checkpoint has
    segments of its own, where TensorBoard cannot drop what it logs again."""
    sets: dict[tuple, list[str]] = {}  # a layer set's columns -> its tags
    for t in series:
        if t in layouts:
            sets.setdefault(layouts[t].columns, []).append(t)
    out = dict(series)
    for tags in sets.values():
        sessions = [order.get(t, segments.Segment()).session for t in tags]
        if len(set(sessions)) < 2:
            continue
        for t, session in zip(tags, sessions):
            steps = np.fromiter((d.step for d in series[t]), np.int64)  # (N,)
            drop = segments.abandoned(np.full(len(steps), session), steps, sessions)
            if drop.any():
                out[t] = [d for d, gone in zip(series[t], drop) if not gone]
    return out


def version(tags: Mapping[str, provider.TensorTimeSeries], members) -> tuple:
    """What identifies the data of a watcher's layout tags ``members``: a
    cached decoded copy is used only while this is unchanged."""
    return tuple(
        (t, tags[t].max_step, tags[t].max_wall_time, tags[t].plugin_content)
        for t in members
    )


_MISMATCH = (
    "written before layer sets had tags of their own, under {0!r}, with "
    "another layer set than the tag's first one, which is all TensorBoard "
    "keeps of it: its values cannot be matched to layers here "
    "(tb_gradflow.load_run() reads it)"
)


class LayoutMismatch(Exception):
    """Records of a tag that do not have the values of the tag's layout.

    TensorBoard keeps only the first plugin metadata of a tag, and files
    written before layout tags put every layer set of a watcher under its base
    tag: such records cannot be matched to layers.
    """

    def __init__(self, mismatched: int, records: int) -> None:
        super().__init__(
            "the layer set changed between writer sessions: "
            f"{mismatched} of {records} steps do not have the values of their "
            "tag's first layout, and TensorBoard keeps only a tag's first layout, "
            "so their values cannot be matched to layers (files written "
            "before each layer set got its own tag). Read the run with "
            "tb_gradflow.load_run() (it matches layers by name)."
        )


def merge_series(
    run: str,
    layouts: Mapping[str, metadata.Layout],
    series: Mapping[str, Sequence[provider.TensorDatum]],
    order: Mapping[str, segments.Segment] | None = None,
) -> reader.GradFlowRun | None:
    """One watcher's records, as the data provider served them, merged by layer
    name by the rule of ``reader.merge_records`` (which :func:`load_run` uses
    too): the tags of one layer set (its segments) read as one, in segment
    order, each tag's records in the order TensorBoard read them.

    Records of the watcher's base tag written before layout tags, whose layer
    set is not the tag's first layout (TensorBoard keeps only that one), cannot
    be matched to layers: when the watcher has layout tags too, its other
    records are shown and those are left out, named in ``left_out``; when it
    has none, :class:`LayoutMismatch` says why nothing can be shown.

    Args:
        run: the run's name.
        layouts: the watcher's layout tags and their layouts.
        series: ``read_tensors``' answer for the run: tag -> data.
        order: each tag's segment (``tag_segments``; None: all plain).

    Returns:
        The run; None when no tag of ``layouts`` has data.

    Raises:
        LayoutMismatch: when records do not fit their tag's layout and the
            watcher has no layout tag with records that do.
    """
    found = {t: series[t] for t in layouts if series.get(t)}
    if not found:
        return None
    order = order or {}
    tags = sorted(found, key=lambda t: (order.get(t, segments.Segment()), t))
    sets: dict[tuple, int] = {}  # a layer set's columns -> its first tag's index
    steps, rows, part, walls, left_out, total = [], [], [], [], [], 0
    for i, t in enumerate(tags):
        size = layouts[t].size
        p = sets.setdefault(layouts[t].columns, i)
        for datum in found[t]:
            total += 1
            flat = datum.numpy.reshape(-1)
            if flat.size != size:
                left_out.append(reader.LeftOut(int(datum.step), _MISMATCH.format(t)))
                continue
            steps.append(datum.step)
            rows.append(flat)
            part.append(p)
            walls.append(datum.wall_time)
    if left_out and (
        not steps or all(t == metadata.tag_for(layouts[t].name) for t in tags)
    ):
        raise LayoutMismatch(len(left_out), total)
    used = sorted(set(part))
    index = {p: i for i, p in enumerate(used)}
    merged = layer_sets.merge_records(
        run,
        [layouts[tags[p]] for p in used],
        steps,
        rows,
        [index[p] for p in part],
        walls,
    )
    merged.left_out += left_out
    return merged
