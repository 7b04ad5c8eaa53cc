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

Every input of a direct call must be what the graph was compiled for: a tensor
of the compiling call's dtype, 0-dim, or 1-D contiguous of the flat size. Inductor
may take a loop bound from any tensor input's ``size()[0]`` rather than from the
size input (it does after a recompile), so an n-D tensor of the right number of
elements would be read only along its first dimension.

A graph is recorded only if its inputs are the call's own tensors (by identity,
each compiled 0-dim or 1-D contiguous over one size symbol) and that symbol
itself, as an input: a tensor from a global, a size other than the flat size, or
an integer input that merely equals the size leaves its calls going through
``torch.compile``.
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
    size (``_FLAT_SIZE``); and what each input was compiled as: ``(dtype,
    dimensions)`` of a tensor (0, or 1 for 1-D contiguous of the flat size), or
    None for the size."""

    graph: Callable[..., Any]
    inputs: list[tuple[int, int] | None]
    specs: list[tuple[torch.dtype, int] | None]


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
        0-dim ones is 1-D contiguous with the first tensor's number of elements,
        as the graph was compiled: it may take its loop bound from any tensor's
        ``size()[0]`` (an n-D tensor would be updated along its first dimension
        only).
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
            traced = _trace_inputs(gm, example_inputs, args)
            if traced is not None:
                self.direct[key] = _Direct(graph, *traced)
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
    gm: torch.fx.GraphModule, example_inputs: Sequence[Any], args: Sequence[Any]
) -> tuple[list[tuple[int, int] | None], list[tuple[torch.dtype, int] | None]] | None:
    """Where each graph input is in ``args`` and what it was compiled as (see
    ``_Direct``), or None unless the graph takes exactly: the call's own tensors
    (found by identity), each compiled as 0-dim or as 1-D contiguous over one
    size symbol, and that symbol as an input. The graph's placeholders hold what
    ``torch.compile`` compiled each input as (fake tensors, symbolic sizes)."""
    compiled = [
        node.meta.get("example_value") for node in gm.graph.find_nodes(op="placeholder")
    ]
    if len(compiled) != len(example_inputs):
        return None
    symbols = {c.node.expr for c in compiled if isinstance(c, torch.SymInt)}
    if len(symbols) != 1:
        return None  # no size input (specialised to one size), or several
    (symbol,) = symbols
    if not symbol.is_Symbol:
        return None  # an expression of a size, not the size itself
    where: dict[int, tuple[int, int]] = {}
    for i, a in enumerate(args):
        items = a if isinstance(a, list) else (a,)
        for j, t in enumerate(items):
            if isinstance(t, Tensor):
                if id(t) in where:
                    return None  # one graph input for two arguments
                where[id(t)] = (i, j)
    inputs: list[tuple[int, int] | None] = []
    specs: list[tuple[torch.dtype, int] | None] = []
    for x, c in zip(example_inputs, compiled):
        if isinstance(c, torch.SymInt):
            inputs.append(_FLAT_SIZE)
            specs.append(None)
        elif isinstance(x, Tensor) and id(x) in where and _flat_over(c, symbol):
            inputs.append(where[id(x)])
            specs.append((x.dtype, x.dim()))
        else:
            return None
    return inputs, specs


def _flat_over(compiled: Any, symbol: Any) -> bool:
    """Whether a graph input was compiled as a 0-dim tensor, or as a 1-D
    contiguous tensor whose size is ``symbol``."""
    if not isinstance(compiled, Tensor):
        return False
    if compiled.dim() == 0:
        return True
    if compiled.dim() != 1:
        return False
    (size,), (stride,) = compiled.shape, compiled.stride()
    if type(stride) is not int or stride != 1:
        return False
    return isinstance(size, torch.SymInt) and size.node.expr == symbol
