r"""SMORMS3 (Simon Funk, 2015): RMSprop whose averaging window adapts to the noise.

Three layers, as in ``torch.optim``: the :class:`SMORMS3` class checks arguments and
holds lazily created state, the functional :func:`smorms3` dispatches, and
``single_tensor_smorms3`` / ``multi_tensor_smorms3`` / ``fused_smorms3`` do the
arithmetic. All three compute the same rule and agree to rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from itertools import chain
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import (
    Optimizer,
    ParamsT,
    _default_to_fused_or_foreach,
    _get_scalar_dtype,
)

from trainkit.optim.smorms3_fused import fused_smorms3
from trainkit.optim.smorms3_kernels import (
    multi_tensor_smorms3,
    single_tensor_smorms3,
)

__all__ = ["SMORMS3", "smorms3"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
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
        stork's SMORMS4 is a different rule. The "Implementing The SMORMS3 Optimizer
        in PyTorch" post's version defaults to ``lr=0.0025`` and keeps ``eps``
        outside the param groups.

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
        func = partial(fused_smorms3, fused_cache=fused_cache)
    elif foreach:
        func = multi_tensor_smorms3
    else:
        func = single_tensor_smorms3
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
