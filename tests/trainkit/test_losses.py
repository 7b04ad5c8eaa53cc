"""Tests for trainkit.losses, checked against naive loops (micrograd's oracle)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from references import post_snnl_loop
from torch import nn

from trainkit.losses import (
    SoftNearestNeighborLoss,
    cosine_triplet_loss,
    skipgram_loss,
    soft_nearest_neighbor_loss,
)

# ---------------------------------------------------------------------------------
# References


def snnl_per_sample_float64(x, y, temp, distance="euclidean"):
    """Per-sample SNNL by a double loop in float64; NaN for a sample with no partner."""
    x = x.detach().double()
    n = x.shape[0]
    out = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        same = other = 0.0
        for j in range(n):
            if j == i:
                continue
            if distance == "euclidean":
                d = float(((x[i] - x[j]) ** 2).sum())
            else:
                d = 1.0 - float(x[i] @ x[j] / (x[i].norm() * x[j].norm()))
            term = math.exp(-d / temp)
            other += term
            if y[i] == y[j]:
                same += term
        out[i] = -math.log(same / other) if same > 0 else math.nan
    return out


def snnl_logspace_float64(x, y, temp):
    """Per-sample euclidean SNNL in float64 from direct differences, in log space:
    finite where the terms of ``snnl_per_sample_float64`` underflow."""
    x = x.detach().double()
    neg_d = -(x[:, None] - x[None]).square().sum(2) / temp  # (B, B)
    eye = torch.eye(len(x), dtype=torch.bool)
    same = (y[:, None] == y[None]) & ~eye
    log_all = torch.logsumexp(neg_d.masked_fill(eye, -math.inf), 1)
    return log_all - torch.logsumexp(neg_d.masked_fill(~same, -math.inf), 1)


def clustered_batch(n=48, dim=8, classes=4, spread=1.0, dtype=torch.float64):
    """Features around one centre per class; every class has at least 2 samples."""
    y = torch.arange(n) % classes
    y = y[torch.randperm(n)]
    centres = torch.randn(classes, dim, dtype=dtype) * 2.0
    x = centres[y] + spread * torch.randn(n, dim, dtype=dtype)
    return x, y


def grad_of(loss_fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_()
    loss = loss_fn(x, *args, **kwargs)
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), g


# ---------------------------------------------------------------------------------
# Soft nearest neighbour loss: values and gradients


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("scale", "temperature"), [(1.0, 1.0), (0.1, 1.0), (1.0, 30.0), (0.5, 0.2)]
)
def test_snnl_equals_the_posts_loop_where_it_is_finite(dtype, scale, temperature):
    x, y = clustered_batch(dtype=dtype)
    x = x * scale
    want, want_grad = grad_of(post_snnl_loop, x, y, temperature)
    assert torch.isfinite(want) and torch.isfinite(want_grad).all()
    got, got_grad = grad_of(soft_nearest_neighbor_loss, x, y, temperature)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The loop sums (x_i - x_j)**2 directly, the loss a Gram matrix: they round apart.
    atol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_snnl_none_gives_each_samples_loss_and_zero_without_partner(distance):
    x, _ = clustered_batch(n=13, dim=5)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 1, 5])  # classes 2, 4, 5 alone
    want = snnl_per_sample_float64(x, y, 0.7, distance)
    alone = torch.isnan(want)
    assert alone.tolist() == [c in (2, 4, 5) for c in y.tolist()]

    got = soft_nearest_neighbor_loss(x, y, 0.7, distance=distance, reduction="none")
    assert got.shape == (13,)
    torch.testing.assert_close(got[~alone], want[~alone])
    assert (got[alone] == 0).all()

    # "mean" averages over the samples that have a partner only; "sum" adds them all.
    mean = soft_nearest_neighbor_loss(x, y, 0.7, distance=distance)
    total = soft_nearest_neighbor_loss(x, y, 0.7, distance=distance, reduction="sum")
    torch.testing.assert_close(mean, want[~alone].mean())
    torch.testing.assert_close(total, want[~alone].sum())


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_snnl_gradcheck_float64_through_features_and_temperature(distance, reduction):
    x, _ = clustered_batch(n=12, dim=5, spread=1.5)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 4, 4])  # class 3 has no partner
    x.requires_grad_()
    t = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)

    def fn(x, t):
        return soft_nearest_neighbor_loss(
            x, y, t, distance=distance, reduction=reduction
        )

    assert torch.autograd.gradcheck(fn, (x, t))


def far_same_class_batch(gap, dtype):
    """Each sample's partner is ``gap`` away while the other class sits 1 away, so
    the same-class mass is about exp(-gap**2) of the total."""
    pos = torch.tensor([0.0, gap, 1.0, gap + 1.0, 0.5 * gap, 0.5 * gap + 1.0])
    x = torch.stack([pos, 0.1 * torch.arange(6.0)], dim=1).to(dtype)
    y = torch.tensor([0, 0, 1, 1, 2, 3])  # 2 and 3: partnerless, near the others
    return x, y


@pytest.mark.parametrize("gap", [7.5, 11.0])
def test_snnl_far_partners_equal_float64_and_gradcheck(gap):
    # gap 11: the same-class terms are about e^-121 of the largest, below what a
    # float32 row can hold next to it (gap 7.5: e^-56, near that limit); the float32
    # result must still match float64.
    x, y = far_same_class_batch(gap, torch.float64)
    want = snnl_per_sample_float64(x, y, 1.0)
    got64, g64 = grad_of(soft_nearest_neighbor_loss, x, y, reduction="none")
    got32, g32 = grad_of(soft_nearest_neighbor_loss, x.float(), y, reduction="none")
    torch.testing.assert_close(got64[:4], want[:4])
    torch.testing.assert_close(got32.double(), got64, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-3)
    assert got64[:4].min() > gap**2 - 10

    # gap 30: e^-900, beyond float64 as well: the same check by gradcheck.
    x, y = far_same_class_batch(30.0, torch.float64)
    x.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: soft_nearest_neighbor_loss(x, y, reduction="none"), (x,)
    )
    # d loss_0 / d x_0 along the line: the partner 30 away pulls with 2 * 30, the
    # nearest other (1 away) pushes back with 2 * 1.
    loss = soft_nearest_neighbor_loss(x, y, reduction="none")
    (g,) = torch.autograd.grad(loss[0], x)
    assert abs(float(g[0, 0]) - (-2 * 30.0 + 2 * 1.0)) < 1e-6


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_snnl_is_invariant_to_permuting_the_batch(distance):
    x, y = clustered_batch(n=40, dim=6, dtype=torch.float32)
    y[0] = 9  # one partnerless sample travels with the permutation too
    perm = torch.randperm(40)
    kw = {"distance": distance, "reduction": "none"}
    loss, grad = grad_of(soft_nearest_neighbor_loss, x, y, 0.5, **kw)
    loss_p, grad_p = grad_of(soft_nearest_neighbor_loss, x[perm], y[perm], 0.5, **kw)
    torch.testing.assert_close(loss_p, loss[perm])
    torch.testing.assert_close(grad_p, grad[perm])
    mean = soft_nearest_neighbor_loss(x, y, 0.5, distance=distance)
    mean_p = soft_nearest_neighbor_loss(x[perm], y[perm], 0.5, distance=distance)
    torch.testing.assert_close(mean_p, mean)


@pytest.mark.parametrize("offset", [1e3, 1e4])
def test_snnl_float32_is_as_accurate_with_a_large_common_offset(offset):
    # |a|^2 + |b|^2 - 2 a.b at |a| ~ 1000 cancels to rounding in float32. The points
    # lie on a 1/256 grid with |x| < 16, so x + offset is exact in float32 and the
    # float64 loop on x (no offset) is the loss of the very same points.
    x, y = clustered_batch(spread=1.5)
    x = (x.clamp(-15.0, 15.0) * 256).round() / 256
    shifted = (x + offset).float()
    assert torch.equal(shifted.double() - offset, x)
    want, want_grad = grad_of(post_snnl_loop, x, y, 1.0)
    assert want > 0.1  # a loss of order 1, not a sum of rounding errors
    got, got_grad = grad_of(soft_nearest_neighbor_loss, shifted, y, 1.0)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-4, atol=1e-6)

    # float64 through the centring, gradient by finite differences at the offset.
    x64 = (x[:12] + offset).requires_grad_()
    t = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, t: soft_nearest_neighbor_loss(x, y[:12], t, reduction="none"),
        (x64, t),
    )


# ---------------------------------------------------------------------------------
# Soft nearest neighbour loss: edge cases and extreme scales


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "labels", [[3], [0, 1, 2, 3], []], ids=["batch-of-1", "all-distinct", "empty"]
)
def test_snnl_without_any_pair_is_zero_and_still_connected(labels, reduction):
    y = torch.tensor(labels, dtype=torch.int64)
    x = torch.randn(len(labels), 3, requires_grad=True)
    t = torch.tensor(2.0, requires_grad=True)
    loss = soft_nearest_neighbor_loss(x, y, t, reduction=reduction)
    want_shape = (len(labels),) if reduction == "none" else ()
    assert loss.shape == want_shape and (loss == 0).all()
    assert loss.requires_grad
    loss.sum().backward()
    assert x.grad is not None and (x.grad == 0).all()
    assert t.grad is not None and t.grad == 0


def test_snnl_pair_of_one_class_costs_nothing():
    x = torch.randn(2, 4, requires_grad=True)
    loss = soft_nearest_neighbor_loss(x, torch.tensor([5, 5]))
    loss.backward()
    assert loss == 0 and (x.grad == 0).all()


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_snnl_identical_points_or_huge_temperature_give_the_chance_level(distance):
    # All distances equal: l_i = -log((n_c - 1) / (n - 1)) (anchors (g)).
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    n_c = torch.bincount(y)[y].double()
    want = -torch.log((n_c - 1) / (len(y) - 1))
    same = soft_nearest_neighbor_loss(
        torch.ones(10, 3, dtype=torch.float64), y, distance=distance, reduction="none"
    )
    hot = soft_nearest_neighbor_loss(
        torch.randn(10, 3, dtype=torch.float64),
        y,
        1e12,
        distance=distance,
        reduction="none",
    )
    torch.testing.assert_close(same, want)
    torch.testing.assert_close(hot, want)


def test_snnl_is_finite_at_extreme_scales_where_the_loop_is_not():
    x, y = clustered_batch(n=32, dim=8, dtype=torch.float32)
    x_far = x * 250.0  # squared distances of about 1e6
    assert ((x_far[0] - x_far[1:]) ** 2).sum(1).median() > 1e5
    for xs, temperature in [(x_far, 1.0), (x, 1e-4), (x_far, 1e-4)]:
        assert not torch.isfinite(post_snnl_loop(xs, y, temperature))
        loss, grad = grad_of(soft_nearest_neighbor_loss, xs, y, temperature)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        assert grad.abs().sum() > 0
        # float32 agrees with the same loss computed in float64.
        want = soft_nearest_neighbor_loss(xs.double(), y, temperature)
        torch.testing.assert_close(loss.double(), want, rtol=1e-4, atol=0.0)


@pytest.mark.parametrize(
    ("dtype", "scale"), [(torch.float16, 1.0), (torch.bfloat16, 4.0)]
)
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_snnl_half_precision_input_is_computed_in_float32(dtype, scale, distance):
    # Unclustered: squared distances of about 64 * scale**2, gradients of order 1.
    x = (torch.randn(32, 32) * scale).to(dtype)
    y = torch.arange(32) % 4
    if distance == "euclidean":
        assert not torch.isfinite(post_snnl_loop(x, y, 1.0))  # exp underflows: 0/0
    loss, grad = grad_of(soft_nearest_neighbor_loss, x, y, distance=distance)
    assert loss.dtype == torch.float32
    assert grad.dtype == dtype and torch.isfinite(grad).all() and grad.abs().sum() > 0
    want, want_grad = grad_of(
        soft_nearest_neighbor_loss, x.float(), y, distance=distance
    )
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(grad, want_grad.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_snnl_half_temperature_is_inverted_in_float32(dtype):
    # 1 / T = 1e5 and exp(-ln T) = 1e5 overflow float16 (max 65504), and in bfloat16
    # they carry 3 significant digits: both are computed in float32.
    x = torch.randn(16, 4).to(dtype)
    y = torch.arange(16) % 4
    t = torch.tensor(1e-5, dtype=dtype)
    got = soft_nearest_neighbor_loss(x, y, t)
    assert got.dtype == torch.float32
    want = snnl_logspace_float64(x, y, float(t)).mean()
    assert want > 1e3  # d / T of order 1e5: far beyond float16
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0.0)

    loss_fn = SoftNearestNeighborLoss(1e-5).to(dtype)
    assert loss_fn.log_temperature.dtype == dtype
    t_module = math.exp(float(loss_fn.log_temperature))
    got = loss_fn(x, y)
    assert got.dtype == torch.float32
    want = snnl_logspace_float64(x, y, t_module).mean()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0.0)

    hot = SoftNearestNeighborLoss(1e5).to(dtype)  # exp(ln 1e5) overflows float16
    assert hot.temperature.dtype == torch.float32
    assert float(hot.temperature) == pytest.approx(
        math.exp(float(hot.log_temperature)), rel=1e-6, abs=0.0
    )


def test_snnl_ignores_autocast():
    x, y = clustered_batch(n=24, dim=16, dtype=torch.float32)
    want, want_grad = grad_of(soft_nearest_neighbor_loss, x, y, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, got_grad = grad_of(soft_nearest_neighbor_loss, x, y, 0.5)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, want_grad)


def test_snnl_temperature_tensor_and_number_agree():
    x, y = clustered_batch(n=20, dim=4)
    t = torch.tensor(0.3, dtype=torch.float32)  # a float32 temperature, float64 x
    got = soft_nearest_neighbor_loss(x, y, t)
    torch.testing.assert_close(got, soft_nearest_neighbor_loss(x, y, float(t)))


# ---------------------------------------------------------------------------------
# SoftNearestNeighborLoss (module) and its learned temperature


def test_module_equals_function_and_keeps_a_fixed_temperature_as_a_buffer():
    x, y = clustered_batch(n=20, dim=4)
    loss_fn = SoftNearestNeighborLoss(0.5, distance="cosine", reduction="sum")
    want = soft_nearest_neighbor_loss(x, y, 0.5, distance="cosine", reduction="sum")
    torch.testing.assert_close(loss_fn(x, y), want)
    assert list(loss_fn.parameters()) == []
    assert "log_temperature" in loss_fn.state_dict()
    assert loss_fn.temperature.item() == pytest.approx(0.5)
    assert "temperature=0.5" in repr(loss_fn) and "learn_temperature=False" in repr(
        loss_fn
    )


def test_learned_temperature_is_a_log_parameter_with_the_chain_rule_gradient():
    x, y = clustered_batch(n=20, dim=4)
    loss_fn = SoftNearestNeighborLoss(0.5, learn_temperature=True).double()
    (param,) = loss_fn.parameters()
    assert param is loss_fn.log_temperature and param.item() == pytest.approx(
        math.log(0.5)
    )
    loss_fn(x, y).backward()
    t = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    soft_nearest_neighbor_loss(x, y, t).backward()
    # d loss / d log T = T * d loss / d T
    torch.testing.assert_close(param.grad, 0.5 * t.grad)
    assert param.grad != 0

    state = loss_fn.state_dict()
    other = SoftNearestNeighborLoss(3.0, learn_temperature=True).double()
    other.load_state_dict(state)
    assert other.temperature.item() == pytest.approx(0.5)


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16])
def test_learned_temperature_is_not_rounded_to_its_dtype_for_float64_features(
    param_dtype,
):
    x, y = clustered_batch(n=20, dim=4)  # float64
    loss_fn = SoftNearestNeighborLoss(0.3, learn_temperature=True).to(param_dtype)
    # The temperature the stored log T stands for, exactly, in float64.
    t = torch.tensor(
        math.exp(float(loss_fn.log_temperature.detach())),
        dtype=torch.float64,
        requires_grad=True,
    )
    loss = loss_fn(x, y)
    want = soft_nearest_neighbor_loss(x, y, t)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, want, rtol=1e-14, atol=0.0)
    loss.backward()
    want.backward()
    # d loss / d log T = T * d loss / d T, rounded once to the parameter's dtype.
    grad = loss_fn.log_temperature.grad
    assert grad.dtype == param_dtype
    torch.testing.assert_close(grad, (t * t.grad).detach().to(param_dtype))


def test_learned_temperature_trains_to_the_best_temperature():
    # Two overlapping classes: the loss is lowest at an interior temperature.
    y = torch.arange(32) % 2
    x = torch.randn(32, 2, dtype=torch.float64) + 1.5 * y.unsqueeze(1).double()
    grid = torch.logspace(-2, 2, 401, dtype=torch.float64)
    losses = torch.stack([soft_nearest_neighbor_loss(x, y, t) for t in grid])
    best = int(losses.argmin())
    assert 20 < best < 380, "the test data must have an interior optimum"

    loss_fn = SoftNearestNeighborLoss(10.0, learn_temperature=True).double()
    opt = torch.optim.Adam(loss_fn.parameters(), lr=0.05)
    start = loss_fn(x, y).item()
    for _ in range(300):
        opt.zero_grad()
        loss = loss_fn(x, y)
        loss.backward()
        opt.step()
    assert loss_fn(x, y).item() < start - 0.05
    assert loss_fn(x, y).item() == pytest.approx(losses[best].item(), abs=1e-4)
    assert math.log(loss_fn.temperature.item()) == pytest.approx(
        math.log(grid[best].item()), abs=0.05
    )


def test_snnl_trains_features_and_temperature_together():
    y = torch.arange(16) % 4
    features = nn.Parameter(torch.randn(16, 3))
    loss_fn = SoftNearestNeighborLoss(1.0, learn_temperature=True)
    opt = torch.optim.Adam([features, *loss_fn.parameters()], lr=0.05)
    start = loss_fn(features, y).item()
    for _ in range(100):
        opt.zero_grad()
        loss_fn(features, y).backward()
        opt.step()
    assert loss_fn(features, y).item() < 0.2 * start
    assert loss_fn.temperature.item() != pytest.approx(1.0)


# ---------------------------------------------------------------------------------
# Argument checks


X4 = torch.zeros(4, 3)
Y4 = torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((X4, Y4[:3]), {}, ValueError, r"same batch size.*\(4, 3\).*\(3,\)"),
        ((X4[0], Y4), {}, ValueError, r"x must have shape \(B, D\), got \(3,\)"),
        ((X4, Y4[None]), {}, ValueError, r"y must have shape \(B,\), got \(1, 4\)"),
        ((X4, Y4.float()), {}, TypeError, "integer tensor, got torch.float32"),
        ((X4, Y4.bool()), {}, TypeError, "integer tensor, got torch.bool"),
        ((X4.long(), Y4), {}, TypeError, "floating-point tensor, got torch.int64"),
        ((X4, Y4, 0.0), {}, ValueError, r"Invalid temperature: 0.0 \(must be > 0\)"),
        ((X4, Y4, -2), {}, ValueError, "Invalid temperature: -2"),
        ((X4, Y4, math.nan), {}, ValueError, "Invalid temperature: nan"),
        ((X4, Y4, torch.tensor(-1.0)), {}, ValueError, "Invalid temperature: -1.0"),
        ((X4, Y4, torch.ones(2)), {}, ValueError, r"one-element tensor.*\(2,\)"),
        ((X4, Y4, "1"), {}, TypeError, "temperature must be a number or a tensor"),
        ((X4, Y4), {"distance": "l1"}, ValueError, "Invalid distance: 'l1'"),
        ((X4, Y4), {"reduction": "avg"}, ValueError, "Invalid reduction: 'avg'"),
    ],
)
def test_snnl_rejects_bad_arguments_naming_them(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        soft_nearest_neighbor_loss(*args, **kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((0.0,), {}, ValueError, "Invalid temperature: 0.0"),
        ((math.inf,), {}, ValueError, "Invalid temperature: inf"),
        ((torch.tensor(1.0),), {}, TypeError, "temperature must be a number"),
        ((), {"distance": "dot"}, ValueError, "Invalid distance: 'dot'"),
        ((), {"reduction": None}, ValueError, "Invalid reduction: None"),
    ],
)
def test_module_rejects_bad_arguments_naming_them(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        SoftNearestNeighborLoss(*args, **kwargs)


def test_module_checks_its_inputs():
    with pytest.raises(ValueError, match="same batch size"):
        SoftNearestNeighborLoss()(X4, Y4[:2])


# ---------------------------------------------------------------------------------
# skipgram_loss


def kludge_clamped_skipgram(anchor, positive, negatives, eps=1e-4):
    """The kludge of "PyTorch: Kludges To Ensure Numerical Stability": clamp the
    sigmoid to [eps, 1 - eps] before the log."""

    def clamped_sigmoid(s):
        return torch.clamp(torch.clamp(torch.sigmoid(s), min=eps), max=1 - eps)

    pos = (anchor * positive).sum(1)
    neg = (negatives @ anchor.unsqueeze(2)).squeeze(2)
    return (
        -torch.log(clamped_sigmoid(pos)) - torch.log(1 - clamped_sigmoid(neg)).sum(1)
    ).mean()


def skipgram_batch(B=6, K=4, D=5, dtype=torch.float64, scale=1.0):
    return (
        torch.randn(B, D, dtype=dtype) * scale,
        torch.randn(B, D, dtype=dtype) * scale,
        torch.randn(B, K, D, dtype=dtype) * scale,
    )


def test_skipgram_equals_the_logsigmoid_formula_and_bce_with_logits():
    a, p, n = skipgram_batch(scale=2.0)
    got = skipgram_loss(a, p, n, reduction="none")

    want = torch.empty(6, dtype=torch.float64)
    for i in range(6):
        want[i] = -F.logsigmoid(a[i] @ p[i]) - sum(
            F.logsigmoid(-(a[i] @ n[i, k])) for k in range(4)
        )
    torch.testing.assert_close(got, want)

    scores = torch.cat(
        [(a * p).sum(1, keepdim=True), torch.einsum("bd,bkd->bk", a, n)], 1
    )
    targets = torch.zeros_like(scores)
    targets[:, 0] = 1.0
    bce = F.binary_cross_entropy_with_logits(scores, targets, reduction="none").sum(1)
    torch.testing.assert_close(got, bce)
    # So does the naive form in float64, which is accurate for scores this small.
    assert scores.abs().max() < 30
    naive = -torch.log(torch.sigmoid(scores[:, 0])) - torch.log(
        torch.sigmoid(-scores[:, 1:])
    ).sum(1)
    torch.testing.assert_close(got, naive)

    torch.testing.assert_close(skipgram_loss(a, p, n), want.mean())
    torch.testing.assert_close(skipgram_loss(a, p, n, reduction="sum"), want.sum())


def test_skipgram_with_zero_vectors_costs_k_plus_one_ln2():
    # word2vec initialises the output vectors to 0: every score is 0 (anchors (g)).
    a, p, n = skipgram_batch(B=3, K=5, dtype=torch.float32)
    loss = skipgram_loss(a, torch.zeros_like(p), torch.zeros_like(n))
    assert loss.item() == pytest.approx(6 * math.log(2), rel=1e-6)


def test_skipgram_without_negatives_is_the_positive_term():
    a, p, n = skipgram_batch(K=0)
    want = -F.logsigmoid((a * p).sum(1))
    torch.testing.assert_close(skipgram_loss(a, p, n, reduction="none"), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_skipgram_is_finite_for_scores_of_1e4(dtype):
    # Scores of +-1e4 on the wrong side: each pair costs 1e4, gradient of size 1.
    a = torch.tensor([[100.0, 0.0], [-100.0, 0.0]], dtype=dtype, requires_grad=True)
    p = torch.tensor([[-100.0, 0.0], [100.0, 0.0]], dtype=dtype, requires_grad=True)
    n = torch.tensor([[[100.0, 0.0]], [[-100.0, 0.0]]], dtype=dtype, requires_grad=True)
    loss = skipgram_loss(a, p, n, reduction="none")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, torch.tensor([2e4, 2e4]))
    loss.sum().backward()
    for t in (a, p, n):
        assert torch.isfinite(t.grad).all() and t.grad.abs().max() > 0
    # d loss / d a_0 = -p_0 * (1 - sigmoid(-1e4)) + n_0 * sigmoid(1e4) = (200, 0)
    torch.testing.assert_close(a.grad[0].float(), torch.tensor([200.0, 0.0]))
    # The naive form is infinite there.
    assert torch.isinf(-torch.log(torch.sigmoid(torch.tensor(-1e4, dtype=dtype))))


def test_the_kludge_posts_clamp_loses_the_gradient_where_skipgram_keeps_it():
    # A positive pair scored -50 and a negative pair scored +50: the most wrong cases.
    a = torch.tensor([[5.0, 0.0]], requires_grad=True)
    p = torch.tensor([[-10.0, 0.0]])
    n = torch.tensor([[[10.0, 0.0]]])

    (g_clamped,) = torch.autograd.grad(kludge_clamped_skipgram(a, p, n), a)
    (g_ours,) = torch.autograd.grad(skipgram_loss(a, p, n), a)
    assert (g_clamped == 0).all()  # clamp has zero gradient outside [eps, 1 - eps]
    # d/da [softplus(-a.p) + softplus(a.n)] = -p sigmoid(-a.p) + n sigmoid(a.n)
    torch.testing.assert_close(g_ours, torch.tensor([[20.0, 0.0]]))

    scores = torch.tensor([-50.0, 50.0], requires_grad=True)
    loss = -F.logsigmoid(scores[0]) - F.logsigmoid(-scores[1])
    (g,) = torch.autograd.grad(loss, scores)
    torch.testing.assert_close(g, torch.tensor([-1.0, 1.0]))


@pytest.mark.parametrize(
    ("shapes", "kwargs", "match"),
    [
        (((4, 3), (4, 2), (4, 2, 3)), {}, r"anchor and positive must have the same"),
        (((4, 3), (4, 3), (4, 3)), {}, r"negatives must have shape \(B, K, D\)"),
        (((4, 3), (4, 3), (5, 2, 3)), {}, r"\(4, K, 3\).*\(5, 2, 3\)"),
        (((4, 3), (4, 3), (4, 2, 2)), {}, r"\(4, K, 3\).*\(4, 2, 2\)"),
        (((3,), (3,), (2, 3)), {}, r"anchor must have shape \(B, D\)"),
        (((4, 3), (4, 3), (4, 2, 3)), {"reduction": "mean "}, "Invalid reduction"),
    ],
)
def test_skipgram_rejects_bad_shapes(shapes, kwargs, match):
    with pytest.raises(ValueError, match=match):
        skipgram_loss(*(torch.zeros(s) for s in shapes), **kwargs)


def test_skipgram_rejects_integer_input():
    with pytest.raises(TypeError, match="positive must be a floating-point tensor"):
        skipgram_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), X4[None])


# ---------------------------------------------------------------------------------
# cosine_triplet_loss


def test_cosine_triplet_equals_the_direct_formula_and_torch():
    a, p, n = (torch.randn(10, 6, dtype=torch.float64) for _ in range(3))
    want = torch.empty(10, dtype=torch.float64)
    for i in range(10):
        cos_p = float(a[i] @ p[i] / (a[i].norm() * p[i].norm()))
        cos_n = float(a[i] @ n[i] / (a[i].norm() * n[i].norm()))
        want[i] = max((1 - cos_p) - (1 - cos_n) + 0.3, 0.0)
    assert 0 < (want == 0).sum() < 10  # some triplets satisfied, some not
    got = cosine_triplet_loss(a, p, n, reduction="none")
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(cosine_triplet_loss(a, p, n), want.mean())

    for margin in (0.0, 0.3, 1.5):
        ref = nn.TripletMarginWithDistanceLoss(
            distance_function=lambda u, v: 1.0 - F.cosine_similarity(u, v),
            margin=margin if margin > 0 else 1e-30,
            reduction="sum",
        )
        torch.testing.assert_close(
            cosine_triplet_loss(a, p, n, margin, reduction="sum"), ref(a, p, n)
        )


def test_cosine_triplet_gradcheck_and_zero_vectors():
    a, p, n = (
        torch.randn(5, 4, dtype=torch.float64, requires_grad=True) for _ in "apn"
    )
    assert torch.autograd.gradcheck(
        lambda a, p, n: cosine_triplet_loss(a, p, n, 1.0, reduction="none"), (a, p, n)
    )
    zero = torch.zeros(2, 4, requires_grad=True)
    loss = cosine_triplet_loss(zero, torch.ones(2, 4), -torch.ones(2, 4))
    loss.backward()
    assert loss.item() == pytest.approx(0.3) and torch.isfinite(zero.grad).all()


def test_cosine_triplet_half_input_returns_float32():
    a, p, n = (torch.randn(3, 4).half() for _ in range(3))
    loss = cosine_triplet_loss(a, p, n)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(
        loss, cosine_triplet_loss(a.float(), p.float(), n.float())
    )


@pytest.mark.parametrize(
    ("dtypes", "want_dtype"),
    [
        ((torch.float32, torch.float64, torch.float64), torch.float64),
        ((torch.bfloat16, torch.float64, torch.float32), torch.float64),
        ((torch.bfloat16, torch.float32, torch.float16), torch.float32),
    ],
)
def test_cosine_triplet_computes_in_the_promoted_dtype(dtypes, want_dtype):
    a, p, n = (torch.randn(8, 5, dtype=dt) for dt in dtypes)
    got = cosine_triplet_loss(a, p, n, reduction="none")
    assert got.dtype == want_dtype
    ref = nn.TripletMarginWithDistanceLoss(
        distance_function=lambda u, v: 1.0 - F.cosine_similarity(u, v),
        margin=0.3,
        reduction="none",
    )
    want = ref(*(t.to(want_dtype) for t in (a, p, n)))
    torch.testing.assert_close(
        got, want, rtol=1e-12 if want_dtype == torch.float64 else 1e-6, atol=0.0
    )


@pytest.mark.parametrize(
    ("shapes", "margin", "kwargs", "match"),
    [
        (
            ((4, 3), (4, 3), (4, 2)),
            0.3,
            {},
            r"must have the same shape.*negative \(4, 2\)",
        ),
        (((3,), (3,), (3,)), 0.3, {}, r"anchor must have shape \(B, D\)"),
        (((4, 3),) * 3, -0.1, {}, r"Invalid margin: -0.1"),
        (((4, 3),) * 3, math.nan, {}, r"Invalid margin: nan"),
        (((4, 3),) * 3, 0.3, {"reduction": "max"}, "Invalid reduction: 'max'"),
    ],
)
def test_cosine_triplet_rejects_bad_arguments(shapes, margin, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cosine_triplet_loss(*(torch.zeros(s) for s in shapes), margin, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_snnl_on_cuda_equals_cpu(distance):
    x, y = clustered_batch(n=64, dim=16, dtype=torch.float32)
    t = torch.tensor(0.5, requires_grad=True)
    want = soft_nearest_neighbor_loss(x, y, t, distance=distance)
    (want_t,) = torch.autograd.grad(want, t)
    t_cuda = t.detach().cuda().requires_grad_()
    got = soft_nearest_neighbor_loss(x.cuda(), y.cuda(), t_cuda, distance=distance)
    (got_t,) = torch.autograd.grad(got, t_cuda)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_t.cpu(), want_t, rtol=1e-4, atol=1e-5)
