"""The Gradient Flow tab: TensorBoard plugin backend.

Routes (``/data/plugin/gradflow/...``, documented in ``http_api.md``): ``runs``,
``flow``, ``steps``, ``heatmap`` (JSON or float32 binary), ``alerts``, ``triage``
(``triage.py``) and the tab's static files. Data is read only through
``context.data_provider``, so the plugin works with the Rust data server and
with ``--load_fast=false``.

A decoded run is cached per (experiment, run, tag) and read again only when
``list_tensors`` shows new data (checked at most once a second per run); its
diagnosis and heatmaps are cached with it.

Import-light: numpy, werkzeug and TensorBoard only, never torch.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import gzip
import importlib.resources
import json
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tensorboard import errors, plugin_util
from tensorboard.backend import http_util, json_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tb_gradflow import metadata, reader, stats, triage
from tb_gradflow.diagnosis import Finding, Thresholds, diagnose
from tb_gradflow.loader import DEFAULT_SAMPLES_PER_RUN

__all__ = ["GradFlowPlugin"]

logger = logging.getLogger(__name__)

PLUGIN_NAME = metadata.PLUGIN_NAME
STATIC_FILES = (
    "index.js",
    "state.js",
    "present.js",
    "api.js",
    "loader.js",
    "paint.js",
    "model.js",
    "scale.js",
    "chart.js",
    "views.js",
    "style.css",
)
"""Frontend files always routed (404 while missing); other ``frontend/`` files
with a served suffix are routed too if present when TensorBoard starts."""

_CONTENT_TYPES = {
    ".js": "text/javascript",  # explicit: mimetypes can be wrong (TB #3120)
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_STATIC_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
# read_tensors' downsample for --samples_per_plugin=gradflow=0 ("keep all"):
# downsample=0 would read nothing.
_KEEP_ALL = 2**31 - 1  # steps
_READ_BYTES = 192 * 2**20  # one read_tensors reply, below gRPC's 256 MiB limit
_DEFAULT_HEATMAP_COLUMNS = 1000  # step columns
_MAX_HEATMAP_COLUMNS = 100_000  # step columns
_CACHE_BYTES = 1 << 30  # decoded float32 statistics kept, all runs together
_CACHED_BODIES = 16  # encoded heatmaps per run version
_CACHED_DIAGNOSES = 8  # threshold sets per run version
_MAX_WARNED = 4096  # keys _warn_new remembers beyond those of the latest listing
_INT = re.compile(r"^-?[0-9]{1,18}$")  # fits int64
_THRESHOLD_TYPES = {f.name: f.type for f in dataclasses.fields(Thresholds)}
# A sanity bound only: the diagnosis takes a window longer than the run as the
# whole run, and neither its memory nor its time grows with the window.
_MAX_EXPLODE_WINDOW = 1_000_000  # logged steps
_INT_THRESHOLD_RANGES = {"explode_window": (3, _MAX_EXPLODE_WINDOW)}


class GradFlowPlugin(base_plugin.TBPlugin):
    """Per-layer gradient statistics logged by ``tb_gradflow.watch``."""

    plugin_name = PLUGIN_NAME
    # Seconds a run's list_tensors answer is trusted (TensorBoard reloads every
    # 5 s). With the Rust data server a list_tensors call often takes ~45 ms
    # (replies stall on delayed ACKs), more than a cached `flow` answer.
    listing_ttl = 1.0

    def __init__(self, context: base_plugin.TBContext) -> None:
        self._data_provider = context.data_provider
        self._logdir = context.logdir  # to check what was read against the files
        hint = (context.sampling_hints or {}).get(PLUGIN_NAME)
        # TensorBoard already dropped what its own limit did not keep; read the rest.
        self._downsample = (
            DEFAULT_SAMPLES_PER_RUN if hint is None else (int(hint) or _KEEP_ALL)
        )
        self._cache = _RunCache(_CACHE_BYTES)
        self._listings: dict[tuple[str, str], tuple[float, dict]] = {}
        self._listings_lock = threading.Lock()
        # Keys of the warnings _warn_new logged, least recently listed first.
        self._warned: collections.OrderedDict[tuple, None] = collections.OrderedDict()

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
            "/heatmap": self._heatmap_route,
            "/alerts": self._alerts_route,
            "/triage": self._triage_route,
        }
        for name in _static_names():
            apps["/" + name] = self._static_route(name)
        return apps

    # Routes: parse arguments, call an *_impl, respond.

    @wrappers.Request.application
    def _runs_route(self, request: wrappers.Request) -> wrappers.Response:
        ctx, experiment = _context(request)
        return _json(request, self.runs_impl(ctx, experiment))

    @wrappers.Request.application
    def _flow_route(self, request: wrappers.Request) -> wrappers.Response:
        ctx, experiment = _context(request)
        run, tag = _run_tag(request.args)
        step = _int_arg(request.args, "step")
        return _json(request, self.flow_impl(ctx, experiment, run, tag, step))

    @wrappers.Request.application
    def _steps_route(self, request: wrappers.Request) -> wrappers.Response:
        ctx, experiment = _context(request)
        run, tag = _run_tag(request.args)
        return _json(request, self.steps_impl(ctx, experiment, run, tag))

    @wrappers.Request.application
    def _heatmap_route(self, request: wrappers.Request) -> wrappers.Response:
        ctx, experiment = _context(request)
        run, tag = _run_tag(request.args)
        stat = _arg(request.args, "stat", required=True)
        columns = _int_arg(request.args, "max_steps", 1, _MAX_HEATMAP_COLUMNS)
        fmt = _arg(request.args, "format") or "json"
        args = (ctx, experiment, run, tag, stat, columns or _DEFAULT_HEATMAP_COLUMNS)
        body, content_type, encoding = self.heatmap_body_impl(*args, fmt=fmt)
        return http_util.Respond(request, body, content_type, content_encoding=encoding)

    @wrappers.Request.application
    def _alerts_route(self, request: wrappers.Request) -> wrappers.Response:
        ctx, experiment = _context(request)
        run, tag = _run_tag(request.args)
        thresholds = _thresholds(request.args)
        return _json(request, self.alerts_impl(ctx, experiment, run, tag, thresholds))

    @wrappers.Request.application
    def _triage_route(self, request: wrappers.Request) -> wrappers.Response:
        ctx, experiment = _context(request)
        return _json(request, self.triage_impl(ctx, experiment))

    def _static_route(self, name: str) -> Callable:
        """The route of one frontend file; the name comes from the route table,
        never from the URL."""

        @wrappers.Request.application
        def serve(request: wrappers.Request) -> wrappers.Response:
            body = _read_static(name)
            return http_util.Respond(request, body, _CONTENT_TYPES[Path(name).suffix])

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
        now = time.monotonic()
        listing = self._data_provider.list_tensors(
            ctx, experiment_id=experiment, plugin_name=PLUGIN_NAME
        )
        self._remember(experiment, listing, now)
        problems = {}  # (experiment, run, tag, kind) -> message
        out = []
        known = {s.name: s for s in stats.statistics()}  # one registry snapshot
        always = [name for name, s in known.items() if s.reads == "gradient"]
        for run in sorted(listing):
            tags = listing[run]
            watchers, unreadable = _watchers(tags)
            for tag, why in unreadable.items():  # unreadable or newer format
                problems[(experiment, run, tag, "layout")] = (
                    f"gradflow: left out run {run!r}, tag {tag!r}: {why}"
                )
            for tag, members in sorted(watchers.items()):
                key = (experiment, run, tag)
                found = self._cache.peek(key)
                if found is not None and found[1].problem is not None:
                    # any version: the damage stays in the files as steps are added
                    problems[(*key, "problem")] = _problem_warning(
                        run, tag, found[1].problem
                    )
                out.append(self._listed(run, tag, tags, members, found, always))
        self._warn_new(experiment, problems)
        named = dict.fromkeys(name for entry in out for name in entry["stats"])
        return {"runs": out, "stats": {n: _described(known.get(n)) for n in named}}

    def _listed(
        self,
        run: str,
        tag: str,
        tags: dict[str, provider.TensorTimeSeries],
        members: list[str],
        found: tuple[tuple, _Entry] | None,
        always: list[str],
    ) -> dict[str, Any]:
        """One watcher's ``runs`` entry: layouts, last step and wall time from
        the listing; the kept steps from ``found`` (the cached ``(version,
        entry)``) when it is this version and readable; its statistics from
        its layouts and ``always`` (see :func:`_listed_stats`)."""
        layouts = [_LAYOUTS.parse(tags[t].plugin_content) for t in members]
        layers = dict.fromkeys(n for lo in layouts for n in lo.layers)
        entry = {
            "run": run,
            "tag": tag,
            "name": layouts[0].name,
            "layers": len(layers),
            "last_step": max(int(tags[t].max_step) for t in members),
            # as reader.merge_records merges layer sets: the largest interval
            "every": max(lo.every for lo in layouts),
            "last_wall_time": max(float(tags[t].max_wall_time) for t in members),
            "steps": None,
            "first_step": None,
            "expected_steps": None,
            **_listed_stats(layouts, always),
        }
        if (
            found is not None
            and found[0] == _version(tags, members)
            and found[1].problem is None
            and len(found[1].run.steps)
        ):
            entry.update(steps=len(found[1].run.steps), **_kept(found[1].run))
        return entry

    def flow_impl(
        self, ctx, experiment: str, run: str, tag: str | None, step: int | None
    ) -> dict[str, Any]:
        """The ``flow`` answer: one logged step (nearest to ``step``; None: last)."""
        entry = self._load(ctx, experiment, run, tag)
        data = entry.run
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
        }

    def steps_impl(
        self, ctx, experiment: str, run: str, tag: str | None
    ) -> dict[str, Any]:
        """The ``steps`` answer: the logged steps TensorBoard kept, ascending,
        how many were logged, and the records left out."""
        entry = self._load(ctx, experiment, run, tag)
        return {
            "run": run,
            "tag": entry.tag,
            "steps": entry.run.steps.tolist(),
            "first_step": int(entry.run.steps[0]),
            "last_step": int(entry.run.steps[-1]),
            "every": entry.run.every,
            "expected_steps": _kept(entry.run)["expected_steps"],
            "left_out": _left_out(entry.run),
        }

    def heatmap_impl(
        self,
        ctx,
        experiment: str,
        run: str,
        tag: str | None,
        stat: str,
        max_steps: int = _DEFAULT_HEATMAP_COLUMNS,
    ) -> dict[str, Any]:
        """The ``heatmap`` JSON answer (``values`` is ``[layer][column]``)."""
        entry = self._load(ctx, experiment, run, tag)
        header, values = entry.heatmap(stat, max_steps)
        return {**header, "values": values.tolist()}

    def heatmap_body_impl(
        self,
        ctx,
        experiment: str,
        run: str,
        tag: str | None,
        stat: str,
        max_steps: int,
        *,
        fmt: str,
    ) -> tuple[bytes, str, str | None]:
        """The encoded ``heatmap`` answer: ``(body, content type, encoding)``.

        Cached per run version, so a repeated request costs no JSON cleaning,
        ``json.dumps`` or gzip.
        """
        if fmt not in ("json", "binary"):
            raise errors.InvalidArgumentError(
                f"Invalid format: {fmt!r} (json or binary)"
            )
        entry = self._load(ctx, experiment, run, tag)
        return entry.body(
            (stat, max_steps, fmt), lambda: _encode_heatmap(entry, stat, max_steps, fmt)
        )

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
        entry = self._load(ctx, experiment, run, tag)
        return {
            "run": run,
            "tag": entry.tag,
            "thresholds": dataclasses.asdict(thresholds),
            "alerts": [f.to_dict() for f in entry.findings(thresholds)],
        }

    def triage_impl(self, ctx, experiment: str) -> dict[str, Any]:
        """The ``triage`` answer: every watcher ranked by its most severe
        finding, judged without reading every run in full (``triage.py``)."""
        return {"runs": [t.to_dict() for t in triage.triage(self, ctx, experiment)]}

    def _warn_new(self, experiment: str, problems: dict[tuple, str]) -> None:
        """Logs as a warning each of a ``runs`` listing's ``problems`` (key:
        message) that the previous listings did not have: the tab asks for
        ``runs`` every 5 s.

        A key is ``(experiment, run, tag, kind)``, not the text, which can hold
        counts that grow while the run trains. The keys of ``experiment`` that
        this listing lacks are forgotten (a problem that comes back is logged
        again); those it has are all kept, however many, so each is logged once
        while it lasts. Of other experiments' keys, the ``_MAX_WARNED`` least
        recently listed are kept.
        """
        with self._listings_lock:
            new = [key for key in problems if key not in self._warned]
            gone = [k for k in self._warned if k[0] == experiment and k not in problems]
            for key in gone:
                del self._warned[key]
            for key in problems:
                self._warned[key] = None
                self._warned.move_to_end(key)
            # problems' keys are last: the oldest ones are other experiments'
            while len(self._warned) > len(problems) + _MAX_WARNED:
                self._warned.popitem(last=False)
        for key in new:
            logger.warning("%s", problems[key])

    def _warn_once(self, key: tuple, message: str) -> None:
        """Logs ``message`` unless the warning of ``key`` (see :meth:`_warn_new`)
        was logged and not forgotten since: a run read by another route than
        ``runs`` is warned about at once, and not again at the next listing."""
        with self._listings_lock:
            if key in self._warned:
                self._warned.move_to_end(key)
                return
            self._warned[key] = None
        logger.warning("%s", message)

    # Data access.

    def _load(self, ctx, experiment: str, run: str, tag: str | None) -> _Entry:
        """The cached decoded watcher for ``run`` and ``tag`` (None: its only
        watcher). ``tag`` is a watcher's base tag (``metadata.tag_for``), or any
        of its layout tags.

        Raises:
            NotFoundError: unknown run or tag, data this version cannot read, or
                steps whose layers cannot be told (see :meth:`_read`).
            InvalidArgumentError: no ``tag`` for a run with several watchers.
        """
        tags = self._run_listing(ctx, experiment, run)
        if not tags:
            raise errors.NotFoundError(f"No gradflow data for run {run!r}")
        watchers, _ = _watchers(tags)
        if tag is None:
            if len(watchers) > 1:
                raise errors.InvalidArgumentError(
                    f"Run {run!r} has several gradflow tags "
                    f"({', '.join(sorted(watchers))}): pass tag"
                )
            if not watchers:  # raises NotFoundError: unreadable
                first = sorted(tags)[0]
                _layout(tags[first].plugin_content, run, first)
            (tag,) = watchers
        elif tag not in watchers:
            if tag not in tags:
                raise errors.NotFoundError(
                    f"No gradflow data for run {run!r}, tag {tag!r}"
                )
            # a layout tag: its watcher (raises NotFoundError if unreadable)
            tag = metadata.tag_for(_layout(tags[tag].plugin_content, run, tag).name)
        entry = self._entry(ctx, experiment, run, tag, tags, watchers[tag])
        if entry.problem is not None:
            self._warn_once(
                (experiment, run, tag, "problem"),
                _problem_warning(run, tag, entry.problem),
            )
            raise errors.NotFoundError(f"Run {run!r}, tag {tag!r}: {entry.problem}")
        if not len(entry.run.steps):
            raise errors.NotFoundError(
                f"No readable steps for run {run!r}, tag {tag!r}"
            )
        return entry

    def _run_listing(
        self, ctx, experiment: str, run: str
    ) -> dict[str, provider.TensorTimeSeries]:
        """``list_tensors`` for one run, trusted for ``listing_ttl`` seconds."""
        key = (experiment, run)
        now = time.monotonic()
        with self._listings_lock:
            cached = self._listings.get(key)
        if cached is not None and now - cached[0] < self.listing_ttl:
            return cached[1]
        tags = self._data_provider.list_tensors(
            ctx,
            experiment_id=experiment,
            plugin_name=PLUGIN_NAME,
            run_tag_filter=provider.RunTagFilter(runs=[run]),
        ).get(run, {})
        self._remember(experiment, {run: tags}, now)
        return tags

    def _remember(self, experiment: str, listing: dict, now: float) -> None:
        with self._listings_lock:
            for run, tags in listing.items():
                if tags:  # unknown runs are asked again: no growth from bad names
                    self._listings[(experiment, run)] = (now, tags)

    def _entry(
        self,
        ctx,
        experiment: str,
        run: str,
        tag: str,
        tags: dict[str, provider.TensorTimeSeries],
        members: list[str],
    ) -> _Entry:
        """The decoded watcher of base tag ``tag``, whose layout tags are
        ``members`` (series in ``tags``)."""
        contents = {t: tags[t].plugin_content for t in members}
        return self._cache.get(
            (experiment, run, tag),
            _version(tags, members),
            lambda: self._read(ctx, experiment, run, tag, contents),
        )

    def _read(
        self, ctx, experiment: str, run: str, tag: str, contents: dict[str, bytes]
    ) -> _Entry:
        """Reads one watcher's layout tags (``contents``: tag -> metadata) and
        merges them by layer name (``reader.merge_records``): layer sets in order
        of their first record's wall time (then step), a step logged twice keeps
        the later record, a layer absent from a step's layer set is ``absent`` there.

        TensorBoard keeps only the first plugin metadata of a tag. Records of
        another size in a tag cannot be matched to layers: files written before
        layout tags put every layer set of a watcher under its base tag. Such a
        watcher is refused (``problem``) rather than shown without them.
        """
        layouts = {t: _layout(c, run, t) for t, c in contents.items()}
        read = functools.partial(
            self._data_provider.read_tensors,
            ctx,
            experiment_id=experiment,
            plugin_name=PLUGIN_NAME,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=sorted(layouts)),
        )
        try:
            data = read(downsample=self._downsample)
        except Exception as e:
            if _grpc_status(e) != "RESOURCE_EXHAUSTED":
                raise
            # TensorBoard's gRPC client takes replies up to 256 MiB: 500 layers
            # x 5 statistics is 10 kB a step, so ~25,000 steps at once.
            size = sum(lo.size for lo in layouts.values())
            points = max(_READ_BYTES // (4 * size + 64 * len(layouts)), 1)
            logger.warning(
                "gradflow: run %r tag %r does not fit in one data-server reply; "
                "showing %d of its steps",
                run,
                tag,
                points,
            )
            data = read(downsample=min(self._downsample, points))
        found = {t: s for t, s in data.get(run, {}).items() if t in layouts and s}
        if not found:
            raise errors.NotFoundError(f"No gradflow data for run {run!r}, tag {tag!r}")
        # Layer sets by their first record's wall time (ties: first step).
        order = sorted(
            found,
            key=lambda t: (
                min(d.wall_time for d in found[t]),
                min(d.step for d in found[t]),
                t,
            ),
        )
        records, bad, total = [], 0, 0
        for p, t in enumerate(order):
            size = layouts[t].size
            for k, datum in enumerate(found[t]):
                total += 1
                flat = datum.numpy.reshape(-1)
                if flat.size != size:
                    bad += 1
                    continue
                records.append((datum.wall_time, p, k, datum.step, flat))
        parts = [layouts[t] for t in order]
        if bad:
            problem = (
                "the layer set changed between writer sessions: "
                f"{bad} of {total} steps do not have the values of their tag's "
                "first layout, and TensorBoard keeps only a tag's first layout, "
                "so their values cannot be matched to layers (files written "
                "before each layer set got its own tag). Read the run with "
                "tb_gradflow.load_run() (it matches layers by name)."
            )
            empty = reader.merge_records(run, parts, [], [], [])
            return _Entry(tag, empty, problem)
        records.sort(key=lambda r: r[:3])  # wall time, layer set, order in tag
        steps = [r[3] for r in records]
        rows = [r[4] for r in records]
        part = [r[1] for r in records]
        merged = reader.merge_records(run, parts, steps, rows, part)
        stop = self._stopped_early(run, set(layouts), max(steps, default=-1))
        if stop is not None:
            merged.left_out.append(stop)
        return _Entry(tag, merged)

    def _stopped_early(
        self, run: str, tags: set[str], served: int
    ) -> reader.LeftOut | None:
        """Whether the run's event files hold a later step of ``tags`` than the
        data provider served (it stopped reading a file at a damaged record:
        TensorBoard's Python loader does), said as a left-out entry. Only for a
        local log directory; reads record headers and the files' last events."""
        run_dir = os.path.join(self._logdir or "", run)
        if not self._logdir or not os.path.isdir(run_dir):
            return None
        try:
            last = reader.last_written_step(run_dir, tags)
        except OSError:
            return None
        if last is None or last[0] <= served:
            return None
        step, path = last
        return reader.LeftOut(
            None,
            f"TensorBoard stopped reading {os.path.basename(path)} before its end "
            f"(at a damaged record): steps after {served} up to {step} are in the "
            "file but not shown; tb-gradflow report reads past damaged records",
        )


def _version(tags: dict[str, provider.TensorTimeSeries], members) -> tuple:
    """What identifies the data of a watcher's layout tags ``members``: a
    cached decoded copy is used only while this is unchanged."""
    return tuple(
        (t, tags[t].max_step, tags[t].max_wall_time, tags[t].plugin_content)
        for t in members
    )


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


def _kept(run: reader.GradFlowRun) -> dict[str, int]:
    """The first kept step, and how many steps the watcher logged, estimated
    from the first and last kept steps (TensorBoard always keeps the last)."""
    first, last = int(run.steps[0]), int(run.steps[-1])
    return {"first_step": first, "expected_steps": (last - first) // run.every + 1}


def _problem_warning(run: str, tag: str, problem: str) -> str:
    return f"gradflow: cannot show run {run!r}, tag {tag!r}: {problem}"


def _left_out(run: reader.GradFlowRun) -> list[dict[str, Any]]:
    """The records left out of ``run``, for an answer: step (null when unknown)
    and reason."""
    return [{"step": lo.step, "reason": lo.reason} for lo in run.left_out]


class _Entry:
    """One decoded run version with its derived answers (diagnoses, heatmaps)."""

    def __init__(
        self, tag: str, run: reader.GradFlowRun, problem: str | None = None
    ) -> None:
        self.tag = tag
        self.run = run
        self.problem = problem  # why the run cannot be shown; None: it can
        self.nbytes = run._values.nbytes
        self._lock = threading.RLock()  # one diagnosis or heatmap at a time
        self._findings: collections.OrderedDict = collections.OrderedDict()
        self._bodies: collections.OrderedDict = collections.OrderedDict()
        self._heatmap: tuple[tuple[str, int], tuple[dict, np.ndarray]] | None = None

    def findings(self, thresholds: Thresholds) -> list[Finding]:
        with self._lock:
            return _memo(
                self._findings,
                thresholds,
                lambda: diagnose(self.run, thresholds),
                _CACHED_DIAGNOSES,
            )

    def heatmap(self, stat: str, columns: int) -> tuple[dict[str, Any], np.ndarray]:
        """``(header, values)``: the JSON answer without ``values``, and
        ``values`` ``(L, N)`` float32."""
        if stat not in self.run.stats:
            raise errors.InvalidArgumentError(
                f"Invalid stat: {stat!r} (one of {', '.join(self.run.stats)})"
            )
        if not 1 <= columns <= _MAX_HEATMAP_COLUMNS:
            raise errors.InvalidArgumentError(
                f"Invalid max_steps: {columns!r} (from 1 to {_MAX_HEATMAP_COLUMNS})"
            )
        with self._lock:  # keeps the latest only: the encoded bodies are reused
            if self._heatmap is None or self._heatmap[0] != (stat, columns):
                matrix = _heatmap(self.run, self.tag, stat, columns)
                self._heatmap = ((stat, columns), matrix)
            return self._heatmap[1]

    def body(self, key: tuple, make: Callable[[], Any]) -> Any:
        with self._lock:
            return _memo(self._bodies, key, make, _CACHED_BODIES)


def _memo(cache: collections.OrderedDict, key, make: Callable[[], Any], size: int):
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = make()
    while len(cache) > size:
        cache.popitem(last=False)
    return value


class _RunCache:
    """Decoded runs by (experiment, run, tag), least recently used out first.

    An entry is replaced when the data provider's ``(max_step, max_wall_time,
    plugin_content)`` for it changes. Concurrent requests for the same stale key
    wait for one read instead of reading in parallel.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[tuple, tuple[tuple, _Entry]] = (
            collections.OrderedDict()
        )
        self._reading: dict[tuple, threading.Lock] = {}

    def get(self, key: tuple, version: tuple, read: Callable[[], _Entry]) -> _Entry:
        with self._lock:
            hit = self._lookup(key, version)
            if hit is not None:
                return hit
            key_lock = self._reading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                hit = self._lookup(key, version)
            if hit is not None:
                return hit
            entry = read()
            with self._lock:
                self._entries[key] = (version, entry)
                self._entries.move_to_end(key)
                self._evict()
            return entry

    def peek(self, key: tuple) -> tuple[tuple, _Entry] | None:
        """The cached ``(version, entry)`` of ``key``, whatever its version,
        without reading and without counting as a use."""
        with self._lock:
            return self._entries.get(key)

    def _lookup(self, key: tuple, version: tuple) -> _Entry | None:
        cached = self._entries.get(key)
        if cached is None or cached[0] != version:
            return None
        self._entries.move_to_end(key)
        return cached[1]

    def _evict(self) -> None:
        total = sum(entry.nbytes for _, entry in self._entries.values())
        while total > self._max_bytes and len(self._entries) > 1:
            _, (_, entry) = self._entries.popitem(last=False)
            total -= entry.nbytes


def _heatmap(
    run: reader.GradFlowRun, tag: str, stat: str, columns: int
) -> tuple[dict[str, Any], np.ndarray]:
    """Bins the kept steps into at most ``columns`` columns (rule: http_api.md).

    Shape:
        - returns values: ``(L, N)`` float32, ``N = min(columns, T)``
    """
    steps = run.steps
    n_steps = len(steps)
    n = min(columns, n_steps)
    starts = (np.arange(n, dtype=np.int64) * n_steps) // n  # first index of each bin
    ends = np.append(starts[1:], n_steps) - 1  # last index of each bin
    values = run.values(stat)  # (T, L)
    has_grad = ~(run.no_grad | run.absent)  # (T, L)
    finite = np.isfinite(values)
    best = np.maximum.reduceat(
        np.where(has_grad & finite, values, -np.inf), starts, axis=0
    )  # (N, L)
    bad = np.logical_or.reduceat(has_grad & ~finite, starts, axis=0)
    seen = np.logical_or.reduceat(has_grad, starts, axis=0)
    present = np.logical_or.reduceat(~run.absent, starts, axis=0)
    # NaN: no gradient in the bin; -inf: the layer is in none of its steps'
    # layer sets (no statistic is negative, so -inf is never a value)
    empty = np.where(present, np.nan, -np.inf)
    out = np.where(bad, np.inf, np.where(seen, best, empty)).astype(np.float32)
    header = {
        "run": run.path,
        "tag": tag,
        "stat": stat,
        "layers": list(run.layers),
        "types": list(run.types),
        "steps": steps[starts].tolist(),
        "first_steps": steps[starts].tolist(),
        "last_steps": steps[ends].tolist(),
        "downsampled": bool(n < n_steps),
        "logged": stat not in run.not_logged,
    }
    return header, np.ascontiguousarray(out.T)  # (L, N)


def _encode_heatmap(
    entry: _Entry, stat: str, columns: int, fmt: str
) -> tuple[bytes, str, str | None]:
    header, values = entry.heatmap(stat, columns)
    if fmt == "binary":
        head = json.dumps(header, ensure_ascii=False, allow_nan=False).encode("utf-8")
        pad = b"\0" * (-(4 + len(head)) % 4)  # float32 values start 4-byte aligned
        body = (
            struct.pack("<I", len(head)) + head + pad + values.astype("<f4").tobytes()
        )
        return body, "application/octet-stream", None
    # As http_util.Respond would encode it (NaN as "NaN"), but done once per version.
    text = json.dumps(json_util.Cleanse({**header, "values": values.tolist()}))
    return (
        gzip.compress(text.encode("ascii"), compresslevel=3, mtime=0),
        "application/json",
        "gzip",
    )


# Request parsing and helpers.


def _grpc_status(error: Exception) -> str | None:
    """The gRPC status name of ``error`` (grpc.RpcError), else None."""
    code = getattr(error, "code", None)
    return getattr(code(), "name", None) if callable(code) else None


def _context(request: wrappers.Request) -> tuple[Any, str]:
    return plugin_util.context(request.environ), plugin_util.experiment_id(
        request.environ
    )


def _json(request: wrappers.Request, payload: dict) -> wrappers.Response:
    return http_util.Respond(request, payload, "application/json")


def _arg(args, name: str, *, required: bool = False) -> str | None:
    """A query parameter; an empty value counts as absent."""
    value = args.get(name) or None
    if value is None and required:
        raise errors.InvalidArgumentError(f"Missing parameter: {name}")
    return value


def _run_tag(args) -> tuple[str, str | None]:
    return _arg(args, "run", required=True), _arg(args, "tag")


def _int_arg(
    args, name: str, lo: int | None = None, hi: int | None = None
) -> int | None:
    value = _arg(args, name)
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


def _thresholds(args) -> Thresholds:
    """The diagnosis thresholds from query parameters (defaults for absent ones)."""
    given: dict[str, Any] = {}
    for name, kind in _THRESHOLD_TYPES.items():
        value = _arg(args, name)
        if value is None:
            continue
        if kind in (int, "int"):
            given[name] = _int_arg(args, name, *_INT_THRESHOLD_RANGES.get(name, ()))
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


class _LayoutCache:
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


def _parse(content: bytes) -> metadata.Layout | str:
    """The layout in ``content``, or why it cannot be read."""
    try:
        layout = metadata.parse_plugin_metadata(content)
    except metadata.FormatError as e:
        return str(e)
    if layout.version > metadata.FORMAT_VERSION:
        return (
            f"written with gradflow format version {layout.version}, newer than "
            f"this tb-gradflow understands ({metadata.FORMAT_VERSION}); upgrade it"
        )
    return layout


_LAYOUTS = _LayoutCache()


def _watchers(
    tags: dict[str, provider.TensorTimeSeries],
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The tags of one run, each layout parsed once: the readable ones by
    watcher, ``{base tag: [tags]}`` (the base tag from the watcher name in each
    tag's layout, never parsed from the tag), and ``{tag: why}`` for the rest."""
    watchers: dict[str, list[str]] = {}
    unreadable: dict[str, str] = {}
    _LAYOUTS.fit(len(tags))
    for tag in sorted(tags):
        layout = _LAYOUTS.parse(tags[tag].plugin_content)
        if isinstance(layout, metadata.Layout):
            watchers.setdefault(metadata.tag_for(layout.name), []).append(tag)
        else:
            unreadable[tag] = layout
    return watchers, unreadable


def _layout(content: bytes, run: str, tag: str) -> metadata.Layout:
    layout = _LAYOUTS.parse(content)
    if isinstance(layout, str):
        raise errors.NotFoundError(f"Run {run!r}, tag {tag!r}: {layout}")
    return layout


def _frontend_dir():
    """The tab's files: ``tb_gradflow/frontend/`` in an installed wheel, else the
    top-level ``frontend/`` folder of the source checkout (editable installs:
    setuptools' editable finder cannot map a sub-package without ``__init__.py``).
    """
    installed = importlib.resources.files("tb_gradflow").joinpath("frontend")
    if installed.is_dir():
        return installed
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():  # never another project's frontend/
        return root / "frontend"
    return installed


def _static_names(folder=None) -> list[str]:
    """``STATIC_FILES`` plus the other servable files now in ``folder`` (default:
    the installed frontend)."""
    names = set(STATIC_FILES)
    folder = _frontend_dir() if folder is None else folder
    try:
        present = [f.name for f in folder.iterdir() if f.is_file()]
    except OSError:
        present = []
    names.update(
        n for n in present if _STATIC_NAME.match(n) and Path(n).suffix in _CONTENT_TYPES
    )
    return sorted(names)


def _read_static(name: str) -> bytes:
    try:
        return _frontend_dir().joinpath(name).read_bytes()
    except OSError:
        raise errors.NotFoundError(f"Frontend file not installed: {name}") from None
