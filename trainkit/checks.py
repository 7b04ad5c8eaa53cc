"""Training sanity checks: the hints of the "Flow Gradient, Please Flow, Darn
It!" post, as code.

Each check returns a :class:`CheckResult` and never changes what it is given: it
works on copies, so the caller's parameters, buffers, ``.grad``, optimizer state,
hooks, logs and random number generators (the CPU's and those of the devices that
hold the model, e.g. for CUDA dropout) stay as they were (a ``watch``-ed optimizer
logs none of a check's steps; a device type whose generator torch cannot save is
skipped with a warning).

Which hooks the model's copy keeps: the checks run the model the first training
step runs, so the copy keeps the hooks that are part of the model's computation,
and leaves behind those that watch it from outside. The rule covers the forward
and backward hooks of the model's modules and the hooks of its parameters and
buffers (``p.register_hook``, ``p.register_post_accumulate_grad_hook``; deep
copies of a tensor drop them, so a kept one is registered again on the copy):

- kept: hooks defined by torch (lazy modules' shape inference, eager-mode QAT
  observers and fake quantisation, the deprecated ``weight_norm`` and
  ``spectral_norm``, ``torch.nn.utils.prune`` and its subclasses), and methods
  of the model's own modules (``self.register_forward_hook(self._scale)``);
- left behind: every other hook (plain functions, lambdas, methods of objects
  outside the model, e.g. a logger holding a ``SummaryWriter``): they neither run
  nor log during a check, and are not copied. A result names the hooks it left
  behind (``details["hooks_left_out"]`` and its message); ``keep_hooks=True``
  keeps them too, for a hook from outside that changes the output or the
  gradients: they then run, shared with the model, not copied.

A hook's return value cannot tell the two kinds apart without running it, and
running an observer is what a check must not do: hence a rule by owner.

Global module hooks (``torch.nn.modules.module.register_module_forward_hook`` and
the like) are from outside every model: a check turns them off while it runs (in
every thread; with checks overlapping in several threads, until the last one
ends) and restores them afterwards, also when it raises, followed by any
registered meanwhile, unless ``keep_hooks=True``. A hook left behind is named
``"<module> <kind> <hook>"``, where ``<module>`` is the submodule's name (``fc1``,
``encoder.0``), ``<root>`` for the model itself, a parameter's or buffer's name for
a tensor hook (``fc1.weight tensor hook ...``) and ``<global>`` for a global hook.

Expected initial losses (Karpathy, "A Recipe for Training Neural Networks";
CS231n): cross-entropy over C classes with near-uniform outputs starts at
``ln C = -log(1/C)``; balanced binary cross-entropy at ``ln 2``; the skip-gram
loss with k negatives (zero-initialised output vectors) at ``(k + 1) ln 2``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import numbers
import threading
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from tb_gradflow import (
    Finding,
    check_writer,
    diagnose_stats,
    layer_stats,
    select_layers,
)
from trainkit._validate import (
    check_choice,
    check_int,
    check_model_and_loss,
    check_real,
)

__all__ = [
    "CheckResult",
    "check_initial_loss",
    "clip_grad_norm",
    "expected_initial_loss",
    "overfit_batch",
]

_KINDS = ("cross_entropy", "binary_cross_entropy", "skipgram")
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
# The message torch's batch_norm raises for one value per channel in training.
_BATCH_NORM_ONE_VALUE = "Expected more than 1 value per channel when training"


@dataclasses.dataclass
class CheckResult:
    """The outcome of one check.

    Attributes:
        name: the check.
        passed: whether the model passed it.
        measured: the measured value (a loss).
        expected: what it should be (a loss, or the target of ``overfit_batch``).
        message: one or two sentences; on failure, what is probably wrong.
        details: more, e.g. ``losses`` (the loss curve) or ``findings``.
    """

    name: str
    passed: bool
    measured: float
    expected: float
    message: str
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_markdown(self) -> str:
        """A short Markdown paragraph, e.g. for ``SummaryWriter.add_text``."""
        verdict = "passed" if self.passed else "**FAILED**"
        return (
            f"**{self.name}** {verdict}: measured {self.measured:.4g}, "
            f"expected {self.expected:.4g}. {self.message}"
        )


def expected_initial_loss(
    num_classes: int | None,
    kind: str = "cross_entropy",
    *,
    num_negatives: int | None = None,
) -> float:
    """The loss an untrained model should start at.

    Args:
        num_classes: C, for ``kind="cross_entropy"`` (ignored otherwise).
        kind: ``"cross_entropy"`` (``ln C``), ``"binary_cross_entropy"``
            (``ln 2``) or ``"skipgram"`` (``(k + 1) ln 2``).
        num_negatives: k, for ``kind="skipgram"``.

    Examples:
        >>> round(expected_initial_loss(10), 4)
        2.3026
        >>> round(expected_initial_loss(None, "skipgram", num_negatives=5), 4)
        4.1589
    """
    check_choice("kind", kind, _KINDS)
    if kind == "cross_entropy":
        num_classes = check_int("num_classes", num_classes, "an int >= 2")
        if num_classes < 2:
            raise ValueError(f"Invalid num_classes: {num_classes} (an int >= 2)")
        return math.log(num_classes)
    if kind == "binary_cross_entropy":
        return math.log(2)
    num_negatives = check_int(
        "num_negatives", num_negatives, "an int >= 0 for skipgram"
    )
    if num_negatives < 0:
        raise ValueError(f"Invalid num_negatives: {num_negatives} (an int >= 0)")
    return (num_negatives + 1) * math.log(2)


def check_initial_loss(
    model: nn.Module,
    inputs: Any,
    targets: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    num_classes: int | None = None,
    rtol: float = 0.1,
    *,
    kind: str = "cross_entropy",
    num_negatives: int | None = None,
    keep_hooks: bool = False,
) -> CheckResult:
    """Checks that the untrained model's loss is where chance puts it.

    The model runs on a copy in training mode, as in the first training step
    (dropout on; BatchNorm normalises by the batch's statistics, where eval mode
    would use the untrained running statistics, 0 and 1), without gradients. The
    copy's running statistics change; the model's do not. So BatchNorm needs a
    batch of 2 or more, as in training: a batch of 1 raises a ValueError that
    says so (eval mode would judge a model the first step never runs).

    The copy keeps the hooks that are part of the model (torch's, and methods of
    the model's own modules) and leaves the others behind (see the module
    docstring); the result names those it left behind.

    Args:
        model: the untrained model.
        inputs: its input (passed as ``model(inputs)``).
        targets: the targets of ``loss_fn``.
        loss_fn: ``loss_fn(output, targets) -> scalar``.
        num_classes: C (default, for cross-entropy: the size of the output's class
            dimension as ``F.cross_entropy`` reads it, dim 1 of ``(N, C)`` or
            ``(N, C, d1, ...)``, dim 0 of ``(C,)``). Required for an output of 3 or
            more dims when ``loss_fn`` is not ``F.cross_entropy`` or an
            ``nn.CrossEntropyLoss``: such a loss may read ``(B, T, C)``.
        rtol: allowed relative distance from the expected loss.
        kind, num_negatives: as in :func:`expected_initial_loss`.
        keep_hooks: also keep the hooks from outside the model, global module
            hooks included (they run, and log, during the check), for one that
            changes the output.

    Returns:
        The result; a NaN or infinite loss fails with its own message.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``, ``loss_fn`` is not
            callable, or ``rtol`` is not a real number.
        ValueError: on ``rtol <= 0``, a missing ``num_classes`` that the output
            does not determine (see above), or a batch of one value per channel
            through a BatchNorm layer.
    """
    check_model_and_loss(model, loss_fn)
    check_real("rtol", rtol)
    if not rtol > 0:
        raise ValueError(f"Invalid rtol: {rtol} (> 0)")
    with (
        _fork_rng(model),
        _global_hooks(keep_hooks) as global_left_out,
        torch.no_grad(),
    ):
        probe, left_out = _copy_model(model, keep_hooks)
        output = _forward(probe.train(), inputs)
        measured = float(loss_fn(output, targets))
    left_out += global_left_out
    if kind == "cross_entropy" and num_classes is None:
        num_classes = _num_classes(output, loss_fn)
    expected = expected_initial_loss(num_classes, kind, num_negatives=num_negatives)
    if kind == "cross_entropy":
        num_classes = int(num_classes)  # e.g. a numpy integer
    spread = float(output.float().std()) if output.numel() > 1 else 0.0
    passed = abs(measured - expected) <= rtol * expected
    what = {
        "cross_entropy": f"ln {num_classes}, uniform over {num_classes} classes",
        "binary_cross_entropy": "ln 2, a coin flip per target",
        "skipgram": f"(k + 1) ln 2 for k = {num_negatives} negatives",
    }[kind]
    if not math.isfinite(measured):
        value = "NaN" if math.isnan(measured) else f"{measured}"
        n_bad = int(output.numel() - torch.isfinite(output).sum())
        if n_bad:
            cause = (
                f"{n_bad} of the {output.numel()} outputs of the untrained model are "
                "NaN or infinite. Look for NaN or inf in the inputs and the "
                "initial parameters, and for a log of 0 or a division by 0 in "
                "forward."
            )
        else:
            cause = (
                "the outputs are finite, so the loss function makes it: look for a "
                "log of 0 or a division by 0 in it."
            )
        message = f"The initial loss is {value} (chance: {what}): {cause}"
    elif passed:
        message = f"The initial loss is at chance ({what})."
    elif measured > expected:
        message = (
            f"The initial loss is {measured / expected:.1f}x chance ({what}): the "
            f"untrained model is confidently wrong, its outputs are too large at "
            f"initialisation (output std {spread:.3g}). Initialise the output layer "
            "smaller (e.g. scale its weights by 0.01 and zero its bias), or "
            "normalise the inputs."
        )
    else:
        message = (
            f"The initial loss is below chance ({what}): the untrained model already "
            "knows something. Check that the targets do not leak into the inputs and "
            "that the loss is averaged the way you think."
        )
    return CheckResult(
        name="initial loss",
        passed=passed,
        measured=measured,
        expected=expected,
        message=message + _hooks_note(left_out),
        details={
            "kind": kind,
            "num_classes": num_classes,
            "output_std": spread,
            "hooks_left_out": left_out,
        },
    )


def _num_classes(output: Tensor, loss_fn: Callable[..., Tensor]) -> int:
    """C as ``F.cross_entropy`` reads it: dim 1 of ``(N, C, ...)``, 0 of ``(C,)``."""
    if output.dim() <= 2:
        return int(output.shape[-1])
    if loss_fn is F.cross_entropy or isinstance(loss_fn, nn.CrossEntropyLoss):
        return int(output.shape[1])
    raise ValueError(
        "Cannot tell the class dimension of an output of shape "
        f"{tuple(output.shape)} for this loss_fn (F.cross_entropy reads dim 1; a "
        "loss that flattens (B, T, C) reads the last): pass num_classes"
    )


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
def _fork_rng(model: nn.Module) -> Iterator[None]:
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
def _global_hooks(keep: bool) -> Iterator[list[str]]:
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


def _forward(model: nn.Module, inputs: Any) -> Any:
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


def _copy_model(model: nn.Module, keep_hooks: bool) -> tuple[nn.Module, list[str]]:
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


def _hooks_note(left_out: list[str]) -> str:
    if not left_out:
        return ""
    return (
        f" The check ran without the hooks from outside the model "
        f"({', '.join(left_out)}): if one of them changes the output or the "
        "gradients, pass keep_hooks=True."
    )


def overfit_batch(
    model: nn.Module,
    inputs: Any,
    targets: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    optimizer: torch.optim.Optimizer
    | Callable[..., torch.optim.Optimizer]
    | None = None,
    steps: int = 200,
    target: float | None = None,
    keep_hooks: bool = False,
) -> CheckResult:
    """Trains a copy of the model on one small batch: the loss should go to ~0.

    When it does not, the message names the layers whose gradient did not flow,
    by the diagnosis rule of ``tb-gradflow report`` and the TensorBoard tab.
    The copy trains in training mode (a batch of 1 through BatchNorm raises a
    ValueError that says so) and keeps the hooks that are part of the model (see
    the module docstring); the result names those it left behind.

    Args:
        model: the model (copied; the original is not trained).
        inputs: one small batch (2-32 examples), passed as ``model(inputs)``.
        targets: its targets.
        loss_fn: ``loss_fn(output, targets) -> scalar``.
        optimizer: an optimizer of ``model`` (a fresh one of the same class and
            hyperparameters trains the copy), or a factory
            ``f(parameters) -> Optimizer``; default ``Adam(lr=1e-3)``.
        steps: the most optimizer steps to take.
        target: the loss to reach, any finite number (default: 1% of the initial
            loss, which needs an initial loss > 0: pass ``target`` for a loss that
            can be 0 or negative).
        keep_hooks: also keep the hooks from outside the model, global module
            hooks included (they run, and log, at every step), for one that
            changes the output or the gradients.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``, ``loss_fn`` is not
            callable, ``steps`` is not an integer (Python's or numpy's),
            ``target`` not a real number, or
            ``optimizer`` none of the above.
        ValueError: on ``steps < 1``, a non-finite ``target``, an initial loss <= 0
            without a ``target``, or a batch of one value per channel through a
            BatchNorm layer.
    """
    check_model_and_loss(model, loss_fn)
    steps = check_int("steps", steps, "an int >= 1")
    if steps < 1:
        raise ValueError(f"Invalid steps: {steps} (an int >= 1)")
    if target is not None:
        check_real("target", target)
        if not math.isfinite(target):
            raise ValueError(f"Invalid target: {target} (a finite loss)")
        target = float(target)
    with _fork_rng(model), _global_hooks(keep_hooks) as global_left_out:
        trainee, left_out = _copy_model(model, keep_hooks)
        left_out += global_left_out
        trainee.train().zero_grad(set_to_none=True)
        opt = _fresh_optimizer(optimizer, model, trainee)
        layers = select_layers(trainee)
        params = [p for _, p, _ in layers]
        losses, records, goal = [], [], target
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(_forward(trainee, inputs), targets)
            loss.backward()
            stats, _ = layer_stats([p.grad for p in params])  # (K, L)
            records.append(stats)
            losses.append(loss.item())
            if goal is None:
                if losses[0] <= 0:
                    raise ValueError(
                        f"The initial loss is {losses[0]:.4g} <= 0, so the default "
                        "target (1% of it) means nothing: pass target= (the loss "
                        "to reach)"
                    )
                goal = 0.01 * losses[0]
            if losses[-1] <= goal or not math.isfinite(losses[-1]):
                break
            opt.step()
    findings = [
        f
        for f in diagnose_stats(layers, records)
        if f.kind in ("no_gradient", "blocked", "all_zero")
    ]
    passed = losses[-1] <= goal
    message = _overfit_message(passed, losses, goal, findings)
    return CheckResult(
        name="overfit one batch",
        passed=passed,
        measured=losses[-1],
        expected=goal,
        message=message + _hooks_note(left_out),
        details={
            "losses": losses,
            "steps": len(losses),
            "findings": findings,
            "hooks_left_out": left_out,
        },
    )


def _overfit_message(
    passed: bool, losses: list[float], goal: float, findings: list[Finding]
) -> str:
    summary = (
        f"The loss went from {losses[0]:.4g} to {losses[-1]:.4g} in {len(losses)} steps"
    )
    if passed:
        return f"{summary} (target {goal:.4g})."
    if any(f.kind == "all_zero" for f in findings):
        return (
            f"{summary}, not to {goal:.4g}: every layer's gradient is exactly zero, "
            "so the loss does not depend on the parameters. Look for a detach(), "
            "a constant loss, or every unit dead (e.g. all ReLUs off)."
        )
    if findings:
        kinds = {f.layer: f.kind.replace("_", " ") for f in findings}  # layer order
        names = ", ".join(f"{layer} ({kind})" for layer, kind in kinds.items())
        return (
            f"{summary}, not to {goal:.4g}: the gradient does not flow into "
            f"{names}. Look for a detach(), a saturated activation or unnormalised "
            "inputs upstream of those layers."
        )
    return (
        f"{summary}, not to {goal:.4g}, although every layer received a gradient: "
        "try a larger learning rate or more steps, and check the loss and the "
        "targets (label shift, masks, a forgotten zero_grad)."
    )


def _fresh_optimizer(
    optimizer: Any, original: nn.Module, trainee: nn.Module
) -> torch.optim.Optimizer:
    """An optimizer like ``optimizer`` over the copy's parameters, with fresh state."""
    if optimizer is None:
        return torch.optim.Adam(trainee.parameters(), lr=1e-3)
    if not isinstance(optimizer, torch.optim.Optimizer):
        if callable(optimizer):
            return optimizer(trainee.parameters())
        raise TypeError(
            "optimizer must be a torch.optim.Optimizer, a factory f(params) or None, "
            f"got {type(optimizer).__name__}"
        )
    twin = dict(zip(map(id, original.parameters()), trainee.parameters()))
    groups = []
    for group in optimizer.param_groups:
        missing = [p for p in group["params"] if id(p) not in twin]
        if missing:
            raise ValueError(
                f"optimizer has {len(missing)} parameter(s) that are not in the model"
            )
        groups.append({**group, "params": [twin[id(p)] for p in group["params"]]})
    try:
        return type(optimizer)(groups, **optimizer.defaults)
    except TypeError as e:
        raise TypeError(
            f"Cannot rebuild {type(optimizer).__name__} from its param_groups ({e}); "
            "pass optimizer=lambda params: ... instead"
        ) from e


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
