"""Reads gradflow records back from event files, every logged step (no sampling).

Reads event files record by record past damaged records (:mod:`.run_files`,
:mod:`.records`), merges a watcher's layer sets by layer name, and leaves out
records whose values no statistic can have (:mod:`.validity`); a run names
what it left out (:attr:`GradFlowRun.left_out`). Needs neither TensorFlow nor
torch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from tb_gradflow import metadata, stats
from tb_gradflow.layer_groups import combine, group_layers
from tb_gradflow.run_files import (
    LeftOut,
    WatcherRecords,
    last_written_step,
    read_run_dir,
)
from tb_gradflow.validity import invalid_records

__all__ = [
    "GradFlowRun",
    "LeftOut",
    "clash_message",
    "from_records",
    "last_written_step",
    "load",
    "load_all",
    "load_run",
    "merge_records",
]


@dataclasses.dataclass
class GradFlowRun:
    """All logged steps of one watcher in one run.

    Attributes:
        path: the run directory.
        name: the watcher's name (None for an unnamed watcher).
        steps: ``(T,)`` int64, ascending; a step logged twice keeps its later record.
        layers: layer names, in model order.
        stats: statistic names: those the file holds, then the registered ones
            it lacks (:mod:`tb_gradflow.stats`; NaN, listed in ``not_logged``).
            A statistic this version does not know is carried through by name.
            Only the first ones are held in memory (as many as the file
            holds); :meth:`values` of the others is NaN, and costs nothing.
        every: the logging interval the watcher was created with.
        skipped: ``(T,)`` bool, steps the AMP grad scaler skipped.
        loss_scale: ``(T,)`` float, the scaler's scale (NaN without a scaler).
        sparse: for each layer, whether its gradient is sparse.
        types: for each layer, the class name of the module owning its
            parameter ("" where the file does not say); :meth:`label` shows it.
        absent: ``(T, L)`` bool, the layer was not in the layer set its watcher
            logged at that step (a run resumed with another layer set): its
            values are NaN there, and it counts as neither "no gradient" nor
            healthy. All False for a run with one layer set.
        not_logged: registered statistics the file lacks (written by a version
            without them): NaN at every step.
        left_out: the records left out, with why: damaged ones (their
            checksum fails; reading goes on after them), ones whose values
            no statistic can have (see :mod:`tb_gradflow.validity`), and
            non-finite origins that cannot be read.
        origins: where NaN/Inf first appeared, as ``watch(...,
            trace_nonfinite=True)`` traced it, by step.
        numel: each layer's number of elements (empty where the files do
            not say).
    """

    path: str
    name: str | None
    steps: np.ndarray
    layers: list[str]
    stats: list[str]
    every: int
    skipped: np.ndarray
    loss_scale: np.ndarray
    sparse: list[bool]
    # (T, K, L) float32: the first K of ``stats`` (those the file holds)
    # that are not in ``_steady``, in ``stats`` order
    _values: np.ndarray = dataclasses.field(repr=False)
    types: list[str] = dataclasses.field(default_factory=list)
    not_logged: list[str] = dataclasses.field(default_factory=list)
    absent: np.ndarray | None = dataclasses.field(default=None, repr=False)
    left_out: list[LeftOut] = dataclasses.field(default_factory=list)
    origins: list[metadata.NonfiniteOrigin] = dataclasses.field(default_factory=list)
    numel: list[int] = dataclasses.field(default_factory=list)
    # statistics the file holds whose every layer has one value at every
    # step (nonfinite 0, rows 1 in most runs): that ``(L,)`` row, kept once
    _steady: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.absent is None:
            self.absent = np.zeros((len(self.steps), len(self.layers)), dtype=bool)

    def label(self, layer: str) -> str:
        """A layer's name with its module type, as the tab and the report show
        it (``"0 · Conv2d"``); the name alone where the type is not known."""
        i = self.layers.index(layer)
        kind = self.types[i] if i < len(self.types) else ""
        return f"{layer} \u00b7 {kind}" if kind else layer

    def values(self, stat: str) -> np.ndarray:
        """One statistic over all steps: ``(T, L)`` float, NaN where a layer had no
        gradient or was absent (:attr:`absent`); a view, not a copy. A statistic
        the files lack (:attr:`not_logged`) is NaN everywhere, and one whose
        layers each kept one value at every step is that row at every step:
        read-only views of one value or one row.

        Raises:
            KeyError: for an unknown statistic; the message lists the known ones.
        """
        if stat not in self.stats:
            raise KeyError(f"Unknown statistic {stat!r}; this run has {self.stats}")
        shape = (len(self.steps), len(self.layers))
        if stat in self._steady:
            return np.broadcast_to(self._steady[stat], shape)  # (T, L), strides 0
        if stat in self.not_logged:
            return np.broadcast_to(np.float32(np.nan), shape)  # (T, L), strides 0
        varying = [s for s in self.stats if s not in self._steady]
        return self._values[:, varying.index(stat), :]

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded statistics the files hold, ``(T, K, L)``
        float32: what holding this run in memory costs, mostly."""
        return self._values.nbytes + sum(r.nbytes for r in self._steady.values())

    @property
    def no_grad(self) -> np.ndarray:
        """``(T, L)`` bool: the layer's ``.grad`` was None at that step (not
        where it was :attr:`absent`)."""
        return np.isnan(self.values("nonfinite")) & ~self.absent

    def grouped(self, by: str, patterns: Sequence[str] = ()) -> GradFlowRun:
        """This run with its layers in groups (:mod:`tb_gradflow.layer_groups`):
        ``by="block"`` (``model.layers.17``) or ``"role"``
        (``model.layers.*.self_attn.q_proj``: every block's); a layer in no
        block stays alone. Each group's
        statistics combine its layers' exactly (norm: root of the sum of
        squares; abs_mean: weighted by elements; abs_max: max; nonfinite:
        sum). A group is absent where all its layers are, sparse where any
        is; ``patterns`` (regular expressions with a ``block`` group) for
        names the automatic rule does not see.

        Raises:
            ValueError: for another ``by``, or a bad pattern.
        """
        groups = group_layers(self.layers, by, patterns)
        held = [s for s in self.stats if s not in self.not_logged]
        # nonfinite tells which members have a value (NaN: none, as files
        # without it read)
        values = {s: self.values(s) for s in (*held, "nonfinite")}
        combined = combine(values, self.numel, groups)
        members = [list(m) for m in groups.members]
        stacked = np.stack([combined[s] for s in held], axis=1)  # (T, K, G)
        types = [
            self.types[m[0]]
            if self.types and len({self.types[j] for j in m}) == 1
            else ""
            for m in members
        ]
        return dataclasses.replace(
            self,
            layers=list(groups.names),
            sparse=[any(self.sparse[j] for j in m) for m in members],
            _values=stacked,
            _steady={},
            types=types,
            absent=np.stack([self.absent[:, m].all(axis=1) for m in members], 1),
            numel=(
                [sum(self.numel[j] for j in m) for m in members] if self.numel else []
            ),
        )

    def index_of(self, step: int | None) -> int:
        """Index of ``step`` in :attr:`steps` (the nearest logged step; None: last)."""
        if step is None:
            return len(self.steps) - 1
        return int(np.argmin(np.abs(self.steps - int(step))))

    def plot(
        self,
        step: int | None = None,
        *,
        ax=None,
        log: bool = True,
        stat: str = "abs_mean",
    ):
        """Draws the classic gradient-flow bar plot of one step with matplotlib,
        marking what the Gradient Flow tab marks: exactly-zero stubs, layers
        without a gradient, non-finite and absent ones, and the layers the
        diagnosis finds blocked (:func:`tb_gradflow.plotting.plot_flow`). Needs
        matplotlib (the ``plot`` extra: ``pip install "./tb-gradflow[plot]"``).

        Args:
            step: the step to draw (the nearest logged one; None: the last).
            ax: a matplotlib ``Axes`` to draw on (default: a new figure).
            log: use a log-scale y axis.
            stat: the statistic the bars show (``update_ratio`` with its
                reference band around 1e-3).

        Returns:
            The ``Axes``.
        """
        from tb_gradflow.plotting import plot_flow

        return plot_flow(self, step, ax=ax, log=log, stat=stat)


def _union(layouts: Sequence[metadata.Layout]) -> metadata.Layout:
    """One layout holding every layer (statistic, step field) of ``layouts``, in
    order of first appearance; a layer's ``sparse`` flag, size and module type
    from the last layout that has them (sizes only if every layer has one),
    ``every`` the largest (the expected number of logged steps is then not
    overstated); the rest from the first layout."""

    def union(field: str) -> tuple:
        return tuple(dict.fromkeys(x for lo in layouts for x in getattr(lo, field)))

    sparse: dict[str, bool] = {}
    types: dict[str, str] = {}
    numel: dict[str, int] = {}
    for lo in layouts:
        for layer, is_sparse in zip(lo.layers, lo.sparse):
            sparse[layer] = is_sparse
        for layer, kind in zip(lo.layers, lo.types):
            types[layer] = kind or types.get(layer, "")
        for layer, n in zip(lo.layers, lo.numel):
            numel[layer] = n
    layers = union("layers")
    return dataclasses.replace(
        layouts[0],
        every=max(lo.every for lo in layouts),
        layers=layers,
        stats=union("stats"),
        step_fields=union("step_fields"),
        sparse=tuple(sparse.get(n, False) for n in layers),
        numel=tuple(numel[n] for n in layers) if numel.keys() >= set(layers) else (),
        types=tuple(types.get(n, "") for n in layers) if types else (),
    )


def _realign(
    flat: np.ndarray, src: metadata.Layout, dst: metadata.Layout
) -> tuple[np.ndarray, np.ndarray]:
    """Moves step vectors from ``src``'s columns to ``dst``'s, by name.

    Shape:
        - flat: ``(N, src.size)``
        - returns: ``(N, dst.size)`` float32 (NaN where ``src`` has no such
          column) and the absent mask ``(L_dst,)`` bool: layers ``src`` lacks.
    """
    values, fields = metadata.split_values(flat, src)  # (N, K_src, L_src), (N, F)
    n = len(flat)
    out = np.full((n, len(dst.stats), len(dst.layers)), np.nan, dtype=np.float32)
    dst_layers = [dst.layers.index(name) for name in src.layers]
    for k, stat in enumerate(src.stats):
        out[:, dst.stats.index(stat), dst_layers] = values[:, k, :]
    out_fields = np.full((n, len(dst.step_fields)), np.nan, dtype=np.float32)
    for f, field in enumerate(src.step_fields):
        out_fields[:, dst.step_fields.index(field)] = fields[:, f]
    absent = np.ones(len(dst.layers), dtype=bool)
    absent[dst_layers] = False
    return np.concatenate([out.reshape(n, -1), out_fields], axis=1), absent


def merge_records(
    path: str,
    layouts: Sequence[metadata.Layout],
    steps: Sequence[int],
    rows: Sequence[np.ndarray],
    part: Sequence[int],
    walls: Sequence[float] | None = None,
) -> GradFlowRun:
    """Builds one run from the records of several layer sets of one watcher,
    by one rule that the tab (records as TensorBoard's data provider serves
    them) and :func:`load_run` (records as the files hold them) share, and
    that no clock can upset:

    - layer sets in order of their first step, then of their first wall
      time (when two start at the same step), then of their columns;
    - of a step logged more than once, the record of the last layer set in
      that order wins, and within one layer set the record written last;
    - layers matched by name, in order of first appearance in that order; at
      a step whose layout lacks a layer, the layer is *absent*
      (:attr:`GradFlowRun.absent`; NaN values, not "no gradient").

    A run resumed from a checkpoint starts its layer set at a later step than
    the first session did, so its records win the steps it logged again, as
    in the files' order, whatever the clocks of the two machines said.

    Args:
        path: where the records came from (a run directory or a run name).
        layouts: the layouts, each with the records of ``part``.
        steps, rows: each record's step and flat vector, each layer set's in
            the order written.
        part: each record's index into ``layouts``.
        walls: each record's wall time (None: all equal).
    """
    part = np.asarray(part, dtype=np.int64)
    if len(layouts) == 1:
        return from_records(path, layouts[0], steps, rows)
    order = _layer_set_order(layouts, np.asarray(steps), part, walls)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    records = np.lexsort((np.arange(len(part)), rank[part]))  # stable by rank
    layouts = [layouts[i] for i in order]
    part = rank[part][records]
    steps = np.asarray(steps)[records]
    rows = [rows[j] for j in records.tolist()]
    merged = _union(layouts)
    flat = np.empty((len(rows), merged.size), dtype=np.float32)
    absent = np.empty((len(rows), len(merged.layers)), dtype=bool)
    for i, layout in enumerate(layouts):
        idx = np.flatnonzero(part == i)
        if not len(idx):
            continue
        block = np.stack([rows[j] for j in idx.tolist()], dtype=np.float32)
        flat[idx], absent[idx] = _realign(block, layout, merged)
    return from_records(path, merged, steps, flat, absent=absent)


def _layer_set_order(
    layouts: Sequence[metadata.Layout],
    steps: np.ndarray,
    part: np.ndarray,
    walls: Sequence[float] | None,
) -> list[int]:
    """Indices of ``layouts`` by (first step, first wall time, columns)."""
    walls = np.zeros(len(part)) if walls is None else np.asarray(walls, float)
    keys = []
    for i in range(len(layouts)):
        mine = part == i
        if mine.any():
            keys.append((int(steps[mine].min()), float(walls[mine].min())))
        else:
            keys.append((np.iinfo(np.int64).max, np.inf))
    return sorted(range(len(layouts)), key=lambda i: (*keys[i], layouts[i].columns))


def _finish(path: str, s: WatcherRecords) -> GradFlowRun:
    run = merge_records(path, s.layouts, s.steps, s.rows, s.part, s.walls)
    run.left_out[:0] = s.damaged
    run.origins = sorted(dict.fromkeys(s.origins), key=lambda o: o.step)
    return run


def from_records(
    path: str,
    layout: metadata.Layout,
    steps: Sequence[int],
    rows: Sequence[np.ndarray],
    absent: np.ndarray | None = None,
) -> GradFlowRun:
    """Builds a run from decoded records (any order; a repeated step keeps its
    later record). Records in order, each kept, are not copied once stacked:
    the run's statistics are views of them.

    Args:
        path: where the records came from (a run directory or a run name).
        layout: the layout every record follows.
        steps: the step of each record.
        rows: each record's flat vector, ``(layout.size,)`` (or all of them as
            one ``(N, layout.size)`` array).
        absent: ``(N, L)`` bool, layers a record's writer did not have (None:
            none); see :func:`merge_records`.
    """
    steps = np.asarray(steps, dtype=np.int64)
    if isinstance(rows, np.ndarray):  # merged layer sets: already one block
        block = rows.astype(np.float32, copy=False)  # (N, K * L + F)
    elif len(rows):
        block = np.stack(rows, dtype=np.float32)  # (N, K * L + F), one copy
    else:
        block = np.zeros((0, layout.size), dtype=np.float32)
    values, fields = metadata.split_values(block, layout)  # (N, K, L), (N, F)
    reasons = invalid_records(values, layout.stats, layout.layers, layout.numel)
    left_out = [LeftOut(int(steps[i]), r) for i, r in enumerate(reasons) if r]
    sound = np.array([r is None for r in reasons], dtype=bool)  # (N,)
    # A resumed run may repeat steps: keep the last sound record of each step.
    candidates = np.flatnonzero(sound)
    order = candidates[np.argsort(steps[candidates], kind="stable")]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = steps[order][1:] != steps[order][:-1]
    keep = order[last]
    in_order = len(keep) == len(block) and bool((np.diff(keep) > 0).all())
    if not in_order:  # else the block's views as they are: no copy
        values, fields = values[keep], fields[keep]  # (T, K, L), (T, F)
    steady = _steady_rows(values, layout.stats)
    if steady:  # the others copied out: the block is freed
        varying = [k for k, name in enumerate(layout.stats) if name not in steady]
        values = values[:, varying, :]  # (T, K', L)
    # read by name: a statistic the file lacks is NaN (GradFlowRun.values)
    not_logged = [n for n in stats.names() if n not in layout.stats]
    field = {f: fields[:, i] for i, f in enumerate(layout.step_fields)}
    n_steps = len(keep)
    absent = (
        np.zeros((n_steps, len(layout.layers)), dtype=bool)
        if absent is None
        else np.asarray(absent, dtype=bool)[keep]
    )
    return GradFlowRun(
        path=path,
        name=layout.name,
        steps=steps[keep],
        layers=list(layout.layers),
        stats=[*layout.stats, *not_logged],
        every=layout.every,
        skipped=field.get("skipped", np.zeros(n_steps)) > 0,
        loss_scale=field.get("loss_scale", np.full(n_steps, np.nan)).astype(np.float64),
        sparse=list(layout.sparse),
        _values=values,
        types=list(layout.types) or [""] * len(layout.layers),
        not_logged=not_logged,
        absent=absent,
        left_out=left_out,
        numel=list(layout.numel),
        _steady=steady,
    )


def _steady_rows(values: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The statistics of ``values`` ``(T, K, L)`` whose every layer has one
    value (or NaN) at every step: name -> that ``(L,)`` row."""
    steady = {}
    if len(values) < 2:
        return steady
    for k, name in enumerate(names):
        row = values[0, k, :]  # (L,)
        if not _same_as(values[-1, k, :], row):  # most statistics end here
            continue
        if all(
            _same_as(values[a : a + 256, k, :], row) for a in range(0, len(values), 256)
        ):
            steady[name] = row.copy()
    return steady


def _same_as(values: np.ndarray, row: np.ndarray) -> bool:
    """Whether ``values`` ``(..., L)`` equal ``row`` ``(L,)`` everywhere, NaN
    matching NaN."""
    return bool(((values == row) | (np.isnan(values) & np.isnan(row))).all())


def load_run(path: str | os.PathLike, name: str | None = None) -> GradFlowRun:
    """Reads one watcher's records from one run directory.

    Args:
        path: the run directory (the ``log_dir`` of the ``SummaryWriter``).
        name: the watcher's ``name`` (None: the unnamed watcher).

    Raises:
        FileNotFoundError: if ``path`` is not a directory.
        ValueError: if it holds no gradflow data for that watcher.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No such run directory: {path!r}")
    series = read_run_dir(path, metadata.VersionChecker())
    if name not in series:
        found = sorted(("(unnamed)" if k is None else k) for k in series)
        what = f"watcher {name!r}" if name else "the unnamed watcher"
        raise ValueError(
            f"No gradflow data for {what} in {path!r}"
            + (f"; it has: {', '.join(found)}" if found else "")
        )
    return _finish(path, series[name])


def load(logdir: str | os.PathLike) -> dict[str, GradFlowRun]:
    """Reads every run under ``logdir``, as TensorBoard names them.

    Keys: a run is named by its directory relative to ``logdir``, with ``/``
    between parts (``"."`` for ``logdir`` itself). The unnamed watcher of a run
    is keyed by the run (``"deep/run2"``), a named one by the run, ``/`` and its
    name (``"deep/run2/gen"``, ``"./gen"`` in ``logdir`` itself).

    Two watchers can get the same key: watcher ``b`` of run ``a`` and the
    unnamed watcher of run ``a/b``. A dict cannot hold both, and leaving one out
    would go unnoticed, so ``load`` raises, naming both; read them with
    :func:`load_run`, or load a directory in which their keys differ (below
    ``a``, they are ``"./b"`` and ``"b"``). ``tb-gradflow report`` reports every
    other run and names the clash.

    Returns:
        ``{key: GradFlowRun}``, sorted by key.

    Raises:
        FileNotFoundError: if ``logdir`` is not a directory.
        ValueError: if no gradflow data is found under it, or if two watchers
            get the same key.
    """
    logdir = os.fspath(logdir)
    found = load_all(logdir)
    for key, runs in found.items():
        if len(runs) > 1:
            raise ValueError(
                clash_message(logdir, key, runs) + "; read them with "
                "load_run(path, name=...)"
            )
    return {key: runs[0] for key, runs in found.items()}


def load_all(logdir: str | os.PathLike) -> dict[str, list[GradFlowRun]]:
    """Every watcher under ``logdir`` by its :func:`load` key, sorted by key; a
    key that several watchers get lists each of them, in directory order.

    Raises:
        FileNotFoundError: if ``logdir`` is not a directory.
        ValueError: if no gradflow data is found under it.
    """
    logdir = os.fspath(logdir)
    if not os.path.isdir(logdir):
        raise FileNotFoundError(f"No such log directory: {logdir!r}")
    checker = metadata.VersionChecker()
    found: dict[str, list[GradFlowRun]] = {}
    for run_dir, _, _ in sorted(os.walk(logdir)):
        run = os.path.relpath(run_dir, logdir).replace(os.sep, "/")
        for name, s in read_run_dir(run_dir, checker).items():
            key = run if name is None else f"{run}/{name}"
            found.setdefault(key, []).append(_finish(run_dir, s))
    if not found:
        raise ValueError(f"No gradflow data under {logdir!r}")
    return dict(sorted(found.items()))


def clash_message(logdir: str, key: str, runs: Sequence[GradFlowRun]) -> str:
    """Names the watchers under ``logdir`` that get the same ``key``."""
    who = [
        ("the unnamed watcher" if not r.name else f"watcher {r.name!r}")
        + f" in {r.path!r}"
        for r in runs
    ]
    count = "Two" if len(who) == 2 else str(len(who))
    listed = ", ".join(who[:-1]) + " and " + who[-1]
    return f"{count} watchers under {logdir!r} have the key {key!r}: {listed}"
