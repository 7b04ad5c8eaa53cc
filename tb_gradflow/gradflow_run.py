"""The decoded run of one watcher (:class:`GradFlowRun`), and building one from
decoded records of one layout (:func:`from_records`): records left out whose
values no statistic can have (:mod:`.validity`), a repeated step keeping its
later record, and a statistic whose every layer has one value at every step
kept as one row. Needs neither TensorFlow nor torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tb_gradflow import metadata, stats
from tb_gradflow.layer_groups import combine, group_layers
from tb_gradflow.run_files import LeftOut
from tb_gradflow.validity import invalid_records

__all__ = ["GradFlowRun", "from_records"]


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
        matplotlib (the ``plot`` extra: ``pip install ".[plot]"`` in the clone).

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
            none); see :func:`tb_gradflow.layer_sets.merge_records`.
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
