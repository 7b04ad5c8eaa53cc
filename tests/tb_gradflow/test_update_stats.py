"""update_ratio and weight_norm against an independent computation: the
parameters copied before the step, the step taken, the difference and the norms
computed in float64 here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import tb_gradflow
from tb_gradflow.update_stats import UpdateMeter
from trainkit.optim import SMORMS3, sparse_dense_optimizer

UPDATE = ["update_ratio", "weight_norm"]


def reference(before, after):
    """Per parameter: ||after - before|| / ||before|| and ||before||, in float64."""
    ratios, norms = [], []
    for b, a in zip(before, after):
        b, a = b.double(), a.double()
        ratios.append(((a - b).norm() / b.norm()).item())
        norms.append(b.norm().item())
    return np.array(ratios), np.array(norms)


def watched_params(flow, model):
    by_name = {tb_gradflow.layers.layer_name(n): p for n, p in model.named_parameters()}
    return [by_name[layer] for layer in flow.layers]


def mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)


def run_steps(model, opt, flow, steps=3, *, scaler=None):
    """Steps; returns per step (logged, reference ratio, reference norm)."""
    out = []
    params = watched_params(flow, model)
    for _ in range(steps):
        opt.zero_grad()
        loss = model(torch.randn(8, 6, dtype=params[0].dtype)).pow(2).mean()
        before = [p.detach().clone() for p in params]
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        after = [p.detach().clone() for p in params]
        out.append((flow.last, *reference(before, after)))
    return out


OPTIMIZERS = {
    "sgd momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    "adamw decay": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "smorms3": lambda ps: SMORMS3(ps, lr=1e-2),
    "adam fused": lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_s_applied_update_is_measured(name):
    model = mlp()
    opt = OPTIMIZERS[name](model.parameters())
    flow = tb_gradflow.watch(model, None, optimizer=opt, on_alert="warn", stats=UPDATE)
    for logged, ratio, norm in run_steps(model, opt, flow):
        np.testing.assert_allclose(logged.stat("update_ratio"), ratio, rtol=1e-5)
        np.testing.assert_allclose(logged.stat("weight_norm"), norm, rtol=1e-6)
        assert (ratio > 0).all()


def test_sparse_adam_rows_in_a_multiple_optimizer():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Embedding(50, 8, sparse=True), nn.Linear(8, 2))
    opt = sparse_dense_optimizer(model, lr=0.05)
    flow = tb_gradflow.watch(model, None, optimizer=opt, on_alert="warn", stats=UPDATE)
    params = watched_params(flow, model)
    # Adam's lr 0.05 moves each of the head's 16 weights by ~0.05: a step of
    # ~14% of their norm, which the online rule calls too large at step 2
    with pytest.warns(tb_gradflow.GradFlowAlert, match="'1' at step 2: update_too"):
        for _ in range(3):
            opt.zero_grad()
            before = [p.detach().clone() for p in params]
            model(torch.randint(0, 50, (4,))).sum().backward()
            opt.step()
            ratio, norm = reference(before, [p.detach() for p in params])
            np.testing.assert_allclose(flow.last.stat("update_ratio"), ratio, rtol=1e-5)
            np.testing.assert_allclose(flow.last.stat("weight_norm"), norm, rtol=1e-6)
            assert flow.last.stat("rows")[0] <= 4 / 50  # only the looked-up rows
    assert flow.last.stat("update_ratio")[1] > 0.1


def test_a_step_the_scaler_skips_has_no_update():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    flow = tb_gradflow.watch(
        model, None, optimizer=opt, scaler=scaler, on_alert="warn", stats=UPDATE
    )
    model[0].weight.register_hook(
        lambda g: torch.where(torch.rand(()) < 2, g * float("inf"), g)
    )  # every step overflows
    ((logged, ratio, norm),) = run_steps(model, opt, flow, steps=1, scaler=scaler)
    assert logged.skipped
    assert (ratio == 0).all() and (logged.stat("update_ratio") == 0).all()
    np.testing.assert_allclose(logged.stat("weight_norm"), norm, rtol=1e-6)


@pytest.mark.parametrize("exponent", [-1, -3, -5, -7])
def test_ratios_down_to_1e_minus_7_match_float64(exponent):
    """SGD with lr set so that the step is 10**exponent of the weights."""
    torch.manual_seed(2)
    layer = nn.Linear(256, 256, bias=False)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    flow = tb_gradflow.watch(layer, None, optimizer=opt, on_alert="warn", stats=UPDATE)
    layer.weight.grad = torch.randn_like(layer.weight)
    scale = 10.0**exponent * layer.weight.norm() / layer.weight.grad.norm()
    layer.weight.grad *= scale
    before = layer.weight.detach().clone()
    opt.step()
    ratio, _ = reference([before], [layer.weight.detach()])
    assert ratio[0] == pytest.approx(10.0**exponent, rel=0.05)
    np.testing.assert_allclose(flow.last.stat("update_ratio"), ratio, rtol=1e-5)


def test_a_bfloat16_update_below_half_an_ulp_is_honestly_zero():
    layer = nn.Linear(8, 8, bias=False).to(torch.bfloat16)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    flow = tb_gradflow.watch(layer, None, optimizer=opt, on_alert="warn", stats=UPDATE)
    layer.weight.grad = layer.weight.detach() * 1e-4  # far below bf16's resolution
    before = layer.weight.detach().clone()
    opt.step()
    assert torch.equal(layer.weight, before)
    assert flow.last.stat("update_ratio")[0] == 0.0


def test_lbfgs_s_whole_step_is_measured_from_the_first_evaluation():
    model = mlp(torch.float64)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    flow = tb_gradflow.watch(model, None, optimizer=opt, on_alert="warn", stats=UPDATE)
    params = watched_params(flow, model)
    x = torch.randn(8, 6, dtype=torch.float64)
    before = [p.detach().clone() for p in params]

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    ratio, norm = reference(before, [p.detach() for p in params])
    np.testing.assert_allclose(flow.last.stat("update_ratio"), ratio, rtol=1e-6)
    np.testing.assert_allclose(flow.last.stat("weight_norm"), norm, rtol=1e-6)


def test_nothing_is_copied_on_steps_that_are_not_logged():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    flow = tb_gradflow.watch(
        model,
        None,
        optimizer=opt,
        on_alert="warn",
        every=10,
        start_step=1,
        stats=UPDATE,
    )
    copies = []
    real = torch._foreach_copy_
    torch._foreach_copy_ = lambda *a, **k: copies.append(1) or real(*a, **k)
    try:
        run_steps(model, opt, flow, steps=9)  # steps 1..9: none logged
        assert copies == [] and flow.last is None
        run_steps(model, opt, flow, steps=1)  # step 10
        assert copies == [1] and flow.last.step == 10
    finally:
        torch._foreach_copy_ = real


def test_a_zero_weight_gives_inf_for_an_update_and_nan_for_none():
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.zero_()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    flow = tb_gradflow.watch(
        layer, None, optimizer=opt, on_alert="warn", include_bias=True, stats=UPDATE
    )
    layer.weight.grad = torch.ones_like(layer.weight)
    layer.bias.grad = torch.zeros_like(layer.bias)
    with torch.no_grad():
        layer.bias.zero_()
    opt.step()
    ratio = flow.last.stat("update_ratio")
    assert np.isinf(ratio[0]) and np.isnan(ratio[1])


def test_stats_are_checked_before_any_hook():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="Unknown statistic 'update'; registered: "):
        tb_gradflow.watch(model, None, optimizer=opt, stats=["update"])
    with pytest.raises(TypeError, match="stats must be an iterable of statistic names"):
        tb_gradflow.watch(model, None, optimizer=opt, stats="update_ratio")
    with pytest.raises(
        ValueError, match="update_ratio is measured around the optimizer"
    ):
        tb_gradflow.watch(model, None, stats=["update_ratio"])
    assert not opt._optimizer_step_pre_hooks
    flow = tb_gradflow.watch(model, None, optimizer=opt, stats=["norm"])  # always
    assert flow.layout.stats == tb_gradflow.stats.names("gradient")


def float64_sums(before, after):
    """Σθ² before and Σ(Δθ)² per tensor, in float64."""
    b64 = [b.double() for b in before]
    return (
        np.array([b.square().sum().item() for b in b64]),
        np.array([(a.double() - b).square().sum().item() for a, b in zip(after, b64)]),
    )


def meter_sums(params, step):
    """UpdateMeter's Σθ² and Σ(Δθ)² around ``step()`` (which moves ``params``)."""
    meter = UpdateMeter(params)
    before = [p.detach().clone() for p in params]
    param_sq = meter.before()
    step()
    return param_sq, meter.after(), before


def test_meter_matches_float64_over_chunks_dtypes_and_odd_shapes():
    """Tensors that span several chunks of the flat buffer, odd sizes padded to
    rows, bfloat16/float16 (copied to float32), float64 (the other path), an
    empty and a non-contiguous tensor; updates of 1e-7 of the weights."""
    torch.manual_seed(3)
    params = [
        torch.randn(1000, 700),  # 700,000 elements: three chunks
        torch.randn(3, 5),
        torch.randn(1),
        torch.randn(0, 4),
        torch.randn(300, 300).to(torch.bfloat16),
        torch.randn(77).to(torch.float16),
        torch.randn(40, 50, dtype=torch.float64),
        torch.randn(50, 40).t(),  # non-contiguous
        torch.randn(2000, 300),
    ]

    def step():
        for p in params:
            p.add_(torch.randn_like(p.float()).to(p.dtype), alpha=1e-7)

    for _ in range(2):  # the second time reuses the plan
        param_sq, update_sq, before = meter_sums(params, step)
        want_param, want_update = float64_sums(before, params)
        np.testing.assert_allclose(param_sq, want_param, rtol=1e-6)
        np.testing.assert_allclose(update_sq, want_update, rtol=1e-6)
    assert update_sq[3] == 0 and update_sq[0] > 0


@pytest.mark.parametrize("scale", [0.0, 1e-21, 1e-17, 1e20])
def test_meter_sums_again_in_float64_what_float32_cannot_hold(scale):
    """Squares below float32's smallest numbers, or above its largest, and an
    all-zero layer: summed again in float64."""
    torch.manual_seed(4)
    params = [torch.randn(600, 500) * scale, torch.randn(10, 10)]

    def step():
        params[0].mul_(1 + 1e-3)

    param_sq, update_sq, before = meter_sums(params, step)
    want_param, want_update = float64_sums(before, params)
    np.testing.assert_allclose(param_sq, want_param, rtol=1e-6)
    np.testing.assert_allclose(update_sq, want_update, rtol=1e-5)


def test_meter_follows_a_parameter_whose_shape_changes():
    param = nn.Parameter(torch.randn(8, 8))
    meter = UpdateMeter([param])
    meter.before()
    meter.after()
    param.data = torch.randn(300, 1000)  # resized (e.g. a grown embedding)
    want = param.detach().double().square().sum().item()
    np.testing.assert_allclose(meter.before(), [want], rtol=1e-6)
    with torch.no_grad():
        param.add_(1.0)
    np.testing.assert_allclose(meter.after(), [300_000.0], rtol=1e-6)
