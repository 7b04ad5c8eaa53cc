"""SMORMS3 against an independent float64 reference, plus optimizer invariants."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

import trainkit.optim.smorms3 as smorms3_module
import trainkit.optim.smorms3_fused as fused_module
import trainkit.optim.smorms3_kernels as kernels_module
from trainkit.optim import SMORMS3, MultipleOptimizer

# -- an independent reference: Funk's rule on Python floats --------------------


def funk_step(state, param, grad, *, lr, eps=1e-16):
    """One SMORMS3 step on lists of floats, as Funk's journal post writes it.

    ``state`` is a dict of lists ``mem``, ``g``, ``g2`` (created at mem=1, g=g2=0).
    Returns the new parameter list and updates ``state`` in place.
    """
    if not state:
        state.update(
            mem=[1.0] * len(param), g=[0.0] * len(param), g2=[0.0] * len(param)
        )
    out = []
    for i, (p, d) in enumerate(zip(param, grad)):
        mem, g, g2 = state["mem"][i], state["g"][i], state["g2"][i]
        r = 1.0 / (mem + 1.0)
        g = (1.0 - r) * g + r * d
        g2 = (1.0 - r) * g2 + r * d * d
        x = g * g / (g2 + eps)
        out.append(p - d * min(lr, x) / (math.sqrt(g2) + eps))
        state["mem"][i], state["g"][i], state["g2"][i] = 1.0 + mem * (1.0 - x), g, g2
    return out


# -- the paths under test --------------------------------------------------------

# "fused" compiles its kernels (a few seconds each on a cold cache)
PATHS = ["single", "chunked", "foreach", pytest.param("fused", marks=pytest.mark.slow)]


@pytest.fixture
def path_kwargs(request, monkeypatch):
    """Optimizer kwargs that select one implementation path.

    "chunked" is the per-tensor path with 5-element slices, so that tensors here
    span several slices. "fused" compiles its kernels for real, from an empty
    compile state, and checks that every direct call of a compiled graph gets
    the inputs it was compiled for (see conftest.py).
    """
    path = request.param
    if path == "chunked":
        monkeypatch.setattr(kernels_module, "_CHUNK_NUMEL", 5)
    if path == "fused":
        request.getfixturevalue("fresh_fused_kernels")
        request.getfixturevalue("checked_direct_calls")
        return {"fused": True}
    return {"foreach": path == "foreach"}


# nine equal sizes: the fused path updates eight of them in one bucket
SHAPES = [(), (1,), (7,), (3, 4), (2, 3, 4), (0, 3), (17, 3)] + [(4, 5)] * 9


def _random_grad(shape, step, generator):
    grad = torch.randn(shape, dtype=torch.float64, generator=generator)
    if grad.numel():
        grad.view(-1)[::4] = 0.0  # exact zeros: x = 0 and mem grows by one
        # large and small magnitudes, so min(lr, x) takes both branches
        grad *= 10.0 ** torch.randint(-3, 3, shape, generator=generator)
    return grad


@pytest.mark.parametrize("path_kwargs", PATHS, indirect=True)
@pytest.mark.parametrize("lr", [1e-3, 0.3, 2.0])
def test_matches_float64_reference_over_20_steps(path_kwargs, lr):
    gen = torch.Generator().manual_seed(1)
    params = [
        nn.Parameter(torch.randn(s, dtype=torch.float64, generator=gen)) for s in SHAPES
    ]
    opt = SMORMS3(params, lr=lr, **path_kwargs)
    ref_params = [p.detach().reshape(-1).tolist() for p in params]
    ref_states = [{} for _ in params]
    for step in range(20):
        for i, p in enumerate(params):
            if step % 6 == 5 and i == 3:
                p.grad = None  # skipped: its state must not move
                continue
            p.grad = _random_grad(p.shape, step, gen)
            ref_params[i] = funk_step(
                ref_states[i], ref_params[i], p.grad.reshape(-1).tolist(), lr=lr
            )
        opt.step()
    for p, ref, ref_state in zip(params, ref_params, ref_states):
        torch.testing.assert_close(
            p.detach().reshape(-1),
            torch.tensor(ref, dtype=torch.float64),
            rtol=1e-10,
            atol=1e-12,
        )
        state = opt.state[p]
        for key, ref_key in (("mem", "mem"), ("exp_avg", "g"), ("exp_avg_sq", "g2")):
            torch.testing.assert_close(
                state[key].reshape(-1),
                torch.tensor(ref_state[ref_key], dtype=torch.float64),
                rtol=1e-10,
                atol=1e-12,
            )
        assert state["step"].item() == (20 if p is not params[3] else 17)


@pytest.mark.parametrize("path_kwargs", PATHS, indirect=True)
def test_first_step_is_sqrt2_lr_sign_grad_and_mem_is_1_5(path_kwargs):
    lr = 0.01
    p0 = torch.randn(64, 33)
    # magnitudes where eps = 1e-16 is below float32 resolution relative to g2
    magnitude = (0.5 + torch.rand(64, 33)) * 10.0 ** torch.randint(-2, 4, (64, 33))
    grad = torch.where(torch.rand(64, 33) < 0.5, -magnitude, magnitude)
    grad[0, :5] = 0.0
    p = nn.Parameter(p0.clone())
    p.grad = grad
    opt = SMORMS3([p], lr=lr, **path_kwargs)
    opt.step()
    expected = p0 - math.sqrt(2) * lr * torch.sign(grad)
    torch.testing.assert_close(p.detach(), expected)
    mem = opt.state[p]["mem"]
    assert torch.equal(mem[grad != 0], torch.full_like(mem[grad != 0], 1.5))
    assert torch.equal(mem[grad == 0], torch.full_like(mem[grad == 0], 2.0))


@pytest.mark.parametrize("path_kwargs", PATHS, indirect=True)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"weight_decay": 0.1},
        {"maximize": True},
        {"weight_decay": 0.2, "maximize": True},
    ],
    ids=["plain", "wd", "maximize", "wd+maximize"],
)
def test_paths_agree_in_float64(path_kwargs, options):
    """Every path against the plain per-tensor one, with a zero-size parameter, a
    channels_last one and steps where a gradient is None."""
    gen = torch.Generator().manual_seed(2)
    shapes = [(5, 7), (0,), (3,), (130,)] + [(6,)] * 10 + [(2, 3, 4, 5)]

    def make():
        g = torch.Generator().manual_seed(3)
        ps = [
            nn.Parameter(torch.randn(s, dtype=torch.float64, generator=g))
            for s in shapes
        ]
        ps[-1] = nn.Parameter(ps[-1].detach().to(memory_format=torch.channels_last))
        return ps

    ours, base = make(), make()
    opt = SMORMS3(ours, lr=0.05, **options, **path_kwargs)
    ref = SMORMS3(base, lr=0.05, **options, foreach=False)
    for step in range(8):
        for i, (a, b) in enumerate(zip(ours, base)):
            if step == 3 and i == 0:
                a.grad = b.grad = None
                continue
            grad = torch.randn(a.shape, dtype=torch.float64, generator=gen)
            a.grad, b.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()
    for a, b in zip(ours, base):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        for key in ("mem", "exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(
                opt.state[a][key], ref.state[b][key], rtol=0, atol=1e-6
            )


def test_weight_decay_is_coupled():
    """weight_decay=wd equals adding wd * p to the gradient by hand."""
    gen = torch.Generator().manual_seed(7)
    p0 = torch.randn(10, dtype=torch.float64, generator=gen)
    a, b = nn.Parameter(p0.clone()), nn.Parameter(p0.clone())
    opt_wd, opt_plain = SMORMS3([a], lr=0.1, weight_decay=0.3), SMORMS3([b], lr=0.1)
    for _ in range(3):
        grad = torch.randn(10, dtype=torch.float64, generator=gen)
        a.grad, b.grad = grad.clone(), grad + 0.3 * b.detach()
        opt_wd.step()
        opt_plain.step()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


def test_maximize_ascends_as_descending_on_the_negated_gradient():
    gen = torch.Generator().manual_seed(8)
    p0 = torch.randn(10, dtype=torch.float64, generator=gen)
    a, b = nn.Parameter(p0.clone()), nn.Parameter(p0.clone())
    opt_max, opt_min = SMORMS3([a], lr=0.1, maximize=True), SMORMS3([b], lr=0.1)
    grad = torch.randn(10, dtype=torch.float64, generator=gen)
    for _ in range(3):
        a.grad, b.grad = grad.clone(), -grad
        opt_max.step()
        opt_min.step()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    assert torch.dot(a.detach() - p0, grad) > 0  # moved along the gradient


@pytest.mark.parametrize("path_kwargs", PATHS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("maximize, weight_decay", [(False, 0.0), (True, 0.1)])
def test_half_precision_keeps_float32_state(path_kwargs, dtype, maximize, weight_decay):
    gen = torch.Generator().manual_seed(4)
    p = nn.Parameter(torch.randn(40, generator=gen).to(dtype))
    opt = SMORMS3(
        [p], lr=0.01, maximize=maximize, weight_decay=weight_decay, **path_kwargs
    )
    ref_param = p.detach().double().tolist()
    ref_state: dict = {}
    for _ in range(5):
        p.grad = torch.randn(40, generator=gen).to(dtype)
        sign = -1.0 if maximize else 1.0
        grad = [sign * d + weight_decay * w for d, w in zip(p.grad.tolist(), ref_param)]
        ref_param = funk_step(ref_state, ref_param, grad, lr=0.01)
        opt.step()
        # the reference keeps float64 params; ours round to `dtype` after each step
        ref_param = torch.tensor(ref_param).to(dtype).double().tolist()
    assert p.dtype == dtype
    for key in ("mem", "exp_avg", "exp_avg_sq"):
        assert opt.state[p][key].dtype == torch.float32
    torch.testing.assert_close(
        p.detach().double(),
        torch.tensor(ref_param, dtype=torch.float64),
        rtol=1e-2,
        atol=1e-3,
    )
    torch.testing.assert_close(
        opt.state[p]["mem"].double(),
        torch.tensor(ref_state["mem"], dtype=torch.float64),
        rtol=1e-5,
        atol=1e-5,
    )


def test_zero_gradient_grows_mem_by_one_per_step_and_never_moves():
    p = nn.Parameter(torch.ones(4))
    opt = SMORMS3([p], lr=0.1)
    for _ in range(6):
        p.grad = torch.zeros(4)
        opt.step()
    assert torch.equal(opt.state[p]["mem"], torch.full((4,), 7.0))
    assert torch.equal(p.detach(), torch.ones(4))


def test_lr_caps_the_rate_and_zero_lr_only_updates_state():
    p = nn.Parameter(torch.ones(3))
    opt = SMORMS3([p], lr=0.0)
    p.grad = torch.tensor([1.0, -2.0, 3.0])
    opt.step()
    assert torch.equal(p.detach(), torch.ones(3))
    assert torch.equal(opt.state[p]["mem"], torch.full((3,), 1.5))
    # lr >= 1 never binds: the step is grad * x / sqrt(g2), with x = 1/2 at first
    q = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    q.grad = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    SMORMS3([q], lr=5.0).step()
    torch.testing.assert_close(q.detach(), -0.5 * torch.sign(q.grad) * math.sqrt(2))


def test_param_groups_use_their_own_lr():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    opt = SMORMS3([{"params": [a]}, {"params": [b], "lr": 0.1}], lr=0.01)
    a.grad = b.grad = torch.tensor([1.0, -1.0])
    opt.step()
    torch.testing.assert_close(
        a.detach(), torch.tensor([-1.0, 1.0]) * math.sqrt(2) * 0.01
    )
    torch.testing.assert_close(
        b.detach(), torch.tensor([-1.0, 1.0]) * math.sqrt(2) * 0.1
    )


def test_foreach_none_uses_the_per_tensor_path_on_cpu(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the multi-tensor path ran on the CPU")

    monkeypatch.setattr(smorms3_module, "multi_tensor_smorms3", fail)
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    SMORMS3([p]).step()
    with pytest.raises(AssertionError, match="multi-tensor path ran"):
        SMORMS3([p], foreach=True).step()


# -- convergence, as public optimizer test suites check it ------------------------


def rosenbrock(x, y):
    """Value and gradient of (1 - x)^2 + 100 (y - x^2)^2; minimum at (1, 1)."""
    value = (1 - x) ** 2 + 100 * (y - x**2) ** 2
    return value, (-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2))


def beale(x, y):
    """Value and gradient of Beale's function; minimum at (3, 0.5)."""
    a, b, c = 1.5 - x + x * y, 2.25 - x + x * y**2, 2.625 - x + x * y**3
    value = a**2 + b**2 + c**2
    dx = 2 * a * (y - 1) + 2 * b * (y**2 - 1) + 2 * c * (y**3 - 1)
    dy = 2 * a * x + 4 * b * x * y + 6 * c * x * y**2
    return value, (dx, dy)


@pytest.mark.parametrize(
    ("func", "start", "minimum", "steps"),
    [
        (rosenbrock, (1.5, 1.5), (1.0, 1.0), 3500),
        (rosenbrock, (-1.5, 2.0), (1.0, 1.0), 3500),
        (beale, (1.5, 1.5), (3.0, 0.5), 400),
    ],
    ids=["rosenbrock", "rosenbrock-far", "beale"],
)
def test_converges_on_test_functions(func, start, minimum, steps):
    """jettify/pytorch-optimizer's check: clip the gradient norm to 1, step, and end
    within 1e-3 of the minimum."""
    xy = nn.Parameter(torch.tensor(start, dtype=torch.float64))
    opt = SMORMS3([xy], lr=0.03)
    first, _ = func(*start)
    for _ in range(steps):
        value, grad = func(*xy.tolist())
        norm = math.hypot(*grad)
        xy.grad = torch.tensor(grad, dtype=torch.float64) / max(norm, 1.0)
        opt.step()
    assert func(*xy.tolist())[0] < 1e-5 < first
    torch.testing.assert_close(
        xy.detach(), torch.tensor(minimum, dtype=torch.float64), rtol=0, atol=1e-3
    )


def test_hand_written_gradients_match_autograd():
    xy = torch.tensor([-0.7, 1.3], dtype=torch.float64, requires_grad=True)
    for func in (rosenbrock, beale):
        x, y = xy
        value, grad = func(x, y)
        (autograd,) = torch.autograd.grad(value, xy)
        torch.testing.assert_close(autograd, torch.stack(grad).detach())


# -- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -0.1}, r"Invalid lr: -0\.1"),
        ({"lr": float("nan")}, r"Invalid lr: nan"),
        ({"eps": 0.0}, r"Invalid eps: 0\.0 \(must be > 0"),
        ({"eps": -1e-8}, r"Invalid eps: -1e-08"),
        ({"weight_decay": -1.0}, r"Invalid weight_decay: -1\.0"),
        ({"foreach": True, "fused": True}, r"at most one can be True"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SMORMS3([nn.Parameter(torch.ones(2))], **kwargs)


def test_tensor_lr_and_empty_params_raise():
    with pytest.raises(TypeError, match="Invalid lr: a Tensor"):
        SMORMS3([nn.Parameter(torch.ones(2))], lr=torch.tensor(0.1))
    with pytest.raises(ValueError, match="empty parameter list"):
        SMORMS3([])


def test_sparse_gradient_points_to_sparse_dense_optimizer():
    emb = nn.Embedding(10, 3, sparse=True)
    opt = SMORMS3(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"sparse gradients.*sparse_dense_optimizer"):
        opt.step()


def test_complex_parameters_raise():
    p = nn.Parameter(torch.ones(2, dtype=torch.complex64))
    p.grad = torch.ones(2, dtype=torch.complex64)
    with pytest.raises(ValueError, match="complex parameters"):
        SMORMS3([p]).step()


# -- invariants over a registry: one line per optimizer ----------------------------

OPTIMIZERS = [
    ("smorms3", lambda ps: SMORMS3(ps, lr=0.01)),
    ("smorms3-foreach", lambda ps: SMORMS3(ps, lr=0.01, foreach=True)),
    ("smorms3-wd", lambda ps: SMORMS3(ps, lr=0.01, weight_decay=0.01)),
    (
        "multi(smorms3, adam)",
        lambda ps: MultipleOptimizer(
            SMORMS3(ps[:1], lr=0.01), torch.optim.Adam(ps[1:], lr=0.01)
        ),
    ),
]


def _quadratic_model():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    return model, lambda: ((model(x) - y) ** 2).mean()


@pytest.mark.parametrize(
    "make", [m for _, m in OPTIMIZERS], ids=[n for n, _ in OPTIMIZERS]
)
def test_goes_downhill(make):
    model, loss_fn = _quadratic_model()
    opt = make(list(model.parameters()))
    first = loss_fn().item()
    for _ in range(30):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    assert loss_fn().item() < 0.9 * first


@pytest.mark.parametrize(
    "make", [m for _, m in OPTIMIZERS], ids=[n for n, _ in OPTIMIZERS]
)
def test_state_dict_round_trip_resumes_identically(make):
    model, loss_fn = _quadratic_model()
    opt = make(list(model.parameters()))
    for _ in range(3):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)  # weights_only: plain tensors and builtins only

    model2, loss_fn2 = _quadratic_model()
    model2.load_state_dict(saved["model"])
    opt2 = make(list(model2.parameters()))
    opt2.load_state_dict(saved["opt"])
    for _ in range(3):
        for o, f in ((opt, loss_fn), (opt2, loss_fn2)):
            o.zero_grad()
            f().backward()
            o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "make", [m for _, m in OPTIMIZERS], ids=[n for n, _ in OPTIMIZERS]
)
def test_closure_runs_once_with_grad_enabled_and_its_loss_is_returned(make):
    model, loss_fn = _quadratic_model()
    opt = make(list(model.parameters()))
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert calls == [True]
    assert isinstance(loss, torch.Tensor) and loss.requires_grad


def test_half_precision_state_survives_load_state_dict():
    p = nn.Parameter(torch.randn(8).to(torch.bfloat16))
    opt = SMORMS3([p])
    p.grad = torch.randn(8).to(torch.bfloat16)
    opt.step()
    saved = opt.state_dict()
    q = nn.Parameter(p.detach().clone())
    opt2 = SMORMS3([q])
    opt2.load_state_dict(saved)
    for key in ("mem", "exp_avg", "exp_avg_sq"):
        assert opt2.state[q][key].dtype == torch.float32
        assert torch.equal(opt2.state[q][key], opt.state[p][key])


def test_fused_plan_follows_new_storage_state_and_gradient_layout(
    fresh_fused_kernels, checked_direct_calls
):
    """The fused path keeps its flat kernel inputs between steps: a parameter's new
    storage, new state tensors (load_state_dict) and a strided gradient must make it
    rebuild them rather than update stale tensors."""
    gen = torch.Generator().manual_seed(7)
    shapes = [(4, 5)] * 9 + [(7,)]
    ours = [nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    base = [nn.Parameter(p.detach().clone()) for p in ours]
    opt = SMORMS3(ours, lr=0.05, fused=True)
    ref = SMORMS3(base, lr=0.05)
    for step in range(6):
        if step == 2:
            for p in ours:
                p.data = p.data.clone()  # same Parameter, new storage
        if step == 3:
            opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        for a, b in zip(ours, base):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        if step == 4:
            ours[0].grad = ours[0].grad.t().contiguous().t()  # same values, strided
        opt.step()
        ref.step()
        for a, b in zip(ours, base):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    plan = opt._fused_caches[0]["plan"]
    assert plan.fits(*(list(t) for t in _fused_inputs(opt)))


@pytest.mark.slow
def test_fused_direct_calls_follow_maximize_and_weight_decay(
    fresh_fused_kernels, checked_direct_calls
):
    """A bucket's direct call is specialised on maximize and on weight decay
    being on: changing them between steps must not reuse it."""
    gen = torch.Generator().manual_seed(8)
    ours = [nn.Parameter(torch.randn(4, 5, generator=gen)) for _ in range(9)]
    base = [nn.Parameter(p.detach().clone()) for p in ours]
    opt, ref = SMORMS3(ours, lr=0.05, fused=True), SMORMS3(base, lr=0.05)
    for maximize, weight_decay in [
        (False, 0.0),
        (True, 0.0),
        (False, 0.3),
        (False, 0.0),
    ]:
        for group in (*opt.param_groups, *ref.param_groups):
            group.update(maximize=maximize, weight_decay=weight_decay)
        for a, b in zip(ours, base):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        opt.step()
        ref.step()
        for a, b in zip(ours, base):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


BAD_TENSORS = {
    "gradient resized": (
        lambda opt, p: p.grad.resize_(30),
        r"shape \(4, 5\) has a gradient of shape \(30,\)",
    ),
    "state of another shape": (
        lambda opt, p: opt.state[p].update(exp_avg_sq=torch.zeros(5, 4)),
        r"shape \(4, 5\) has a exp_avg_sq of shape \(5, 4\)",
    ),
    "state of another dtype": (
        lambda opt, p: opt.state[p].update(exp_avg_sq=torch.zeros(4, 5).half()),
        r"two dtypes \(exp_avg_sq torch.float16, mem torch.float32\)",
    ),
}


@pytest.mark.parametrize("case", BAD_TENSORS)
def test_fused_path_rejects_a_gradient_or_state_unlike_its_parameter(
    fresh_fused_kernels, case
):
    """The fused kernels read by data pointer: a gradient resized in place after
    the plan was built, or state of another shape or dtype, must raise (as the
    per-tensor path does), not be read past its end or as another dtype."""
    params = [nn.Parameter(torch.randn(4, 5)) for _ in range(9)]
    for p in params:
        p.grad = torch.randn(4, 5)
    opt = SMORMS3(params, fused=True)
    opt.step()
    spoil, message = BAD_TENSORS[case]
    with torch.no_grad():
        spoil(opt, params[3])
    with pytest.raises(RuntimeError, match=message):
        opt.step()


def test_fused_plan_follows_state_given_new_storage(
    fresh_fused_kernels, checked_direct_calls
):
    """Resetting state through ``.data`` keeps the tensor objects: the plan's flat
    views of the old storage must not be updated instead."""
    gen = torch.Generator().manual_seed(9)
    ours = [nn.Parameter(torch.randn(4, 5, generator=gen)) for _ in range(9)]
    base = [nn.Parameter(p.detach().clone()) for p in ours]
    opt, ref = SMORMS3(ours, lr=0.05, fused=True), SMORMS3(base, lr=0.05)
    for step in range(4):
        if step == 2:
            for o in (opt, ref):
                for state in o.state.values():
                    state["mem"].data = torch.ones(4, 5)
                    state["exp_avg"].data = torch.zeros(4, 5)
                    state["exp_avg_sq"].data = torch.zeros(4, 5)
        for a, b in zip(ours, base):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        opt.step()
        ref.step()
        for a, b in zip(ours, base):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
            for key in ("mem", "exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(opt.state[a][key], ref.state[b][key])


@pytest.mark.parametrize("path_kwargs", PATHS, indirect=True)
def test_loaded_integer_steps_become_float_counters(path_kwargs):
    """A state dict made elsewhere may hold int or int64 steps: loading makes
    them the float counters this class keeps, and counting goes on."""
    params = [nn.Parameter(torch.randn(3)) for _ in range(2)]
    opt = SMORMS3(params, **path_kwargs)
    for p in params:
        p.grad = torch.randn(3)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][0]["step"] = torch.tensor(1)  # int64
    saved["state"][1]["step"] = 1
    opt.load_state_dict(saved)
    opt.step()
    for p in params:
        step = opt.state[p]["step"]
        assert step.dtype == torch.get_default_dtype() and step.item() == 2


def _fused_inputs(opt):
    """The (params, grads, mems, exp_avgs, exp_avg_sqs) of opt's first group."""
    params = opt.param_groups[0]["params"]
    states = [opt.state[p] for p in params]
    return (
        params,
        [p.grad for p in params],
        *([s[key] for s in states] for key in ("mem", "exp_avg", "exp_avg_sq")),
    )


def test_fused_compiled_matches_per_tensor_without_recompiling(
    monkeypatch, fresh_fused_kernels, checked_direct_calls
):
    # fresh kernels and torch.compile cache: step 0 must compile and record
    gen = torch.Generator().manual_seed(6)
    # 1-D here, 2-D below: the flat inputs must not carry the original shape
    shapes = [(300,), (85,), (1,)] + [(50,)] * 9
    ours = [nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    base = [nn.Parameter(p.detach().clone()) for p in ours]
    opt, ref = SMORMS3(ours, lr=0.02, fused=True), SMORMS3(base, lr=0.02)
    for step, lr in enumerate((0.02, 0.01, 0.005)):
        for group in (*opt.param_groups, *ref.param_groups):
            group["lr"] = lr  # as a scheduler would
        for a, b in zip(ours, base):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        if step == 0:
            opt.step()  # compiles
            # from here on the compiled graphs run without torch.compile's guards
            for kernel in fused_module._compiled_kernels():
                assert kernel.direct, "the first call recorded no direct call"
                monkeypatch.setattr(kernel, "_compiled", _no_call)
        else:
            opt.step()  # a new lr is a tensor input: the same graph runs
        ref.step()
    for a, b in zip(ours, base):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # other sizes (2-D, 120 elements): the same graphs, the size as an input
    others = [nn.Parameter(torch.randn(40, 3, generator=gen)) for _ in range(9)]
    copies = [nn.Parameter(p.detach().clone()) for p in others]
    opt, ref = SMORMS3(others, fused=True), SMORMS3(copies)
    for _ in range(2):
        for a, b in zip(others, copies):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        opt.step()
        ref.step()
    for a, b in zip(others, copies):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def _aliased_params(seed: int) -> list[nn.Parameter]:
    """Nine 6-element parameters: 1 shares 0's memory, 2 and 3 overlap by half."""
    gen = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(6, generator=gen)) for _ in range(9)]
    params[1] = nn.Parameter(params[0].data)
    buf = torch.randn(9, generator=gen)
    params[2], params[3] = nn.Parameter(buf[0:6]), nn.Parameter(buf[3:9])
    return params


def test_fused_steps_overlapping_parameters_and_negative_bit_gradients_per_tensor(
    fresh_fused_kernels, checked_direct_calls
):
    # A compiled graph assumes its inputs do not overlap, and a direct call
    # reads a gradient's memory as it is (a negative-bit view is not): with
    # weight decay one of two aliased updates was lost, or the compile failed.
    ours, base = _aliased_params(3), _aliased_params(3)
    opt = SMORMS3(ours, lr=0.05, weight_decay=0.1, fused=True)
    ref = SMORMS3(base, lr=0.05, weight_decay=0.1)
    gen = torch.Generator().manual_seed(4)
    for step in range(3):
        for a, b in zip(ours, base):
            g = torch.randn(6, generator=gen)
            a.grad, b.grad = g.clone(), g.clone()
        if step == 2:
            ours[5].grad = torch._neg_view(-ours[5].grad)  # same values
        opt.step()
        ref.step()
        for a, b in zip(ours, base):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        eager = opt._fused_caches[0]["plan"].eager
        assert eager == ([0, 1, 2, 3, 5] if step == 2 else [0, 1, 2, 3])


def _no_call(*args):
    raise AssertionError("went through torch.compile after the first call")


@pytest.mark.parametrize(
    "kwargs", [{"foreach": False}, {"foreach": True}, {"fused": True}]
)
def test_functional_form_on_empty_lists_is_a_no_op(kwargs):
    hyper = {"lr": 1e-3, "eps": 1e-16, "weight_decay": 0.0, "maximize": False}
    smorms3_module.smorms3([], [], [], [], [], [], **kwargs, **hyper)
    with pytest.raises(ValueError, match="at most one can be True"):
        smorms3_module.smorms3(
            [], [], [], [], [], [], foreach=True, fused=True, **hyper
        )
