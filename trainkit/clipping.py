"""Gradient clipping that sparse gradients do not stop, and that can log the
total norm it clipped to TensorBoard."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from tb_gradflow import check_writer

__all__ = ["clip_grad_norm"]


def clip_grad_norm(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float | Tensor,
    *,
    writer: Any = None,
    step: int | None = None,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    tag: str = "grad_clip",
) -> Tensor:
    """Clips gradients like ``torch.nn.utils.clip_grad_norm_``, sparse ones too, and
    logs what it did.

    The total norm is that of all gradients together (a sparse gradient counts as
    its dense equivalent, where torch's foreach path raises); when it exceeds
    ``max_norm`` every gradient is scaled by ``max_norm / (total + 1e-6)``.

    Args:
        parameters: tensors whose ``.grad`` to clip.
        max_norm: the largest total norm allowed (a number or a 0-d tensor).
        writer: a ``torch.utils.tensorboard.SummaryWriter`` or a
            ``tensorboardX.SummaryWriter``; if given, logs the scalars
            ``{tag}/total_norm`` (before clipping), ``{tag}/max_norm`` and
            ``{tag}/clipped`` (1.0 when it clipped) at ``step``.
        step: the step to log at.
        norm_type: the p of the p-norm (``inf`` or ``"inf"`` for the max norm).
        error_if_nonfinite: raise if the total norm is NaN or infinite.
        tag: the scalar tags' prefix.

    Returns:
        The total norm before clipping (a 0-d tensor), as torch's.

    Raises:
        TypeError: if ``max_norm`` is neither a real number nor a 0-d real tensor,
            ``norm_type`` neither a real number nor a str, or ``writer`` none of
            the above (before any gradient is touched).
        ValueError: on ``max_norm <= 0`` or NaN, or a ``norm_type`` that is NaN or
            a str that is not a number (``"inf"`` is).
        RuntimeError: on a non-finite total norm with ``error_if_nonfinite``.
    """
    if isinstance(max_norm, Tensor):
        if max_norm.dim() != 0 or max_norm.dtype == torch.bool or max_norm.is_complex():
            raise TypeError(
                f"Invalid max_norm: a tensor of shape {tuple(max_norm.shape)} and "
                f"dtype {max_norm.dtype} (a real number or a 0-d real tensor)"
            )
    elif isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real):
        raise TypeError(
            f"Invalid max_norm: {max_norm!r} (a real number or a 0-d real tensor)"
        )
    limit = float(max_norm)
    if not limit > 0:
        raise ValueError(f"Invalid max_norm: {limit} (> 0)")
    if isinstance(norm_type, bool) or not isinstance(norm_type, (numbers.Real, str)):
        raise TypeError(f"Invalid norm_type: {norm_type!r} (a real number or 'inf')")
    try:
        order = float(norm_type)
    except ValueError:
        order = math.nan
    if math.isnan(order):  # "nan" would make every gradient NaN
        raise ValueError(
            f"Invalid norm_type: {norm_type!r} (a real number other than NaN, or 'inf')"
        )
    norm_type = order
    if writer is not None:
        check_writer(writer)
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    with_grad = [p for p in params if p.grad is not None]
    dense = [p for p in with_grad if not p.grad.is_sparse]
    sparse = [p for p in with_grad if p.grad.is_sparse]
    norms = []
    if dense:
        norms.append(
            torch.nn.utils.get_total_norm(
                [p.grad for p in dense], norm_type, error_if_nonfinite
            )
        )
    for p in sparse:
        p.grad = p.grad.coalesce()  # duplicates add up, as in the dense gradient
        norms.append(torch.linalg.vector_norm(p.grad.values(), norm_type))
    if not norms:
        total = torch.tensor(0.0)
    elif len(norms) == 1:
        total = norms[0]
    else:
        device = norms[0].device
        total = torch.linalg.vector_norm(
            torch.stack([n.to(device) for n in norms]), norm_type
        )
    if error_if_nonfinite and not torch.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients is non-finite, so it "
            "cannot be clipped."
        )
    if dense:
        torch.nn.utils.clip_grads_with_norm_(dense, max_norm, total)
    if sparse:
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for p in sparse:
            p.grad = p.grad * coef.to(p.grad.device)
    if writer is not None:
        value = float(total)
        writer.add_scalar(f"{tag}/total_norm", value, step)
        writer.add_scalar(f"{tag}/max_norm", limit, step)
        writer.add_scalar(f"{tag}/clipped", float(value > limit), step)
    return total
