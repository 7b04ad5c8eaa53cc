"""Fixtures of the optimizer tests that compile the fused SMORMS3 kernels."""

from __future__ import annotations

import pytest
import torch

import trainkit.optim._compiled as compiled_module
import trainkit.optim.smorms3_fused as fused_module


@pytest.fixture
def fresh_fused_kernels(monkeypatch):
    """No fused kernel made yet and torch.compile's caches empty, so that which
    graphs compile, and when, does not depend on the tests that ran before."""
    torch._dynamo.reset()
    monkeypatch.setattr(fused_module, "_fused_kernels", [])
    yield
    torch._dynamo.reset()


@pytest.fixture
def checked_direct_calls(monkeypatch):
    """Wraps each graph FlatKernel records so that every direct call of it (one
    that skips torch.compile's guards) asserts that each input has the dtype it
    was compiled with, the flat size's value for the size input, and shape
    ``(size,)`` and stride ``(1,)`` (or shape ``()``) for each tensor. Returns the
    list of the sizes of the direct calls made."""
    made: list[int] = []
    record = compiled_module._Direct

    def checked_direct(graph, inputs, specs):
        assert specs.count(None) == 1, "a graph takes the flat size once"
        at = specs.index(None)

        def call(*values):
            size = values[at]
            assert type(size) is int and size >= 2, size
            for value, spec in zip(values, specs):
                if spec is None:
                    continue
                dtype, dims = spec
                assert value.dtype == dtype
                want = ((), ()) if dims == 0 else ((size,), (1,))
                assert (tuple(value.shape), value.stride()) == want, (
                    f"a graph input compiled as {want} got shape "
                    f"{tuple(value.shape)}, stride {value.stride()}"
                )
            made.append(size)
            return graph(*values)

        return record(call, inputs, specs)

    monkeypatch.setattr(compiled_module, "_Direct", checked_direct)
    return made
