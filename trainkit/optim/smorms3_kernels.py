"""SMORMS3's per-tensor and multi-tensor (``foreach``) update paths, and the
step counters they share with the fused path (:mod:`.smorms3_fused`).

The per-tensor path (the CPU default) updates each tensor slice by slice, with
a few scratch buffers instead of full-size temporaries; the multi-tensor path
(the CUDA default) runs each step of the rule as one ``torch._foreach_*`` call
per (device, dtype) group.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

__all__ = ["count_step", "multi_tensor_smorms3", "single_tensor_smorms3"]

# Elements per slice in the per-tensor path. Seven buffers of a slice (param, grad,
# three states, two scratch) take 1.75 MiB in float32, so each of two threads works
# in its own 1 MiB L2; the full-size temporaries of a naive version go to DRAM
# instead.
_CHUNK_NUMEL = 1 << 16

_Constants = tuple[Tensor, Tensor, Tensor]  # 1, eps, -eps (see _constants)


def count_step(state_steps: list[Tensor]) -> None:
    """Adds one to every step counter in one call. On the CPU, as in Adam, with a
    0-dim tensor and ``alpha``: that overload of ``_foreach_add_`` takes ~0.4 us
    per counter, the one with a Python number ~1.9 us. The 0-dim one has the
    counters' dtype, so integer counters stay integers."""
    if state_steps[0].is_cpu:
        one = torch.ones((), dtype=state_steps[0].dtype)
        torch._foreach_add_(state_steps, one, alpha=1)
    else:
        torch._foreach_add_(state_steps, 1)


def _effective_grad(
    param: Tensor,
    grad: Tensor,
    out: Tensor | None,
    *,
    weight_decay: float,
    maximize: bool,
) -> Tensor:
    """``(-grad if maximize else grad) + weight_decay * param`` in ``out``'s dtype.

    ``out`` is None when the gradient can be used as it is.
    """
    if out is None:
        return grad
    if weight_decay != 0 and not maximize and grad.dtype == out.dtype:
        return torch.add(grad, param, alpha=weight_decay, out=out)
    if maximize and grad.dtype == out.dtype:
        torch.neg(grad, out=out)
    else:
        out.copy_(grad)  # casts a half-precision gradient to the state dtype
        if maximize:
            out.neg_()
    if weight_decay != 0:
        out.add_(param, alpha=weight_decay)
    return out


def _update_slice(
    param: Tensor,
    grad: Tensor,
    mem: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    r: Tensor,
    x: Tensor,
    constants: _Constants,
    lr: float,
) -> None:
    """Funk's rule on one slice, in 14 in-place kernels and no allocation.

    ``r`` and ``x`` are scratch buffers of the slice's shape in the state dtype;
    ``grad`` is in the state dtype too. ``constants`` are 1, eps and -eps as 0-dim
    tensors: a Python float costs a new wrapper tensor on every call.
    """
    one, eps, neg_eps = constants
    mem.add_(one)  # s = mem + 1, in mem until its update
    torch.reciprocal(mem, out=r)
    exp_avg.lerp_(grad, r)  # g = (1 - r) g + r grad
    torch.mul(grad, grad, out=x)
    exp_avg_sq.lerp_(x, r)  # g2 = (1 - r) g2 + r grad**2
    torch.add(exp_avg_sq, eps, out=r)  # r is free from here on
    torch.mul(exp_avg, exp_avg, out=x)
    x.div_(r)  # x = g**2 / (g2 + eps)
    # lerp(s, 1, x) = s - x * (s - 1) = 1 + mem * (1 - x), with unclamped x
    mem.lerp_(one, x)
    x.clamp_max_(lr)
    torch.sub(neg_eps, torch.sqrt(exp_avg_sq, out=r), out=r)  # -(sqrt(g2) + eps)
    x.mul_(grad)
    # a fused divide (cheaper than div_ + addcmul_), without the cost of value=-1
    param.addcdiv_(x, r)


def _constants(like: Tensor, eps: float) -> _Constants:
    """1, eps and -eps as 0-dim tensors of ``like``'s dtype and device."""
    return tuple(  # type: ignore[return-value]
        torch.tensor(v, dtype=like.dtype, device=like.device) for v in (1.0, eps, -eps)
    )


def single_tensor_smorms3(
    params: list[Tensor],
    grads: list[Tensor],
    mems: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    # Scratch memory is one block per (device, dtype) for the whole call, sliced per
    # tensor: fresh full-size temporaries (the blog post's ten per tensor) cost page
    # faults and DRAM traffic. Tensors above _CHUNK_NUMEL go through it in slices.
    transform = maximize or weight_decay != 0
    blocks: dict[tuple[torch.device, torch.dtype], Tensor] = {}
    views: dict[tuple[torch.device, torch.dtype, torch.Size], tuple[Tensor, ...]] = {}
    constants: dict[
        tuple[torch.device, torch.dtype], tuple[Tensor, Tensor, Tensor]
    ] = {}
    largest = min(_CHUNK_NUMEL, max(p.numel() for p in params))

    def scratch(like: Tensor, shape: torch.Size, numel: int) -> tuple[Tensor, ...]:
        """Three scratch tensors of ``shape`` (``numel`` elements) like ``like``."""
        key = (like.device, like.dtype, shape)
        bufs = views.get(key)
        if bufs is None:
            block_key = (like.device, like.dtype)
            block = blocks.get(block_key)
            if block is None:
                block = torch.empty((3, largest), dtype=like.dtype, device=like.device)
                blocks[block_key] = block
                constants[block_key] = _constants(like, eps)
            bufs = tuple(row[:numel].view(shape) for row in block)
            views[key] = bufs
        return bufs

    count_step(state_steps)
    for i, param in enumerate(params):
        grad, mem, exp_avg, exp_avg_sq = grads[i], mems[i], exp_avgs[i], exp_avg_sqs[i]
        numel = param.numel()
        if numel == 0:
            continue
        needs_grad_buffer = transform or grad.dtype != mem.dtype
        contiguous = (
            param.is_contiguous()
            and grad.is_contiguous()
            and mem.is_contiguous()
            and exp_avg.is_contiguous()
            and exp_avg_sq.is_contiguous()
        )
        if not contiguous:
            # Rare (channels_last params, strided grads): whole-tensor temporaries.
            r, x, g = (torch.empty_like(mem) for _ in range(3))
            if needs_grad_buffer:
                grad = _effective_grad(
                    param, grad, g, weight_decay=weight_decay, maximize=maximize
                )
            consts = _constants(mem, eps)
            _update_slice(param, grad, mem, exp_avg, exp_avg_sq, r, x, consts, lr)
            continue
        if numel <= _CHUNK_NUMEL:
            r, x, g = scratch(mem, param.shape, numel)
            if needs_grad_buffer:
                grad = _effective_grad(
                    param, grad, g, weight_decay=weight_decay, maximize=maximize
                )
            consts = constants[(mem.device, mem.dtype)]
            _update_slice(param, grad, mem, exp_avg, exp_avg_sq, r, x, consts, lr)
            continue
        flat = (param, grad, mem, exp_avg, exp_avg_sq)
        slices = zip(*(t.view(-1).split(_CHUNK_NUMEL) for t in flat))
        for p_, d_, m_, ea_, eas_ in slices:
            r, x, g = scratch(mem, p_.shape, p_.numel())
            if needs_grad_buffer:
                d_ = _effective_grad(
                    p_, d_, g, weight_decay=weight_decay, maximize=maximize
                )
            consts = constants[(mem.device, mem.dtype)]
            _update_slice(p_, d_, m_, ea_, eas_, r, x, consts, lr)


def multi_tensor_smorms3(
    params: list[Tensor],
    grads: list[Tensor],
    mems: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, mems, exp_avgs, exp_avg_sqs, state_steps]  # type: ignore[list-item]
    )
    for (
        device_params,
        device_grads,
        device_mems,
        device_exp_avgs,
        device_exp_avg_sqs,
        device_steps,
    ), _ in grouped.values():
        device_params = list(device_params)
        device_mems = list(device_mems)
        device_exp_avgs = list(device_exp_avgs)
        device_exp_avg_sqs = list(device_exp_avg_sqs)
        dtype = device_mems[0].dtype
        g = [t.to(dtype) for t in device_grads]  # a copy only for half precision
        if maximize:
            g = torch._foreach_neg(g)
        if weight_decay != 0:
            if maximize or dtype != device_grads[0].dtype:
                torch._foreach_add_(g, device_params, alpha=weight_decay)
            else:
                g = torch._foreach_add(g, device_params, alpha=weight_decay)

        count_step(device_steps)

        s = torch._foreach_add(device_mems, 1.0)
        r = torch._foreach_reciprocal(s)
        del s
        torch._foreach_lerp_(device_exp_avgs, g, r)
        x = torch._foreach_mul(g, g)
        torch._foreach_lerp_(device_exp_avg_sqs, x, r)
        del r
        den = torch._foreach_add(device_exp_avg_sqs, eps)
        x = torch._foreach_mul(device_exp_avgs, device_exp_avgs)
        torch._foreach_div_(x, den)  # x = g**2 / (g2 + eps)
        del den
        torch._foreach_addcmul_(device_mems, device_mems, x, value=-1.0)
        torch._foreach_add_(device_mems, 1.0)  # mem = 1 + mem - mem * x
        torch._foreach_clamp_max_(x, lr)
        den = torch._foreach_sqrt(device_exp_avg_sqs)
        torch._foreach_add_(den, eps)
        torch._foreach_mul_(x, g)
        torch._foreach_addcdiv_(device_params, x, den, value=-1.0)
