"""The gradflow summary format: the one place where writer and reader meet.

Every logged step is one TensorBoard summary value with ``plugin_name ==
"gradflow"`` and ``data_class == DATA_CLASS_TENSOR``. Its tag names the layout
(see :func:`layout_tag`): ``gradflow@<id>`` for the unnamed watcher,
``gradflow@<id>/<name>`` for a named one, where ``<id>`` is
:func:`layout_id`. TensorBoard keeps only the first metadata of a tag, so each
layer set gets its own time series, and a resumed session with the same layer
set continues the same one. Readers group tags by the watcher name in their
metadata (``Layout.name``), never by parsing the tag, and merge a watcher's
layer sets by layer name. Files written before this scheme use the watcher's
base tag, ``gradflow`` or ``gradflow/<name>`` (:func:`tag_for`), for every
layer set. Its tensor is a flat float32 vector:

* ``K * L`` values, row-major ``[K, L]``: one row per statistic in
  ``Layout.stats`` order, one column per layer in ``Layout.layers`` order.
  Statistics are read by name: a file lacking one reads it as NaN ("not
  logged"), and one a reader does not know is carried through by name;
* then one value per entry of ``Layout.step_fields`` (``skipped``: 1.0 when the
  AMP grad scaler skipped the optimizer step, else 0.0; ``loss_scale``: the
  scaler's scale, NaN without a scaler).

A layer that had no gradient at a step (``.grad is None``) has NaN in every
statistic, ``nonfinite`` included; a layer with a gradient always has a finite
``nonfinite`` count. The plugin metadata content is JSON (see ``Layout``), sent
with the first record a watcher writes.

This module imports only the standard library, numpy, TensorBoard's protos and
:mod:`tb_gradflow.stats`, so the TensorBoard plugin can use it without torch.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import reprlib
import warnings
from typing import Any

import numpy as np
from tensorboard.compat.proto import summary_pb2

from tb_gradflow import stats as stats_module

PLUGIN_NAME = "gradflow"
FORMAT_VERSION = 1  # bump when the layout of the tensor changes
TAG_PREFIX = "gradflow"

STATS = ("abs_mean", "abs_max", "norm", "nonfinite", "rows")
"""The built-in statistics (:mod:`tb_gradflow.stats` holds their definitions and
any registered ones; a layout lists those its watcher wrote, by name)."""

STEP_FIELDS = ("skipped", "loss_scale")


LAYOUT_ID_CHARS = 12  # hex digits of the layout id: 48 bits


def tag_for(name: str | None) -> str:
    """The base tag of a watcher called ``name`` (None: unnamed): what the tab
    names the watcher by, and the tag of files written before layout tags."""
    return TAG_PREFIX if not name else f"{TAG_PREFIX}/{name}"


def layout_id(layout: Layout) -> str:
    """A short id of what a step's columns are: a hash of the layer names,
    statistics and step fields (not ``every``, ``sparse``, ``numel``). A resumed
    session with the same layer set gets the same id."""
    key = json.dumps(
        [list(layout.layers), list(layout.stats), list(layout.step_fields)]
    ).encode("utf-8")
    return hashlib.sha256(key).hexdigest()[:LAYOUT_ID_CHARS]


def layout_tag(layout: Layout) -> str:
    """The summary tag of ``layout``'s records: ``gradflow@<id>`` or
    ``gradflow@<id>/<name>``.

    Cannot equal an old base tag (``gradflow``, ``gradflow/<name>``: no ``@``
    right after the prefix), nor another watcher's layout tag (names hold no
    ``/``, so the name is everything after the first ``/``).
    """
    tag = f"{TAG_PREFIX}@{layout_id(layout)}"
    return tag if not layout.name else f"{tag}/{layout.name}"


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
        types: for each layer, the class name of the module that owns its
            parameter (``Linear``, ``LSTM``; "" if unknown), shown beside the
            name (an ``nn.Sequential``'s layers are named ``0``, ``1``, ...);
            () in files written before it was recorded.
        version: the format version this layout was written with.
    """

    layers: tuple[str, ...]
    stats: tuple[str, ...] = dataclasses.field(
        default_factory=lambda: stats_module.names("gradient")
    )
    step_fields: tuple[str, ...] = STEP_FIELDS
    every: int = 1
    name: str | None = None
    sparse: tuple[bool, ...] = ()
    numel: tuple[int, ...] = ()
    types: tuple[str, ...] = ()
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
                "types": list(self.types),
            }
        ).encode("utf-8")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a watcher's name (the ``name`` of ``watch`` and of
    a layout), or None: it must be None or a non-empty str without ``/``
    (it ends a tag, and ``/`` separates a tag's parts)."""
    if name is None or (isinstance(name, str) and name and "/" not in name):
        return None
    return f"Invalid name: {name!r} (a non-empty str without '/')"


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
        FormatError: if ``content`` is not a gradflow layout; the message says
            which field is wrong and how.
    """
    try:
        raw = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _invalid(f"not UTF-8 JSON ({e})") from e
    if not isinstance(raw, dict):
        raise _invalid(f"not a JSON object: {reprlib.repr(raw)}")
    layers = _list(raw, "layers", str, required=True)
    if not layers:
        raise _invalid("'layers' is empty")
    layout = Layout(
        layers=layers,
        stats=_list(raw, "stats", str, required=True),
        step_fields=_list(raw, "step_fields", str),
        every=_value(raw, "every", int, 1),
        name=_value(raw, "name", str, None, nullable=True),
        sparse=_list(raw, "sparse", bool) or (False,) * len(layers),
        numel=_list(raw, "numel", int),
        types=_list(raw, "types", str),
        version=_value(raw, "version", int),
    )
    for field in ("layers", "stats", "step_fields"):
        counts = collections.Counter(getattr(layout, field))
        repeated = [name for name, n in counts.items() if n > 1]
        if repeated:
            raise _invalid(f"{field!r} repeats {reprlib.repr(repeated)}")
    for field in ("sparse", "numel", "types"):
        n = len(getattr(layout, field))
        if n and n != len(layers):
            raise _invalid(f"{n} {field!r} entries for {len(layers)} layers")
    if layout.every < 1:
        raise _invalid(f"'every' is {layout.every}, not a positive integer")
    problem = name_problem(layout.name)
    if problem is not None:
        raise _invalid(problem)
    if not layout.stats:
        raise _invalid("'stats' is empty")
    return layout


def _invalid(problem: str) -> FormatError:
    return FormatError(f"Invalid gradflow plugin metadata: {problem}")


_KIND_NAMES = {int: "an integer", str: "a string", bool: "a boolean"}
_REQUIRED = object()  # the default of a field that must be there


def _is(value: object, kind: type) -> bool:
    # JSON true/false are bools, and bool is a subclass of int: not an integer here.
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _value(
    raw: dict, key: str, kind: type, default: Any = _REQUIRED, *, nullable: bool = False
) -> Any:
    """``raw[key]``, of type ``kind`` (or null if ``nullable``); ``default`` when
    absent."""
    if key not in raw:
        if default is _REQUIRED:
            raise _invalid(f"missing {key!r}")
        return default
    value = raw[key]
    if not (_is(value, kind) or (nullable and value is None)):
        raise _invalid(f"{key!r} is {reprlib.repr(value)}, not {_KIND_NAMES[kind]}")
    return value


def _list(raw: dict, key: str, kind: type, *, required: bool = False) -> tuple:
    """``raw[key]``, a list of ``kind``, as a tuple; ``()`` when absent."""
    if key not in raw:
        if required:
            raise _invalid(f"missing {key!r}")
        return ()
    value = raw[key]
    if not isinstance(value, list) or not all(_is(x, kind) for x in value):
        raise _invalid(
            f"{key!r} is {reprlib.repr(value)}, not a list of {kind.__name__}"
        )
    return tuple(value)


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
