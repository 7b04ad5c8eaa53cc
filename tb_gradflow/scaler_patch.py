"""``GradScaler.step`` wrapped while a watcher follows the scaler: a step the
scaler skips for inf/NaN is logged too."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["ScalerStepPatch", "check_scaler"]


_MISSING = object()


def check_scaler(scaler: Any) -> None:
    """Raises unless an instance attribute can wrap ``scaler.step``, a callable."""
    kind = (
        f"the class {scaler.__qualname__}"
        if isinstance(scaler, type)
        else type(scaler).__name__
    )
    if not callable(getattr(scaler, "step", None)):
        raise TypeError(f"scaler must be a torch.amp.GradScaler, got {kind}")
    # The class's own __dict__ is a mappingproxy: a class is refused here too.
    if not isinstance(getattr(scaler, "__dict__", None), dict):
        raise TypeError(
            f"scaler must be a torch.amp.GradScaler, got {kind}, which has no "
            "instance __dict__ to wrap its step in"
        )
    class_step = inspect.getattr_static(type(scaler), "step", None)
    if hasattr(type(class_step), "__set__"):
        raise TypeError(
            f"scaler must be a torch.amp.GradScaler, got {kind}, whose step is "
            "a data descriptor that an instance attribute cannot cover"
        )


def _unwatched_step(
    scaler: Any, step: Callable[..., Any] | None = None
) -> Callable[..., Any]:
    """A copied scaler's step: ``step``, or its class's ``step`` bound to it."""
    if step is not None:
        return step
    return inspect.getattr_static(type(scaler), "step").__get__(scaler, type(scaler))


class ScalerStepPatch:
    """``scaler.step`` while a watcher follows the scaler, and its removable handle.

    Set as an instance attribute over whatever ``scaler.step`` was. Patches of
    several watchers stack; removing one in any order leaves the others
    working, and once the last is removed the scaler holds exactly what was
    there before (no instance attribute if there was none). A patch removed
    while someone else's patch covers it stays in that chain, calling straight
    through and holding no reference to its watcher. Once the cover is undone,
    the next removal of a patch on this scaler drops it as well; if no watcher
    is left to remove by then, it stays as ``scaler.step``, inert.

    A copy of the scaler (``copy.deepcopy``, pickle) is not watched: the copy
    gets the step below every watcher's patch, bound to the copy.
    """

    def __init__(
        self,
        scaler: Any,
        optimizer: torch.optim.Optimizer,
        on_step: Callable[..., Any],
    ) -> None:
        # on_step(inner_step, optimizer, args, kwargs) runs the scaler's step
        # on the watched optimizer; None once removed
        self._on_step: Callable[..., Any] | None = on_step
        self._optimizer = optimizer
        self._scaler = scaler
        self._previous = vars(scaler).get("step", _MISSING)
        self._inner = scaler.step
        scaler.step = self

    def __call__(
        self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any
    ) -> Any:
        on_step = self._on_step
        if on_step is None or optimizer is not self._optimizer:
            return self._inner(optimizer, *args, **kwargs)
        return on_step(self._inner, optimizer, args, kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        # Copying the watcher would copy its writer (not copyable) and leave the
        # copy logging to the original's run; a copy of the scaler is unwatched.
        base = self._previous
        while isinstance(base, ScalerStepPatch):
            base = base._previous
        if base is _MISSING:
            return _unwatched_step, (self._scaler,)
        return _unwatched_step, (self._scaler, base)

    def _below(self) -> tuple[Any, Callable[..., Any]]:
        """``(previous, inner)`` of this patch, past patches already removed."""
        previous, inner = self._previous, self._inner
        while isinstance(previous, ScalerStepPatch) and previous._on_step is None:
            previous, inner = previous._previous, previous._inner
        return previous, inner

    def remove(self) -> None:
        if self._on_step is None:
            return
        # left in someone's chain, it must keep neither the watcher nor its
        # optimizer
        self._on_step = self._optimizer = None
        scaler = self._scaler
        above = vars(scaler).get("step")
        while isinstance(above, ScalerStepPatch) and above is not self:
            if above._previous is self:  # unlink self from the stack
                above._previous, above._inner = self._below()
                break
            above = above._previous
        # Pop removed patches that nothing covers: this one, or one uncovered
        # since by someone else undoing their patch.
        top = vars(scaler).get("step", _MISSING)
        if isinstance(top, ScalerStepPatch) and top._on_step is None:
            previous, _ = top._below()
            if previous is _MISSING:
                del scaler.step
            else:
                scaler.step = previous
