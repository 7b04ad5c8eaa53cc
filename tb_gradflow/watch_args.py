"""The arguments of ``tb_gradflow.watch``, checked before the watcher
registers anything: a bad one is a ``TypeError`` or ``ValueError`` that names
it, never a failure deep inside a hook at the first step."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from tb_gradflow import metadata
from tb_gradflow import stats as stats_registry
from tb_gradflow.alerts import ALERT_MODES
from tb_gradflow.optimizer_hooks import hookable_optimizer
from tb_gradflow.rule_spec import Thresholds
from tb_gradflow.scaler_patch import check_scaler

__all__ = ["check_watch_args", "optional_statistics"]


def check_watch_args(
    model: nn.Module,
    *,
    optimizer: Any,
    every: Any,
    name: Any,
    start_step: Any,
    step_fn: Any,
    rank: Any,
    on_alert: Any,
    thresholds: Any,
    scaler: Any,
    trace_nonfinite: Any,
) -> torch.optim.Optimizer | None:
    """Checks ``watch``'s arguments (other than the writer's and the layer
    selection's, which :func:`tb_gradflow.writers.check_writer` and
    :func:`tb_gradflow.layers.select_layers` check) before anything is
    registered.

    Returns:
        the optimizer whose step hooks the watcher uses (the one a framework's
        wrapper keeps), or None.

    Raises:
        TypeError, ValueError: naming the argument; see
            :class:`tb_gradflow.GradFlow`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"Invalid every: {every!r} (a positive int)")
    if (
        isinstance(start_step, bool)
        or not isinstance(start_step, int)
        or start_step < 0
    ):
        raise ValueError(f"Invalid start_step: {start_step!r} (an int >= 0)")
    problem = metadata.name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    if optimizer is not None:
        optimizer = hookable_optimizer(optimizer)
    if step_fn is not None and not callable(step_fn):
        raise TypeError(
            f"step_fn must be callable or None, got {type(step_fn).__name__}"
        )
    if step_fn is not None and optimizer is None:
        raise ValueError(
            "step_fn numbers optimizer steps: pass optimizer= too (or call "
            "GradFlow.log(step) yourself)"
        )
    if rank is not None and (
        isinstance(rank, bool) or not isinstance(rank, int) or rank < 0
    ):
        raise ValueError(f"Invalid rank: {rank!r} (an int >= 0, or None)")
    if on_alert not in ALERT_MODES:
        raise ValueError(f"Invalid on_alert: {on_alert!r} (None, 'warn' or 'raise')")
    if not isinstance(trace_nonfinite, bool):
        raise TypeError(
            "trace_nonfinite must be True or False, got "
            f"{type(trace_nonfinite).__name__}"
        )
    if scaler is not None and optimizer is None:
        raise ValueError("scaler needs the optimizer it steps: pass optimizer= too")
    if scaler is not None:
        check_scaler(scaler)
    if thresholds is not None and not isinstance(thresholds, Thresholds):
        raise TypeError(
            "thresholds must be a tb_gradflow.diagnosis.Thresholds or None, "
            f"got {type(thresholds).__name__}"
        )
    if thresholds is not None and on_alert is None:
        raise ValueError(
            "thresholds apply only to alerts while training: pass "
            "on_alert='warn' or 'raise' too (the tab and tb-gradflow report "
            "take their thresholds as options)"
        )
    return optimizer


def optional_statistics(
    names: Iterable[str] | None, optimizer: torch.optim.Optimizer | None
) -> list[stats_registry.Statistic]:
    """The registered statistics among ``names`` that are not the gradient's
    (those are always logged), in registry order.

    Raises:
        TypeError: if ``names`` is a str or holds a non-str.
        ValueError: for a name the registry does not have, or a statistic of
            the update or the parameters without an optimizer.
    """
    if names is None:
        return []
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise TypeError(
            "stats must be an iterable of statistic names, e.g. "
            f"stats=['update_ratio'], got {type(names).__name__}"
        )
    names = list(names)
    known = stats_registry.names()
    for name in names:
        if not isinstance(name, str) or name not in known:
            raise ValueError(
                f"Unknown statistic {name!r}; registered: {', '.join(known)}"
            )
    chosen = [
        s
        for s in stats_registry.statistics()
        if s.name in names and s.reads != "gradient"
    ]
    if chosen and optimizer is None:
        raise ValueError(
            f"{chosen[0].name} is measured around the optimizer step: pass "
            "optimizer= too"
        )
    return chosen
