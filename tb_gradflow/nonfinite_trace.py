"""Where a NaN/Inf first appeared: when to arm :class:`ModuleTracer`'s hooks
after a logged step whose gradient held NaN/Inf (``watch(...,
trace_nonfinite=True)``), when a traced step ends, and which of its events
was first (:func:`first_origin`). Not armed, it costs nothing: no hook is
registered (see ``docs/logging.md`` for the cost while armed).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tb_gradflow.metadata import NonfiniteOrigin
from tb_gradflow.module_tracer import ModuleTracer, TraceEvent

__all__ = [
    "MAX_TRACED_STEPS",
    "SCALER_SKIPS",
    "SCALE_FLOOR",
    "NonfiniteTrace",
    "first_origin",
]

SCALER_SKIPS = 8  # consecutive skipped logged steps before tracing
SCALE_FLOOR = 1.0  # a loss scale below this is no calibration any more
MAX_TRACED_STEPS = 100  # traced steps without a non-finite gradient: give up


def first_origin(events: list[TraceEvent]) -> TraceEvent | None:
    """The event where the NaN/Inf of a traced step began, or None when the
    step's backward pass stayed finite (a forward NaN that never reached the
    gradient is masked, not a problem).

    The first event in execution order that :attr:`TraceEvent.starts_trouble`;
    hooks on the same tensor fire one after the other, and among them the
    module that made the values is chosen: for a forward input, the outermost
    enclosing module (its code made it before calling in); for a forward
    output, the innermost module (it fired first); for a gradient, the module
    whose backward computed it, that is a gradient with respect to an input
    before a gradient with respect to an output: of the innermost module,
    and of the modules at one depth, the last to take the tensor in the
    forward pass (a module that passes its input on unchanged did not make
    its gradient; the next one did).
    """
    if not any(e.phase == "backward" and e.nonfinite for e in events):
        return None
    ordered = sorted(events, key=lambda e: e.seq)
    for i, event in enumerate(ordered):
        if not event.starts_trouble:
            continue
        same = [event]
        for later in ordered[i + 1 :]:
            if later.key != event.key or later.phase != event.phase:
                break
            same.append(later)
        if event.phase == "backward":
            inputs = [e for e in same if e.where == "gradient of the input"]
            if inputs:
                return max(inputs, key=lambda e: (e.depth, e.seq))
        return event
    return None


class NonfiniteTrace:
    """When to trace, and what a trace found (see the module docstring).

    Without a grad scaler, a logged step whose gradient holds NaN/Inf arms the
    tracer; with one, skipped steps are its calibration, so it is armed after
    ``SCALER_SKIPS`` skipped logged steps in a row, or once the loss scale
    falls below ``SCALE_FLOOR``. Armed, each step's events are examined when
    it ends (:meth:`step_ended`): the first step whose backward pass turns
    non-finite gives the origin and disarms; after ``MAX_TRACED_STEPS`` traced
    steps without one the tracer gives up. After an origin or giving up, it
    arms again only once a logged step was healthy in between, and an origin
    already reported is not reported again.

    Without a scaler the non-finite update is in the weights after the step:
    the next step's forward pass then reports the parameters that hold NaN/Inf
    (a ``"weights"`` origin) instead of blaming the first module that uses
    them, and nothing more is traced (every later step would say the same).
    A step taken with a closure is traced at once (:meth:`after_gradient`'s
    ``replay``), on the same batch, before the optimizer applies it; not in a
    process group of several ranks, where the replay's collectives (DDP's
    gradient all-reduce) would wait for the other ranks.

    Args:
        model: the plain model (wrappers looked through).
        layer_names: the watched layer of each parameter, by ``id``.
    """

    def __init__(self, model: nn.Module, layer_names: dict[int, str]) -> None:
        self.tracer = ModuleTracer(model, layer_names)
        self._model = model
        self._layer_names = layer_names
        self._since: int | None = None  # the logged step that armed the tracer
        self._traced = 0
        self._skips = 0
        self._wait_for_healthy = False
        self._reported: set[tuple[str, str, str]] = set()
        self._weights_reported = False
        self._rng: tuple[Tensor, list[tuple[int, Tensor]]] | None = None

    def remember_random_state(self) -> None:
        """Keeps the random state a closure step starts from, for a replay."""
        devices = _cuda_devices(self._model)
        self._rng = (
            torch.get_rng_state(),
            [(d, torch.cuda.get_rng_state(d)) for d in devices],
        )

    def after_gradient(
        self,
        step: int,
        *,
        nonfinite: bool,
        skipped: bool,
        loss_scale: float,
        replay: Callable[[], Any] | None = None,
        replay_params: Sequence[Tensor] = (),
    ) -> NonfiniteOrigin | None:
        """Called with each logged step's gradient statistics; arms the tracer
        when they call for it. With ``replay`` (the closure of a step, called
        before the optimizer applies it), traces at once by running it again
        from the random state of :meth:`remember_random_state`, and returns
        what that found; the gradients of ``replay_params`` (the optimizer's
        parameters) and of the model are put back afterwards. A replay that
        raises is warned of, and the next steps are traced instead."""
        self._skips = self._skips + 1 if skipped else 0
        if not (skipped or nonfinite):
            self._wait_for_healthy = False
            return None
        if skipped:
            due = self._skips >= SCALER_SKIPS or loss_scale < SCALE_FLOOR
        else:
            due = nonfinite
        if not due or self._weights_reported or self._wait_for_healthy:
            return None
        if self._since is None:
            self._since = step
            self._traced = 0
        if replay is None or self.tracer.armed or _distributed():
            # a replay would run the collectives of the step on one rank alone
            self.tracer.arm()
            return None
        self.tracer.arm()
        try:
            with _replaying(self._model, self._rng, replay_params):
                replay()
        except Exception as e:  # the closure cannot run twice: trace later
            self.tracer.take()
            warnings.warn(
                f"gradflow: the step's closure raised when run again to trace "
                f"the non-finite gradient of step {step} ({type(e).__name__}: "
                f"{e}); the next steps are traced instead",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        events = self.tracer.take()
        self.tracer.disarm()
        origin = self._found(step, events)
        if origin is None and not self._wait_for_healthy:
            self.tracer.arm()  # the replay stayed finite: trace the next steps
        return origin

    def step_ended(self, step: int) -> NonfiniteOrigin | None:
        """Called when a step ends; the origin its events show, if any."""
        if not self.tracer.armed:
            return None
        events = self.tracer.take()
        if not events:  # armed after this step's forward and backward passes
            return None
        origin = self._found(step, events)
        if self._wait_for_healthy:
            self.tracer.disarm()
            return origin
        self._traced += 1
        if self._traced >= MAX_TRACED_STEPS:
            self.tracer.disarm()
            self._since = None
            self._wait_for_healthy = True
        return None

    def close(self) -> None:
        """Removes the hooks for good."""
        self.tracer.disarm()
        self._weights_reported = True

    def _found(self, step: int, events: list[TraceEvent]) -> NonfiniteOrigin | None:
        """The origin ``events`` show, when it is new; sets
        ``_wait_for_healthy`` when they show one at all."""
        since = step if self._since is None else self._since
        weights = next((e for e in events if e.phase == "weights" and e.names), None)
        first = None if weights is not None else first_origin(events)
        if weights is None and first is None:
            return None
        self._since = None
        self._wait_for_healthy = True
        if weights is not None:
            self._weights_reported = True
            return NonfiniteOrigin(
                step=step, since_step=since, phase="weights", layers=weights.names
            )
        key = (first.phase, first.module, first.where)
        if key in self._reported:
            return None
        self._reported.add(key)
        return NonfiniteOrigin(
            step=step,
            since_step=since,
            phase=first.phase,
            module=first.module,
            module_type=first.module_type,
            where=first.where,
            nan=first.nan,
            posinf=first.posinf,
            neginf=first.neginf,
            largest_input=first.largest if math.isfinite(first.largest) else None,
            dtype=first.dtype,
            layers=self._layers_of(first.module),
        )

    def _layers_of(self, module: str) -> tuple[str, ...]:
        """The watched layers of ``module``: its own parameters', else those
        of its submodules."""
        prefix = f"{module}." if module else ""
        own, inner = [], []
        for pname, param in self._model.named_parameters():
            if id(param) not in self._layer_names or not pname.startswith(prefix):
                continue
            rest = pname[len(prefix) :]
            (inner if "." in rest else own).append(self._layer_names[id(param)])
        return tuple(own or inner)


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _cuda_devices(model: nn.Module) -> list[int]:
    return sorted(
        {p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"}
    )


@contextlib.contextmanager
def _replaying(
    model: nn.Module,
    rng: tuple[Tensor, list[tuple[int, Tensor]]] | None,
    more_params: Sequence[Tensor] = (),
) -> Iterator[None]:
    """Runs a closure a second time without changing the step: from the random
    state ``rng`` the step started from (forked: the training's own state goes
    on as if the replay never ran), with the gradients of the model's
    parameters and of ``more_params`` and the model's buffers (BatchNorm's
    running statistics, also one that ``forward`` assigns anew) put back
    afterwards."""
    params = list({id(p): p for p in [*model.parameters(), *more_params]}.values())
    grads = [p.grad for p in params]
    buffers = [
        (module, name, b, b.detach().clone())
        for module in model.modules()
        for name, b in module.named_buffers(recurse=False)
    ]
    with torch.random.fork_rng(devices=_cuda_devices(model)):
        if rng is not None:
            torch.set_rng_state(rng[0])
            for device, state in rng[1]:
                torch.cuda.set_rng_state(state, device)
        for p in params:
            p.grad = None
        try:
            yield
        finally:
            for p, g in zip(params, grads):
                p.grad = g
            with torch.no_grad():
                for module, name, b, saved in buffers:
                    if getattr(module, name, None) is not b:
                        setattr(module, name, b)  # assigned anew by forward
                    b.copy_(saved)
