"""The plugin's decoded runs, by (experiment, run, base tag), with what is
derived from each version of a run: its diagnoses, its binned matrices and
their encoded answers.

A cached run is used only while its *version* is unchanged: a pair, the data
provider's ``(max_step, max_wall_time, plugin_content)`` of its layout tags
(the version of its per-step records, which the triage and the ``runs``
answer check), and the same of the tags read with them (its non-finite
origins and overview records). The least recently used runs go first when
the decoded data of all runs together exceed a byte budget.

Import-light: numpy and the standard library, never torch.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from tb_gradflow import heatmap
from tb_gradflow.diagnosis import Finding, diagnose
from tb_gradflow.layer_groups import group_layers
from tb_gradflow.overview_merge import Overview
from tb_gradflow.reader import GradFlowRun
from tb_gradflow.rule_spec import Thresholds

__all__ = ["CachedRun", "RunCache"]

_CACHED_BODIES = 16  # encoded answers per run version
_CACHED_DIAGNOSES = 8  # threshold sets per run version


class CachedRun:
    """One decoded run version with its derived answers (diagnoses, binned
    matrices, encoded bodies), each computed once, one at a time.

    Attributes:
        tag: the watcher's base tag.
        run: the decoded run.
        problem: why the run cannot be shown; None: it can.
        overview: the watcher's overview blocks in use (None: it has none).
        nbytes: what it costs in memory (its decoded statistics and blocks).
    """

    def __init__(
        self,
        tag: str,
        run: GradFlowRun,
        problem: str | None = None,
        overview: Overview | None = None,
    ) -> None:
        self.tag = tag
        self.run = run
        self.problem = problem
        self.overview = overview
        self.nbytes = run.nbytes + (0 if overview is None else overview.nbytes)
        self._lock = threading.RLock()  # one diagnosis or binning at a time
        self._findings: collections.OrderedDict = collections.OrderedDict()
        self._bodies: collections.OrderedDict = collections.OrderedDict()
        self._binned: tuple[tuple, tuple[dict, np.ndarray, np.ndarray]] | None = None
        self._grouped: dict[str, heatmap.Grouping] = {}

    def findings(self, thresholds: Thresholds) -> list[Finding]:
        """The diagnosis of every kept step with ``thresholds``."""
        with self._lock:
            return _memo(
                self._findings,
                thresholds,
                lambda: diagnose(self.run, thresholds),
                _CACHED_DIAGNOSES,
            )

    def diagnosed(self, thresholds: Thresholds) -> bool:
        """Whether :meth:`findings` with ``thresholds`` is already known."""
        with self._lock:
            return thresholds in self._findings

    def binned(
        self, stat: str, columns: int, group: str = "layer"
    ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """:func:`tb_gradflow.heatmap.bin_extremes` of this run and its
        overview, per layer or, with ``group`` ``"block"`` or ``"role"``, per
        group of layers (:meth:`grouped`): ``(header, largest, smallest)``,
        shared by the ``heatmap`` and ``lines`` answers (the latest one asked
        for is kept: the encoded bodies are reused)."""
        with self._lock:
            key = (stat, columns, group)
            if self._binned is None or self._binned[0] != key:
                grouping = None if group == "layer" else self.grouped(group)
                binned = heatmap.bin_extremes(
                    self.run, self.tag, stat, columns, self.overview, grouping
                )
                self._binned = (key, binned)
            return self._binned[1]

    def grouped(self, by: str) -> heatmap.Grouping:
        """The run with its layers grouped ``by`` block or role
        (:meth:`GradFlowRun.grouped`), with its groups."""
        with self._lock:
            if by not in self._grouped:
                groups = group_layers(self.run.layers, by)
                self._grouped[by] = heatmap.Grouping(self.run.grouped(by), groups)
            return self._grouped[by]

    def body(self, key: tuple, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per ``key`` (the last ``_CACHED_BODIES``
        kept): an encoded answer costs no JSON cleaning, dumps or gzip again."""
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


class RunCache:
    """Decoded runs by key, least recently used out first.

    An entry is replaced when its version changes (a pair: the version of its
    per-step records, and that of what is read with them). Concurrent
    requests for the same stale key wait for one read instead of reading in
    parallel.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[tuple, tuple[tuple, CachedRun]] = (
            collections.OrderedDict()
        )
        self._reading: dict[tuple, threading.Lock] = {}

    def get(
        self, key: tuple, version: tuple[tuple, tuple], read: Callable[[], CachedRun]
    ) -> CachedRun:
        """The entry of ``key`` at ``version`` (``(per-step records, what is
        read with them)``), from ``read()`` when the cache has another version
        or none."""
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

    def current(self, key: tuple, steps_version: tuple) -> CachedRun | None:
        """The entry of ``key`` if its per-step records are at
        ``steps_version`` (a use), else None; never reads."""
        with self._lock:
            cached = self._entries.get(key)
            if cached is None or cached[0][0] != steps_version:
                return None
            self._entries.move_to_end(key)
            return cached[1]

    def peek(self, key: tuple) -> tuple[tuple, CachedRun] | None:
        """The cached ``(version, entry)`` of ``key``, whatever its version,
        without reading and without counting as a use."""
        with self._lock:
            return self._entries.get(key)

    def _lookup(self, key: tuple, version: tuple) -> CachedRun | None:
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
