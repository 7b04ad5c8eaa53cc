"""Where a NaN/Inf first appeared: hooks armed on the watched model after a
logged step whose gradient held NaN/Inf (``watch(..., trace_nonfinite=True)``).

:class:`ModuleTracer` hooks every module while armed: the forward pass's inputs
and outputs, and, through tensor hooks (not ``register_full_backward_hook``,
which breaks modules with in-place operations such as ``ReLU(inplace=True)``),
the gradients with respect to each module's inputs, outputs and parameters. A
hook only queues device tensors (counts of NaN, +Inf and -Inf, and the largest
finite magnitude); one copy per step brings them to the host.

:class:`NonfiniteTrace` decides when to arm, when a traced step ends, and
which event was first (:func:`first_origin`). Not armed, it costs nothing: no
hook is registered. Armed, every module's forward and backward do a few extra
reductions over each tensor (see ``docs/logging.md`` for the measured cost),
and ``torch.compile``'d code runs eagerly, so that a compiled model runs the
hooks too; it uses its compiled graphs again once disarmed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tb_gradflow.metadata import NonfiniteOrigin

__all__ = ["ModuleTracer", "NonfiniteTrace", "TraceEvent", "first_origin"]

# A scaler skips steps while it calibrates its scale: routine at the start.
SCALER_SKIPS = 8  # consecutive skipped logged steps before tracing
SCALE_FLOOR = 1.0  # a loss scale below this is no calibration any more
MAX_TRACED_STEPS = 100  # traced steps without a non-finite gradient: give up
_MAX_DEPTH = 4  # how deep module outputs (tuples, lists, dicts) are searched
_KEY_ATTRIBUTE = "_tb_gradflow_trace_key"  # set on the tensors the hooks see


@dataclasses.dataclass
class TraceEvent:
    """One tensor a hook saw.

    ``seq`` is the execution order. ``key`` identifies the tensor (or the
    gradient) the hook saw, so that hooks of nested modules on the same tensor
    can be told apart from later ones; ``depth`` is the module's nesting depth.
    Until :meth:`ModuleTracer.take`, the counts stay on the device: ``counts``,
    ``(3,)`` int64 NaN, +Inf, -Inf (for a ``"weights"`` event, ``(P,)``: 1
    where parameter ``names[i]`` holds NaN/Inf), and ``largest_seen``, ``()``
    the largest finite magnitude the module received (None: unknown); ``take``
    fills in ``nan``, ``posinf``, ``neginf`` and ``largest`` and drops them.
    """

    seq: int
    phase: str
    module: str
    module_type: str
    where: str
    key: int
    depth: int
    dtype: str
    counts: Tensor | None = None
    largest_seen: Tensor | None = None
    names: tuple[str, ...] = ()
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    largest: float = math.nan

    @property
    def nonfinite(self) -> bool:
        return bool(self.nan or self.posinf or self.neginf)

    @property
    def starts_trouble(self) -> bool:
        """Whether this event can be an origin. A forward tensor whose only
        non-finite values are -Inf is taken for a mask (attention masks fill
        with -inf), not an origin."""
        if self.phase == "forward":
            return bool(self.nan or self.posinf)
        return self.nonfinite


def _floating(value: Any, depth: int = 0) -> Iterator[Tensor]:
    """The floating-point tensors in ``value`` (a tensor, or tuples, lists and
    dicts of them, as module inputs and outputs are)."""
    if isinstance(value, Tensor):
        if value.is_floating_point() or value.is_complex():
            yield value
    elif depth < _MAX_DEPTH:
        if isinstance(value, dict):
            value = value.values()
        if isinstance(value, (tuple, list, type({}.values()))):
            for item in value:
                yield from _floating(item, depth + 1)


@torch.no_grad()
def _counts(t: Tensor) -> Tensor:
    """``(3,)`` int64: NaN, +Inf and -Inf elements of ``t`` (on its device)."""
    if t.is_complex():
        t = torch.view_as_real(t)
    return torch.stack([t.isnan().sum(), t.isposinf().sum(), t.isneginf().sum()])


@torch.no_grad()
def _largest_finite(t: Tensor) -> Tensor:
    """``()`` float32: the largest finite magnitude in ``t`` (0 if none)."""
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=t.device)
    magnitude = t.detach().abs()
    return magnitude.where(magnitude.isfinite(), 0).amax().float()


def _largest_of(values: list[Tensor]) -> Tensor | None:
    if not values:
        return None
    device = values[0].device
    return torch.stack([v.to(device) for v in values]).amax()


@dataclasses.dataclass
class _Call:
    """One forward call of a module, kept by its hooks: what it received in
    the forward pass and, as its output's gradient arrives, in the backward."""

    largest_in: list[Tensor] = dataclasses.field(default_factory=list)
    largest_grad_out: list[Tensor] = dataclasses.field(default_factory=list)


class ModuleTracer:
    """Forward and backward hooks on every module of ``model``, registered by
    :meth:`arm`, removed by :meth:`disarm`.

    Args:
        model: the plain model (wrappers looked through).
        layer_names: the watched layer of each parameter, by ``id``.
    """

    def __init__(self, model: nn.Module, layer_names: dict[int, str]) -> None:
        self._model = model
        self._layer_names = layer_names
        self._handles: list[Any] = []
        self._events: list[TraceEvent] = []
        self._stack: list[tuple[str, str, int]] = []  # modules in forward
        self._last_call: dict[int, _Call] = {}
        self._weights_checked = False
        self._eager: Any = None  # the compiler's stance while armed
        self._keys = 0
        self.armed = False

    def arm(self) -> None:
        """Registers the hooks (nothing if armed already)."""
        if self.armed:
            return
        self.armed = True
        self._weights_checked = False
        self._eager = _force_eager()
        for name, module in self._model.named_modules():
            depth = 0 if not name else name.count(".") + 1
            info = (name, type(module).__name__, depth)
            self._handles.append(
                module.register_forward_pre_hook(
                    self._pre_hook(info, module), with_kwargs=True
                )
            )
            self._handles.append(
                module.register_forward_hook(
                    self._post_hook(info, module), with_kwargs=True
                )
            )
            for pname, param in module.named_parameters(recurse=False):
                if param.requires_grad:
                    hook = self._param_hook(info, module, pname, param)
                    self._handles.append(param.register_hook(hook))

    def disarm(self) -> None:
        """Removes every hook and forgets the queued events."""
        self.armed = False
        if self._eager is not None:
            self._eager.__exit__(None, None, None)  # the stance from before
            self._eager = None
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._events.clear()
        self._stack.clear()
        self._last_call.clear()

    def take(self) -> list[TraceEvent]:
        """The events queued since the last call, in execution order, their
        counts brought to the host (one copy per device and kind); the next
        step checks the weights again."""
        events, self._events = self._events, []
        self._stack.clear()
        self._last_call.clear()
        self._weights_checked = False
        if not events:
            return []
        counts = _to_host([_or_empty(e.counts, torch.int64) for e in events])
        largest = _to_host(
            [_or_empty(e.largest_seen, torch.float32).reshape(-1) for e in events]
        )
        for e, c, m in zip(events, counts, largest):
            if e.phase == "weights":
                e.names = tuple(n for n, bad in zip(e.names, c) if bad)
                e.nan = len(e.names)
            elif len(c):
                e.nan, e.posinf, e.neginf = (int(x) for x in c)
            e.largest = float(m[0]) if len(m) else math.nan
            e.counts = e.largest_seen = None
        return events

    # -- hooks ---------------------------------------------------------------

    def _queue(self, event: TraceEvent) -> None:
        self._events.append(event)

    def _next_seq(self) -> int:
        return len(self._events)

    def _key(self, t: Tensor) -> int:
        """A number that stays with the tensor object ``t`` (an attribute),
        so hooks that saw the same tensor are told apart from hooks that saw
        another tensor at the same address (``id`` values are reused as soon
        as a gradient is freed)."""
        key = getattr(t, _KEY_ATTRIBUTE, None)
        if key is None:
            self._keys += 1
            key = self._keys
            setattr(t, _KEY_ATTRIBUTE, key)
        return key

    def _pre_hook(self, info: tuple[str, str, int], module: nn.Module) -> Callable:
        name, kind, depth = info

        @torch.compiler.disable
        def pre(module: nn.Module, args: Any, kwargs: Any) -> None:
            if not (self.armed and torch.is_grad_enabled()):
                return
            if module is self._model and not self._weights_checked:
                self._check_weights()
            # What reaches this module was made by the enclosing module's code
            # (or, for the model, by the caller: the data).
            outer, outer_kind, outer_depth = (
                self._stack[-1] if self._stack else ("", "", -1)
            )
            call = _Call()
            self._last_call[id(module)] = call
            for t in _floating((args, kwargs)):
                largest = _largest_finite(t)
                call.largest_in.append(largest)
                where = f"input of submodule {name!r}" if name else "input"
                self._queue(
                    TraceEvent(
                        seq=self._next_seq(),
                        phase="forward",
                        module=outer if name else "",
                        module_type=outer_kind if name else kind,
                        where=where,
                        key=self._key(t),
                        depth=max(outer_depth, 0),
                        dtype=_dtype(t),
                        counts=_counts(t),
                        largest_seen=None,
                    )
                )
                if t.requires_grad:
                    t.register_hook(self._grad_in_hook(info, call))
            self._stack.append(info)

        return pre

    def _post_hook(self, info: tuple[str, str, int], module: nn.Module) -> Callable:
        name, kind, depth = info

        @torch.compiler.disable
        def post(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if not (self.armed and torch.is_grad_enabled()):
                return
            if self._stack and self._stack[-1] == info:
                self._stack.pop()
            call = self._last_call.get(id(module)) or _Call()
            largest = _largest_of(call.largest_in)
            for t in _floating(output):
                self._queue(
                    TraceEvent(
                        seq=self._next_seq(),
                        phase="forward",
                        module=name,
                        module_type=kind,
                        where="output",
                        key=self._key(t),
                        depth=depth,
                        dtype=_dtype(t),
                        counts=_counts(t),
                        largest_seen=largest,
                    )
                )
                if t.requires_grad:
                    t.register_hook(self._grad_out_hook(info, call))

        return post

    def _grad_out_hook(self, info: tuple[str, str, int], call: _Call) -> Callable:
        name, kind, depth = info

        @torch.compiler.disable
        def hook(grad: Tensor) -> None:
            if not self.armed:
                return
            call.largest_grad_out.append(_largest_finite(grad))
            self._queue(
                TraceEvent(
                    seq=self._next_seq(),
                    phase="backward",
                    module=name,
                    module_type=kind,
                    where="gradient of the output",
                    key=self._key(grad),
                    depth=depth,
                    dtype=_dtype(grad),
                    counts=_counts(grad),
                )
            )

        return hook

    def _grad_in_hook(self, info: tuple[str, str, int], call: _Call) -> Callable:
        name, kind, depth = info

        @torch.compiler.disable
        def hook(grad: Tensor) -> None:
            if not self.armed:
                return
            self._queue(
                TraceEvent(
                    seq=self._next_seq(),
                    phase="backward",
                    module=name,
                    module_type=kind,
                    where="gradient of the input",
                    key=self._key(grad),
                    depth=depth,
                    dtype=_dtype(grad),
                    counts=_counts(grad),
                    largest_seen=_largest_of(call.largest_grad_out),
                )
            )

        return hook

    def _param_hook(
        self,
        info: tuple[str, str, int],
        module: nn.Module,
        pname: str,
        param: Tensor,
    ) -> Callable:
        name, kind, depth = info

        @torch.compiler.disable
        def hook(grad: Tensor) -> None:
            if not self.armed:
                return
            call = self._last_call.get(id(module))
            self._queue(
                TraceEvent(
                    seq=self._next_seq(),
                    phase="backward",
                    module=name,
                    module_type=kind,
                    where=f"gradient of {pname}",
                    key=self._key(grad),
                    depth=depth,
                    dtype=_dtype(grad),
                    counts=_counts(grad),
                    largest_seen=None
                    if call is None
                    else _largest_of(call.largest_grad_out),
                )
            )

        return hook

    @torch.no_grad()
    def _check_weights(self) -> None:
        """Queues a ``"weights"`` event: which parameters hold NaN/Inf."""
        self._weights_checked = True
        named = [
            (self._layer_names.get(id(p), n), p)
            for n, p in self._model.named_parameters()
            if p.is_floating_point() or p.is_complex()
        ]
        if not named:
            return
        device = named[0][1].device
        bad = torch.stack(
            [(~torch.isfinite(_real(p)).all()).to(device) for _, p in named]
        ).long()  # (P,)
        self._queue(
            TraceEvent(
                seq=self._next_seq(),
                phase="weights",
                module="",
                module_type="",
                where="",
                key=-1,
                depth=0,
                dtype="",
                counts=bad,
                names=tuple(n for n, _ in named),
            )
        )


def _force_eager() -> Any:
    """Makes ``torch.compile``'d code run eagerly until the returned stance
    is exited, so that a compiled model runs every module's hooks (compiled
    graphs skip hooks registered after compilation); None where the stance
    cannot be changed (inside a compiled region)."""
    try:
        return torch.compiler.set_stance("force_eager")
    except RuntimeError:
        return None


def _or_empty(t: Tensor | None, dtype: torch.dtype) -> Tensor:
    return torch.zeros(0, dtype=dtype) if t is None else t.to(dtype)


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _dtype(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _to_host(tensors: list[Tensor]) -> list[np.ndarray]:
    """Each of ``tensors`` (1-D, one dtype) as numpy, one copy per device."""
    out: list[np.ndarray] = [np.zeros(0)] * len(tensors)
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    for indices in by_device.values():
        parts = [tensors[i] for i in indices]
        flat = torch.cat(parts).cpu().numpy()
        bounds = np.cumsum([0] + [part.numel() for part in parts])
        for i, lo, hi in zip(indices, bounds[:-1], bounds[1:]):
            out[i] = flat[lo:hi]
    return out


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
    (innermost first) before a gradient with respect to an output.
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
                return max(inputs, key=lambda e: (e.depth, -e.seq))
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
    ) -> NonfiniteOrigin | None:
        """Called with each logged step's gradient statistics; arms the tracer
        when they call for it. With ``replay`` (the closure of a step, called
        before the optimizer applies it), traces at once by running it again
        from the random state of :meth:`remember_random_state`, and returns
        what that found."""
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
            with _replaying(self._model, self._rng):
                replay()
        finally:
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
    model: nn.Module, rng: tuple[Tensor, list[tuple[int, Tensor]]] | None
) -> Iterator[None]:
    """Runs a closure a second time without changing the step: from the random
    state ``rng`` the step started from (forked: the training's own state goes
    on as if the replay never ran), with the parameters' gradients and the
    model's buffers (BatchNorm's running statistics) put back afterwards."""
    params = list(model.parameters())
    grads = [p.grad for p in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
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
                for b, saved in buffers:
                    b.copy_(saved)
