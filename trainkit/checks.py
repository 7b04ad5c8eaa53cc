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

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tb_gradflow import (
    Finding,
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
from trainkit.clipping import clip_grad_norm
from trainkit.model_copy import copy_model, fork_rng, forward, global_hooks, hooks_note

__all__ = [
    "CheckResult",
    "check_initial_loss",
    "clip_grad_norm",
    "expected_initial_loss",
    "overfit_batch",
]

_KINDS = ("cross_entropy", "binary_cross_entropy", "skipgram")


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
        fork_rng(model),
        global_hooks(keep_hooks) as global_left_out,
        torch.no_grad(),
    ):
        probe, left_out = copy_model(model, keep_hooks)
        output = forward(probe.train(), inputs)
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
        message=message + hooks_note(left_out),
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
    with fork_rng(model), global_hooks(keep_hooks) as global_left_out:
        trainee, left_out = copy_model(model, keep_hooks)
        left_out += global_left_out
        trainee.train().zero_grad(set_to_none=True)
        opt = _fresh_optimizer(optimizer, model, trainee)
        layers = select_layers(trainee)
        params = [p for _, p, _ in layers]
        losses, records, goal = [], [], target
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(forward(trainee, inputs), targets)
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
        message=message + hooks_note(left_out),
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
