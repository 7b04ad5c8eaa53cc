"""Reads gradflow records back from event files, every logged step (no sampling).

Reads event files record by record past damaged records (:mod:`.run_files`,
:mod:`.records`), merges a watcher's layer sets by layer name
(:mod:`.layer_sets`), and leaves out records whose values no statistic can
have (:mod:`.validity`, in :mod:`.gradflow_run`); a run names what it left out
(:attr:`GradFlowRun.left_out`). ``GradFlowRun``, ``from_records`` and
``merge_records`` are importable from here too. Needs neither TensorFlow nor
torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from tb_gradflow import metadata
from tb_gradflow.gradflow_run import GradFlowRun, from_records
from tb_gradflow.layer_sets import merge_records
from tb_gradflow.run_files import (
    LeftOut,
    WatcherRecords,
    last_written_step,
    read_run_dir,
)

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


def _finish(path: str, s: WatcherRecords) -> GradFlowRun:
    run = merge_records(path, s.layouts, s.steps, s.rows, s.part, s.walls)
    run.left_out[:0] = s.damaged
    run.origins = sorted(dict.fromkeys(s.origins), key=lambda o: o.step)
    return run


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
