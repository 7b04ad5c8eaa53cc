"""Which run the Gradient Flow tab opens on: runs ranked by their most severe
finding, without reading every run in full.

Order: the most severe kind of finding of the diagnosis rule (``SEVERITY``:
``nonfinite_origin`` > ``nonfinite`` > ``exploding`` > ``spike`` >
``no_gradient`` > ``all_zero`` > ``blocked`` > ``update_too_large`` >
``not_updating`` > ``skipped``; a kind this list lacks comes after them, runs
without findings last), then the most recently written (the newest
``max_wall_time`` of the watcher's tags), then run name and tag.

Each watcher is judged by one of:

* the plugin's cached diagnosis of all its kept steps, when the plugin already
  read and diagnosed this version of it (``basis: "all"``);
* else a sample of its kept steps: ``SAMPLE_STEPS`` evenly spaced rows of
  the cached decoded run, or TensorBoard's own random sample of at most
  ``SAMPLE_STEPS`` of each of its tags (``read_tensors(downsample=
  SAMPLE_STEPS)``, which always keeps the newest step; a long run has a tag
  per segment, :mod:`tb_gradflow.segments`), read for many runs per
  data-provider call (``basis: "sample"``).

A sample finds what lasts (a blocked layer, a layer without gradient, a run
that went non-finite and stayed so) but can miss a single bad step among
thousands; the tab's own alerts diagnose every kept step of the run it shows.

Import-light like the plugin: numpy and TensorBoard only, never torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np
from tensorboard.data import provider

from tb_gradflow import metadata, reader, watchers
from tb_gradflow.diagnosis import Finding, diagnose
from tb_gradflow.rule_spec import Thresholds
from tb_gradflow.run_cache import CachedRun, RunCache

__all__ = ["SAMPLE_STEPS", "SEVERITY", "RunTriage", "rank", "severity", "triage"]

SEVERITY = (
    "nonfinite_origin",
    "nonfinite",
    "exploding",
    "spike",
    "no_gradient",
    "all_zero",
    "blocked",
    "update_too_large",
    "not_updating",
    "skipped",
)
"""Kinds of finding, most severe first."""
SAMPLE_STEPS = 100  # kept steps judged per watcher not already diagnosed
_BATCH_BYTES = 32 * 2**20  # one sampled read_tensors reply (gRPC allows 256 MiB)


@dataclasses.dataclass(frozen=True)
class RunTriage:
    """How one watcher of one run ranks.

    Attributes:
        run, tag: the run and the watcher's base tag (as the ``runs`` route
            lists them).
        worst: the most severe kind of finding, None without findings.
        kinds: the kinds found, most severe first.
        wall_time: when the watcher last wrote (seconds since the epoch).
        steps: how many logged steps were judged.
        basis: ``"all"`` (every kept step) or ``"sample"``.
    """

    run: str
    tag: str
    worst: str | None
    kinds: tuple[str, ...]
    wall_time: float
    steps: int
    basis: str

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "kinds": list(self.kinds)}


def severity(kind: str | None) -> int:
    """The rank of a kind of finding: 0 for the most severe, ``len(SEVERITY)``
    for a kind not in :data:`SEVERITY`, one more for None (no finding)."""
    if kind is None:
        return len(SEVERITY) + 1
    return SEVERITY.index(kind) if kind in SEVERITY else len(SEVERITY)


def rank(items: Iterable[RunTriage]) -> list[RunTriage]:
    """``items`` best first: most severe finding, then most recently written,
    then run name and tag."""
    return sorted(items, key=lambda t: (severity(t.worst), -t.wall_time, t.run, t.tag))


def triage(
    data_provider,
    cache: RunCache,
    ctx,
    experiment: str,
    *,
    sample_steps: int = SAMPLE_STEPS,
) -> list[RunTriage]:
    """Every readable watcher of every run, ranked (see :func:`rank`).

    Args:
        data_provider: TensorBoard's data provider, read for the watchers
            ``cache`` does not hold.
        cache: the plugin's decoded runs, looked at (never filled: a run
            judged here is not kept).
        ctx, experiment: the request's context and experiment id.
        sample_steps: kept steps judged per watcher without a cached diagnosis.
    """
    listing = data_provider.list_tensors(
        ctx, experiment_id=experiment, plugin_name=metadata.PLUGIN_NAME
    )
    out: list[RunTriage] = []
    to_read: list[tuple[str, str, dict[str, metadata.Layout], float]] = []
    orders = {}  # (run, base tag) -> its layout tags' segments
    for run in sorted(listing):
        tags = listing[run]
        for tag, layouts in watchers.group(tags)[0].items():
            wall = max(tags[t].max_wall_time for t in layouts)
            entry = cache.current(
                (experiment, run, tag), watchers.version(tags, layouts)
            )
            judged = None if entry is None else _from_cache(entry, sample_steps)
            if judged is None:
                to_read.append((run, tag, layouts, wall))
                orders[(run, tag)] = watchers.tag_segments(tags, layouts)
                continue
            findings, steps, basis = judged
            out.append(_triage(run, tag, findings, wall, steps, basis))
    for batch in _batches(to_read, sample_steps):
        data = data_provider.read_tensors(
            ctx,
            experiment_id=experiment,
            plugin_name=metadata.PLUGIN_NAME,
            run_tag_filter=provider.RunTagFilter(
                runs=sorted({b[0] for b in batch}),
                tags=sorted({t for b in batch for t in b[2]}),
            ),
            downsample=sample_steps,
        )
        for run, tag, layouts, wall in batch:
            try:
                order = orders[(run, tag)]
                series = watchers.drop_abandoned(layouts, data.get(run, {}), order)
                sample = watchers.merge_series(run, layouts, series, order)
            except watchers.LayoutMismatch:
                continue  # the plugin refuses such a run (files before layout tags)
            if sample is None or not len(sample.steps):
                continue  # as the runs route: nothing readable to show
            findings = diagnose(sample, Thresholds())
            out.append(_triage(run, tag, findings, wall, len(sample.steps), "sample"))
    return rank(out)


def _triage(
    run: str, tag: str, findings: list[Finding], wall: float, steps: int, basis: str
) -> RunTriage:
    kinds = tuple(sorted({f.kind for f in findings}, key=severity))
    return RunTriage(
        run=run,
        tag=tag,
        worst=kinds[0] if kinds else None,
        kinds=kinds,
        wall_time=float(wall),
        steps=steps,
        basis=basis,
    )


def _from_cache(
    entry: CachedRun, sample_steps: int
) -> tuple[list[Finding], int, str] | None:
    """``(findings, steps judged, basis)`` from the plugin's cached decoded run
    of this version; None when it cannot be shown."""
    if entry.problem is not None or not len(entry.run.steps):
        return None
    data = entry.run
    if entry.diagnosed(Thresholds()) or len(data.steps) <= sample_steps:
        return entry.findings(Thresholds()), len(data.steps), "all"
    rows = np.unique(np.linspace(0, len(data.steps) - 1, sample_steps).round())
    sample = _Rows(data, rows.astype(np.int64))
    return diagnose(sample, Thresholds()), len(rows), "sample"


class _Rows:
    """Some rows (steps) of a decoded run, for :func:`diagnose`."""

    def __init__(self, run: reader.GradFlowRun, rows: np.ndarray) -> None:
        self._run = run
        self._rows = rows  # (S,) indices into run.steps
        self.steps = run.steps[rows]
        self.layers = run.layers
        self.sparse = run.sparse
        self.skipped = run.skipped[rows]
        self.absent = run.absent[rows]

    def values(self, stat: str) -> np.ndarray:
        return self._run.values(stat)[self._rows]  # (S, L)


def _batches(
    items: list[tuple[str, str, dict[str, metadata.Layout], float]], sample_steps: int
) -> list[list]:
    """``items`` cut so that one batch's sampled reply stays under _BATCH_BYTES."""
    batches: list[list] = []
    size = 0
    for item in items:
        need = sample_steps * sum(4 * lo.size + 64 for lo in item[2].values())
        if batches and size + need <= _BATCH_BYTES:
            batches[-1].append(item)
            size += need
        else:
            batches.append([item])
            size = need
    return batches
