"""``check_flow``: does the gradient of a loss reach every layer? For unit tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from tb_gradflow import metadata
from tb_gradflow.diagnosis import Finding, diagnose
from tb_gradflow.gradient_stats import layer_stats
from tb_gradflow.layers import select_layers
from tb_gradflow.reader import from_records
from tb_gradflow.rule_spec import Thresholds

__all__ = ["check_flow", "diagnose_stats"]


def check_flow(
    model: nn.Module,
    loss: Tensor,
    *,
    include_bias: bool = False,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    thresholds: Thresholds | None = None,
) -> list[Finding]:
    """The layers that the gradient of ``loss`` does not reach properly.

    Computes the gradient of ``loss`` with respect to every layer that
    :func:`tb_gradflow.watch` would follow (``torch.autograd.grad``, keeping the
    graph; ``.grad`` is not touched), then applies the diagnosis rule of the
    tab to this one step: layers with no gradient (detached or unused), a zero
    or vanishing gradient (``blocked``) or non-finite values.

    Args:
        model: the model ``loss`` was computed with.
        loss: a scalar tensor that requires grad.
        include_bias, include, exclude: which layers, as in ``watch``.
        thresholds: the diagnosis thresholds (``patience`` is 1 here).

    Returns:
        The findings, in layer order; empty when the gradient reaches every
        watched layer.

    Raises:
        ValueError: if ``loss`` is not a scalar that requires grad.

    Examples:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
        >>> loss = model(torch.randn(2, 3)).sum()
        >>> check_flow(model, loss)
        []
    """
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(f"loss must be a scalar tensor, got {_describe(loss)}")
    if not loss.requires_grad:
        raise ValueError(
            "loss does not require grad: was it computed under torch.no_grad(), "
            "or from detached outputs?"
        )
    layers = select_layers(
        model, include_bias=include_bias, include=include, exclude=exclude
    )
    params = [p for _, p, _ in layers]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    stats, _ = layer_stats(list(grads))  # (K, L)
    th = thresholds or Thresholds()
    return diagnose_stats(layers, [stats], Thresholds(**{**th.__dict__, "patience": 1}))


def diagnose_stats(
    layers: Sequence[tuple[str, Tensor, bool]],
    stats: Sequence[np.ndarray],
    thresholds: Thresholds | None = None,
) -> list[Finding]:
    """The diagnosis of statistics kept in memory, one ``(K, L)`` array per step.

    Args:
        layers: ``select_layers`` output: ``(name, parameter, is_sparse)``.
        stats: ``layer_stats`` results of consecutive steps 0, 1, ...
        thresholds: the diagnosis thresholds.
    """
    layout = metadata.Layout(
        layers=tuple(name for name, _, _ in layers),
        sparse=tuple(sparse for _, _, sparse in layers),
    )
    not_skipped = [0.0, np.nan]  # the step fields: skipped, loss_scale
    rows = [np.concatenate([s.reshape(-1), not_skipped]) for s in stats]
    run = from_records("in memory", layout, range(len(rows)), rows)
    return diagnose(run, thresholds)


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    return type(x).__name__
