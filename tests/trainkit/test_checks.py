"""trainkit.checks: each check against a model with a known fault."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow
from trainkit.checks import (
    check_initial_loss,
    clip_grad_norm,
    expected_initial_loss,
    overfit_batch,
)


class MLP(nn.Module):
    def __init__(self, classes=5, detach=False):
        super().__init__()
        self.fc1 = nn.Linear(10, 32)
        self.fc2 = nn.Linear(32, 32)
        self.out = nn.Linear(32, classes)
        self.detach = detach

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if self.detach:
            h = h.detach()  # the bug: fc1 never learns
        return self.out(torch.relu(self.fc2(h)))


def well_initialised(classes=5):
    model = MLP(classes)
    with torch.no_grad():
        model.out.weight.mul_(0.01)
        model.out.bias.zero_()
    return model


def snapshot(model, opt=None):
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {
        n: None if p.grad is None else p.grad.clone()
        for n, p in model.named_parameters()
    }
    state = None if opt is None else repr(opt.state_dict())
    return params, grads, state, torch.random.get_rng_state()


def assert_unchanged(before, after):
    params0, grads0, state0, rng0 = before
    params1, grads1, state1, rng1 = after
    for n in params0:
        assert torch.equal(params0[n], params1[n]), n
        assert (grads0[n] is None) == (grads1[n] is None), n
        if grads0[n] is not None:
            assert torch.equal(grads0[n], grads1[n]), n
    assert state0 == state1
    assert torch.equal(rng0, rng1)


def test_expected_initial_losses():
    assert expected_initial_loss(10) == pytest.approx(-math.log(1 / 10))
    assert expected_initial_loss(None, "binary_cross_entropy") == pytest.approx(
        math.log(2)
    )
    assert expected_initial_loss(None, "skipgram", num_negatives=5) == pytest.approx(
        6 * math.log(2)
    )
    with pytest.raises(ValueError, match="Invalid num_classes: 1"):
        expected_initial_loss(1)
    with pytest.raises(TypeError, match="num_negatives"):
        expected_initial_loss(None, "skipgram")
    with pytest.raises(ValueError, match="Invalid kind"):
        expected_initial_loss(3, "hinge")


def test_skipgram_expectation_matches_the_loss_at_zero_output_vectors():
    from trainkit.losses import skipgram_loss

    anchor = torch.randn(64, 16)
    zeros = torch.zeros(64, 16)
    loss = skipgram_loss(anchor, zeros, torch.zeros(64, 4, 16))
    assert float(loss) == pytest.approx(
        expected_initial_loss(None, "skipgram", num_negatives=4)
    )


def test_initial_loss_passes_when_well_initialised_and_explains_a_failure():
    x, y = torch.randn(256, 10), torch.randint(0, 5, (256,))
    good = check_initial_loss(well_initialised(), x, y)
    assert good.passed, good.message
    assert good.expected == pytest.approx(math.log(5))
    bad_model = well_initialised()
    with torch.no_grad():
        bad_model.out.weight.mul_(100 * 100)  # the last layer scaled x100 of default
    before = snapshot(bad_model)
    bad = check_initial_loss(bad_model, x, y)
    assert not bad.passed and bad.measured > 2 * bad.expected
    assert "too large at initialisation" in bad.message
    assert "output layer" in bad.message
    assert_unchanged(before, snapshot(bad_model))


def test_overfit_batch_succeeds_on_a_small_mlp():
    x, y = torch.randn(8, 10), torch.randint(0, 5, (8,))
    model = MLP()
    result = overfit_batch(model, x, y, F.cross_entropy, steps=300)
    assert result.passed, result.message
    assert result.details["losses"][-1] <= 0.01 * result.details["losses"][0]


def test_overfit_batch_names_the_detached_layer_and_changes_nothing(tmp_path):
    x, y = torch.randn(8, 10), torch.randint(0, 5, (8,))
    model = MLP(detach=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()  # real optimizer state and .grad exist before the check
    with (
        SummaryWriter(tmp_path) as w,
        tb_gradflow.watch(model, w, optimizer=opt) as flow,
    ):
        before = snapshot(model, opt)
        result = overfit_batch(model, x, y, F.cross_entropy, optimizer=opt, steps=60)
        after = snapshot(model, opt)
        assert flow.step == 0  # the watched optimizer saw none of the check's steps
    assert_unchanged(before, after)
    assert not result.passed
    assert "fc1 (no gradient)" in result.message
    assert "fc2" not in result.message.split("flow into")[1]
    with pytest.raises(ValueError, match="No gradflow data"):
        tb_gradflow.load_run(tmp_path)  # nothing was logged


def test_overfit_batch_with_an_optimizer_factory():
    x, y = torch.randn(8, 10), torch.randint(0, 5, (8,))
    result = overfit_batch(
        MLP(), x, y, F.cross_entropy, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2)
    )
    assert result.passed, result.message


def make_grads(seed):
    torch.manual_seed(seed)
    params = [nn.Parameter(torch.randn(30, 20)), nn.Parameter(torch.randn(7))]
    for p in params:
        p.grad = torch.randn_like(p) * 3
    return params


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_grad_norm_equals_torch_on_dense_gradients(norm_type):
    ours, theirs = make_grads(0), make_grads(0)
    total = clip_grad_norm(ours, 5.0, norm_type=norm_type)
    want = torch.nn.utils.clip_grad_norm_(theirs, 5.0, norm_type=norm_type)
    assert torch.equal(total, want)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.grad, b.grad)


def test_clip_grad_norm_on_sparse_gradients_uses_the_dense_equivalent(tmp_path):
    emb = nn.Embedding(50, 4, sparse=True)
    lin = nn.Linear(4, 1)
    lin(emb(torch.tensor([3, 3, 9]))).sum().mul(10).backward()
    dense_emb = emb.weight.grad.to_dense()
    want = torch.linalg.vector_norm(
        torch.cat([dense_emb.reshape(-1), lin.weight.grad.reshape(-1), lin.bias.grad])
    )
    params = [emb.weight, *lin.parameters()]
    with SummaryWriter(tmp_path) as w:
        total = clip_grad_norm(params, 1.0, writer=w, step=7)
    assert float(total) == pytest.approx(float(want), rel=1e-6)
    clipped = torch.linalg.vector_norm(
        torch.cat(
            [
                emb.weight.grad.to_dense().reshape(-1),
                lin.weight.grad.reshape(-1),
                lin.bias.grad,
            ]
        )
    )
    assert float(clipped) == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(
        emb.weight.grad.to_dense(), dense_emb * (1.0 / float(want)), rtol=1e-5
    )
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    scalars = {t: acc.Scalars(t)[0] for t in acc.Tags()["scalars"]}
    assert scalars["grad_clip/total_norm"].value == pytest.approx(float(want), rel=1e-6)
    assert scalars["grad_clip/max_norm"].value == 1.0
    assert scalars["grad_clip/clipped"].value == 1.0
    assert scalars["grad_clip/total_norm"].step == 7


def test_clip_grad_norm_errors():
    with pytest.raises(ValueError, match="Invalid max_norm"):
        clip_grad_norm(make_grads(0), 0.0)
    params = make_grads(0)
    params[0].grad[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm(params, 1.0, error_if_nonfinite=True)
