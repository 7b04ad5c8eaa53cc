"""The gradflow summary format: the one place where writer and reader meet.

Every logged step is one TensorBoard summary value with tag ``gradflow`` (or
``gradflow/<name>`` for a named watcher), ``plugin_name == "gradflow"`` and
``data_class == DATA_CLASS_TENSOR``. Its tensor is a flat float32 vector:

* ``K * L`` values, row-major ``[K, L]``: one row per statistic in
  ``Layout.stats`` order, one column per layer in ``Layout.layers`` order;
* then one value per entry of ``Layout.step_fields`` (``skipped``: 1.0 when the
  AMP grad scaler skipped the optimizer step, else 0.0; ``loss_scale``: the
  scaler's scale, NaN without a scaler).

A layer that had no gradient at a step (``.grad is None``) has NaN in every
statistic, ``nonfinite`` included; a layer with a gradient always has a finite
``nonfinite`` count. The plugin metadata content is JSON (see ``Layout``), sent
with the first record a watcher writes.

This module imports only the standard library, numpy and TensorBoard's protos,
so the TensorBoard plugin can use it without torch.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
from tensorboard.compat.proto import summary_pb2

PLUGIN_NAME = "gradflow"
FORMAT_VERSION = 1  # bump when the layout of the tensor changes
TAG_PREFIX = "gradflow"

STATS = ("abs_mean", "abs_max", "norm", "nonfinite", "rows")
"""Per-layer statistics, in the order written.

``abs_mean``: mean of ``|g|`` over all elements (the seeds' bar). ``abs_max``:
largest ``|g|``. ``norm``: L2 norm. ``nonfinite``: number of NaN/Inf elements.
``rows``: fraction of rows (first dimension) that received a gradient; 1.0 for
dense gradients, ``unique rows / rows`` for sparse ones.
"""

STEP_FIELDS = ("skipped", "loss_scale")


def tag_for(name: str | None) -> str:
    """Returns the summary tag of a watcher called ``name`` (None: unnamed)."""
    return TAG_PREFIX if not name else f"{TAG_PREFIX}/{name}"


def name_from_tag(tag: str) -> str | None:
    """Inverse of :func:`tag_for`."""
    if tag == TAG_PREFIX:
        return None
    return tag[len(TAG_PREFIX) + 1 :]


@dataclasses.dataclass(frozen=True)
class Layout:
    """What the flat tensor of one step holds (the plugin metadata content).

    Attributes:
        layers: layer names, in model order.
        stats: statistic names, one row each.
        step_fields: names of the per-step values after the ``[K, L]`` block.
        every: the watcher's logging interval in optimizer steps.
        name: the watcher's name, or None.
        sparse: for each layer, whether its gradient is sparse.
        numel: for each layer, its number of elements.
        version: the format version this layout was written with.
    """

    layers: tuple[str, ...]
    stats: tuple[str, ...] = STATS
    step_fields: tuple[str, ...] = STEP_FIELDS
    every: int = 1
    name: str | None = None
    sparse: tuple[bool, ...] = ()
    numel: tuple[int, ...] = ()
    version: int = FORMAT_VERSION

    @property
    def size(self) -> int:
        """Length of the flat float32 vector of one step."""
        return len(self.stats) * len(self.layers) + len(self.step_fields)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "version": self.version,
                "layers": list(self.layers),
                "stats": list(self.stats),
                "step_fields": list(self.step_fields),
                "every": self.every,
                "name": self.name,
                "sparse": list(self.sparse),
                "numel": list(self.numel),
            }
        ).encode("utf-8")


class FormatError(ValueError):
    """Raised for plugin metadata or data that does not follow the format."""


def create_summary_metadata(layout: Layout) -> summary_pb2.SummaryMetadata:
    """Builds the ``SummaryMetadata`` proto that marks a gradflow summary."""
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=PLUGIN_NAME, content=layout.to_json()
        ),
        summary_description="Per-layer gradient statistics (tb-gradflow).",
        data_class=summary_pb2.DATA_CLASS_TENSOR,
    )


def parse_plugin_metadata(content: bytes) -> Layout:
    """Parses the plugin metadata content written by :func:`create_summary_metadata`.

    Raises:
        FormatError: if ``content`` is not a gradflow layout.
    """
    try:
        raw = json.loads(content.decode("utf-8"))
        layers = tuple(str(x) for x in raw["layers"])
        stats = tuple(str(x) for x in raw["stats"])
        step_fields = tuple(str(x) for x in raw.get("step_fields", ()))
        sparse = tuple(bool(x) for x in raw.get("sparse", ())) or (False,) * len(layers)
        numel = tuple(int(x) for x in raw.get("numel", ()))
        layout = Layout(
            layers=layers,
            stats=stats,
            step_fields=step_fields,
            every=int(raw.get("every", 1)),
            name=raw.get("name"),
            sparse=sparse,
            numel=numel,
            version=int(raw["version"]),
        )
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise FormatError(f"Invalid gradflow plugin metadata: {e!r}") from e
    if len(layout.sparse) != len(layers):
        raise FormatError(
            f"Invalid gradflow plugin metadata: {len(layout.sparse)} sparse flags "
            f"for {len(layers)} layers"
        )
    return layout


class VersionChecker:
    """Warns once per reader when data was written by a newer format version."""

    def __init__(self) -> None:
        self._warned = False

    def ok(self, layout: Layout) -> bool:
        """True when ``layout`` can be read; warns once and returns False if not."""
        if layout.version <= FORMAT_VERSION:
            return True
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"Some gradflow data was written with format version "
                f"{layout.version}, newer than this tb-gradflow understands "
                f"({FORMAT_VERSION}); it is skipped. Upgrade tb-gradflow.",
                stacklevel=3,
            )
        return False


def split_values(flat: np.ndarray, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Splits step vectors into per-layer statistics and step fields.

    Shape:
        - flat: ``(..., layout.size)``
        - returns: ``(..., K, L)`` statistics and ``(..., F)`` step fields, where
          ``K = len(layout.stats)``, ``L = len(layout.layers)`` and
          ``F = len(layout.step_fields)``.

    Raises:
        FormatError: if the last dimension is not ``layout.size``.
    """
    flat = np.asarray(flat)
    if flat.shape[-1:] != (layout.size,):
        raise FormatError(
            f"gradflow record has {flat.shape[-1] if flat.ndim else 0} values, "
            f"its layout needs {layout.size}"
        )
    n_stats, n_layers = len(layout.stats), len(layout.layers)
    block = flat[..., : n_stats * n_layers]
    values = block.reshape(*flat.shape[:-1], n_stats, n_layers)  # (..., K, L)
    return values, flat[..., n_stats * n_layers :]
