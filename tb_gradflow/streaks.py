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

    Shape:
        - mask: ``(T, C)`` bool, one column per entry of ``layers``
        - counted, steps: ``(T,)``
    """
    idx = np.flatnonzero(counted)
    found = []
    for j in np.flatnonzero(mask.any(axis=0)).tolist():  # the columns with a hit
        column = mask[idx, j]
        if not column.any():
            continue
        layer = layers[j]
        edges = np.diff(np.concatenate([[0], column.astype(np.int8), [0]]))
        starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        runs: list[list[int]] = []
        for start, stop in zip(starts.tolist(), stops.tolist()):
            if runs and min_length > 1 and start - runs[-1][1] < min_length:
                runs[-1][1] = stop  # bridge a short healthy gap
            else:
                runs.append([start, stop])
        for start, stop in runs:
            hits = int(column[start:stop].sum())
            if hits >= min_length:
                found.append(
                    Finding(
                        kind=kind,
                        layer=layer,
                        first_step=int(steps[idx[start]]),
                        last_step=int(steps[idx[stop - 1]]),
                        steps=hits,
                        message=message,
                        ongoing=len(column) - stop < min_length,
                    )
                )
    return found
