"""SMORMS3's opt-in fused path (``fused=True``): each tensor, or each bucket of
equal-size tensors, updated by one ``torch.compile``'d kernel, called directly
once compiled (:class:`trainkit.optim._compiled.FlatKernel`), with a plan of
flat views kept between steps.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from trainkit.optim._compiled import FlatKernel
from trainkit.optim.smorms3_kernels import count_step, single_tensor_smorms3

__all__ = ["fused_smorms3"]

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


def fused_smorms3(
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
        single_tensor_smorms3(
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
        count_step(state_steps)
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
