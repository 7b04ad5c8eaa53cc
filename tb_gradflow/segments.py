"""Segments: a layer set's per-step records split over several tags by step.

One read from TensorBoard's Rust data server is one gRPC reply of at most
256 MiB, and every read of a tag returns all of the tag's kept records. A
LLaMA-70B-shaped watcher (723 layers x 5 statistics) writes 14.5 kB per
logged step, so 20,000 steps in one tag (289 MB) cannot be read at once: a
reader would get a sample. So a writer session starts a new tag every
:func:`segment_steps` records (about :data:`SEGMENT_BYTES` of values): each
tag can be read in one reply, and the plugin reads a watcher's tags in
batches that each fit one.

A layer set small enough that the records TensorBoard keeps of one tag
(``DEFAULT_SAMPLES_PER_RUN``, 100,000) fit :data:`ONE_TAG_BYTES` is not
split by size (:func:`segment_steps` is None: up to ~66 layers): a session
writes one tag, TensorBoard's sampling of it bounds its memory, and the
overview records cover the steps it drops. A larger one is split, and
TensorBoard keeps every step of it (``--samples_per_plugin=gradflow=N`` keeps
N of each segment). Either way a session resumed at a later step starts a
tag of its own (below), so that readers can tell its records from the
abandoned timeline with either of TensorBoard's loaders.

The tag of a segment (:func:`segment_tag`) is the layout tag
(``metadata.layout_tag``) for the first segment of a session that began at
step 0, so the records of a run that never fills one segment are written as
before segments existed. Every other segment's tag puts
``#<session>.<index>`` after the layout id (``gradflow@<id>#<session>.<index>``
or ``gradflow@<id>#<session>.<index>/<name>``), and its plugin metadata (the
layout's JSON) gains ``"segment": [session, index]``: ``session`` is the first
step its writer session logged, ``index`` how many segments that session
wrote before it. Readers never parse the tag: they read the segment from the
metadata, and a layout without one is ``Segment(0, 0)``.

A layer set's records are read in segment order, ``(session, index)``, and a
step logged more than once keeps the record read last: a session resumed
from a checkpoint starts at a later step than the session before it, so its
records win the steps it logs again, whatever the clocks said. An earlier
session's records from a later session's first step on are an abandoned
timeline (:func:`abandoned`): readers leave them out, as TensorBoard's Rust
data server drops a tag's records from a step logged again. Readers that
know nothing of segments (earlier versions of this package) see a
segment's tag as a layer set with the same columns as the first one, and
merge it by the same rule of layer sets ordered by first step.

Import-light: the standard library, numpy and :mod:`tb_gradflow.metadata`.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from tensorboard.compat.proto import summary_pb2

from tb_gradflow import metadata
from tb_gradflow.loader import DEFAULT_SAMPLES_PER_RUN

__all__ = [
    "ONE_TAG_BYTES",
    "SEGMENT_BYTES",
    "Segment",
    "abandoned",
    "create_segment_metadata",
    "parse_segment",
    "segment_steps",
    "segment_tag",
]

SEGMENT_BYTES = 32 * 2**20
"""Values of one segment's records, about: small enough that several tags fit
one of the data server's 256 MiB replies, large enough that a run of a
million steps of 723 layers has ~430 tags."""

ONE_TAG_BYTES = 128 * 2**20
"""A layer set whose ``DEFAULT_SAMPLES_PER_RUN`` records take at most this
keeps one tag: TensorBoard's sample of it fits one data-server reply."""

_SEGMENT_ALIGN = 100  # segments hold whole overview blocks (overview.BLOCK)


@dataclasses.dataclass(frozen=True, order=True)
class Segment:
    """Where a tag's records sit among its layer set's records.

    Attributes:
        session: the first step its writer session logged.
        index: how many segments that session wrote before this one.
    """

    session: int = 0
    index: int = 0

    @property
    def plain(self) -> bool:
        """Whether its tag is the layout tag itself."""
        return self == Segment()


def segment_steps(layout: metadata.Layout) -> int | None:
    """Logged steps per segment of ``layout``: about :data:`SEGMENT_BYTES` of
    float32 values, in whole hundreds (723 layers: 2,300); None for a layer
    set that keeps one tag (:data:`ONE_TAG_BYTES`; 20 layers)."""
    record = 4 * layout.size
    if DEFAULT_SAMPLES_PER_RUN * record <= ONE_TAG_BYTES:
        return None
    steps = SEGMENT_BYTES // record
    return max(_SEGMENT_ALIGN, steps // _SEGMENT_ALIGN * _SEGMENT_ALIGN)


def segment_tag(layout: metadata.Layout, segment: Segment) -> str:
    """The tag of ``segment`` of ``layout``'s records (see the module doc)."""
    if segment.plain:
        return metadata.layout_tag(layout)
    tag = (
        f"{metadata.TAG_PREFIX}@{metadata.layout_id(layout)}"
        f"#{segment.session}.{segment.index}"
    )
    return tag if not layout.name else f"{tag}/{layout.name}"


def create_segment_metadata(
    layout: metadata.Layout, segment: Segment
) -> summary_pb2.SummaryMetadata:
    """The plugin metadata of ``segment``'s tag: the layout's, with the
    segment in its JSON unless it is the plain one."""
    proto = metadata.create_summary_metadata(layout)
    if not segment.plain:
        raw = json.loads(proto.plugin_data.content)
        raw["segment"] = [segment.session, segment.index]
        proto.plugin_data.content = json.dumps(raw).encode("utf-8")
    return proto


def parse_segment(content: bytes) -> Segment:
    """The segment in a layout tag's plugin metadata ``content`` (one parsed
    with ``metadata.parse_plugin_metadata``); ``Segment()`` when it has none.

    Raises:
        FormatError: if ``"segment"`` is not two integers, the index >= 0.
    """
    raw = metadata.json_object(content, _invalid)
    value = raw.get("segment")
    if value is None:
        return Segment()
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(type(v) is int for v in value)
        or value[1] < 0
    ):
        raise _invalid(f"'segment' is {value!r}, not [session step, index >= 0]")
    return Segment(*value)


def abandoned(
    sessions: np.ndarray, steps: np.ndarray, starts: np.ndarray | None = None
) -> np.ndarray:
    """Which records of one layer set belong to an abandoned timeline: their
    step is at or after the first step of a session later than theirs.

    Shape:
        - sessions, steps: ``(N,)``, each record's session (first step of its
          writer session) and step.
        - starts: ``(S,)``, every session of the layer set (None: those of
          ``sessions``).
        - returns: ``(N,)`` bool.
    """
    sessions = np.asarray(sessions, dtype=np.int64)
    steps = np.asarray(steps, dtype=np.int64)
    starts = np.unique(sessions if starts is None else starts)  # sorted
    later = np.searchsorted(starts, sessions, side="right")  # (N,)
    has_later = later < len(starts)
    next_start = starts[np.minimum(later, len(starts) - 1)]  # (N,)
    return has_later & (steps >= next_start)


def _invalid(problem: str) -> metadata.FormatError:
    return metadata.FormatError(f"Invalid gradflow plugin metadata: {problem}")
