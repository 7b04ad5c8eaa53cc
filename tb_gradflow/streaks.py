"""Findings and the streaks they cover: runs of consecutive counted logged
steps where a per-step condition holds (see :func:`tb_gradflow.diagnose`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

__all__ = ["Finding", "find_streaks"]


@dataclasses.dataclass(frozen=True)
class Finding:
    """One finding: a kind, a layer (None for the whole model) and a streak of
    steps. ``ongoing``: the streak has not ended by the newest logged step (see
    :mod:`tb_gradflow.diagnosis`); ``last_step`` is the last step where the
    condition held."""

    kind: str
    layer: str | None
    first_step: int
    last_step: int
    steps: int  # logged steps in the streak
    message: str
    ongoing: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def holds_at(self, step: int) -> bool:
        """Whether the streak covers ``step``: ``first_step..last_step``, and for
        an ongoing streak every later step."""
        return self.first_step <= step and (self.ongoing or step <= self.last_step)


def find_streaks(
    kind: str,
    mask: np.ndarray,
    counted: np.ndarray,
    steps: np.ndarray,
    layers: Sequence[str | None],
    min_length: int,
    message: str,
) -> list[Finding]:
    """Runs of consecutive counted steps where ``mask`` holds, per layer column.

    Steps not ``counted`` (skipped ones) neither extend nor break a streak. With
    ``min_length > 1`` a streak also bridges gaps shorter than ``min_length``
    (hysteresis: a blocked layer must look healthy for ``min_length`` steps in a
    row to end its streak), so a value hovering at a threshold gives one finding.
    A streak followed by fewer than ``min_length`` counted steps is ongoing.
    Only the counted steps of ``mask`` are read.

    Shape:
        - mask: ``(T, C)`` bool, one column per entry of ``layers``
        - counted, steps: ``(T,)``
    """
    idx = np.flatnonzero(counted)
    cols = np.flatnonzero(mask.any(axis=0))  # the columns with a hit
    # (C, T' + 2): each column's counted steps, between two steps without
    hits = np.zeros((len(cols), len(idx) + 2), dtype=np.int8)
    hits[:, 1:-1] = np.take(mask, cols, axis=1)[idx].T
    edges = np.diff(hits, axis=1)  # (C, T' + 1): 1 where a run starts, -1 after
    # (np.nonzero of a 2-D array is several times slower)
    c_run, starts = np.divmod(np.flatnonzero(edges == 1), edges.shape[1])
    stops = np.flatnonzero(edges == -1) % edges.shape[1]  # in the same order
    bounds = np.searchsorted(c_run, np.arange(len(cols) + 1))  # runs per column
    found = []
    for c, j in enumerate(cols.tolist()):
        runs: list[list[int]] = []  # [start, stop, hits]
        for start, stop in zip(
            starts[bounds[c] : bounds[c + 1]].tolist(),
            stops[bounds[c] : bounds[c + 1]].tolist(),
        ):
            if runs and min_length > 1 and start - runs[-1][1] < min_length:
                runs[-1][1] = stop  # bridge a short healthy gap
                runs[-1][2] += stop - start
            else:
                runs.append([start, stop, stop - start])
        for start, stop, n_hits in runs:
            if n_hits >= min_length:
                found.append(
                    Finding(
                        kind=kind,
                        layer=layers[j],
                        first_step=int(steps[idx[start]]),
                        last_step=int(steps[idx[stop - 1]]),
                        steps=n_hits,
                        message=message,
                        ongoing=len(idx) - stop < min_length,
                    )
                )
    return found
