"""The classic gradient-flow bar plot of one logged step, drawn with matplotlib as
the Gradient Flow tab draws it (``frontend/chart.js``).

matplotlib is optional (the ``plot`` extra): it is imported when a plot is drawn,
never when this module is.

Shape:
    - ``L``: layers; every per-layer array here is ``(L,)``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from tb_gradflow.diagnosis import Finding, diagnose

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from tb_gradflow.reader import GradFlowRun

__all__ = ["plot_flow"]

# the tab's light palette (PALETTES.light in frontend/chart.js)
_MEAN = "#1a73e8"
_BACK = (26 / 255, 115 / 255, 232 / 255, 0.22)  # abs_max, drawn lightly behind
_ZERO = "#188038"
_NO_GRAD = "#202124"
_ABSENT = "#9aa0a6"
_NONFINITE = "#a142f4"
_BLOCKED = "#c5221f"  # a flagged layer's name
_BLOCKED_BAND = (217 / 255, 48 / 255, 37 / 255, 0.12)
_NO_GRAD_BAND = (128 / 255, 134 / 255, 139 / 255, 0.16)

_BAR_WIDTH = 0.8  # in layers
_STUB = 0.03  # height of an exactly-zero stub, in axes heights (any y scale)
_MARK_Y = 0.04  # height of the x marks' centres, in axes heights
_LOG_HEADROOM = 0.3  # decades above the highest bar on a log axis
_LINEAR_HEADROOM = 1.12  # factor above the highest bar on a linear axis
_EMPTY_LOG_RANGE = (1e-8, 1.0)  # no positive bar to fit: the tab's default


def plot_flow(
    run: GradFlowRun,
    step: int | None = None,
    *,
    ax: Axes | None = None,
    log: bool = True,
    stat: str = "abs_mean",
) -> Axes:
    """Draws one step's bar plot: ``stat`` (default ``abs_mean``) per layer in
    model order, with ``abs_max`` lighter behind ``abs_mean``. For
    ``update_ratio`` a green band marks the healthy 3e-4..3e-3 around the 1e-3
    rule of thumb, and the layers the diagnosis finds ``update_too_large`` or
    ``not_updating`` get a light red column.

    As in the Gradient Flow tab, an exactly-zero gradient is a hollow stub at the
    floor (visible on a log axis too), a layer whose ``.grad`` was None an ``x``,
    a layer absent from the step's layer set a grey ``x`` ("no such layer", as
    the tab says), a layer with NaN/Inf elements a hatched full-height column.
    Layers that :func:`diagnose` finds *blocked* at this step get a light red
    column and a red name, those without
    a gradient for ``patience`` steps a grey column and a red name; an
    ``all_zero`` finding and a step the AMP grad scaler skipped are noted under
    the title. The y range holds every bar with headroom, and the legend sits
    right of the axes, never over a bar.

    Args:
        run: the run to draw from.
        step: the step to draw (the nearest logged one; None: the last).
        ax: a matplotlib ``Axes`` to draw on (default: a new figure, with a
            constrained layout that leaves room for the legend; with your own
            ``ax``, leave room right of it).
        log: use a log-scale y axis (else linear from 0).
        stat: the statistic the bars show (any of ``run.stats``).

    Returns:
        The ``Axes``.

    Raises:
        ImportError: if matplotlib is not installed.
        ValueError: if the run has no logged step.
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "GradFlowRun.plot needs matplotlib: pip install matplotlib (or install "
            "tb-gradflow with its [plot] extra)"
        ) from e
    if not len(run.steps):
        raise ValueError(f"Nothing to plot: {run.path!r} has no logged step")
    i = run.index_of(step)
    at = int(run.steps[i])
    mean = run.values(stat)[i]  # raises KeyError naming the run's statistics
    peak = run.values("abs_max")[i]
    status = _statuses(mean, run.values("nonfinite")[i], run.no_grad[i], run.absent[i])
    findings = [f for f in diagnose(run) if f.holds_at(at)]
    flagged = ("update_too_large", "not_updating") if stat == "update_ratio" else ()
    blocked = _flagged(findings, "blocked", run.layers)
    for kind in flagged:
        blocked |= _flagged(findings, kind, run.layers)
    no_gradient = _flagged(findings, "no_gradient", run.layers)
    ok = status == "ok"
    back = ok & np.isfinite(peak) & (peak > 0)  # abs_max, where a bar stands
    if stat != "abs_mean":
        back[:] = False

    if ax is None:
        width = max(
            7.5, 0.35 * len(run.layers) + 4.5
        )  # inches: bars, names and the legend
        ax = plt.figure(figsize=(width, 4.5), layout="constrained").add_subplot()
    ax.set_yscale("log" if log else "linear")
    reference = np.array([3e-4, 3e-3]) if stat == "update_ratio" else np.array([])
    ax.set_ylim(*_y_limits(np.concatenate([mean[ok], peak[back], reference]), log))
    ax.set_xlim(-0.6, len(run.layers) - 0.4)
    flag_label = " / ".join(flagged) if flagged else "blocked"
    handles = _draw_layers(
        ax, mean, peak, status, back, blocked, no_gradient, (stat, flag_label)
    )
    labels = [run.label(layer) for layer in run.layers]
    ax.set_xticks(np.arange(len(run.layers)), labels, rotation=90)
    for j in np.flatnonzero(blocked | no_gradient).tolist():
        ax.get_xticklabels()[j].set(color=_BLOCKED, fontweight="bold")
    if stat == "update_ratio":  # the rule of thumb: about 1e-3
        ax.axhspan(3e-4, 3e-3, color="#2ca02c", alpha=0.15, zorder=0.3, lw=0)
        ax.axhline(1e-3, color="#2ca02c", lw=1, zorder=0.35, label="1e-3")
    ax.set_ylabel(f"{stat} (log scale)" if log else stat)
    ax.set_title(_title(run, i, findings))
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
        frameon=False,
    )
    return ax


def _draw_layers(
    ax: Axes,
    mean: np.ndarray,
    peak: np.ndarray,
    status: np.ndarray,
    back: np.ndarray,
    blocked: np.ndarray,
    no_gradient: np.ndarray,
    labels: tuple[str, str] = ("abs_mean", "blocked"),
) -> list:
    """Draws every layer's bar or mark, and the diagnosis' columns behind them;
    ``labels`` name the bars and the flagged columns in the legend.

    Marks and columns are placed in axes heights, so that they sit on the floor
    or fill the height on either y scale.

    Shape:
        - mean, peak: ``(L,)`` float; status: ``(L,)`` str (:func:`_statuses`)
        - back, blocked, no_gradient: ``(L,)`` bool
        - returns: the legend handles of what was drawn, in legend order
    """
    x = np.arange(len(status))
    in_axes = ax.get_xaxis_transform()  # x in layers, y in axes heights

    def column(where, label, height, width=_BAR_WIDTH, **style):
        return ax.bar(
            x[where], height, width, 0, transform=in_axes, label=label, **style
        )

    def marks(where, label, color):
        (line,) = ax.plot(
            x[where],
            np.full(int(where.sum()), _MARK_Y),
            "x",
            transform=in_axes,
            color=color,
            markersize=9,
            markeredgewidth=2,
            label=label,
            zorder=4,
        )
        return line

    ok = status == "ok"
    zero, nonfinite = status == "zero", status == "nonfinite"
    no_grad, absent = status == "no_grad", status == "absent"
    drawn = [  # in legend order: where it is drawn, and how
        (
            ok,
            lambda: ax.bar(
                x[ok], mean[ok], _BAR_WIDTH, color=_MEAN, label=labels[0], zorder=2
            ),
        ),
        (
            back,
            lambda: ax.bar(
                x[back], peak[back], _BAR_WIDTH, color=_BACK, label="abs_max (behind)"
            ),
        ),
        (
            zero,
            lambda: column(
                zero,
                "exactly zero",
                _STUB,
                facecolor="white",
                edgecolor=_ZERO,
                linewidth=1.5,
                zorder=3,
            ),
        ),
        (no_grad, lambda: marks(no_grad, "no gradient", _NO_GRAD)),
        (
            nonfinite,
            lambda: column(
                nonfinite,
                "non-finite",
                1.0,
                facecolor="none",
                edgecolor=_NONFINITE,
                hatch="///",
                zorder=3,
            ),
        ),
        (absent, lambda: marks(absent, "no such layer", _ABSENT)),
        (
            blocked,
            lambda: column(
                blocked, labels[1], 1.0, 1.0, color=_BLOCKED_BAND, zorder=0.4
            ),
        ),
        (
            no_gradient,
            lambda: column(
                no_gradient,
                "no gradient (diagnosis)",
                1.0,
                1.0,
                color=_NO_GRAD_BAND,
                zorder=0.4,
            ),
        ),
    ]
    return [draw() for where, draw in drawn if where.any()]


def _statuses(
    mean: np.ndarray, nonfinite: np.ndarray, no_grad: np.ndarray, absent: np.ndarray
) -> np.ndarray:
    """Each layer's bar, by the tab's rule (``barStatus``): ``"absent"``, else
    ``"no_grad"``, else ``"nonfinite"``, else ``"zero"`` or ``"ok"``.

    Shape:
        - mean, nonfinite: ``(L,)`` float, NaN without a gradient
        - no_grad, absent: ``(L,)`` bool
        - returns: ``(L,)`` str
    """
    status = np.full(mean.shape, "ok", dtype=object)
    status[mean == 0] = "zero"
    status[(nonfinite > 0) | np.isinf(mean)] = "nonfinite"
    status[np.isnan(mean) | no_grad] = "no_grad"
    status[absent] = "absent"
    return status


def _flagged(findings: list[Finding], kind: str, layers: list[str]) -> np.ndarray:
    """``(L,)`` bool: the layers with a finding of ``kind`` in ``findings``."""
    names = {f.layer for f in findings if f.kind == kind}
    return np.array([name in names for name in layers], dtype=bool)


def _y_limits(heights: np.ndarray, log: bool) -> tuple[float, float]:
    """The y range that holds every bar of ``heights`` (finite, positive) with
    headroom: on a log axis from the decade a quarter of a decade below the
    lowest (the tab's floor), else from 0."""
    if log:
        if not heights.size:
            return _EMPTY_LOG_RANGE
        low = math.floor(math.log10(heights.min()) - 0.25)
        return 10.0**low, float(heights.max()) * 10.0**_LOG_HEADROOM
    return 0.0, float(heights.max()) * _LINEAR_HEADROOM if heights.size else 1.0


def _title(run: GradFlowRun, i: int, findings: list[Finding]) -> str:
    """The step, then a line for a model-wide finding or a skipped step."""
    lines = [f"gradient flow, step {int(run.steps[i])}"]
    for f in findings:
        if f.kind == "all_zero":
            lines.append(
                f"all_zero since step {f.first_step}: every layer's gradient is "
                "exactly zero"
            )
    if run.skipped[i]:
        lines.append("this step was skipped by the AMP grad scaler (inf/NaN)")
    return "\n".join(lines)
