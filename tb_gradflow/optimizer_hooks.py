"""How a watcher meets an optimizer: the torch optimizer behind a wrapper, and a
step's closure.

Training frameworks hand out wrappers of the user's optimizer: Accelerate's
``AcceleratedOptimizer`` (a ``torch.optim.Optimizer`` subclass that never runs
its ``__init__``, so it has no hook registry) and Lightning's
``LightningOptimizer``. Both keep the optimizer they wrap, whose ``step`` is the
one that updates the model: :func:`hookable_optimizer` finds it.

``optimizer.step(closure)`` runs the forward and backward pass (and, under
Lightning, gradient clipping) inside ``step``, after the step pre-hooks: a
pre-hook sees the previous step's gradient. :class:`ClosureCall` wraps the
closure so that the statistics are taken when its first evaluation returns.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "ClosureCall",
    "closure_position",
    "hookable_optimizer",
    "nested_step",
    "with_closure",
]

# Attributes under which known wrappers keep the optimizer they wrap:
# AcceleratedOptimizer.optimizer, LightningOptimizer.optimizer (a property over
# its _optimizer).
_WRAPPED_AT = ("optimizer", "_optimizer")
_MAX_WRAPPERS = 8


def hookable_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The ``torch.optim.Optimizer`` whose ``step`` runs the step hooks: the
    optimizer itself, or the one a wrapper keeps (followed through up to eight
    wrappers).

    Raises:
        TypeError: if neither ``optimizer`` nor what it wraps is a working
            ``torch.optim.Optimizer``; the message names what was passed.
    """
    current = optimizer
    for _ in range(_MAX_WRAPPERS):
        inner = _wrapped(current)
        if inner is None:
            break
        current = inner
    if isinstance(current, torch.optim.Optimizer) and isinstance(
        getattr(current, "_optimizer_step_pre_hooks", None), dict
    ):
        return current
    kind = type(optimizer).__name__
    detail = (
        ", a torch.optim.Optimizer subclass whose __init__ never ran (it has no "
        "step hooks) and that wraps no optimizer"
        if isinstance(optimizer, torch.optim.Optimizer)
        else ""
    )
    raise TypeError(
        f"optimizer must be a torch.optim.Optimizer or a wrapper of one "
        f"(Accelerate's AcceleratedOptimizer, Lightning's LightningOptimizer), got "
        f"{kind}{detail}; pass the optimizer whose step() updates the model"
    )


def _wrapped(wrapper: Any) -> torch.optim.Optimizer | None:
    """The optimizer ``wrapper`` keeps under a known attribute, if any."""
    for attribute in _WRAPPED_AT:
        try:
            inner = getattr(wrapper, attribute, None)
        except Exception:  # a property of a half-built wrapper may raise
            inner = None
        if isinstance(inner, torch.optim.Optimizer) and inner is not wrapper:
            return inner
    return None


def _step_wrapper_code() -> Any:
    """The code of the wrapper through which ``Optimizer`` runs a ``step`` and its
    hooks (``Optimizer.profile_hook_step``), or None if torch has no such one."""
    wrap = getattr(torch.optim.Optimizer, "profile_hook_step", None)
    wrapper = wrap(lambda: None) if callable(wrap) else None
    return getattr(wrapper, "__code__", None)


_STEP_WRAPPER_CODE = _step_wrapper_code()


def nested_step(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the step whose hook is running was called from inside another
    ``step`` of the same optimizer. A subclass whose ``step`` calls
    ``super().step()`` runs the hooks twice when the parent class's ``step`` is
    hooked too (torch hooks the class of every optimizer it creates): the inner
    call is not a step of its own. Looks for two of torch's step wrappers with
    this optimizer among the calling frames (~1 us per frame)."""
    if _STEP_WRAPPER_CODE is None:
        return False
    found = 0
    frame = sys._getframe(1)
    while frame is not None:
        if (
            frame.f_code is _STEP_WRAPPER_CODE
            and frame.f_locals.get("self") is optimizer
        ):
            found += 1
            if found == 2:
                return True
        frame = frame.f_back
    return False


def closure_position(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | str | None:
    """Where ``optimizer.step``'s closure is among a step hook's arguments:
    ``1`` (``args[0]`` is the optimizer), ``"closure"`` (a keyword, as
    Lightning passes it), or None when the step has no closure."""
    if kwargs.get("closure") is not None:
        return "closure"
    if len(args) > 1 and args[1] is not None:
        return 1
    return None


def with_closure(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    position: int | str,
    closure: Callable[[], Any],
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The step's ``(args, kwargs)`` with ``closure`` at ``position``."""
    if isinstance(position, str):
        return args, {**kwargs, position: closure}
    return (*args[:position], closure, *args[position + 1 :]), kwargs


class ClosureCall:
    """A step's closure that calls ``on_return`` once, when its first evaluation
    returns (after the backward pass, unscaling and clipping done inside it).

    Optimizers that evaluate the closure several times (LBFGS) start their step
    from the first evaluation's gradient: that is the one taken. If the closure
    raises, nothing is taken. :meth:`take` also takes it for an optimizer that
    never called the closure.
    """

    def __init__(self, closure: Callable[..., Any], on_return: Callable[[], Any]):
        self.closure = closure
        self.taken = False
        self.raised = False
        self._on_return = on_return

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = self.closure(*args, **kwargs)
        except BaseException:
            self.raised = True
            raise
        self.take()
        return result

    def take(self) -> None:
        """Calls ``on_return`` unless it ran already or the closure raised."""
        if not (self.taken or self.raised):
            self.taken = True
            self._on_return()
