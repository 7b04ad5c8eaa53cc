r"""SMORMS3 (Simon Funk, 2015): RMSprop whose averaging window adapts to the noise.

Three layers, as in ``torch.optim``: the :class:`SMORMS3` class checks arguments and
holds lazily created state, the functional :func:`smorms3` dispatches, and
``_single_tensor_smorms3`` / ``_multi_tensor_smorms3`` / ``_fused_smorms3`` do the
arithmetic. All three compute the same rule and agree to rounding.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import partial
from itertools import chain
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim.optimizer import (
    Optimizer,
    ParamsT,
    _default_to_fused_or_foreach,
    _get_scalar_dtype,
)

from trainkit.optim._compiled import FlatKernel

__all__ = ["SMORMS3", "smorms3"]

# Elements per slice in the per-tensor path. Seven buffers of a slice (param, grad,
# three states, two scratch) take 1.75 MiB in float32, so each of two threads works
# in its own 1 MiB L2; the full-size temporaries of a naive version go to DRAM
# instead.
_CHUNK_NUMEL = 1 << 16

# The opt-in fused path's compiled kernels (one tensor, one bucket), made on first use.
_fused_kernels: list[tuple[FlatKernel, FlatKernel]] = []
# Equal-size tensors per compiled call in the fused path. Larger buckets compile for
# longer (the graph repeats the update once per tensor) and save less per tensor.
_BUCKET = 8
# Inductor options of the fused kernels: no size asserts (the guards check the
# same sizes, and the asserts cost ~1 us per tensor per call); and a parallel loop
# whatever the size the first call compiles for, since a kernel compiled on small
# tensors would otherwise run serially on every later size (dynamic=True).
_INDUCTOR_OPTIONS = {"size_asserts": False, "cpp.dynamic_threads": True}

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_Constants = tuple[Tensor, Tensor, Tensor]  # 1, eps, -eps (see _constants)
_STATE_KEYS = ("mem", "exp_avg", "exp_avg_sq")


def _state_dtype(param: Tensor) -> torch.dtype:
    """State dtype: float32 for half-precision parameters (where rounding can push
    ``x = g**2 / g2`` above 1 and break ``mem >= 1``), else the parameter's own."""
    return torch.float32 if param.dtype in _LOW_PRECISION else param.dtype


class SMORMS3(Optimizer):
    r"""Implements SMORMS3 ("squared mean over root mean squared cubed").

    Simon Funk's rule, per element, with state ``mem = 1, g = 0, g2 = 0``:

    .. math::
        \begin{aligned}
        r &= 1 / (\mathrm{mem} + 1) \\
        g &\leftarrow (1 - r)\, g + r\, \nabla \\
        g_2 &\leftarrow (1 - r)\, g_2 + r\, \nabla^2 \\
        x &= g^2 / (g_2 + \epsilon) \\
        p &\leftarrow p - \nabla \cdot \min(\mathrm{lr}, x) / (\sqrt{g_2} + \epsilon) \\
        \mathrm{mem} &\leftarrow 1 + \mathrm{mem}\,(1 - x)
        \end{aligned}

    ``x`` is in [0, 1]: near 1 when the gradient is consistent, near 0 when it is
    noise. It shortens the averaging window (``mem``) when the gradient is steady
    and scales the step down when it is noisy, so there is no beta to tune. ``lr``
    caps the step rate (a ``min``, not a product) and ``eps`` only guards the
    divisions. The first step with a non-zero gradient has ``r = x = 1/2``: it
    moves every element by ``sqrt(2) * lr * sign(grad)`` (for ``lr <= 1/2``) and
    leaves ``mem = 1.5``. With a zero gradient, ``mem`` grows by one per step.

    Reference: Simon Funk, "RMSprop loses to SMORMS3 - Beware the Epsilon!", 2015,
    https://sifter.org/~simon/journal/20150420.html. Chainer's ``SMORMS3`` follows it
    exactly, as this class does (the ``mem`` update uses the unclamped ``x``).

    .. warning::
        Other implementations differ: ensmallen/mlpack decays ``mem`` with the
        clamped ``min(lr, x)`` (memory grows faster when ``x > lr``); the Keras gist
        proposed in keras-team/keras#9593 starts from ``mem = 0``, so its first step
        is ``lr * sign(grad)`` rather than ``sqrt(2) * lr * sign(grad)``; PuzzleLib's
        documentation swaps ``r`` and ``1 - r`` and prints ``sqrt(g2**2 + eps)``;
        stork's SMORMS4 is a different rule. The seed sketch this project started
        from defaults to ``lr=0.0025`` and keeps ``eps`` outside the param groups.

    Weight decay is coupled, as in :class:`torch.optim.Adam`: ``grad += wd * p``
    before the rule. The state per parameter is ``mem``, ``exp_avg`` (g),
    ``exp_avg_sq`` (g2), in float32 for float16/bfloat16 parameters, and ``step``
    (the number of updates, a 0-dim tensor as in torch's optimizers).

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: upper bound on the per-element rate ``min(lr, x)`` (default: 1e-3).
        eps: guard added to ``g2`` and to ``sqrt(g2)``; must be > 0, since with no
            gradient history ``0 / 0`` would follow (default: 1e-16, Funk's value).
        weight_decay: coupled L2 penalty (default: 0).
        maximize: maximize the objective instead of minimizing it (default: False).
        foreach: use the multi-tensor ``torch._foreach_*`` path. None picks the
            fastest for the parameters' device: per-tensor on the CPU, where foreach
            ops are plain loops with full-size temporaries, and foreach on CUDA
            (default: None).
        fused: update each tensor (each bucket of 8 equal-size tensors) in one
            ``torch.compile``-generated kernel. Opt-in: the first step compiles
            (10-30 s on a CPU, once per process and dtype; inductor's on-disk cache
            shortens later runs) and needs a working ``torch.compile`` (a C++
            compiler on the CPU, Triton on CUDA). A new ``lr`` does not recompile
            (default: None, i.e. off).

    Raises:
        TypeError: for a Tensor ``lr``.
        ValueError: for a negative or NaN ``lr`` or ``weight_decay``, an ``eps``
            that is not > 0, or ``foreach`` and ``fused`` both True.
        RuntimeError: (at ``step``) for a sparse gradient; see
            :func:`trainkit.optim.sparse_dense_optimizer`.

    Shape:
        - params: any shape; the rule is elementwise.

    Examples:
        >>> import torch
        >>> from trainkit.optim import SMORMS3
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.0]))
        >>> opt = SMORMS3([w], lr=0.01)
        >>> w.grad = torch.tensor([0.5, -3.0, 0.0])
        >>> opt.step()
        >>> w.detach()  # sqrt(2) * lr against the sign of each non-zero gradient
        tensor([ 0.9859, -1.9859,  0.0000])
        >>> opt.state[w]["mem"]
        tensor([1.5000, 1.5000, 2.0000])
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        eps: float = 1e-16,
        *,
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        if isinstance(lr, Tensor):
            raise TypeError("Invalid lr: a Tensor; SMORMS3 takes a float lr")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid lr: {lr}")
        if not 0.0 < eps:
            raise ValueError(
                f"Invalid eps: {eps} (must be > 0: it guards 0/0 in g**2/(g2+eps))"
            )
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        if foreach and fused:
            raise ValueError("Invalid foreach and fused: at most one can be True")
        defaults = dict(
            lr=lr,
            eps=eps,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            differentiable=False,
        )
        super().__init__(params, defaults)
        # The fused path's plan per param group (see _FusedPlan); not saved.
        self._fused_caches: dict[int, dict[str, Any]] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._fused_caches = {}
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        mems: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        state_steps: list[Tensor],
    ) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    "SMORMS3 does not support sparse gradients (a parameter of shape "
                    f"{tuple(p.shape)} has one, e.g. from nn.Embedding(sparse=True)); "
                    "use trainkit.optim.sparse_dense_optimizer(model, dense=SMORMS3) "
                    "to give the sparse parameters to torch.optim.SparseAdam"
                )
            if torch.is_complex(p):
                raise ValueError(
                    f"SMORMS3 does not support complex parameters (got {p.dtype}); "
                    "optimize torch.view_as_real(p) instead"
                )
            state = self.state[p]
            if len(state) == 0:
                dtype = _state_dtype(p)
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                state["mem"] = torch.ones_like(
                    p, dtype=dtype, memory_format=torch.preserve_format
                )
                state["exp_avg"] = torch.zeros_like(
                    p, dtype=dtype, memory_format=torch.preserve_format
                )
                state["exp_avg_sq"] = torch.zeros_like(
                    p, dtype=dtype, memory_format=torch.preserve_format
                )
            params.append(p)
            grads.append(p.grad)
            mems.append(state["mem"])
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            state_steps.append(state["step"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Performs one optimization step.

        Args:
            closure: reevaluates the model and returns the loss (optional); it runs
                with gradients enabled.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for index, group in enumerate(self.param_groups):
            params: list[Tensor] = []
            grads: list[Tensor] = []
            mems: list[Tensor] = []
            exp_avgs: list[Tensor] = []
            exp_avg_sqs: list[Tensor] = []
            state_steps: list[Tensor] = []
            self._init_group(
                group, params, grads, mems, exp_avgs, exp_avg_sqs, state_steps
            )
            if params:
                smorms3(
                    params,
                    grads,
                    mems,
                    exp_avgs,
                    exp_avg_sqs,
                    state_steps,
                    foreach=group["foreach"],
                    fused=group["fused"],
                    lr=group["lr"],
                    eps=group["eps"],
                    weight_decay=group["weight_decay"],
                    maximize=group["maximize"],
                    fused_cache=self._fused_caches.setdefault(index, {}),
                )
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads optimizer state; see :meth:`torch.optim.Optimizer.load_state_dict`.

        ``torch.optim.Optimizer`` casts floating-point state to each parameter's
        dtype; this keeps the float32 state of half-precision parameters, and
        makes every ``step`` a 0-dim float tensor on the CPU (as this class
        creates it), whatever the saved one was (an int, an int64 tensor).
        """
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id)
            if saved is None or p not in self.state:
                continue
            dtype = _state_dtype(p)
            for key in _STATE_KEYS:
                if key in saved:
                    self.state[p][key] = saved[key].to(device=p.device, dtype=dtype)
            if "step" in saved:
                self.state[p]["step"] = torch.as_tensor(
                    saved["step"], dtype=_get_scalar_dtype(), device="cpu"
                )


def smorms3(
    params: list[Tensor],
    grads: list[Tensor],
    mems: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    foreach: bool | None = None,
    fused: bool | None = None,
    lr: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    fused_cache: dict[str, Any] | None = None,
) -> None:
    r"""Functional SMORMS3: updates ``params`` and the state lists in place.

    See :class:`SMORMS3` for the rule. The state tensors have the parameters' shapes
    (``mem`` starts at 1, ``exp_avg`` and ``exp_avg_sq`` at 0), in float32 for
    half-precision parameters; ``state_steps`` are 0-dim counters.

    Args:
        params: the parameters, updated in place.
        grads: their (dense) gradients.
        mems: Funk's ``mem`` per parameter.
        exp_avgs: the running mean ``g`` of the gradient.
        exp_avg_sqs: the running mean ``g2`` of the squared gradient.
        state_steps: step counters, incremented by one.
        foreach: multi-tensor path; None picks it on CUDA, not on the CPU.
        fused: one compiled kernel per tensor (opt-in).
        lr: cap on the per-element rate.
        eps: division guard, > 0.
        weight_decay: coupled L2 penalty.
        maximize: ascend instead of descend.
        fused_cache: a dict the caller keeps between calls (:class:`SMORMS3` keeps
            one per param group), where the fused path keeps the flat tensors and
            grouping of its kernels instead of redoing them on every call; unused
            by the other paths (default: None).
    """
    if fused and foreach:
        raise ValueError("Invalid foreach and fused: at most one can be True")
    if not params:
        return
    if foreach is None and not fused:
        _, foreach = _default_to_fused_or_foreach(params, differentiable=False)
    if fused:
        func = partial(_fused_smorms3, fused_cache=fused_cache)
    elif foreach:
        func = _multi_tensor_smorms3
    else:
        func = _single_tensor_smorms3
    func(
        params,
        grads,
        mems,
        exp_avgs,
        exp_avg_sqs,
        state_steps,
        lr=lr,
        eps=eps,
        weight_decay=weight_decay,
        maximize=maximize,
    )


def _count_step(state_steps: list[Tensor]) -> None:
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


def _single_tensor_smorms3(
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

    _count_step(state_steps)
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


def _multi_tensor_smorms3(
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

        _count_step(device_steps)

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


def _fused_kernel_body(
    param: Tensor,
    grad: Tensor,
    mem: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    lr: Tensor,
    eps: Tensor,
    weight_decay: Tensor,
    maximize: bool,
    decay: bool,
) -> None:
    # Written without lerp: its two-sided formula costs blends in generated code.
    g = grad.to(mem.dtype)
    if maximize:
        g = -g
    if decay:
        g = g + weight_decay * param.to(mem.dtype)
    s = mem + 1.0
    r = 1.0 / s
    ea = exp_avg + r * (g - exp_avg)
    eas = exp_avg_sq + r * (g * g - exp_avg_sq)
    x = ea * ea / (eas + eps)
    exp_avg.copy_(ea)
    exp_avg_sq.copy_(eas)
    mem.copy_(s - x * mem)  # 1 + mem * (1 - x)
    step = torch.minimum(x, lr) * g / (eas.sqrt() + eps)
    param.copy_(param.to(mem.dtype) - step)


def _fused_bucket_body(
    params: list[Tensor],
    grads: list[Tensor],
    mems: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    lr: Tensor,
    eps: Tensor,
    weight_decay: Tensor,
    maximize: bool,
    decay: bool,
) -> None:
    for i in range(len(params)):
        _fused_kernel_body(
            params[i],
            grads[i],
            mems[i],
            exp_avgs[i],
            exp_avg_sqs[i],
            lr,
            eps,
            weight_decay,
            maximize,
            decay,
        )


def _compiled_kernels() -> tuple[FlatKernel, FlatKernel]:
    """The compiled (one tensor, bucket of _BUCKET equal-size tensors) kernels.

    dynamic=True with flat inputs: one compilation of each serves every size. Flat
    groups call the compiled graph directly after their first call (see
    ``_compiled.FlatKernel``): the plan guarantees what the guards would check.
    """
    if not _fused_kernels:
        _fused_kernels.append(
            (
                FlatKernel(_fused_kernel_body, _INDUCTOR_OPTIONS),
                FlatKernel(_fused_bucket_body, _INDUCTOR_OPTIONS),
            )
        )
    return _fused_kernels[0]


class _KernelGroup(NamedTuple):
    """Tensors of one compiled kernel shape: flat equal-size contiguous tensors of
    one device and dtypes (``flat``), or one strided tensor as it is."""

    dtype: torch.dtype  # of the state, and of the kernel's 0-dim scalars
    indices: list[int]
    flat: bool
    params: list[Tensor]
    mems: list[Tensor]
    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]
    # Direct calls of the flat group's kernels, by (first index, maximize, decay,
    # grad mode); see _run_group.
    bound: dict[tuple[Any, ...], Callable[..., None]]


def _layout(
    params: list[Tensor],
    grads: list[Tensor],
    mems: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
) -> list[Any]:
    """What a fused plan assumes of the tensors it was built on, beyond their
    identity: the storage of each parameter and state tensor (the plan holds
    flat views of it), and each gradient's type, dtype, size and contiguity
    (flat groups' direct calls read it by data pointer, so a negative-bit view
    must not be one). One flat list, built with ``map`` over the tensor methods:
    ~0.6 us per parameter."""
    return [
        *map(Tensor.data_ptr, params),
        *map(Tensor.numel, params),
        *map(Tensor.is_contiguous, params),
        *map(Tensor.data_ptr, mems),
        *map(Tensor.data_ptr, exp_avgs),
        *map(Tensor.data_ptr, exp_avg_sqs),
        *map(type, grads),
        *map(operator.attrgetter("dtype"), grads),
        *map(Tensor.numel, grads),
        *map(Tensor.is_contiguous, grads),
        *map(Tensor.is_neg, grads),
    ]


def _check_tensors(tensors: tuple[Tensor, ...]) -> None:
    """Raises unless a parameter's gradient and state have its shape, and its
    three state tensors one dtype: the kernels read them element by element
    from their data pointers, grouped by the dtype of ``mem``."""
    param, _, mem = tensors[:3]
    for name, t in zip(("gradient", "mem", "exp_avg", "exp_avg_sq"), tensors[1:]):
        if t.shape != param.shape:
            raise RuntimeError(
                f"SMORMS3: a parameter of shape {tuple(param.shape)} has a {name} "
                f"of shape {tuple(t.shape)}"
            )
        if name != "gradient" and t.dtype != mem.dtype:
            raise RuntimeError(
                f"SMORMS3: a parameter of shape {tuple(param.shape)} has state of "
                f"two dtypes ({name} {t.dtype}, mem {mem.dtype}); its mem, exp_avg "
                "and exp_avg_sq must share one"
            )


def _overlapping(params: list[Tensor]) -> set[int]:
    """Indices of the parameters whose memory overlaps another parameter's
    (distinct Parameters built on one tensor's data, or on overlapping views)."""
    spans = []  # (device, storage, first byte, past the last byte, index)
    for i, p in enumerate(params):
        if p.numel() == 0:
            continue
        start = p.data_ptr()
        extent = 1 + sum((n - 1) * abs(st) for n, st in zip(p.shape, p.stride()))
        storage = p.untyped_storage().data_ptr()
        spans.append((p.device, storage, start, start + extent * p.element_size(), i))
    spans.sort(key=lambda span: (str(span[0]), span[1], span[2]))
    found: set[int] = set()
    reach, reach_index, where = 0, -1, None  # the furthest end so far, its owner
    for device, storage, start, end, i in spans:
        if (device, storage) != where:
            reach, reach_index, where = end, i, (device, storage)
            continue
        if start < reach:
            found.update((i, reach_index))
        if end > reach:
            reach, reach_index = end, i
    return found


def _same(tensors: list[Tensor], kept: list[Tensor]) -> bool:
    return len(tensors) == len(kept) and all(map(operator.is_, tensors, kept))


class _FusedPlan:
    """The fused path's kernel inputs for a list of tensors, kept between steps.

    Flattening and grouping take ~8 us per tensor, over a tenth of the step on 200
    tensors of 256 x 256; a plan does them once. It fits a later call on the same
    parameters (same storage), state tensors and gradient dtypes and contiguity.
    The gradients are flattened on every call: they are often new tensors.

    Contiguous tensors are grouped flat by (device, dtypes, size): equal-size flat
    tensors share one size symbol, so a bucket of them is one compiled call (a call
    costs tens of microseconds, as much as the update of a 256 x 256 tensor).
    Strided tensors form a group each. Sizes 0 and 1 would each compile a
    specialised kernel, a compiled graph assumes its inputs do not overlap, and a
    direct call reads a gradient's memory as it is: those tensors (``eager``: sizes
    0 and 1, parameters whose memory overlaps another's, negative-bit gradients)
    go to the per-tensor path.
    """

    def __init__(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        mems: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
    ) -> None:
        self._tensors = (list(params), list(mems), list(exp_avgs), list(exp_avg_sqs))
        self._layout = _layout(params, grads, mems, exp_avgs, exp_avg_sqs)
        self.eager: list[int] = []
        flat: dict[tuple[Any, ...], list[int]] = {}
        strided: list[int] = []
        overlapping = _overlapping(params)
        for i, param in enumerate(params):
            tensors = (param, grads[i], mems[i], exp_avgs[i], exp_avg_sqs[i])
            _check_tensors(tensors)
            if param.numel() < 2 or i in overlapping or grads[i].is_neg():
                self.eager.append(i)
            elif all(t.is_contiguous() for t in tensors):
                key = (param.device, param.dtype, grads[i].dtype, mems[i].dtype)
                flat.setdefault((*key, param.numel()), []).append(i)
            else:
                strided.append(i)
        self.groups = [self._group(indices, True) for indices in flat.values()]
        self.groups += [self._group([i], False) for i in strided]
        eager = set(self.eager)
        self.compiled = [i for i in range(len(params)) if i not in eager]

    def _group(self, indices: list[int], flat: bool) -> _KernelGroup:
        params, mems, exp_avgs, exp_avg_sqs = (
            [tensors[i] for i in indices] for tensors in self._tensors
        )
        if flat:
            # .detach() drops the view's base, which torch.compile would guard on
            # (its shape would make a 1-D and a 2-D parameter compile twice).
            params, mems, exp_avgs, exp_avg_sqs = (
                [t.view(-1).detach() for t in tensors]
                for tensors in (params, mems, exp_avgs, exp_avg_sqs)
            )
        dtype = mems[0].dtype
        return _KernelGroup(
            dtype, indices, flat, params, mems, exp_avgs, exp_avg_sqs, bound={}
        )

    def fits(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        mems: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
    ) -> bool:
        """Whether this plan holds for a call on these tensors."""
        kept_params, kept_mems, kept_exp_avgs, kept_exp_avg_sqs = self._tensors
        return (
            _same(params, kept_params)
            and _same(mems, kept_mems)
            and _same(exp_avgs, kept_exp_avgs)
            and _same(exp_avg_sqs, kept_exp_avg_sqs)
            and _layout(params, grads, mems, exp_avgs, exp_avg_sqs) == self._layout
        )


def _fused_plan(
    cache: dict[str, Any] | None,
    params: list[Tensor],
    grads: list[Tensor],
    mems: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
) -> _FusedPlan:
    """The cached plan if it fits these tensors, else a new one (cached)."""
    plan = None if cache is None else cache.get("plan")
    if plan is None or not plan.fits(params, grads, mems, exp_avgs, exp_avg_sqs):
        plan = _FusedPlan(params, grads, mems, exp_avgs, exp_avg_sqs)
        if cache is not None:
            cache["plan"] = plan
    return plan


def _run_group(
    group: _KernelGroup,
    grads: list[Tensor],
    kernels: tuple[FlatKernel, FlatKernel],
    scalars: tuple[Tensor, Tensor, Tensor],
    maximize: bool,
    decay: bool,
) -> None:
    """Updates one group: compiled buckets of _BUCKET tensors, then one by one.

    A flat group's tensors are flat by the plan's checks, so its first call of a
    bucket checks only the first tensor of each list (``call_flat``), and keeps
    the direct call in ``group.bound`` (``FlatKernel.bind``) for later steps.
    The gradients are flattened on every step (~0.85 us each): a direct call's
    inputs must be 1-D, as compiled, and the plan checked that they are
    contiguous."""
    grads = [grads[i] for i in group.indices]
    if group.flat:
        grads = [g.view(-1) for g in grads]  # (numel,)
    count = len(grads)
    full = count - count % _BUCKET
    calls = [(kernels[1], i, i + _BUCKET) for i in range(0, full, _BUCKET)]
    calls += [(kernels[0], i, None) for i in range(full, count)]
    grad_mode = torch.is_grad_enabled()
    tensors = (group.params, grads, group.mems, group.exp_avgs, group.exp_avg_sqs)
    for kernel, start, end in calls:
        pick = operator.itemgetter(start if end is None else slice(start, end))
        args = [*map(pick, tensors), *scalars, maximize, decay]
        if not group.flat:
            kernel(*args)
            continue
        key = (start, maximize, decay, grad_mode)
        run = group.bound.get(key)
        if run is not None:
            run(*args)
            continue
        # torch.compile guards on a view's base: a 1-D and a 2-D gradient of one
        # size would compile twice
        args[1] = args[1].detach() if end is None else [g.detach() for g in args[1]]
        kernel.call_flat(*args)
        run = kernel.bind(*args)
        if run is not None:
            group.bound[key] = run


def _fused_smorms3(
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
    fused_cache: dict[str, Any] | None = None,
) -> None:
    plan = _fused_plan(fused_cache, params, grads, mems, exp_avgs, exp_avg_sqs)
    if plan.eager:
        _single_tensor_smorms3(
            [params[i] for i in plan.eager],
            [grads[i] for i in plan.eager],
            [mems[i] for i in plan.eager],
            [exp_avgs[i] for i in plan.eager],
            [exp_avg_sqs[i] for i in plan.eager],
            [state_steps[i] for i in plan.eager],
            lr=lr,
            eps=eps,
            weight_decay=weight_decay,
            maximize=maximize,
        )
        state_steps = [state_steps[i] for i in plan.compiled]
    if state_steps:
        _count_step(state_steps)
    kernels = _compiled_kernels()
    decay = weight_decay != 0
    scalars: dict[torch.dtype, tuple[Tensor, Tensor, Tensor]] = {}
    for group in plan.groups:
        if group.dtype not in scalars:
            # 0-dim CPU tensors: a new lr (schedulers) must not recompile.
            scalars[group.dtype] = tuple(  # type: ignore[assignment]
                torch.tensor(v, dtype=group.dtype) for v in (lr, eps, weight_decay)
            )
        _run_group(group, grads, kernels, scalars[group.dtype], maximize, decay)
