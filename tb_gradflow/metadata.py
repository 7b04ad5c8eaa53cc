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
import functools
import hashlib
import json
import reprlib
import warnings
from collections.abc import Callable
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
    def columns(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """Layers, statistics and step fields: layouts with equal columns hold
        their records' values alike."""
        return self.layers, self.stats, self.step_fields

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
    raw = json_object(content, _invalid)
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


_KIND_NAMES = {
    int: "an integer",
    str: "a string",
    bool: "a boolean",
    float: "a number",
}
_REQUIRED = object()  # the default of a field that must be there


def _is(value: object, kind: type) -> bool:
    # JSON true/false are bools, and bool is a subclass of int: not an integer
    # (nor a number) here; a JSON number without a fraction is a Python int.
    if kind is float:
        kind = (int, float)
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _value(
    raw: dict,
    key: str,
    kind: type,
    default: Any = _REQUIRED,
    *,
    nullable: bool = False,
    invalid: Callable[[str], FormatError] = _invalid,
) -> Any:
    """``raw[key]``, of type ``kind`` (or null if ``nullable``); ``default`` when
    absent."""
    if key not in raw:
        if default is _REQUIRED:
            raise invalid(f"missing {key!r}")
        return default
    value = raw[key]
    if not (_is(value, kind) or (nullable and value is None)):
        raise invalid(f"{key!r} is {reprlib.repr(value)}, not {_KIND_NAMES[kind]}")
    return value


def _list(
    raw: dict,
    key: str,
    kind: type,
    *,
    required: bool = False,
    invalid: Callable[[str], FormatError] = _invalid,
) -> tuple:
    """``raw[key]``, a list of ``kind``, as a tuple; ``()`` when absent."""
    if key not in raw:
        if required:
            raise invalid(f"missing {key!r}")
        return ()
    value = raw[key]
    if not isinstance(value, list) or not all(_is(x, kind) for x in value):
        raise invalid(
            f"{key!r} is {reprlib.repr(value)}, not a list of {kind.__name__}"
        )
    return tuple(value)


# -- findings that are not per-layer statistics ---------------------------------
# A watcher's non-finite origins (``watch(..., trace_nonfinite=True)``) go to a
# tag of their own, ``gradflow_events`` or ``gradflow_events/<name>``, with
# ``plugin_name == EVENTS_PLUGIN_NAME``: readers that predate them skip a plugin
# name they do not know. Each record is a scalar string tensor holding the JSON
# of one :class:`NonfiniteOrigin`; the metadata content is
# ``{"version": EVENTS_VERSION, "name": <watcher name or null>}``.

EVENTS_PLUGIN_NAME = "gradflow_events"
# The largest finite value of the floating-point dtypes, and how close to it
# inputs must come for an Inf to read as an overflow.
_DTYPE_MAX = {
    "float16": 65504.0,
    "bfloat16": 3.3895313892515355e38,
    "float32": 3.4028234663852886e38,
    "float64": 1.7976931348623157e308,
}
_NEAR_MAX = 1e3
EVENTS_VERSION = 1
PHASES = ("forward", "backward", "weights")


def events_tag(name: str | None) -> str:
    """The tag of the non-finite origins of the watcher called ``name``."""
    base = f"{TAG_PREFIX}_events"
    return base if not name else f"{base}/{name}"


@dataclasses.dataclass(frozen=True)
class NonfiniteOrigin:
    """Where a non-finite value first appeared, traced after a logged step
    whose gradient held NaN/Inf.

    Attributes:
        step: the optimizer step at which it was traced.
        since_step: the logged step whose non-finite gradient started the trace.
        phase: ``"forward"`` (a module's output, or what its code passed to
            a submodule or the data passed to the model), ``"backward"`` (a
            gradient with respect to a module's input, output or parameter) or
            ``"weights"`` (no origin could be traced: the optimizer step had
            put NaN/Inf into the parameters named by ``layers``).
        module: the module's dotted name in the model (``""``: the model
            itself; ``""`` for ``"weights"``).
        module_type: its class name (``""`` for ``"weights"``).
        where: what held the values: ``"output"``, ``"input"`` (of the
            model), ``"input of submodule '<name>'"``, ``"gradient of the
            output"``, ``"gradient of the input"`` or ``"gradient of
            <parameter>"`` (``""`` for ``"weights"``).
        nan, posinf, neginf: how many elements were NaN, +Inf, -Inf.
        largest_input: the largest finite magnitude among what the module
            received (forward: its inputs; backward: the gradient of its
            output), None if unknown: an overflow shows as Inf after inputs near
            the dtype's largest value, an invalid operation (0/0, inf - inf) as
            NaN after modest ones.
        dtype: the dtype of the non-finite tensor (``"float16"``; ``""``).
        layers: the watched layers of ``module`` (for ``"weights"``: the
            parameters holding NaN/Inf, by layer name when watched).
    """

    step: int
    since_step: int
    phase: str
    module: str = ""
    module_type: str = ""
    where: str = ""
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    largest_input: float | None = None
    dtype: str = ""
    layers: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        """One line for people: what, where, and what it looks like."""
        if self.phase == "weights":
            return (
                f"the parameters hold NaN/Inf at step {self.step} "
                f"({', '.join(self.layers)}), after the non-finite gradient "
                f"logged at step {self.since_step} was applied: later steps cannot "
                "show where it came from (a GradScaler skips such steps; a step "
                "taken with a closure is traced on its own batch)"
            )
        counts = ", ".join(
            f"{n} {label}"
            for n, label in (
                (self.nan, "NaN"),
                (self.posinf, "+Inf"),
                (self.neginf, "-Inf"),
            )
            if n
        )
        name = repr(self.module) if self.module else "the model"
        text = f"first NaN/Inf in the {self.phase} pass: {self.where} of {name}"
        if self.module_type:
            text += f" ({self.module_type})"
        text += f", {counts}"
        if self.dtype:
            text += f" in {self.dtype}"
        if self.largest_input is not None:
            text += f"; largest finite input {self.largest_input:.3g}"
            text += f" ({self._likely_cause()})"
        return text

    def _likely_cause(self) -> str:
        """What the counts and ``largest_input`` suggest: inputs within a
        factor ``_NEAR_MAX`` of the dtype's largest value overflow; Inf from
        smaller inputs is a division by zero, a log of 0, or a product or
        exponential beyond the dtype's range; NaN alone, an invalid
        operation."""
        largest = _DTYPE_MAX.get(self.dtype)
        if largest is not None and self.largest_input * _NEAR_MAX >= largest:
            return f"an overflow: inputs near the {self.dtype} maximum {largest:.4g}"
        if self.posinf or self.neginf:
            beyond = f" (beyond {largest:.4g})" if largest is not None else ""
            return f"a division by zero, a log of 0, or a result too large{beyond}?"
        return "an invalid operation such as 0/0, inf - inf or sqrt(-1)?"

    def to_json(self) -> bytes:
        fields = dataclasses.asdict(self)
        fields["layers"] = list(self.layers)
        return json.dumps({"version": EVENTS_VERSION, **fields}).encode("utf-8")

    @classmethod
    def from_json(cls, content: bytes) -> NonfiniteOrigin:
        """Parses :meth:`to_json`'s bytes.

        Raises:
            FormatError: naming the field that is wrong.
        """
        raw = json_object(content, _invalid_event)
        field = functools.partial(_value, raw, invalid=_invalid_event)
        _check_version(field("version", int), EVENTS_VERSION, _invalid_event)
        largest = field("largest_input", float, None, nullable=True)
        origin = cls(
            step=field("step", int),
            since_step=field("since_step", int),
            phase=field("phase", str),
            module=field("module", str, ""),
            module_type=field("module_type", str, ""),
            where=field("where", str, ""),
            nan=field("nan", int, 0),
            posinf=field("posinf", int, 0),
            neginf=field("neginf", int, 0),
            largest_input=None if largest is None else float(largest),
            dtype=field("dtype", str, ""),
            layers=_list(raw, "layers", str, invalid=_invalid_event),
        )
        if origin.phase not in PHASES:
            raise _invalid_event(f"'phase' is {origin.phase!r}, not one of {PHASES}")
        return origin


def create_events_metadata(name: str | None) -> summary_pb2.SummaryMetadata:
    """The ``SummaryMetadata`` of a watcher's non-finite origins."""
    content = json.dumps({"version": EVENTS_VERSION, "name": name}).encode("utf-8")
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=EVENTS_PLUGIN_NAME, content=content
        ),
        summary_description="Where NaN/Inf first appeared (tb-gradflow).",
        data_class=summary_pb2.DATA_CLASS_TENSOR,
    )


def parse_events_metadata(content: bytes) -> str | None:
    """The watcher name in the metadata of a non-finite origins tag (written by
    :func:`create_events_metadata`).

    Raises:
        FormatError: naming what is wrong, or for a newer version.
    """
    return versioned_name(content, EVENTS_VERSION, _invalid_event)


def json_object(content: bytes, invalid: Callable[[str], FormatError]) -> dict:
    """``content`` read as a UTF-8 JSON object.

    Raises:
        FormatError: made by ``invalid`` from what is wrong.
    """
    try:
        raw = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise invalid(f"not UTF-8 JSON ({e})") from e
    if not isinstance(raw, dict):
        raise invalid(f"not a JSON object: {reprlib.repr(raw)}")
    return raw


def versioned_name(
    content: bytes, newest: int, invalid: Callable[[str], FormatError]
) -> str | None:
    """The watcher name of a metadata content ``{"version": v, "name": n}``
    (a watcher's non-finite origins, its overview records), whose ``v`` this
    version reads up to ``newest``.

    Raises:
        FormatError: made by ``invalid``, naming what is wrong.
    """
    raw = json_object(content, invalid)
    _check_version(_value(raw, "version", int, invalid=invalid), newest, invalid)
    name = _value(raw, "name", str, None, nullable=True, invalid=invalid)
    problem = name_problem(name)
    if problem is not None:
        raise invalid(problem)
    return name


def _check_version(
    version: int, newest: int, invalid: Callable[[str], FormatError]
) -> None:
    if version > newest:
        raise invalid(
            f"written with version {version}, newer than this tb-gradflow "
            f"understands ({newest}): upgrade tb-gradflow"
        )


def _invalid_event(problem: str) -> FormatError:
    return FormatError(f"Invalid gradflow non-finite origin: {problem}")


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
