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

import logging
import os
import threading
import time

import numpy as np
from tensorboard import errors
from tensorboard.data import provider

from tb_gradflow import (
    layer_sets,
    metadata,
    overview,
    overview_merge,
    reader,
    segments,
    watchers,
)
from tb_gradflow.loader import DEFAULT_SAMPLES_PER_RUN
from tb_gradflow.problem_log import ProblemLog
from tb_gradflow.run_cache import CachedRun, RunCache

__all__ = ["READ_BYTES", "RunLoader", "problem_warning"]

logger = logging.getLogger(__name__)

READ_BYTES = 192 * 2**20  # one read_tensors reply, below gRPC's 256 MiB limit
_CACHE_BYTES = 1 << 30  # decoded float32 statistics kept, all runs together
_RUN_BYTES = 512 * 2**20  # a watcher's per-step records read at most, about
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
            lambda: self._read(
                ctx, experiment, run, tag, layouts, tags, events, blocks
            ),
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
        listing: dict[str, provider.TensorTimeSeries],
        events: dict[str, provider.TensorTimeSeries],
        blocks: dict[str, provider.TensorTimeSeries],
    ) -> CachedRun:
        """Reads one watcher's layout tags (``layouts``; ``listing``: the
        run's) and merges them by layer name (``watchers.merge_series``), with
        its non-finite origins (``events``: their tag's listing, or empty) and
        its overview records (``blocks``: their tags' listing, or empty).

        TensorBoard keeps only the first plugin metadata of a tag. Records of
        another size in a tag cannot be matched to layers: files written before
        layout tags put every layer set of a watcher under its base tag. Such a
        watcher is refused (``problem``) rather than shown without them.
        """
        order = watchers.tag_segments(listing, layouts)
        series = watchers.drop_abandoned(
            layouts,
            self._read_steps(ctx, experiment, run, layouts, listing, order),
            order,
        )
        try:
            merged = watchers.merge_series(run, layouts, series, order)
        except watchers.LayoutMismatch as e:
            empty = layer_sets.merge_records(run, list(layouts.values()), [], [], [])
            return CachedRun(tag, empty, str(e))
        if merged is None:
            raise errors.NotFoundError(f"No gradflow data for run {run!r}, tag {tag!r}")
        self._read_origins(ctx, experiment, run, events, merged)
        served = max((d.step for t in layouts for d in series.get(t, ())), default=-1)
        stop = self._stopped_early(run, set(layouts), served)
        if stop is not None:
            merged.left_out.append(stop)
        until: dict[str, int] = {}  # the last step served of each layer set
        for t, lo in layouts.items():
            if series.get(t):
                key = overview.overview_tag(lo)
                until[key] = max(until.get(key, -1), max(d.step for d in series[t]))
        found = self._read_overview(
            ctx, experiment, run, layouts, blocks, until, merged
        )
        return CachedRun(tag, merged, overview=found)

    def _read_steps(
        self,
        ctx,
        experiment: str,
        run: str,
        layouts: dict[str, metadata.Layout],
        listing: dict[str, provider.TensorTimeSeries],
        order: dict[str, segments.Segment],
    ) -> dict[str, list[provider.TensorDatum]]:
        """The per-step records of a watcher's layout tags, tag -> data.

        A tag holds at most ``downsample`` records (TensorBoard's sampling);
        a segment (:mod:`tb_gradflow.segments`) holds at most its segment's
        steps, and the plain tag no more than its last step allows. When all
        of them together would pass ``downsample`` records or ``_RUN_BYTES``,
        every tag is read with one smaller ``downsample`` (the same cap for
        each, so the steps kept are spread over the run as TensorBoard
        spreads them in one tag). Tags are read together while their replies
        fit ``READ_BYTES``; a reply over gRPC's limit all the same (files
        written before segments: one tag of a large layer set) is read again
        tag by tag, and a tag too large alone is read with fewer steps.
        """
        bound = {
            t: self._records_bound(lo, listing[t], order[t])
            for t, lo in layouts.items()
        }
        sizes = {t: 4 * lo.size for t, lo in layouts.items()}
        cap = _cap(bound, self._downsample, sizes, _RUN_BYTES)
        batches: list[list[str]] = []
        size = READ_BYTES
        for t in sorted(layouts):
            need = min(bound[t], cap) * (4 * layouts[t].size + 64)
            if size + need > READ_BYTES:
                batches.append([])
                size = 0
            batches[-1].append(t)
            size += need
        series: dict[str, list[provider.TensorDatum]] = {}
        for batch in batches:
            series |= self._read_batch(ctx, experiment, run, layouts, batch, cap)
        return series

    def _records_bound(
        self,
        layout: metadata.Layout,
        listed: provider.TensorTimeSeries,
        segment: segments.Segment,
    ) -> int:
        """At most how many records TensorBoard serves of one layout tag."""
        if segment.plain:  # steps 0, every, 2 * every, ... (or fewer)
            bound = listed.max_step // layout.every + 1
        else:
            bound = segments.segment_steps(layout) or self._downsample
        return max(1, min(bound, self._downsample))

    def _read_batch(
        self,
        ctx,
        experiment: str,
        run: str,
        layouts: dict[str, metadata.Layout],
        batch: list[str],
        cap: int,
    ) -> dict[str, list[provider.TensorDatum]]:
        """One ``read_tensors`` of the tags ``batch``, each with at most
        ``cap`` records; see :meth:`_read_steps` for a reply over the limit."""
        try:
            return self.data_provider.read_tensors(
                ctx,
                experiment_id=experiment,
                plugin_name=metadata.PLUGIN_NAME,
                run_tag_filter=provider.RunTagFilter(runs=[run], tags=batch),
                downsample=cap,
            ).get(run, {})
        except Exception as e:
            if _grpc_status(e) != "RESOURCE_EXHAUSTED":
                raise
        if len(batch) > 1:
            out: dict[str, list[provider.TensorDatum]] = {}
            for t in batch:
                out |= self._read_batch(ctx, experiment, run, layouts, [t], cap)
            return out
        # TensorBoard's gRPC client takes replies up to 256 MiB: 500 layers
        # x 5 statistics is 10 kB a step, so ~25,000 steps at once.
        (t,) = batch
        points = max(READ_BYTES // (4 * layouts[t].size + 64), 1)
        logger.warning(
            "gradflow: run %r tag %r does not fit in one data-server reply; "
            "showing %d of its steps",
            run,
            t,
            points,
        )
        return self._read_batch(ctx, experiment, run, layouts, batch, min(cap, points))

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


def _cap(bound: dict[str, int], points: int, sizes: dict[str, int], nbytes: int) -> int:
    """``points`` when the tags, tag ``t`` holding at most ``bound[t]``
    records of ``sizes[t]`` bytes, together hold at most ``points`` records
    and ``nbytes`` bytes; else the largest ``downsample`` ``c`` (at least 1)
    with which they would, tag ``t`` then holding ``min(bound[t], c)``."""

    def over(c: int) -> bool:
        kept = {t: min(b, c) for t, b in bound.items()}
        return (
            sum(kept.values()) > points
            or sum(kept[t] * sizes[t] for t in kept) > nbytes
        )

    low, high = 1, max(bound.values())
    if not over(high):
        return points  # all: the bounds only estimate what a tag holds
    while low < high:  # the largest c that is not over
        mid = (low + high + 1) // 2
        if over(mid):
            high = mid - 1
        else:
            low = mid
    return low


def _grpc_status(error: Exception) -> str | None:
    """The gRPC status name of ``error`` (grpc.RpcError), else None."""
    code = getattr(error, "code", None)
    return getattr(code(), "name", None) if callable(code) else None
