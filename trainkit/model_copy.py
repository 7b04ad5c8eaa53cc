"""What the checks run on: a copy of the model that keeps the model's own hooks
and leaves outside observers behind, the random state forked, and torch's
global module hooks switched off while a check runs.

A check must never change what it is given: the model, its buffers, its
optimizer's state and the random generators stay as they were.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import threading
import types
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

__all__ = ["copy_model", "fork_rng", "forward", "global_hooks", "hooks_note"]

# The message torch's batch_norm raises for one value per channel in training.
_BATCH_NORM_ONE_VALUE = "Expected more than 1 value per channel when training"

_HOOK_DICTS = {
    "_forward_pre_hooks": "forward pre-hook",
    "_forward_hooks": "forward hook",
    "_backward_pre_hooks": "backward pre-hook",
    "_backward_hooks": "backward hook",
}
# A tensor's hook dicts: their kind, and the method that registers one.
_TENSOR_HOOK_DICTS = {
    "_backward_hooks": ("tensor hook", "register_hook"),
    "_post_accumulate_grad_hooks": (
        "post-accumulate-grad hook",
        "register_post_accumulate_grad_hook",
    ),
}
# The global module hooks that run in a forward or backward pass, and the dicts
# that hold options of the forward ones (keyed by the same handle ids).
_GLOBAL_HOOK_DICTS = {
    "_global_forward_pre_hooks": "forward pre-hook",
    "_global_forward_hooks": "forward hook",
    "_global_backward_pre_hooks": "backward pre-hook",
    "_global_backward_hooks": "backward hook",
}
_GLOBAL_HOOK_OPTIONS = (
    "_global_forward_hooks_with_kwargs",
    "_global_forward_hooks_always_called",
)
_ROOT = "<root>"  # the model itself in hooks_left_out ("model" may be a submodule)
# Hooks that compute a module's weights from its parameters, user subclasses of
# torch's pruning method included: the copy keeps them.
_WEIGHT_HOOKS = (WeightNorm, SpectralNorm, BasePruningMethod)


def _model_devices(model: nn.Module) -> dict[str, set[torch.device]]:
    """The devices, by type, of the model's parameters and buffers, CPU and meta
    left out."""
    devices: dict[str, set[torch.device]] = {}
    for t in (*model.parameters(), *model.buffers()):
        if t.device.type not in ("cpu", "meta"):
            devices.setdefault(t.device.type, set()).add(t.device)
    return devices


def _has_rng_state(device_type: str) -> bool:
    """Whether torch can save and restore the RNG state of ``device_type``'s
    devices, as ``torch.random.fork_rng`` does; warns if not."""
    try:
        module = torch.get_device_module(device_type)
    except RuntimeError:  # no torch.<device_type> registered, e.g. torch_xla's
        module = None
    if all(
        callable(getattr(module, name, None))
        for name in ("get_rng_state", "set_rng_state")
    ):
        return True
    warnings.warn(
        f"Cannot save the random number generator state of the model's "
        f"{device_type!r} devices (torch has no {device_type} module with "
        "get_rng_state and set_rng_state): the check's random draws there (e.g. "
        "dropout) advance it",
        stacklevel=5,  # the check's caller
    )
    return False


@contextlib.contextmanager
def fork_rng(model: nn.Module) -> Iterator[None]:
    """Restores, on exit, the CPU's random number generator and those of the
    devices that hold the model's parameters and buffers (dropout on CUDA draws
    from the CUDA generator of its device); a device type whose generator torch
    cannot save is skipped with a warning."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[]))
        for device_type, on in _model_devices(model).items():
            if _has_rng_state(device_type):
                stack.enter_context(
                    torch.random.fork_rng(
                        devices=sorted(on, key=str), device_type=device_type
                    )
                )
        yield


@dataclasses.dataclass
class _GlobalHooksOff:
    """Process-wide: the global hooks saved while at least one check runs."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    depth: int = 0  # checks running, in any thread
    saved: dict[str, OrderedDict] = dataclasses.field(default_factory=dict)


_GLOBAL_HOOKS_OFF = _GlobalHooksOff()


@contextlib.contextmanager
def global_hooks(keep: bool) -> Iterator[list[str]]:
    """Turns the global module hooks off (unless ``keep``) while a check runs.

    Process-wide, as the hooks are: the first check in (in any thread) saves and
    clears them, the last one out puts them back with their options, followed by
    those registered meanwhile (their handles still work). A saved hook whose
    handle is removed during a check comes back (the handle cannot be told from
    outside). Yields the hooks turned off, as ``"<global> <kind> <hook>"``.
    """
    if keep:
        yield []
        return
    state = vars(nn.modules.module)
    off = _GLOBAL_HOOKS_OFF
    with off.lock:
        if off.depth == 0:
            off.saved = {
                name: OrderedDict(state[name])
                for name in (*_GLOBAL_HOOK_DICTS, *_GLOBAL_HOOK_OPTIONS)
            }
            for name in _GLOBAL_HOOK_DICTS:
                state[name].clear()  # in place: the handles hold these dicts
        off.depth += 1
        left_out = [
            f"<global> {kind} {_hook_name(hook)}"
            for name, kind in _GLOBAL_HOOK_DICTS.items()
            for hook in off.saved[name].values()
        ]
    try:
        yield left_out
    finally:
        with off.lock:
            off.depth -= 1
            if off.depth == 0:
                for name, hooks in off.saved.items():
                    # handle ids grow with each registration: id order is the
                    # order of registration
                    merged = sorted({**hooks, **state[name]}.items())
                    state[name].clear()
                    state[name].update(merged)
                off.saved = {}


def forward(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``; names the batch size when BatchNorm refuses it."""
    try:
        return model(inputs)
    except ValueError as e:
        if _BATCH_NORM_ONE_VALUE not in str(e):
            raise
        raise ValueError(
            f"{e}. The checks run the model in training mode, as the first "
            "training step, and BatchNorm then normalises by the batch: pass a "
            "batch of 2 or more examples"
        ) from e


def _is_model_hook(hook: Any, module_ids: set[int]) -> bool:
    """Whether ``hook`` is part of the model's computation: defined by torch, or a
    method of one of the model's modules (``module_ids``)."""
    if isinstance(hook, _WEIGHT_HOOKS):
        return True
    func = hook
    while isinstance(func, functools.partial):
        func = func.func
    if isinstance(func, types.MethodType) and id(func.__self__) in module_ids:
        return True
    if isinstance(func, (types.FunctionType, types.MethodType)):
        where = getattr(func, "__module__", None) or ""
    else:
        where = type(func).__module__
    return where == "torch" or where.startswith("torch.")


def _hook_name(hook: Any) -> str:
    func = hook.func if isinstance(hook, functools.partial) else hook
    return getattr(func, "__qualname__", type(func).__qualname__)


def copy_model(model: nn.Module, keep_hooks: bool) -> tuple[nn.Module, list[str]]:
    """A deep copy of ``model`` with the hooks of the model's computation, and the
    hooks it left behind, as ``"<module> <kind> <hook>"``.

    The module hook dicts are swapped in deepcopy's memo, so a hook left behind is
    never copied (a hook bound to an object that holds a ``SummaryWriter`` would
    copy the writer), and one from outside kept by ``keep_hooks`` is shared, not
    copied. All swaps are in the memo before any hook is copied: a kept method
    copies its module, which must then find its hook dicts swapped too. Deep copies
    of parameters and buffers drop their tensor hooks, so the kept ones are
    registered again on the copy's tensors.
    """
    module_ids = {id(m) for m in model.modules()}
    memo: dict[int, Any] = {}
    kept: list[tuple[OrderedDict[int, Any], int, Any]] = []
    left_out = []
    for name, module in model.named_modules():
        for attr, kind in _HOOK_DICTS.items():
            hooks = getattr(module, attr)
            twin: OrderedDict[int, Any] = OrderedDict()
            memo[id(hooks)] = twin
            for key, hook in hooks.items():
                if _is_model_hook(hook, module_ids):
                    kept.append((twin, key, hook))
                elif keep_hooks:
                    memo[id(hook)] = hook
                    kept.append((twin, key, hook))
                else:
                    left_out.append(f"{name or _ROOT} {kind} {_hook_name(hook)}")
    for twin, key, hook in kept:
        twin[key] = copy.deepcopy(hook, memo)
    clone = copy.deepcopy(model, memo)
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    for name, tensor in tensors.items():
        twin = memo.get(id(tensor))
        if twin is None or not twin.requires_grad:  # no gradient: hooks never run
            continue
        for attr, (kind, register) in _TENSOR_HOOK_DICTS.items():
            if getattr(twin, attr, None):  # the tensor's own deepcopy kept them
                continue
            for hook in (getattr(tensor, attr, None) or {}).values():
                if _is_model_hook(hook, module_ids):
                    getattr(twin, register)(copy.deepcopy(hook, memo))
                elif keep_hooks:
                    getattr(twin, register)(hook)
                else:
                    left_out.append(f"{name} {kind} {_hook_name(hook)}")
    return clone, left_out


def hooks_note(left_out: list[str]) -> str:
    if not left_out:
        return ""
    return (
        f" The check ran without the hooks from outside the model "
        f"({', '.join(left_out)}): if one of them changes the output or the "
        "gradients, pass keep_hooks=True."
    )
