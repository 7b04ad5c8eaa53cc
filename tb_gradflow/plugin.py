"""The Gradient Flow tab: TensorBoard plugin backend.

Routes (``/data/plugin/gradflow/...``, documented in ``docs/format.md``): ``runs``,
``flow``, ``steps``, ``heatmap`` and ``lines`` (JSON or float32 binary),
``alerts``, ``triage``
(``triage.py``) and the tab's static files (``static.py``). Each ``*_route``
parses its query (``query.py``) and answers what its ``*_impl`` returns: plain
data, or ``tensorboard.errors`` raised. Data is read only through
``context.data_provider``, so the plugin works with the Rust data server and
with ``--load_fast=false``.

A decoded run is cached per (experiment, run, tag) and read again only when
``list_tensors`` shows new data (checked at most once a second per run); its
diagnosis, binned matrices and encoded answers are cached with it (``run_cache.py``).
Where TensorBoard did not keep every logged step, ``heatmap`` and ``lines``
draw from the watcher's overview records too (``overview_merge.py``), so
their columns hold every logged step's extremes. ``flow``, ``heatmap`` and
``lines`` answer per layer or, with ``group=block|role``, per group of layers
(``layer_groups.py``; an overview block gives a group's bounds).

Import-light: numpy, werkzeug and TensorBoard only, never torch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tb_gradflow import (
    heatmap,
    metadata,
    overview,
    query,
    reader,
    static,
    stats,
    triage,
    watchers,
)
from tb_gradflow.layer_groups import LayerGroups, group_layers
from tb_gradflow.loader import DEFAULT_SAMPLES_PER_RUN
from tb_gradflow.problem_log import ProblemLog
from tb_gradflow.rule_spec import Thresholds
from tb_gradflow.run_cache import CachedRun
from tb_gradflow.run_loader import RunLoader, problem_warning

__all__ = ["GradFlowPlugin"]

logger = logging.getLogger(__name__)

PLUGIN_NAME = metadata.PLUGIN_NAME
# read_tensors' downsample for --samples_per_plugin=gradflow=0 ("keep all"):
# downsample=0 would read nothing.
_KEEP_ALL = 2**31 - 1  # steps


class GradFlowPlugin(base_plugin.TBPlugin):
    """Per-layer gradient statistics logged by ``tb_gradflow.watch``."""

    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext) -> None:
        hints = context.sampling_hints or {}
        self._problems = ProblemLog(logger)
        self._runs = RunLoader(
            context.data_provider,
            context.logdir,
            _downsample(hints.get(PLUGIN_NAME)),
            self._problems,
            overview_downsample=_downsample(hints.get(overview.OVERVIEW_PLUGIN_NAME)),
        )

    @property
    def listing_ttl(self) -> float:
        """Seconds a run's ``list_tensors`` answer is trusted (default 1)."""
        return self._runs.listing_ttl

    @listing_ttl.setter
    def listing_ttl(self, seconds: float) -> None:
        self._runs.listing_ttl = seconds

    def is_active(self) -> bool:
        return False  # core's list_plugins() activates the tab when data exists

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(
            es_module_path="/index.js", tab_name="Gradient Flow"
        )

    def get_plugin_apps(self) -> dict[str, Callable]:
        apps: dict[str, Callable] = {
            "/runs": self._runs_route,
            "/flow": self._flow_route,
            "/steps": self._steps_route,
            "/heatmap": self._binned_route("heatmap"),
            "/lines": self._binned_route("lines"),
            "/alerts": self._alerts_route,
            "/triage": self._triage_route,
        }
        for name in static.static_names():
            apps["/" + name] = self._static_route(name)
        return apps

    # Routes: parse arguments, call an *_impl, respond.

    @wrappers.Request.application
    def _runs_route(self, request: wrappers.Request) -> wrappers.Response:
        ctx, experiment = query.context(request)
        return _json(request, self.runs_impl(ctx, experiment))

    @wrappers.Request.application
    def _flow_route(self, request: wrappers.Request) -> wrappers.Response:
        ctx, experiment = query.context(request)
        run, tag = query.run_tag(request.args)
        step = query.int_arg(request.args, "step")
        group = query.group(request.args)
        return _json(request, self.flow_impl(ctx, experiment, run, tag, step, group))

    @wrappers.Request.application
    def _steps_route(self, request: wrappers.Request) -> wrappers.Response:
        ctx, experiment = query.context(request)
        run, tag = query.run_tag(request.args)
        return _json(request, self.steps_impl(ctx, experiment, run, tag))

    @wrappers.Request.application
    def _alerts_route(self, request: wrappers.Request) -> wrappers.Response:
        ctx, experiment = query.context(request)
        run, tag = query.run_tag(request.args)
        thresholds = query.thresholds(request.args)
        return _json(request, self.alerts_impl(ctx, experiment, run, tag, thresholds))

    @wrappers.Request.application
    def _triage_route(self, request: wrappers.Request) -> wrappers.Response:
        ctx, experiment = query.context(request)
        return _json(request, self.triage_impl(ctx, experiment))

    def _binned_route(self, answer: str) -> Callable:
        """The route of a binned answer (``heatmap`` or ``lines``)."""

        @wrappers.Request.application
        def serve(request: wrappers.Request) -> wrappers.Response:
            ctx, experiment = query.context(request)
            run, tag = query.run_tag(request.args)
            stat, columns, fmt = query.binned(request.args)
            group = query.group(request.args)
            args = (ctx, experiment, run, tag, stat, columns)
            body, content_type, encoding = self.binned_body_impl(
                *args, answer=answer, fmt=fmt, group=group
            )
            return http_util.Respond(
                request, body, content_type, content_encoding=encoding
            )

        return serve

    def _static_route(self, name: str) -> Callable:
        """The route of one frontend file; the name comes from the route table,
        never from the URL."""

        @wrappers.Request.application
        def serve(request: wrappers.Request) -> wrappers.Response:
            body = static.read_static(name)
            return http_util.Respond(request, body, static.content_type(name))

        return serve

    # Implementations: builtins in, builtins out, tensorboard.errors raised.

    def runs_impl(self, ctx, experiment: str) -> dict[str, Any]:
        """The ``runs`` answer: every run and watcher with readable gradflow
        layouts, from ``list_tensors`` alone (no run is read here), with the
        statistics each watcher logged and the registered ones it lacks
        (:func:`_listed_stats`: the tab's Statistic menu), and what the
        registry says of each statistic named (``stats``: described once, not
        per watcher, as the answer is polled for every run every 5 s).

        ``steps``, ``first_step`` and ``expected_steps`` come from the plugin's
        decoded copy of the run when it has read this version of it, else they
        are None. A watcher whose steps cannot be matched to layers (old-format
        files whose layer set changed) is found only when it is read: it is
        listed, its other routes answer 404 saying why, and the warning is
        logged once while it lasts.
        """
        listing = self._runs.list_all(ctx, experiment)
        problems = {}  # (experiment, run, tag, kind) -> message
        out = []
        known = {s.name: s for s in stats.statistics()}  # one registry snapshot
        always = [name for name, s in known.items() if s.reads == "gradient"]
        for run in sorted(listing):
            tags = listing[run]
            grouped, unreadable = watchers.group(tags)
            for tag, why in unreadable.items():  # unreadable or newer format
                problems[(experiment, run, tag, "layout")] = (
                    f"gradflow: left out run {run!r}, tag {tag!r}: {why}"
                )
            for tag, layouts in sorted(grouped.items()):
                key = (experiment, run, tag)
                found = self._runs.cache.peek(key)
                if found is not None and found[1].problem is not None:
                    # any version: the damage stays in the files as steps are added
                    problems[(*key, "problem")] = problem_warning(
                        run, tag, found[1].problem
                    )
                out.append(_listed(run, tag, tags, layouts, found, always))
        self._problems.listed(experiment, problems)
        named = dict.fromkeys(name for entry in out for name in entry["stats"])
        return {"runs": out, "stats": {n: _described(known.get(n)) for n in named}}

    def flow_impl(
        self,
        ctx,
        experiment: str,
        run: str,
        tag: str | None,
        step: int | None,
        group: str = "layer",
    ) -> dict[str, Any]:
        """The ``flow`` answer: one logged step (nearest to ``step``; None:
        last), per layer or, with ``group`` ``"block"`` or ``"role"``, per
        group of layers (``members``: each group's layers; the alerts still
        name layers)."""
        entry = self._runs.load(ctx, experiment, run, tag)
        data, grouping = entry.run, {}
        if group != "layer":
            data, groups = entry.grouped(group)
            grouping = {"group": group, "members": _members(entry.run, groups)}
        i = data.index_of(step)
        at = int(data.steps[i])
        findings = entry.findings(Thresholds())
        return {
            "run": run,
            "tag": entry.tag,
            "step": at,
            "layers": list(data.layers),
            "types": list(data.types),
            "sparse": list(data.sparse),
            "stats": {s: data.values(s)[i].tolist() for s in data.stats},
            # one row, not GradFlowRun.no_grad's (T, L) arrays
            "no_grad": (
                np.isnan(data.values("nonfinite")[i]) & ~data.absent[i]
            ).tolist(),
            "absent": data.absent[i].tolist(),
            "skipped": bool(data.skipped[i]),
            "loss_scale": float(data.loss_scale[i]),
            "alerts": [f.to_dict() for f in findings if f.holds_at(at)],
            "left_out": _left_out(data),
            "not_logged": list(data.not_logged),
            **grouping,
        }

    def steps_impl(
        self, ctx, experiment: str, run: str, tag: str | None
    ) -> dict[str, Any]:
        """The ``steps`` answer: the logged steps TensorBoard kept, ascending,
        how many were logged, and the records left out."""
        entry = self._runs.load(ctx, experiment, run, tag)
        return {
            "run": run,
            "tag": entry.tag,
            "steps": entry.run.steps.tolist(),
            "first_step": int(entry.run.steps[0]),
            "last_step": int(entry.run.steps[-1]),
            "every": entry.run.every,
            "expected_steps": _kept(entry)["expected_steps"],
            "left_out": _left_out(entry.run),
        }

    def binned_impl(
        self,
        ctx,
        experiment: str,
        run: str,
        tag: str | None,
        stat: str,
        max_steps: int = heatmap.DEFAULT_COLUMNS,
        *,
        answer: str = "heatmap",
        group: str = "layer",
    ) -> dict[str, Any]:
        """The ``heatmap`` or ``lines`` JSON answer (``answer``): the binned
        header with the heatmap's ``values``, or the lines' ``max`` and ``min``
        (each ``[row][column]``), a row per layer or, with ``group``
        ``"block"`` or ``"role"``, per group of layers."""
        entry = self._runs.load(ctx, experiment, run, tag)
        header, *matrices = entry.binned(stat, max_steps, group)
        named = heatmap.matrices(answer, *matrices)
        return {**header, **{name: m.tolist() for name, m in named.items()}}

    def binned_body_impl(
        self,
        ctx,
        experiment: str,
        run: str,
        tag: str | None,
        stat: str,
        max_steps: int,
        *,
        answer: str,
        fmt: str,
        group: str = "layer",
    ) -> tuple[bytes, str, str | None]:
        """The encoded ``heatmap`` or ``lines`` answer (``answer``), per layer
        or per ``group``: ``(body, content type, encoding)``.

        Cached per run version, so a repeated request costs no JSON cleaning,
        ``json.dumps`` or gzip.
        """
        heatmap.check_format(fmt)
        entry = self._runs.load(ctx, experiment, run, tag)

        def encode() -> tuple[bytes, str, str | None]:
            header, *matrices = entry.binned(stat, max_steps, group)
            return heatmap.encode(header, heatmap.matrices(answer, *matrices), fmt)

        return entry.body((answer, stat, max_steps, fmt, group), encode)

    def alerts_impl(
        self,
        ctx,
        experiment: str,
        run: str,
        tag: str | None,
        thresholds: Thresholds | None = None,
    ) -> dict[str, Any]:
        """The ``alerts`` answer: every finding of the diagnosis rule."""
        thresholds = thresholds or Thresholds()
        entry = self._runs.load(ctx, experiment, run, tag)
        return {
            "run": run,
            "tag": entry.tag,
            "thresholds": dataclasses.asdict(thresholds),
            "alerts": [f.to_dict() for f in entry.findings(thresholds)],
        }

    def triage_impl(self, ctx, experiment: str) -> dict[str, Any]:
        """The ``triage`` answer: every watcher ranked by its most severe
        finding, judged without reading every run in full (``triage.py``)."""
        ranked = triage.triage(
            self._runs.data_provider, self._runs.cache, ctx, experiment
        )
        return {"runs": [t.to_dict() for t in ranked]}


def _downsample(hint) -> int:
    """How many records per tag to read, from a ``samples_per_plugin`` hint:
    TensorBoard already dropped what its own limit did not keep; read the rest."""
    return DEFAULT_SAMPLES_PER_RUN if hint is None else (int(hint) or _KEEP_ALL)


def _listed(
    run: str,
    tag: str,
    tags: dict[str, provider.TensorTimeSeries],
    layouts: dict[str, metadata.Layout],
    found: tuple[tuple, CachedRun] | None,
    always: list[str],
) -> dict[str, Any]:
    """One watcher's ``runs`` entry: layouts, last step and wall time from
    the listing; the kept steps from ``found`` (the cached ``(version,
    entry)``) when its per-step records are this version and it is
    readable; its statistics from its layouts and ``always`` (see
    :func:`_listed_stats`)."""
    parts = list(layouts.values())
    layers = dict.fromkeys(n for lo in parts for n in lo.layers)
    entry = {
        "run": run,
        "tag": tag,
        "name": parts[0].name,
        "layers": len(layers),
        "last_step": max(int(tags[t].max_step) for t in layouts),
        # as reader.merge_records merges layer sets: the largest interval
        "every": max(lo.every for lo in parts),
        "last_wall_time": max(float(tags[t].max_wall_time) for t in layouts),
        "steps": None,
        "first_step": None,
        "expected_steps": None,
        "groups": _group_counts(tuple(layers)),
        **_listed_stats(parts, always),
    }
    if (
        found is not None
        and found[0][0] == watchers.version(tags, layouts)
        and found[1].problem is None
        and len(found[1].run.steps)
    ):
        entry.update(steps=len(found[1].run.steps), **_kept(found[1]))
    return entry


@functools.lru_cache(maxsize=256)
def _group_counts(layers: tuple[str, ...]) -> dict[str, int]:
    """How many groups a watcher's layers make per block and per role (the
    ``runs`` answer's ``groups``; computed once per layer set)."""
    return {by: len(group_layers(layers, by).names) for by in ("block", "role")}


def _listed_stats(
    layouts: list[metadata.Layout], always: list[str]
) -> dict[str, list[str]]:
    """A watcher's statistics for its ``runs`` entry: ``stats``, those its
    layouts hold (union by name, in order of first appearance), then those of
    ``always`` (the registered statistics of the gradient, which every watcher
    logs) that they lack; ``not_logged``, the latter (written by a version
    without them, they read as NaN). A statistic a watcher may choose
    (``watch(stats=...)``) and did not is not missed, as in the report."""
    logged = dict.fromkeys(name for lo in layouts for name in lo.stats)
    lacking = [name for name in always if name not in logged]
    return {"stats": [*logged, *lacking], "not_logged": lacking}


def _described(statistic: stats.Statistic | None) -> dict[str, str] | None:
    """What the ``runs`` answer says of a statistic: the registry's
    ``meaning``, ``unit`` and ``bad``; None for one this version does not know
    (written by a process that registered it: carried through by name)."""
    if statistic is None:
        return None
    return {
        "meaning": statistic.meaning,
        "unit": statistic.unit,
        "bad": statistic.bad,
    }


def _members(run: reader.GradFlowRun, groups: LayerGroups) -> list[list[str]]:
    """Each group's layer names, for an answer."""
    return [[run.layers[j] for j in m] for m in groups.members]


def _kept(entry: CachedRun) -> dict[str, int]:
    """The first kept step, and how many steps the watcher logged: counted by
    its overview blocks when they begin where its kept steps do (each block
    says how many steps it holds), plus the kept steps after the last
    block; else estimated from the first and last kept steps (TensorBoard
    always keeps the last) and the logging interval."""
    run, blocks = entry.run, entry.overview
    first, last = int(run.steps[0]), int(run.steps[-1])
    if blocks is not None and len(blocks.steps) and blocks.first_steps[0] <= first:
        after = int(np.count_nonzero(run.steps > blocks.last_steps[-1]))
        return {"first_step": first, "expected_steps": int(blocks.steps.sum()) + after}
    return {"first_step": first, "expected_steps": (last - first) // run.every + 1}


def _left_out(run: reader.GradFlowRun) -> list[dict[str, Any]]:
    """The records left out of ``run``, for an answer: step (null when unknown)
    and reason."""
    return [{"step": lo.step, "reason": lo.reason} for lo in run.left_out]


def _json(request: wrappers.Request, payload: dict) -> wrappers.Response:
    return http_util.Respond(request, payload, "application/json")
