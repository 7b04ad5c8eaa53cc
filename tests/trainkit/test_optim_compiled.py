"""FlatKernel: a torch.compile'd kernel called directly after its first call."""

from __future__ import annotations

import pytest
import torch

from trainkit.optim._compiled import FlatKernel

OPTIONS = {"size_asserts": False}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Kernels of one body share torch.compile's cache: each test starts empty."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def scale_add(xs: list[torch.Tensor], y: torch.Tensor, w: torch.Tensor, neg: bool):
    """xs[i] += w * y (or -= with neg), in place."""
    for x in xs:
        x.copy_(x - w * y if neg else x + w * y)


OFFSET = torch.tensor(5.0)


def add_global(x: torch.Tensor) -> None:
    """x += OFFSET: a graph input that is not an argument."""
    x.copy_(x + OFFSET)


def expected(xs, y, w, neg):
    return [x - w * y if neg else x + w * y for x in xs]


class Counting:
    """Wraps a callable and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def test_calls_the_graph_directly_after_compiling_per_signature():
    kernel = FlatKernel(scale_add, OPTIONS)
    kernel._compiled = through = Counting(kernel._compiled)
    w = torch.tensor(0.5)
    for size, neg, dtype in [
        (6, False, torch.float32),
        (9, False, torch.float32),  # new size: direct, the size is an input
        (6, True, torch.float32),  # new constant: compiles once more
        (7, True, torch.float32),
        (5, False, torch.float64),  # new dtype: compiles once more
        (11, False, torch.float64),
    ]:
        xs = [torch.randn(size, dtype=dtype) for _ in range(2)]
        y = torch.randn(size, dtype=dtype)
        want = expected(xs, y, w.to(dtype), neg)
        kernel(xs, y, w.to(dtype), neg)
        for x, e in zip(xs, want):
            torch.testing.assert_close(x, e)
    assert through.calls == 3  # one per signature
    assert len(kernel.direct) == 3


def test_strided_tensors_always_go_through_torch_compile():
    kernel = FlatKernel(scale_add, OPTIONS)
    kernel._compiled = through = Counting(kernel._compiled)
    w = torch.tensor(2.0)
    for _ in range(2):
        xs = [torch.randn(4, 3).t() for _ in range(2)]  # (3, 4), not 1-D
        y = torch.randn(3, 4)
        want = expected(xs, y, w, False)
        kernel(xs, y, w, False)
        for x, e in zip(xs, want):
            torch.testing.assert_close(x, e)
    assert through.calls == 2
    assert not kernel.direct


def test_a_graph_input_from_outside_the_arguments_is_not_called_directly():
    kernel = FlatKernel(add_global, OPTIONS)
    kernel._compiled = through = Counting(kernel._compiled)
    for size in (4, 4, 8):
        x = torch.zeros(size)
        kernel(x)
        torch.testing.assert_close(x, torch.full((size,), 5.0))
    assert through.calls == 3
    assert not kernel.direct


@pytest.mark.parametrize("grad_enabled", [False, True])
def test_grad_mode_is_part_of_the_signature(grad_enabled):
    kernel = FlatKernel(scale_add, OPTIONS)
    w = torch.tensor(1.0)
    with torch.no_grad():
        kernel([torch.zeros(3)], torch.ones(3), w, False)
    x = torch.zeros(5)
    with torch.set_grad_enabled(grad_enabled):
        kernel([x], torch.ones(5), w, False)
    torch.testing.assert_close(x, torch.ones(5))
    assert len(kernel.direct) == (2 if grad_enabled else 1)


def test_a_strided_tensor_after_a_flat_call_of_its_signature_is_not_called_directly():
    kernel = FlatKernel(scale_add, OPTIONS)
    w = torch.tensor(1.5)
    kernel([torch.zeros(6)], torch.ones(6), w, False)  # compiles: flat
    assert len(kernel.direct) == 1
    kernel._compiled = through = Counting(kernel._compiled)
    for xs, y in [
        ([torch.zeros(6)], torch.arange(12.0)[::2]),  # y strided
        ([torch.zeros(6), torch.zeros(12)[::2]], torch.ones(6)),  # a strided x
        ([torch.zeros(6), torch.zeros(6, dtype=torch.float64)], torch.ones(6)),
    ]:
        want = expected(xs, y, w, False)
        kernel(xs, y, w, False)
        for x, e in zip(xs, want):
            torch.testing.assert_close(x, e.to(x.dtype))
    assert through.calls == 3


def repeat_scale(x: torch.Tensor, word: str) -> None:
    """x *= len(word): each word is a constant of its own graph."""
    x.copy_(x * len(word))


def test_more_signatures_than_torch_compiles_default_limit():
    """torch.compile allows 8 compilations of a function by default, and with
    fullgraph=True the 9th raises: each word here is a signature."""
    kernel = FlatKernel(repeat_scale, OPTIONS)
    for n in range(1, 10):
        x = torch.ones(5)
        kernel(x, "a" * n)
        torch.testing.assert_close(x, torch.full((5,), float(n)))
    assert len(kernel.direct) == 9


def test_a_tensor_passed_twice_is_never_called_directly():
    """torch.compile gives one graph input to both places of a tensor passed
    twice, and compiles other calls assuming distinct tensors."""
    kernel = FlatKernel(scale_add, OPTIONS)
    kernel._compiled = through = Counting(kernel._compiled)
    w = torch.tensor(1.0)
    x = torch.zeros(6)
    kernel([x, x], torch.ones(6), w, False)  # compiles, for the aliased call
    torch.testing.assert_close(x, torch.full((6,), 2.0))
    assert not kernel.direct
    xs = [torch.zeros(6), torch.zeros(6)]
    kernel(xs, torch.ones(6), w, False)  # distinct: compiles and records
    kernel(xs, torch.ones(6), w, False)  # direct
    y = torch.zeros(6)
    kernel([y, y], torch.ones(6), w, False)  # aliased again: not direct
    torch.testing.assert_close(xs[0], torch.full((6,), 2.0))
    torch.testing.assert_close(y, torch.full((6,), 2.0))
    assert through.calls == 3


def add_times(x: torch.Tensor, n: int) -> None:
    """x += n, an int constant."""
    x.copy_(x + n)


def test_int_constants_are_never_called_directly():
    """torch.compile may make an int argument a size symbol: one equal to the
    flat size would be taken for it."""
    kernel = FlatKernel(add_times, OPTIONS)
    for n in (5, 5, 3):
        x = torch.zeros(5)
        kernel(x, n)
        torch.testing.assert_close(x, torch.full((5,), float(n)))
    assert not kernel.direct


def test_bind_gives_the_direct_call_of_a_signature(checked_direct_calls):
    """bind's call runs the recorded graph without torch.compile or checks, on
    flat tensors of any size (the size is an input)."""
    kernel = FlatKernel(scale_add, OPTIONS)
    w = torch.tensor(0.5)
    xs, y = [torch.zeros(6), torch.ones(6)], torch.arange(6.0)
    assert kernel.bind(xs, y, w, False) is None  # nothing compiled yet
    kernel(xs, y, w, False)
    run = kernel.bind(xs, y, w, False)
    assert run is not None
    assert kernel.bind([torch.zeros(6)] * 2, y, w, True) is None  # other constant
    kernel._compiled = Counting(kernel._compiled)
    x9 = [torch.randn(9), torch.randn(9)]
    y = torch.randn(9)
    want = [x + 2.0 * y for x in x9]
    run(x9, y, torch.tensor(2.0), False)
    for x, e in zip(x9, want):
        torch.testing.assert_close(x, e)
    assert kernel._compiled.calls == 0
    assert checked_direct_calls == [9]


def test_a_recompiled_graph_runs_directly_on_inputs_as_compiled(checked_direct_calls):
    """After a recompile (a new constant), inductor's graph may take its loop
    bound from a tensor's size rather than from the size input: direct calls
    of every signature get 1-D tensors of the flat size, checked input by input
    against what each graph was compiled for."""
    kernel = FlatKernel(scale_add, OPTIONS)
    for neg in (False, True, False, True):
        for size in (6, 30):
            xs = [torch.randn(size, dtype=torch.float64) for _ in range(2)]
            y = torch.randn(size, dtype=torch.float64)
            w = torch.tensor(0.25, dtype=torch.float64)
            want = expected(xs, y, w, neg)
            kernel(xs, y, w, neg)
            for x, e in zip(xs, want):
                torch.testing.assert_close(x, e, rtol=1e-12, atol=1e-12)
    assert len(kernel.direct) == 2
    assert checked_direct_calls == [30, 30, 6, 30, 6, 30]


def test_an_int_input_that_equals_the_flat_size_is_not_taken_for_it():
    """torch.compile makes an int argument a size symbol of its own: one whose
    value equals the flat size is still not the tensors' size, and a graph that
    takes it is not recorded (its later calls could pass another int)."""
    from trainkit.optim._compiled import _trace_inputs

    captured = []

    def capture(gm, example_inputs):
        captured.append((gm, list(example_inputs)))
        return gm.forward

    x = torch.zeros(5)
    torch.compile(add_times, dynamic=True, fullgraph=True, backend=capture)(x, 5)
    ((gm, example_inputs),) = captured
    sizes = [v for v in example_inputs if isinstance(v, torch.SymInt)]
    assert len(sizes) == 2 and {int(v) for v in sizes} == {5}  # two symbols of 5
    assert _trace_inputs(gm, example_inputs, (x, 5)) is None


def test_direct_calls_are_made_for_cpu_tensors_only():
    from trainkit.optim._compiled import _signature

    w = torch.ones(())
    assert _signature([[torch.ones(4)], w, False], each=True) is not None
    assert _signature([[torch.ones(4, device="meta")], w, False], each=True) is None
