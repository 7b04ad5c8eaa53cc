"""Runs written as a watcher writes them (its own record writer), without
training: for the plugin's tests of long runs."""

from __future__ import annotations

import math

import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from tb_gradflow import metadata
from tb_gradflow import stats as tb_stats
from tb_gradflow.record_writer import RecordWriter

ORDER = tb_stats.names("gradient")  # the statistics a layout holds by default


class FileWriter:
    """What ``RecordWriter`` needs of a ``SummaryWriter``: its file writer,
    adding each summary at its step (``wall``: the event's wall time)."""

    def __init__(self, path, wall: float) -> None:
        self.events = EventFileWriter(str(path))
        self.file_writer = self.events
        self.wall = wall

    def _get_file_writer(self):
        return self

    def add_summary(self, summary, global_step: int) -> None:
        self.wall += 1.0
        event = event_pb2.Event(step=global_step, wall_time=self.wall, summary=summary)
        self.events.add_event(event)


def write_watched(logdir, run, layout, values, *, start=0, finish=True, wall=1e9):
    """Writes ``values`` (``(T, K, L)``, in ``layout``'s order) as a watcher
    does, at steps ``start, start + 1, ...``: per-step records and overview
    records; ``finish``: the last partial block too (``flow.remove()``).
    Each call writes one event file whose name sorts after the run's
    earlier ones."""
    run_dir = logdir / run
    run_dir.mkdir(parents=True, exist_ok=True)
    earlier = set(run_dir.glob("*tfevents*"))
    writer = FileWriter(run_dir, wall)
    records = RecordWriter(writer, layout, "torch")
    for i, stats in enumerate(values):
        records.write_step(start + i, stats, False, math.nan)
    if finish:
        records.close()
    writer.events.close()
    (new_file,) = set(run_dir.glob("*tfevents*")) - earlier
    new_file.rename(run_dir / f"events.out.tfevents.{len(earlier):010d}.test")


def gradients(rng, steps, layers=20):
    """Healthy statistics, ``(steps, K, layers)`` float32 in ``ORDER``: each
    layer's abs_mean lognormal around its own median (within ~4x of it at
    every step), abs_max 5x and norm 30x it; its medians, ``(layers,)``."""
    medians = np.exp(rng.normal(np.log(1e-3), 1.0, layers))  # (L,)
    mean = medians * np.exp(rng.normal(0.0, 0.3, (steps, layers)))  # (T, L)
    values = {"abs_mean": mean, "abs_max": 5 * mean, "norm": 30 * mean}
    values |= {"nonfinite": 0.0, "rows": 1.0}
    out = np.empty((steps, len(ORDER), layers), dtype=np.float32)
    for k, name in enumerate(ORDER):
        out[:, k] = values[name]
    return out, medians


def layout_of(layers=20, prefix="layer", name=None):
    return metadata.Layout(
        layers=tuple(f"{prefix}{i}.weight" for i in range(layers)), name=name
    )
