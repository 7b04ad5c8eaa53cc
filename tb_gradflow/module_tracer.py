"""Hooks on every module of a model that record where NaN/Inf appear, for
``watch(..., trace_nonfinite=True)`` (:mod:`tb_gradflow.nonfinite_trace`
decides when to arm them and reads what they saw).

:class:`ModuleTracer`, once armed, hooks the forward pass's inputs and outputs
of every module and, through tensor hooks (not
``register_full_backward_hook``, which breaks modules with in-place operations
such as ``ReLU(inplace=True)``), the gradients with respect to each module's
inputs, outputs and parameters. A hook only queues device tensors (counts of
NaN, +Inf and -Inf, and the largest finite magnitude); one copy per device and
step brings them to the host. While armed, ``torch.compile``'d code runs
eagerly, so that a compiled model runs the hooks too; it uses its compiled
graphs again once disarmed. Not armed, no hook is registered.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["ModuleTracer", "TraceEvent"]

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
    """``()``: the largest finite magnitude in ``t`` (0 if none), float64 for
    a float64 ``t`` (its values can pass float32's range), else float32."""
    if t.is_complex():
        t = torch.view_as_real(t)
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    if t.numel() == 0:
        return torch.zeros((), dtype=dtype, device=t.device)
    magnitude = t.detach().abs()
    return magnitude.where(magnitude.isfinite(), 0).amax().to(dtype)


def _largest_of(values: list[Tensor]) -> Tensor | None:
    if not values:
        return None
    device = values[0].device
    dtype = torch.promote_types(values[0].dtype, values[-1].dtype)
    return torch.stack([v.to(device, dtype) for v in values]).amax()


class _Owner(NamedTuple):
    """A module as events name it: dotted name, class name, nesting depth."""

    name: str
    kind: str
    depth: int


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
        self._stack: list[_Owner] = []  # the modules whose forward is under way
        self._last_call: dict[int, _Call] = {}
        self._weights_checked = False
        self._keys = 0
        self._leaf_handles: list[Any] = []  # tensor hooks on leaves, this step
        # per tensor of this step (by key and version: an in-place operation
        # changes what it holds): its counts and largest finite magnitude,
        # computed once however many hooks see it
        self._counted: dict[tuple[int, int], Tensor] = {}
        self._largest: dict[tuple[int, int], Tensor] = {}
        self.armed = False

    def arm(self) -> None:
        """Registers the hooks (nothing if armed already)."""
        if self.armed:
            return
        self.armed = True
        self._weights_checked = False
        _EAGER.enter()
        for name, module in self._model.named_modules():
            depth = 0 if not name else name.count(".") + 1
            owner = _Owner(name, type(module).__name__, depth)
            self._handles.append(
                module.register_forward_pre_hook(
                    self._pre_hook(owner, module), with_kwargs=True
                )
            )
            self._handles.append(
                module.register_forward_hook(
                    self._post_hook(owner, module), with_kwargs=True
                )
            )
            for pname, param in module.named_parameters(recurse=False):
                if param.requires_grad:
                    latest = functools.partial(self._last_call.get, id(module))
                    hook = self._grad_hook(owner, pname, latest)
                    self._handles.append(param.register_hook(hook))

    def disarm(self) -> None:
        """Removes every hook and forgets the queued events."""
        if self.armed:
            _EAGER.leave()
        self.armed = False
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._drop_leaf_hooks()
        self._events.clear()
        self._stack.clear()
        self._last_call.clear()
        self._counted.clear()
        self._largest.clear()

    def take(self) -> list[TraceEvent]:
        """The events queued since the last call, in execution order, their
        counts brought to the host (one copy per device and kind); the next
        step checks the weights again."""
        events, self._events = self._events, []
        self._drop_leaf_hooks()
        self._stack.clear()
        self._last_call.clear()
        self._counted.clear()
        self._largest.clear()
        self._weights_checked = False
        if not events:
            return []
        counts = _to_host([_or_empty(e.counts, torch.int64) for e in events])
        largest = _to_host(
            [_or_empty(e.largest_seen, None).reshape(-1) for e in events]
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

    def _see(
        self,
        phase: str,
        where: str,
        owner: _Owner,
        t: Tensor,
        largest: Tensor | None = None,
    ) -> None:
        """Queues what a hook of ``owner``'s saw in ``t``."""
        key = self._key(t)
        self._events.append(
            TraceEvent(
                seq=len(self._events),
                phase=phase,
                module=owner.name,
                module_type=owner.kind,
                where=where,
                key=key,
                depth=owner.depth,
                dtype=_dtype(t),
                counts=self._counts_of(key, t),
                largest_seen=largest,
            )
        )

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

    def _hook_tensor(self, t: Tensor, hook: Callable) -> None:
        """Registers ``hook`` on ``t``'s gradient. A hook on an intermediate
        tensor goes with its graph; one on a leaf (a parameter passed to a
        submodule as an input, an input that requires grad) would stay, so
        its handle is kept and removed when the step's events are taken."""
        handle = t.register_hook(hook)
        if t.is_leaf:
            self._leaf_handles.append(handle)

    def _drop_leaf_hooks(self) -> None:
        for handle in self._leaf_handles:
            handle.remove()
        self._leaf_handles.clear()

    def _counts_of(self, key: int, t: Tensor) -> Tensor:
        """:func:`_counts` of ``t``, once per tensor, version and step (an
        output is the next module's input; an output's gradient the next
        module's input's)."""
        version = (key, t._version)  # bumped by every in-place operation
        counts = self._counted.get(version)
        if counts is None:
            counts = self._counted[version] = _counts(t)
        return counts

    def _largest_of(self, t: Tensor) -> Tensor:
        """:func:`_largest_finite` of ``t``, once per tensor, version and step."""
        version = (self._key(t), t._version)
        largest = self._largest.get(version)
        if largest is None:
            largest = self._largest[version] = _largest_finite(t)
        return largest

    def _pre_hook(self, owner: _Owner, module: nn.Module) -> Callable:
        @torch.compiler.disable
        def pre(module: nn.Module, args: Any, kwargs: Any) -> None:
            if not (self.armed and torch.is_grad_enabled()):
                return
            if module is self._model and not self._weights_checked:
                self._check_weights()
            # What reaches a submodule was made by the code of the module
            # that calls it; what reaches the model, by its caller (the data).
            if owner.name:
                maker = self._stack[-1] if self._stack else _Owner("", "", 0)
                where = f"input of submodule {owner.name!r}"
            else:
                maker, where = owner, "input"
            call = _Call()
            self._last_call[id(module)] = call
            for t in _floating((args, kwargs)):
                call.largest_in.append(self._largest_of(t))
                self._see("forward", where, maker, t)
                if t.requires_grad:
                    self._hook_tensor(t, self._grad_hook(owner, "the input", call))
            self._stack.append(owner)

        return pre

    def _post_hook(self, owner: _Owner, module: nn.Module) -> Callable:
        @torch.compiler.disable
        def post(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if not (self.armed and torch.is_grad_enabled()):
                return
            if self._stack and self._stack[-1] == owner:
                self._stack.pop()
            call = self._last_call.get(id(module)) or _Call()
            largest = _largest_of(call.largest_in)
            for t in _floating(output):
                self._see("forward", "output", owner, t, largest)
                if t.requires_grad:
                    self._hook_tensor(t, self._grad_hook(owner, "the output", call))

        return post

    def _grad_hook(
        self, owner: _Owner, of: str, call: _Call | Callable[[], _Call | None]
    ) -> Callable:
        """The hook of the gradient with respect to ``of`` (``"the output"``,
        ``"the input"`` or a parameter's name) of one call of a module
        (``call``, or a function giving its latest call, for a parameter). An
        output's gradient is what the module receives in the backward pass:
        its largest finite magnitude is kept with the call."""

        @torch.compiler.disable
        def hook(grad: Tensor) -> None:
            if not self.armed:
                return
            current = call() if callable(call) else call
            received = None if current is None else current.largest_grad_out
            if of == "the output":
                if received is not None:
                    received.append(self._largest_of(grad))
                self._see("backward", f"gradient of {of}", owner, grad)
            else:
                largest = _largest_of(received) if received is not None else None
                self._see("backward", f"gradient of {of}", owner, grad, largest)

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
        self._events.append(
            TraceEvent(
                seq=len(self._events),
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


class _EagerWhileArmed:
    """Makes ``torch.compile``'d code run eagerly while any tracer of the
    process is armed, so that a compiled model runs every module's hooks
    (compiled graphs skip hooks registered after compilation): the stance is
    set when the first tracer arms and put back when the last disarms,
    whatever their order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed = 0
        self._stance: Any = None

    def enter(self) -> None:
        with self._lock:
            self._armed += 1
            if self._armed == 1:
                try:
                    self._stance = torch.compiler.set_stance("force_eager")
                except RuntimeError:  # inside a compiled region: left as is
                    self._stance = None

    def leave(self) -> None:
        with self._lock:
            self._armed -= 1
            if self._armed == 0 and self._stance is not None:
                self._stance.__exit__(None, None, None)  # the stance from before
                self._stance = None


_EAGER = _EagerWhileArmed()


def _or_empty(t: Tensor | None, dtype: torch.dtype | None) -> Tensor:
    """``t`` as ``dtype`` (None: its own), or an empty float32 tensor."""
    if t is None:
        return torch.zeros(0, dtype=dtype or torch.float32)
    return t if dtype is None else t.to(dtype)


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _dtype(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _to_host(tensors: list[Tensor]) -> list[np.ndarray]:
    """Each of ``tensors`` (1-D) as numpy, one copy per device and dtype."""
    out: list[np.ndarray] = [np.zeros(0)] * len(tensors)
    by_device: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault((t.device, t.dtype), []).append(i)
    for indices in by_device.values():
        parts = [tensors[i] for i in indices]
        flat = torch.cat(parts).cpu().numpy()
        bounds = np.cumsum([0] + [part.numel() for part in parts])
        for i, lo, hi in zip(indices, bounds[:-1], bounds[1:]):
            out[i] = flat[lo:hi]
    return out
