"""The plugin's data access: TensorBoard's listing of gradflow tags, and one
watcher of one run read through the data provider (its per-step records, its
non-finite origins and its overview records), merged by layer name and kept
in a :class:`~tb_gradflow.run_cache.RunCache` until new data arrives.

Reads only through ``context.data_provider`` (the Rust data server or the
Python multiplexer), plus, for a local log directory, the event files' last
records, to say when TensorBoard stopped reading a file early.

Import-light: numpy and TensorBoard only, never torch.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time

import numpy as np
from tensorboard import errors
from tensorboard.data import provider

from tb_gradflow import metadata, overview, overview_merge, reader, watchers
from tb_gradflow.loader import DEFAULT_SAMPLES_PER_RUN
from tb_gradflow.problem_log import ProblemLog
from tb_gradflow.run_cache import CachedRun, RunCache

__all__ = ["READ_BYTES", "RunLoader", "problem_warning"]

logger = logging.getLogger(__name__)

READ_BYTES = 192 * 2**20  # one read_tensors reply, below gRPC's 256 MiB limit
_CACHE_BYTES = 1 << 30  # decoded float32 statistics kept, all runs together
_MAX_ORIGINS = 1000  # non-finite origins read per watcher (a few per run)


def problem_warning(run: str, tag: str, problem: str) -> str:
    """The log line of a run that cannot be shown."""
    return f"gradflow: cannot show run {run!r}, tag {tag!r}: {problem}"


class RunLoader:
    """Lists and reads gradflow data through one data provider.

    Args:
        data_provider: TensorBoard's data provider.
        logdir: the local log directory (None or "" when there is none).
        downsample: how many steps per tag to read (TensorBoard's own sampling
            limit for gradflow has already dropped the rest).
        problems: where a run that cannot be shown is warned about, once.
        overview_downsample: how many overview records per tag to read.

    Attributes:
        cache: the decoded runs (the triage judges cached runs from it).
        listing_ttl: seconds a run's ``list_tensors`` answer is trusted.
    """

    def __init__(
        self,
        data_provider,
        logdir: str | None,
        downsample: int,
        problems: ProblemLog,
        *,
        overview_downsample: int = DEFAULT_SAMPLES_PER_RUN,
    ) -> None:
        self.data_provider = data_provider
        self.cache = RunCache(_CACHE_BYTES)
        # TensorBoard reloads every 5 s. With the Rust data server a
        # list_tensors call often takes ~45 ms (replies stall on delayed
        # ACKs), more than a cached `flow` answer.
        self.listing_ttl = 1.0
        self._logdir = logdir  # to check what was read against the files
        self._downsample = downsample
        self._overview_downsample = overview_downsample
        self._problems = problems
        self._listings: dict[tuple[str, str], tuple[float, dict]] = {}
        # the tags of the non-finite origins (metadata.EVENTS_PLUGIN_NAME) and
        # of the overview records, by (plugin name, experiment, run)
        self._other_listings: dict[tuple[str, str, str], tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def list_all(
        self, ctx, experiment: str
    ) -> dict[str, dict[str, provider.TensorTimeSeries]]:
        """``list_tensors`` of every run (remembered for :meth:`load`)."""
        now = time.monotonic()
        listing = self.data_provider.list_tensors(
            ctx, experiment_id=experiment, plugin_name=metadata.PLUGIN_NAME
        )
        self._remember(experiment, listing, now)
        return listing

    def load(self, ctx, experiment: str, run: str, tag: str | None) -> CachedRun:
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
        grouped, _ = watchers.group(tags)
        if tag is None:
            if len(grouped) > 1:
                raise errors.InvalidArgumentError(
                    f"Run {run!r} has several gradflow tags "
                    f"({', '.join(sorted(grouped))}): pass tag"
                )
            if not grouped:  # raises NotFoundError: unreadable
                first = sorted(tags)[0]
                watchers.layout_of(tags[first].plugin_content, run, first)
            (tag,) = grouped
        elif tag not in grouped:
            if tag not in tags:
                raise errors.NotFoundError(
                    f"No gradflow data for run {run!r}, tag {tag!r}"
                )
            # a layout tag: its watcher (raises NotFoundError if unreadable)
            layout = watchers.layout_of(tags[tag].plugin_content, run, tag)
            tag = metadata.tag_for(layout.name)
        layouts = grouped[tag]
        events = self._other_listing(
            ctx,
            experiment,
            run,
            metadata.EVENTS_PLUGIN_NAME,
            [metadata.events_tag(next(iter(layouts.values())).name)],
        )
        blocks = self._other_listing(
            ctx,
            experiment,
            run,
            overview.OVERVIEW_PLUGIN_NAME,
            sorted({overview.overview_tag(lo) for lo in layouts.values()}),
        )
        entry = self.cache.get(
            (experiment, run, tag),
            (
                watchers.version(tags, layouts),
                watchers.version(events, events) + watchers.version(blocks, blocks),
            ),
            lambda: self._read(ctx, experiment, run, tag, layouts, events, blocks),
        )
        if entry.problem is not None:
            self._problems.once(
                (experiment, run, tag, "problem"),
                problem_warning(run, tag, entry.problem),
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
        with self._lock:
            cached = self._listings.get(key)
        if cached is not None and now - cached[0] < self.listing_ttl:
            return cached[1]
        tags = self.data_provider.list_tensors(
            ctx,
            experiment_id=experiment,
            plugin_name=metadata.PLUGIN_NAME,
            run_tag_filter=provider.RunTagFilter(runs=[run]),
        ).get(run, {})
        self._remember(experiment, {run: tags}, now)
        return tags

    def _other_listing(
        self, ctx, experiment: str, run: str, plugin_name: str, wanted: list[str]
    ) -> dict[str, provider.TensorTimeSeries]:
        """The listing of ``plugin_name``'s tags in ``run`` among ``wanted``
        (a watcher's non-finite origins' tag, its overview tags), in that
        order; trusted for ``listing_ttl`` seconds."""
        key = (plugin_name, experiment, run)
        now = time.monotonic()
        with self._lock:
            cached = self._other_listings.get(key)
        if cached is None or now - cached[0] >= self.listing_ttl:
            tags = self.data_provider.list_tensors(
                ctx,
                experiment_id=experiment,
                plugin_name=plugin_name,
                run_tag_filter=provider.RunTagFilter(runs=[run]),
            ).get(run, {})
            cached = (now, tags)
            with self._lock:
                self._other_listings[key] = cached
        return {tag: cached[1][tag] for tag in wanted if tag in cached[1]}

    def _remember(self, experiment: str, listing: dict, now: float) -> None:
        with self._lock:
            for run, tags in listing.items():
                if tags:  # unknown runs are asked again: no growth from bad names
                    self._listings[(experiment, run)] = (now, tags)

    def _read(
        self,
        ctx,
        experiment: str,
        run: str,
        tag: str,
        layouts: dict[str, metadata.Layout],
        events: dict[str, provider.TensorTimeSeries],
        blocks: dict[str, provider.TensorTimeSeries],
    ) -> CachedRun:
        """Reads one watcher's layout tags and merges them by layer name
        (``watchers.merge_series``), with its non-finite origins (``events``:
        their tag's listing, or empty) and its overview records (``blocks``:
        their tags' listing, or empty).

        TensorBoard keeps only the first plugin metadata of a tag. Records of
        another size in a tag cannot be matched to layers: files written before
        layout tags put every layer set of a watcher under its base tag. Such a
        watcher is refused (``problem``) rather than shown without them.
        """
        read = functools.partial(
            self.data_provider.read_tensors,
            ctx,
            experiment_id=experiment,
            plugin_name=metadata.PLUGIN_NAME,
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
            points = max(READ_BYTES // (4 * size + 64 * len(layouts)), 1)
            logger.warning(
                "gradflow: run %r tag %r does not fit in one data-server reply; "
                "showing %d of its steps",
                run,
                tag,
                points,
            )
            data = read(downsample=min(self._downsample, points))
        series = data.get(run, {})
        try:
            merged = watchers.merge_series(run, layouts, series)
        except watchers.LayoutMismatch as e:
            empty = reader.merge_records(run, list(layouts.values()), [], [], [])
            return CachedRun(tag, empty, str(e))
        if merged is None:
            raise errors.NotFoundError(f"No gradflow data for run {run!r}, tag {tag!r}")
        self._read_origins(ctx, experiment, run, events, merged)
        served = max((d.step for t in layouts for d in series.get(t, ())), default=-1)
        stop = self._stopped_early(run, set(layouts), served)
        if stop is not None:
            merged.left_out.append(stop)
        until = {  # the last step served of each layer set's per-step records
            overview.overview_tag(lo): max(d.step for d in series[t])
            for t, lo in layouts.items()
            if series.get(t)
        }
        found = self._read_overview(
            ctx, experiment, run, layouts, blocks, until, merged
        )
        return CachedRun(tag, merged, overview=found)

    def _read_overview(
        self,
        ctx,
        experiment: str,
        run: str,
        layouts: dict[str, metadata.Layout],
        blocks: dict[str, provider.TensorTimeSeries],
        until: dict[str, int],
        merged: reader.GradFlowRun,
    ) -> overview_merge.Overview | None:
        """The watcher's overview records (``blocks``: their tags' listing),
        merged by layer name (``overview_merge``), each layer set's up to the
        last step of its per-step records (``until``, by overview tag); a tag
        or record that cannot be read is left out of ``merged``, with why. At
        most what fits one data-server reply is read: records TensorBoard did
        not serve leave their steps to the kept per-step records."""
        by_tag = {overview.overview_tag(lo): lo for lo in layouts.values()}
        usable = []
        for tag in blocks:
            try:
                overview.parse_overview_metadata(blocks[tag].plugin_content)
            except metadata.FormatError as e:
                merged.left_out.append(reader.LeftOut(None, f"{tag}: {e}"))
            else:
                usable.append(tag)
        if not usable:
            return None
        size = sum(4 * overview.record_size(by_tag[t]) + 64 for t in usable)
        data = self.data_provider.read_tensors(
            ctx,
            experiment_id=experiment,
            plugin_name=overview.OVERVIEW_PLUGIN_NAME,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=usable),
            downsample=max(min(self._overview_downsample, READ_BYTES // size), 1),
        ).get(run, {})
        parts = [
            overview_merge.OverviewPart(
                layout=by_tag[t],
                last_steps=[d.step for d in data[t]],
                walls=[d.wall_time for d in data[t]],
                rows=[np.asarray(d.numpy) for d in data[t]],
                until=until.get(t, -1),
            )
            for t in usable
            if data.get(t)
        ]
        found, left_out = overview_merge.merge_overview(merged.layers, parts)
        merged.left_out += left_out
        return found

    def _read_origins(
        self,
        ctx,
        experiment: str,
        run: str,
        events: dict[str, provider.TensorTimeSeries],
        merged: reader.GradFlowRun,
    ) -> None:
        """Sets ``merged.origins`` from the origins' tag (``events``); a record
        that cannot be read is left out, with why."""
        if not events:
            return
        data = self.data_provider.read_tensors(
            ctx,
            experiment_id=experiment,
            plugin_name=metadata.EVENTS_PLUGIN_NAME,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=list(events)),
            downsample=_MAX_ORIGINS,
        )
        origins = []
        for datum in data.get(run, {}).get(next(iter(events)), ()):
            try:
                text = np.asarray(datum.numpy).reshape(-1)
                if text.size != 1 or not isinstance(text[0], bytes):
                    raise metadata.FormatError(
                        "Invalid gradflow non-finite origin: not one string"
                    )
                origins.append(metadata.NonfiniteOrigin.from_json(text[0]))
            except metadata.FormatError as e:
                merged.left_out.append(reader.LeftOut(int(datum.step), str(e)))
        merged.origins = sorted(dict.fromkeys(origins), key=lambda o: o.step)

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


def _grpc_status(error: Exception) -> str | None:
    """The gRPC status name of ``error`` (grpc.RpcError), else None."""
    code = getattr(error, "code", None)
    return getattr(code(), "name", None) if callable(code) else None
