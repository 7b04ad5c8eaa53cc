"""``torch.compile``'d kernels called without ``torch.compile``'s per-call cost.

A call through ``torch.compile`` checks the guards of every input before it runs
the compiled graph: ~90 us on a CPU for the fused SMORMS3 bucket (43 tensors), half
the time of the update itself on eight 256 x 256 tensors. The fused optimizer path
calls with flat inputs: 1-D contiguous tensors that all have one size, so a graph
compiled once (``dynamic=True``: the size is a symbol) holds for every later call
of the same *signature* (the constants, list lengths, and each argument's dtype
and device). :class:`FlatKernel` compiles through ``torch.compile`` as usual, with
a backend that also records where each input of the compiled graph comes from in
the call's arguments, and later runs the compiled graph itself for calls of that
signature, after checking that their tensors are flat (~35 us for 43 tensors;
``call_flat`` checks only the first of each list, ~8 us, for a caller whose
plan guarantees the rest). ``bind`` returns the direct call of one signature,
which checks nothing (~4 us), for a caller that keeps the signature itself.

Direct calls are made on the CPU only: elsewhere every call goes through
``torch.compile`` (a GPU graph may assume the alignment of its inputs).

A graph whose inputs cannot all be traced back to the call's arguments (a tensor
from a global, a size other than the flat size), or that does not take the size
as an input (it may be specialised to one size), is not recorded: its calls keep
going through ``torch.compile``.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["FlatKernel"]

_FLAT_SIZE = None  # an input spec: the flat size (the graph's size symbol)

# Compilations allowed per kernel (torch.compile's default is 8 per function, and
# with fullgraph=True the 9th raises): one per signature.
_RECOMPILE_LIMIT = 64
# Since torch 2.13 torch.compile takes the limit per compiled function; before,
# it is a global option, patched around a call under this lock.
_LIMIT_PER_FUNCTION = "recompile_limit" in inspect.signature(torch.compile).parameters
_LIMIT_OPTION = (  # renamed in torch 2.7; the old name is still an alias there
    "recompile_limit"
    if hasattr(torch._dynamo.config, "recompile_limit")
    else "cache_size_limit"
)
_LIMIT_LOCK = threading.Lock()
_CONSTANTS = (bool, str, type(None))  # constants a direct call may key on


class _Direct(NamedTuple):
    """A compiled graph, and per graph input: ``(argument, index)`` into the
    call's arguments (lists, and single values as lists of one), or the flat
    size (``_FLAT_SIZE``)."""

    graph: Callable[..., Any]
    inputs: list[tuple[int, int] | None]


class FlatKernel:
    """``torch.compile(body, dynamic=True, fullgraph=True)`` with the inductor
    backend, called directly once compiled for a signature.

    ``body`` takes tensors or lists of tensors, then constants (bools, strings).
    Calls whose tensors are all plain tensors, distinct, and either 0-dim or 1-D
    contiguous of one size (``numel >= 2``, the size ``torch.compile`` makes a
    symbol) run the compiled graph directly once a call of their signature has
    compiled; other calls (n-D, strided, mixed sizes, a tensor passed twice,
    int or float constants) go through ``torch.compile``. The direct call does
    not check the devices past each argument's first tensor, and ``body`` must
    not branch on sizes (a graph guarded on a size range would run outside it).

    Args:
        body: the function to compile; returns nothing (updates in place).
        options: inductor options (``torch.compile``'s ``options``).
    """

    def __init__(self, body: Callable[..., None], options: dict[str, Any]) -> None:
        self._options = options
        limit = {"recompile_limit": _RECOMPILE_LIMIT} if _LIMIT_PER_FUNCTION else {}
        self._compiled = torch.compile(
            body, dynamic=True, fullgraph=True, backend=self._compile_graph, **limit
        )
        self.direct: dict[Hashable, _Direct] = {}
        self._pending = threading.local()  # the call being compiled, per thread

    def __call__(self, *args: Any) -> None:
        self._run(args, _signature(args, each=True))

    def call_flat(self, *args: Any) -> None:
        """Runs the kernel, for a caller that guarantees that the tensors of a
        list are distinct and share the first one's size, layout, dtype, device
        and requires_grad (a plan checked once): only the first tensor of each
        argument is checked (~2 us instead of ~35 us for 43 tensors)."""
        self._run(args, _signature(args, each=False))

    def bind(self, *args: Any) -> Callable[..., None] | None:
        """The direct call of the signature of ``args``, as a function of arguments
        like them, or None if calls of that signature do not run directly (not
        compiled yet, or the graph was not recorded).

        The returned function checks nothing: the caller guarantees that its
        arguments keep the signature (grad mode, constants, list lengths, and each
        tensor's dtype, device and requires_grad) and that every tensor but the
        0-dim ones is contiguous with the first tensor's number of elements. With
        inductor's ``size_asserts`` off, a tensor's shape does not matter: the
        graph reads and writes it through its data pointer.
        """
        key = _signature(args, each=False)
        direct = None if key is None else self.direct.get(key)
        return None if direct is None else partial(_call_direct, direct)

    def _run(self, args: tuple[Any, ...], key: Hashable | None) -> None:
        direct = None if key is None else self.direct.get(key)
        if direct is not None:
            _call_direct(direct, *args)
            return
        self._pending.call = (key, args)
        try:
            if _LIMIT_PER_FUNCTION:
                self._compiled(*args)
            else:
                with (
                    _LIMIT_LOCK,
                    torch._dynamo.config.patch(**{_LIMIT_OPTION: _RECOMPILE_LIMIT}),
                ):
                    self._compiled(*args)
        finally:
            self._pending.call = None

    def _compile_graph(self, gm: torch.fx.GraphModule, example_inputs: list) -> Any:
        """The ``torch.compile`` backend: inductor, recording the graph's inputs."""
        from torch._inductor.compile_fx import compile_fx

        graph = compile_fx(gm, example_inputs, config_patches=self._options)
        key, args = getattr(self._pending, "call", None) or (None, ())
        if key is not None:
            inputs = _trace_inputs(example_inputs, args)
            if inputs is not None:
                self.direct[key] = _Direct(graph, inputs)
        return graph


def _call_direct(direct: _Direct, *args: Any) -> None:
    """Runs ``direct``'s graph on its inputs picked from ``args``; the size is the
    first tensor's number of elements."""
    lists = [a if isinstance(a, list) else (a,) for a in args]
    size = lists[0][0].numel()
    direct.graph(*(size if at is None else lists[at[0]][at[1]] for at in direct.inputs))


def _signature(args: Sequence[Any], *, each: bool) -> Hashable | None:
    """What a compiled graph is specialised on that varies between calls: grad
    mode, the constants, and per argument its length and its first tensor's
    dtype, device, requires_grad and dimensions. None (no direct call) unless
    the first tensor is on the CPU, the first tensor of each argument is a
    plain tensor, 0-dim or 1-D contiguous of the first argument's size, and
    every constant a bool, string or None; with ``each``, every tensor of a
    list must also be distinct and like its first (~35 us for 43 tensors)."""
    if not args:
        return None
    first = args[0]
    if isinstance(first, list):
        first = first[0] if first else None
    if type(first) is not Tensor or first.stride() != (1,) or first.shape[0] < 2:
        return None
    if not first.is_cpu:
        # A GPU graph may assume its inputs' alignment (Triton's divisible-by-16
        # pointers), which the calls through torch.compile keep; not checked here.
        return None
    size = first.shape[0]
    seen: set[int] = set()
    key: list[Hashable] = [torch.is_grad_enabled()]
    for a in args:
        if isinstance(a, _CONSTANTS):
            key.append((type(a), a))
            continue
        items = a if isinstance(a, list) else (a,)
        if not items or not _flat_like(items[0], items[0], size):
            return None
        t0 = items[0]
        if each:
            for t in items:
                if id(t) in seen or not _flat_like(t, t0, size):
                    return None
                seen.add(id(t))
        key.append((len(items), t0.dtype, t0.device, t0.requires_grad, t0.dim()))
    return tuple(key)


def _flat_like(t: Any, t0: Tensor, size: int) -> bool:
    """Whether ``t`` is a plain tensor with ``t0``'s dtype, requires_grad and
    dimensions: 0, or 1 (contiguous, of ``size`` elements)."""
    if type(t) is not Tensor or t.dtype != t0.dtype:
        return False
    if t.requires_grad != t0.requires_grad:
        return False
    if t0.dim() == 0:
        return t.dim() == 0
    return t.stride() == (1,) and t.shape[0] == size


def _trace_inputs(
    example_inputs: Sequence[Any], args: Sequence[Any]
) -> list[tuple[int, int] | None] | None:
    """Where each graph input is in ``args``: ``(argument, index)`` for a tensor
    (found by identity), ``_FLAT_SIZE`` for a size equal to the flat size; None
    if any input is neither, or if no input is the size."""
    where: dict[int, tuple[int, int]] = {}
    for i, a in enumerate(args):
        items = a if isinstance(a, list) else (a,)
        for j, t in enumerate(items):
            if isinstance(t, Tensor):
                if id(t) in where:
                    return None  # one graph input for two arguments
                where[id(t)] = (i, j)
    flat = args[0][0] if isinstance(args[0], list) else args[0]
    inputs: list[tuple[int, int] | None] = []
    for x in example_inputs:
        if isinstance(x, Tensor):
            at = where.get(id(x))
            if at is None:
                return None
            inputs.append(at)
        elif isinstance(x, (int, torch.SymInt)) and _hint(x) == flat.shape[0]:
            inputs.append(_FLAT_SIZE)
        else:
            return None
    # without the size among its inputs, the graph may hold the compiling size
    return inputs if _FLAT_SIZE in inputs else None


def _hint(size: int | torch.SymInt) -> int | None:
    """The value a size had on the compiling call."""
    if isinstance(size, int):
        return size
    hint = getattr(size.node, "hint", None)
    return hint if isinstance(hint, int) else None
