"""The query parameters of the plugin's routes, parsed and checked.

Every function takes a request's ``args`` (a mapping of str to str) and raises
``tensorboard.errors.InvalidArgumentError`` (answered ``400`` with the message)
for a missing or malformed parameter, naming it. An empty value (``tag=``)
counts as absent. Rules and bounds: ``docs/format.md`` (HTTP API).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from tensorboard import errors, plugin_util
from werkzeug import wrappers

from tb_gradflow import heatmap
from tb_gradflow.layer_groups import BY
from tb_gradflow.rule_spec import Thresholds

__all__ = [
    "arg",
    "binned",
    "context",
    "group",
    "int_arg",
    "run_tag",
    "thresholds",
]

_INT = re.compile(r"^-?[0-9]{1,18}$")  # fits int64
_THRESHOLD_TYPES = {f.name: f.type for f in dataclasses.fields(Thresholds)}
# A sanity bound only: the diagnosis takes a window longer than the run as the
# whole run, and neither its memory nor its time grows with the window.
_MAX_EXPLODE_WINDOW = 1_000_000  # logged steps
# The spike rule's time grows with its window (a window longer than the run
# costs as much as one as long as the run): 1000, OLMo 2's window.
_MAX_SPIKE_WINDOW = 1000  # logged steps
_INT_THRESHOLD_RANGES = {
    "explode_window": (3, _MAX_EXPLODE_WINDOW),
    "spike_window": (6, _MAX_SPIKE_WINDOW),
}


def context(request: wrappers.Request) -> tuple[Any, str]:
    """The request's TensorBoard context and experiment id."""
    return plugin_util.context(request.environ), plugin_util.experiment_id(
        request.environ
    )


def arg(args, name: str, *, required: bool = False) -> str | None:
    """A query parameter; an empty value counts as absent."""
    value = args.get(name) or None
    if value is None and required:
        raise errors.InvalidArgumentError(f"Missing parameter: {name}")
    return value


def run_tag(args) -> tuple[str, str | None]:
    """``run`` (required) and ``tag`` (None: the run's only watcher)."""
    return arg(args, "run", required=True), arg(args, "tag")


def int_arg(
    args, name: str, lo: int | None = None, hi: int | None = None
) -> int | None:
    """An integer parameter within ``[lo, hi]`` (either bound may be None);
    None when absent."""
    value = arg(args, name)
    if value is None:
        return None
    if not _INT.match(value) or not (
        (lo is None or int(value) >= lo) and (hi is None or int(value) <= hi)
    ):
        raise errors.InvalidArgumentError(
            f"Invalid {name}: {value!r} (an integer{_bounds(lo, hi)})"
        )
    return int(value)


def _bounds(lo: int | None, hi: int | None) -> str:
    """`` from lo to hi``, `` >= lo``, `` <= hi`` or nothing."""
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def group(args) -> str:
    """``group``: ``layer`` (the default), ``block`` or ``role``."""
    value = arg(args, "group") or "layer"
    if value not in BY:
        raise errors.InvalidArgumentError(
            f"Invalid group: {value!r} (one of {', '.join(BY)})"
        )
    return value


def binned(args) -> tuple[str, int, str]:
    """``stat`` (required), ``max_steps`` (from 1 to ``heatmap.MAX_COLUMNS``;
    default ``heatmap.DEFAULT_COLUMNS``) and ``format`` (``json``, the default,
    or ``binary``) of the ``heatmap`` and ``lines`` routes."""
    stat = arg(args, "stat", required=True)
    columns = int_arg(args, "max_steps", 1, heatmap.MAX_COLUMNS)
    fmt = arg(args, "format") or "json"
    heatmap.check_format(fmt)
    return stat, columns or heatmap.DEFAULT_COLUMNS, fmt


def thresholds(args) -> Thresholds:
    """The diagnosis thresholds from query parameters (defaults for absent ones)."""
    given: dict[str, Any] = {}
    for name, kind in _THRESHOLD_TYPES.items():
        value = arg(args, name)
        if value is None:
            continue
        if kind in (int, "int"):
            given[name] = int_arg(args, name, *_INT_THRESHOLD_RANGES.get(name, ()))
            continue
        try:
            given[name] = float(value)
        except ValueError:
            raise errors.InvalidArgumentError(
                f"Invalid {name}: {value!r} (a number)"
            ) from None
    try:
        return Thresholds(**given)
    except ValueError as e:
        raise errors.InvalidArgumentError(str(e)) from None
