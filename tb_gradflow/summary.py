"""Writer side of the format: numpy arrays in, ``Summary`` protos out (no torch).

The protos are tensorboard's (``tensorboard.compat.proto``), which
``torch.utils.tensorboard`` writes; :func:`as_tensorboardx` gives the same summary
in tensorboardX's classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tensorboard.compat.proto import (
    summary_pb2,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)

from tb_gradflow import metadata, overview, segments


def gradflow_pb(
    layout: metadata.Layout,
    stats: np.ndarray,
    step_fields: np.ndarray,
    *,
    with_metadata: bool,
    segment: segments.Segment | None = None,
) -> summary_pb2.Summary:
    """Builds the summary of one logged step.

    Args:
        layout: what the step holds; its JSON goes into the metadata.
        stats: per-layer statistics in ``layout.stats`` order.
        step_fields: values of ``layout.step_fields``.
        with_metadata: attach the plugin metadata. TensorBoard keeps only the
            first metadata of a tag, so writers attach it to their first record.
        segment: which of the layer set's tags holds the step
            (:mod:`tb_gradflow.segments`; None: the layout tag).

    Shape:
        - stats: ``(K, L)``, ``K = len(layout.stats)``, ``L = len(layout.layers)``
        - step_fields: ``(F,)``, ``F = len(layout.step_fields)``

    Raises:
        ValueError: if a shape does not match the layout.
    """
    stats = np.asarray(stats, dtype="<f4")
    step_fields = np.asarray(step_fields, dtype="<f4")
    if stats.shape != (len(layout.stats), len(layout.layers)):
        raise ValueError(
            f"stats has shape {stats.shape}, layout needs "
            f"{(len(layout.stats), len(layout.layers))}"
        )
    if step_fields.shape != (len(layout.step_fields),):
        raise ValueError(
            f"step_fields has shape {step_fields.shape}, layout needs "
            f"{(len(layout.step_fields),)}"
        )
    flat = np.concatenate([stats.reshape(-1), step_fields])  # (K * L + F,)
    segment = segment or segments.Segment()
    return _summary(
        segments.segment_tag(layout, segment),
        _float_tensor(flat),
        segments.create_segment_metadata(layout, segment) if with_metadata else None,
    )


def overview_pb(
    layout: metadata.Layout, values: np.ndarray, *, with_metadata: bool
) -> summary_pb2.Summary:
    """Builds the summary of one overview record of ``layout``'s watcher
    (``values``: :meth:`tb_gradflow.overview.BlockAccumulator.take`'s)."""
    return _summary(
        overview.overview_tag(layout),
        _float_tensor(np.asarray(values, dtype="<f4").reshape(-1)),
        overview.overview_metadata(layout) if with_metadata else None,
    )


def origin_pb(
    origin: metadata.NonfiniteOrigin, name: str | None, *, with_metadata: bool
) -> summary_pb2.Summary:
    """Builds the summary of one non-finite origin of the watcher ``name``: a
    scalar string tensor holding its JSON (see :mod:`tb_gradflow.metadata`)."""
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(),
        string_val=[origin.to_json()],
    )
    return _summary(
        metadata.events_tag(name),
        tensor,
        metadata.create_events_metadata(name) if with_metadata else None,
    )


def _float_tensor(flat: np.ndarray) -> tensor_pb2.TensorProto:
    """A 1-D float32 tensor proto of ``flat``."""
    flat = np.asarray(flat, dtype="<f4")
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=flat.size)]
        ),
        tensor_content=flat.tobytes(),
    )


def _summary(
    tag: str,
    tensor: tensor_pb2.TensorProto,
    with_metadata: summary_pb2.SummaryMetadata | None,
) -> summary_pb2.Summary:
    """A summary of one value: ``tensor`` under ``tag``, with the metadata
    if given (TensorBoard keeps only a tag's first)."""
    value = summary_pb2.Summary.Value(tag=tag, tensor=tensor)
    if with_metadata is not None:
        value.metadata.CopyFrom(with_metadata)
    return summary_pb2.Summary(value=[value])


def as_tensorboardx(proto: summary_pb2.Summary) -> Any:
    """``proto`` as tensorboardX's own ``Summary`` class, which its writers take.

    tensorboardX compiles the same ``summary.proto`` into classes of its own, and
    its ``FileWriter`` refuses tensorboard's. The summary crosses as its
    serialized bytes, so the event file holds the same bytes as one written by
    ``torch.utils.tensorboard``. Imports tensorboardX, so call it only for a
    tensorboardX writer (which means it is imported already).
    """
    from tensorboardX.proto import summary_pb2 as tensorboardx_summary_pb2

    return tensorboardx_summary_pb2.Summary.FromString(proto.SerializeToString())
