"""trainkit.checks: each check against a model with a known fault."""

import copy
import math
import types
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules import module as nn_module
from torch.nn.utils import prune
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow
import trainkit.checks
import trainkit.model_copy
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


@pytest.mark.parametrize("max_norm", [torch.tensor(5.0), torch.tensor(5)])
def test_clip_grad_norm_takes_a_0d_tensor_max_norm_as_torch_does(max_norm):
    ours, theirs = make_grads(0), make_grads(0)
    total = clip_grad_norm(ours, max_norm)
    assert torch.equal(total, torch.nn.utils.clip_grad_norm_(theirs, max_norm))
    for a, b in zip(ours, theirs):
        assert torch.equal(a.grad, b.grad)


def test_clip_grad_norm_refuses_other_tensors_and_a_nan_norm_type():
    for bad in (torch.tensor([5.0]), torch.tensor(True), torch.tensor(1 + 0j)):
        with pytest.raises(TypeError, match="Invalid max_norm: a tensor of shape"):
            clip_grad_norm(make_grads(0), bad)
    with pytest.raises(ValueError, match="Invalid max_norm: nan"):
        clip_grad_norm(make_grads(0), torch.tensor(math.nan))
    for bad in ("nan", math.nan, np.float64("nan")):
        params = make_grads(0)
        grads = [p.grad.clone() for p in params]
        with pytest.raises(ValueError, match="Invalid norm_type: .*nan"):
            clip_grad_norm(params, 1.0, norm_type=bad)
        for p, g in zip(params, grads):  # refused before any gradient changes
            assert torch.equal(p.grad, g)
    for inf in ("inf", math.inf):
        ours, theirs = make_grads(0), make_grads(0)
        total = clip_grad_norm(ours, 1.0, norm_type=inf)
        assert torch.equal(total, torch.nn.utils.clip_grad_norm_(theirs, 1.0, inf))


def test_initial_loss_reports_a_nan_or_infinite_loss_as_such():
    x, y = torch.randn(64, 10), torch.randint(0, 5, (64,))
    broken = well_initialised()
    with torch.no_grad():
        broken.fc1.weight[3, 0] = math.nan
    result = check_initial_loss(broken, x, y)
    assert not result.passed and math.isnan(result.measured)
    assert result.message.startswith("The initial loss is NaN (chance: ln 5")
    assert "320 of the 320 outputs of the untrained model are NaN" in result.message
    assert "below chance" not in result.message

    result = check_initial_loss(
        well_initialised(), x, y, lambda out, t: F.cross_entropy(out, t) / 0.0
    )
    assert not result.passed and result.measured == math.inf
    assert result.message.startswith("The initial loss is inf")
    assert "the outputs are finite, so the loss function makes it" in result.message


class PerStepHead(nn.Module):
    """(N, 4, T) -> (N, C, T) class scores per time step, as F.cross_entropy takes,
    or (N, T, C) with ``last_dim=True``."""

    def __init__(self, classes, last_dim=False):
        super().__init__()
        self.conv = nn.Conv1d(4, classes, 1)
        self.last_dim = last_dim
        with torch.no_grad():
            self.conv.weight.mul_(0.01)
            self.conv.bias.zero_()

    def forward(self, x):
        out = self.conv(x)  # (N, C, T)
        return out.transpose(1, 2) if self.last_dim else out


def test_initial_loss_reads_the_class_dim_where_cross_entropy_reads_it():
    x, y = torch.randn(8, 4, 50), torch.randint(0, 7, (8, 50))  # C = 7, T = 50
    model = PerStepHead(7)
    with torch.no_grad():
        torch_loss = F.cross_entropy(model(x), y)
    assert float(torch_loss) == pytest.approx(math.log(7), rel=0.01)
    for loss_fn in (F.cross_entropy, nn.CrossEntropyLoss()):
        result = check_initial_loss(model, x, y, loss_fn)
        assert result.passed, result.message
        assert result.details["num_classes"] == 7
        assert result.expected == pytest.approx(math.log(7), rel=1e-12, abs=0.0)
        assert result.measured == pytest.approx(float(torch_loss), rel=1e-6, abs=0.0)

    # A loss that flattens (B, T, C) reads the last dim: the check does not guess.
    def flat_loss(out, targets):  # out (B, T, C)
        return F.cross_entropy(out.flatten(0, 1), targets.flatten())

    last_dim_model = PerStepHead(7, last_dim=True)
    with pytest.raises(ValueError, match=r"shape \(8, 50, 7\).*pass num_classes"):
        check_initial_loss(last_dim_model, x, y, flat_loss)
    result = check_initial_loss(last_dim_model, x, y, flat_loss, num_classes=7)
    assert result.passed, result.message


def buffers_of(model):
    return {n: b.clone() for n, b in model.named_buffers()}


def test_initial_loss_runs_the_copy_in_training_mode_like_the_first_step():
    # Unnormalised inputs: BatchNorm's batch statistics normalise them in training,
    # its untrained running statistics (mean 0, var 1) would not.
    x, y = torch.randn(256, 10) * 20 + 50, torch.randint(0, 5, (256,))
    model = nn.Sequential(
        nn.Linear(10, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(32, 5),
    )
    with torch.no_grad():
        model[4].weight.mul_(0.1)
        model[4].bias.zero_()
    model.eval()  # the caller's mode is left alone
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        first_step = float(F.cross_entropy(copy.deepcopy(model).train()(x), y))
        eval_mode = float(F.cross_entropy(copy.deepcopy(model).eval()(x), y))
    # Eval mode would fail the model (rtol 0.1), training mode passes it.
    assert abs(eval_mode - math.log(5)) > 0.2 * math.log(5)
    before, buffers = snapshot(model), buffers_of(model)
    result = check_initial_loss(model, x, y)
    assert result.measured == pytest.approx(first_step, rel=1e-6, abs=0.0)
    assert result.passed, result.message
    assert_unchanged(before, snapshot(model))
    for name, value in buffers_of(model).items():
        assert torch.equal(value, buffers[name]), name
    assert not any(m.training for m in model.modules())


def hook_dicts(model):
    return {
        (name, attr): dict(value) if isinstance(value, dict) else value
        for name, module in model.named_modules()
        for attr, value in vars(module).items()
        if "hook" in attr
    }


class ActivationLogger:
    """A forward hook bound to an object that holds a SummaryWriter."""

    def __init__(self, logdir):
        self.writer = SummaryWriter(logdir)
        self.calls = 0

    def on_forward(self, module, args, output):
        self.calls += 1
        self.writer.add_scalar("activation_std", output.detach().std(), self.calls)


def test_checks_neither_run_the_callers_hooks_nor_leave_hooks_behind(tmp_path):
    x, y = torch.randn(8, 10), torch.randint(0, 5, (8,))
    model = well_initialised()
    calls = []
    model.fc1.register_forward_pre_hook(lambda m, args: calls.append("pre"))
    model.fc2.register_forward_hook(
        lambda m, a, kw, o: calls.append("fwd"), with_kwargs=True
    )
    model.out.register_full_backward_hook(lambda m, gi, go: calls.append("bwd"))
    logger = ActivationLogger(tmp_path)
    model.out.register_forward_hook(logger.on_forward)
    hooks = hook_dicts(model)
    before = snapshot(model)

    assert check_initial_loss(model, x, y).passed
    overfit = overfit_batch(model, x, y, F.cross_entropy, steps=3)
    assert overfit.details["steps"] == 3
    assert calls == [] and logger.calls == 0
    assert hook_dicts(model) == hooks  # nothing added, nothing removed
    assert_unchanged(before, snapshot(model))

    # The caller's hooks still work on the caller's model, once per call.
    F.cross_entropy(model(x), y).backward()
    assert calls == ["pre", "fwd", "bwd"] and logger.calls == 1
    logger.writer.close()


def test_the_copy_keeps_torchs_hook_based_weight_reparametrisations():
    x, y = torch.randn(8, 10), torch.randint(0, 5, (8,))
    model = well_initialised()
    prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    with torch.no_grad():
        model.fc1.weight_orig.mul_(3.0)  # the pruning hook recomputes fc1.weight
        # Its forward pre-hook sets fc1.weight; under no_grad it is a leaf, which
        # deepcopy needs (pytorch#103001).
        want = float(F.cross_entropy(model(x), y))
    assert check_initial_loss(model, x, y).measured == pytest.approx(
        want, rel=1e-6, abs=0.0
    )
    result = overfit_batch(model, x, y, F.cross_entropy, steps=300)
    assert result.passed, result.message
    assert result.details["findings"] == []  # the gradient reaches fc1.weight_orig


def test_overfit_batch_needs_a_target_for_a_loss_that_starts_at_or_below_zero():
    x, y = torch.randn(4, 3), torch.zeros(4, 1)
    model = nn.Linear(3, 1)
    with torch.no_grad():
        start = float(F.mse_loss(model(x), y))
    assert start < 10

    def shifted_mse(out, targets):  # minimum -10, as a log-likelihood can go below 0
        return F.mse_loss(out, targets) - 10.0

    with pytest.raises(ValueError, match=r"initial loss is -\d.* <= 0.*pass target="):
        overfit_batch(model, x, y, shifted_mse)
    with pytest.raises(ValueError, match="initial loss is 0 <= 0"):
        overfit_batch(model, x, y, lambda out, t: (out * 0.0).sum())
    result = overfit_batch(
        model,
        x,
        y,
        shifted_mse,
        optimizer=lambda p: torch.optim.Adam(p, lr=0.1),
        target=-9.99,
    )
    assert result.passed, result.message
    assert result.expected == -9.99 and result.measured <= -9.99
    assert result.details["losses"][0] == pytest.approx(start - 10.0, rel=1e-6)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match=f"Invalid target: {bad}"):
            overfit_batch(model, x, y, shifted_mse, target=bad)


def test_the_copy_keeps_a_lazy_modules_shape_inference():
    # LazyLinear infers in_features in a forward pre-hook (a method of the module).
    x, y = torch.randn(32, 10), torch.randint(0, 5, (32,))
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 5))
    calls = []

    def on_pre_forward(module, args):
        calls.append("pre")

    model[0].register_forward_pre_hook(on_pre_forward)
    hooks = hook_dicts(model)

    result = check_initial_loss(model, x, y)
    assert math.isfinite(result.measured)
    overfit = overfit_batch(
        model,
        x[:8],
        y[:8],
        F.cross_entropy,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
    )
    assert overfit.passed, overfit.message
    # Copying the lazy hook copies its module; the caller's hook stays behind.
    assert calls == []
    name = "0 forward pre-hook " + on_pre_forward.__qualname__
    assert result.details["hooks_left_out"] == [name]
    assert overfit.details["hooks_left_out"] == [name]
    assert model[0].has_uninitialized_params()  # the caller's module is untouched
    assert hook_dicts(model) == hooks


class ScaledLogits(nn.Module):
    """An MLP whose own forward hook multiplies the logits by 50."""

    def __init__(self):
        super().__init__()
        self.net = MLP()
        self.net.out.register_forward_hook(self._scale)

    def _scale(self, module, args, output):
        return output * 50.0

    def forward(self, x):
        return self.net(x)


def test_a_hook_that_scales_the_logits_fails_the_initial_loss_as_training_would():
    x, y = torch.randn(256, 10), torch.randint(0, 5, (256,))
    model = ScaledLogits()
    with torch.no_grad():
        first_step = float(F.cross_entropy(model(x), y))
        unscaled = float(F.cross_entropy(model(x) / 50.0, y))
    assert abs(unscaled - math.log(5)) < 0.1 * math.log(5)  # at chance without it
    result = check_initial_loss(model, x, y)  # a method of the model: kept
    assert result.measured == pytest.approx(first_step, rel=1e-6, abs=0.0)
    assert not result.passed and "too large at initialisation" in result.message
    assert result.details["hooks_left_out"] == []

    # The same hook registered from outside the model: left behind by default, and
    # the result says so; keep_hooks=True keeps it.
    outside = MLP()
    outside.load_state_dict(model.net.state_dict())
    outside.out.register_forward_hook(lambda m, args, out: out * 50.0)
    lenient = check_initial_loss(outside, x, y)
    assert lenient.passed
    (left_out,) = lenient.details["hooks_left_out"]
    assert left_out.startswith("out forward hook test_a_hook_that_scales_the")
    assert left_out.endswith(".<locals>.<lambda>")
    assert "ran without the hooks from outside the model (out forward hook" in (
        lenient.message
    )
    assert "pass keep_hooks=True" in lenient.message
    strict = check_initial_loss(outside, x, y, keep_hooks=True)
    assert strict.measured == pytest.approx(first_step, rel=1e-6, abs=0.0)
    assert not strict.passed and strict.details["hooks_left_out"] == []


def test_the_copy_keeps_torchs_quantization_aware_training_observers():
    import torch.ao.quantization as quant

    x, y = torch.randn(64, 10) * 3, torch.randint(0, 5, (64,))
    model = nn.Sequential(quant.QuantStub(), nn.Linear(10, 5), quant.DeQuantStub())
    model.qconfig = quant.get_default_qat_qconfig("fbgemm")
    with warnings.catch_warnings():
        # torch deprecates eager-mode quantization for torchao; it still works.
        warnings.simplefilter("ignore")
        quant.prepare_qat(model.train(), inplace=True)
    with torch.no_grad():  # observer and fake-quant forward hooks (torch's)
        first_step = float(F.cross_entropy(copy.deepcopy(model)(x), y))
    buffers = buffers_of(model)
    result = check_initial_loss(model, x, y)
    assert result.measured == pytest.approx(first_step, rel=1e-6, abs=0.0)
    assert result.details["hooks_left_out"] == []
    overfit = overfit_batch(model, x[:8], y[:8], F.cross_entropy, steps=3)
    assert overfit.details["steps"] == 3
    for name, value in buffers_of(model).items():  # the observers' statistics
        assert torch.equal(value, buffers[name]), name


def test_kept_hooks_from_outside_are_shared_not_copied(tmp_path):
    # A hook bound to an object that holds a SummaryWriter cannot be deep-copied
    # ("cannot pickle '_thread.lock'"): keep_hooks=True runs it on the copy as is.
    x, y = torch.randn(8, 10), torch.randint(0, 5, (8,))
    model = well_initialised()
    logger = ActivationLogger(tmp_path)
    model.out.register_forward_hook(logger.on_forward)
    hooks = hook_dicts(model)
    result = check_initial_loss(model, x, y, keep_hooks=True)
    assert result.passed and logger.calls == 1
    overfit_batch(model, x, y, F.cross_entropy, steps=3, keep_hooks=True)
    assert logger.calls == 4
    assert hook_dicts(model) == hooks
    logger.writer.close()


class SelfFrozen(nn.Module):
    """An MLP that freezes its first layer with a tensor hook of its own method."""

    frozen_by: list[nn.Module] = []  # a class attribute: the copies share it

    def __init__(self):
        super().__init__()
        self.net = MLP()
        self.net.fc1.weight.register_hook(self._freeze)

    def _freeze(self, grad):
        self.frozen_by.append(self)
        return grad * 0

    def forward(self, x):
        return self.net(x)


def test_tensor_hooks_follow_the_same_rule_as_module_hooks():
    x, y = torch.randn(8, 10), torch.randint(0, 5, (8,))
    model = MLP()
    calls = []

    def freeze(grad):  # a common way to freeze a layer
        calls.append("freeze")
        return grad * 0

    def after_accumulate(param):
        calls.append("accumulated")

    model.fc1.weight.register_hook(freeze)
    model.fc2.bias.register_post_accumulate_grad_hook(after_accumulate)
    hooks = [dict(model.fc1.weight._backward_hooks)]
    hooks.append(dict(model.fc2.bias._post_accumulate_grad_hooks))
    before = snapshot(model)

    # Left behind by default, and named as such.
    result = overfit_batch(model, x, y, F.cross_entropy, steps=3)
    assert calls == []
    left_out = [
        "fc1.weight tensor hook " + freeze.__qualname__,
        "fc2.bias post-accumulate-grad hook " + after_accumulate.__qualname__,
    ]
    assert result.details["hooks_left_out"] == left_out
    assert f"ran without the hooks from outside the model ({left_out[0]}" in (
        result.message
    )
    assert check_initial_loss(model, x, y, rtol=10).details["hooks_left_out"] == (
        left_out
    )

    # keep_hooks=True registers them on the copy's parameters: fc1 is frozen there
    # as in training, and the diagnosis says so.
    kept = overfit_batch(model, x, y, F.cross_entropy, steps=3, keep_hooks=True)
    assert sorted(calls) == ["accumulated"] * 3 + ["freeze"] * 3  # 3 backwards
    assert kept.details["hooks_left_out"] == []
    assert "fc1" in {f.layer for f in kept.details["findings"]}
    assert_unchanged(before, snapshot(model))
    assert [dict(model.fc1.weight._backward_hooks)] + [
        dict(model.fc2.bias._post_accumulate_grad_hooks)
    ] == hooks

    # A method of the model's own module is part of it: kept, bound to the copy.
    own = SelfFrozen()
    result = overfit_batch(own, x, y, F.cross_entropy, steps=2)
    assert result.details["hooks_left_out"] == []
    copies = SelfFrozen.frozen_by
    assert len(copies) == 2 and copies[0] is copies[1] and copies[0] is not own
    assert "net.fc1" in {f.layer for f in result.details["findings"]}


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = well_initialised()

    def forward(self, x):
        return self.model(x)


def test_the_root_module_has_a_name_no_submodule_has():
    x, y = torch.randn(8, 10), torch.randint(0, 5, (8,))
    wrapper = Wrapper()

    def watch(module, args, output):
        pass

    wrapper.register_forward_hook(watch)
    wrapper.model.register_forward_hook(watch)
    result = check_initial_loss(wrapper, x, y)
    assert result.details["hooks_left_out"] == [
        f"<root> forward hook {watch.__qualname__}",
        f"model forward hook {watch.__qualname__}",
    ]


GLOBAL_HOOK_DICTS = (
    "_global_forward_pre_hooks",
    "_global_forward_hooks",
    "_global_backward_pre_hooks",
    "_global_backward_hooks",
    "_global_forward_hooks_with_kwargs",
    "_global_forward_hooks_always_called",
)


def global_hooks():
    return {name: dict(getattr(nn_module, name)) for name in GLOBAL_HOOK_DICTS}


def test_global_module_hooks_are_off_during_a_check_and_restored_after():
    x, y = torch.randn(8, 10), torch.randint(0, 5, (8,))
    model = well_initialised()
    calls = []

    def log_pre(module, args):
        calls.append("pre")

    def log_forward(module, args, kwargs, output):
        calls.append("forward")

    def log_backward(module, grad_input, grad_output):
        calls.append("backward")

    before = global_hooks()
    handles = [
        nn_module.register_module_forward_pre_hook(log_pre),
        nn_module.register_module_forward_hook(
            log_forward, with_kwargs=True, always_call=True
        ),
        nn_module.register_module_full_backward_hook(log_backward),
    ]
    try:
        registered = global_hooks()
        result = check_initial_loss(model, x, y)
        overfit = overfit_batch(model, x, y, F.cross_entropy, steps=2)
        assert calls == []
        left_out = [
            f"<global> forward pre-hook {log_pre.__qualname__}",
            f"<global> forward hook {log_forward.__qualname__}",
            f"<global> backward hook {log_backward.__qualname__}",
        ]
        assert result.details["hooks_left_out"] == left_out
        assert overfit.details["hooks_left_out"] == left_out
        assert global_hooks() == registered
        # Restored also when the check raises.
        with pytest.raises(ZeroDivisionError):
            overfit_batch(model, x, y, lambda out, t: 1 / 0)
        assert global_hooks() == registered
        # keep_hooks=True keeps them.
        kept = check_initial_loss(model, x, y, keep_hooks=True)
        assert kept.details["hooks_left_out"] == []
        assert calls.count("forward") == len(list(model.modules()))
        calls.clear()
        model(x.clone().requires_grad_()).sum().backward()  # still on for the model
        assert {"pre", "forward", "backward"} <= set(calls)
    finally:
        for handle in handles:
            handle.remove()
    after = global_hooks()
    # torch's handle leaves its with_kwargs entry behind (not the check's doing).
    after["_global_forward_hooks_with_kwargs"].pop(handles[1].id)
    assert after == before


def test_overlapping_checks_restore_global_hooks_and_keep_those_added_meanwhile():
    # Two checks in two threads can end in either order: the hooks come back
    # only when the last one ends, and a hook registered meanwhile stays, with a
    # handle that still removes it.
    calls = []
    handle = nn_module.register_module_forward_hook(lambda *a: calls.append("old"))
    first = trainkit.model_copy.global_hooks(keep=False)
    second = trainkit.model_copy.global_hooks(keep=False)
    try:
        assert len(first.__enter__()) == 1
        assert len(second.__enter__()) == 1  # names the hook the first turned off
        added = nn_module.register_module_forward_hook(lambda *a: calls.append("new"))
        first.__exit__(None, None, None)
        assert list(nn_module._global_forward_hooks) == [added.id]  # still off
        second.__exit__(None, None, None)
        assert list(nn_module._global_forward_hooks) == [handle.id, added.id]
        nn.Linear(2, 2)(torch.ones(1, 2))
        assert calls == ["old", "new"]
        added.remove()
        assert list(nn_module._global_forward_hooks) == [handle.id]
    finally:
        handle.remove()
        added.remove()


def test_a_batch_of_one_through_batchnorm_raises_asking_for_two_or_more():
    model = nn.Sequential(
        nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 5)
    )
    x, y = torch.randn(1, 10), torch.randint(0, 5, (1,))
    before, buffers = snapshot(model), buffers_of(model)
    match = r"Expected more than 1 value per channel.*training mode.*batch of 2 or more"
    with pytest.raises(ValueError, match=match):
        check_initial_loss(model, x, y)
    with pytest.raises(ValueError, match=match):
        overfit_batch(model, x, y, F.cross_entropy)
    assert_unchanged(before, snapshot(model))
    for name, value in buffers_of(model).items():
        assert torch.equal(value, buffers[name]), name
    # Two examples are enough.
    assert math.isfinite(
        check_initial_loss(model, x.repeat(2, 1), y.repeat(2)).measured
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_checks_restore_the_cuda_rng_of_the_models_device():
    model = nn.Sequential(nn.Linear(10, 32), nn.Dropout(0.5), nn.Linear(32, 5))
    model.cuda()
    x = torch.randn(64, 10, device="cuda")
    y = torch.randint(0, 5, (64,), device="cuda")
    cuda_rng, cpu_rng = torch.cuda.get_rng_state(), torch.get_rng_state()
    check_initial_loss(model, x, y, rtol=10.0)
    overfit_batch(model, x, y, F.cross_entropy, steps=3)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)
    assert torch.equal(torch.get_rng_state(), cpu_rng)
    with torch.no_grad():
        model.train()(x)  # the model's dropout draws from this generator
    assert not torch.equal(torch.cuda.get_rng_state(), cuda_rng)


@pytest.mark.parametrize("registered", [False, True])
def test_a_device_type_whose_rng_torch_cannot_save_is_skipped_with_a_warning(
    monkeypatch, registered
):
    # e.g. torch_xla's 'xla' devices: no torch.xla module (or one without RNG state
    # functions); torch.random.fork_rng raises for them.
    x, y = torch.randn(8, 10), torch.randint(0, 5, (8,))
    model = well_initialised()
    monkeypatch.setattr(
        trainkit.model_copy,
        "_model_devices",
        lambda model: {"xla": {torch.device("xla:0")}},
    )
    if registered:
        monkeypatch.setattr(torch, "xla", types.SimpleNamespace(), raising=False)
    rng = torch.get_rng_state()
    with pytest.warns(UserWarning, match="'xla' devices") as caught:
        result = check_initial_loss(model, x, y)
    assert result.passed, result.message
    assert caught[0].filename == __file__  # points at the check's caller
    with pytest.warns(UserWarning, match="'xla' devices"):
        overfit_batch(model, x, y, F.cross_entropy, steps=2)
    assert torch.equal(torch.get_rng_state(), rng)  # the CPU's is still restored


def test_integer_arguments_take_numpy_integers():
    x, y = torch.randn(8, 10), torch.randint(0, 5, (8,))
    model = well_initialised()
    result = overfit_batch(model, x, y, F.cross_entropy, steps=np.int64(2))
    assert result.details["steps"] <= 2
    assert expected_initial_loss(np.int64(10)) == pytest.approx(math.log(10))
    assert expected_initial_loss(
        None, "skipgram", num_negatives=np.int32(5)
    ) == pytest.approx(6 * math.log(2))
    checked = check_initial_loss(model, x, y, num_classes=np.int64(5))
    assert checked.details["num_classes"] == 5
    assert type(checked.details["num_classes"]) is int
    with pytest.raises(TypeError, match=r"Invalid steps: (np\.)?True"):
        overfit_batch(model, x, y, F.cross_entropy, steps=np.bool_(True))
    with pytest.raises(TypeError, match=r"Invalid num_classes: .*5\.0"):
        expected_initial_loss(np.float64(5.0))


def test_bad_arguments_raise_naming_the_argument():
    x, y = torch.randn(8, 10), torch.randint(0, 5, (8,))
    model = well_initialised()
    with pytest.raises(TypeError, match=r"Invalid target: '0\.1' \(a real number\)"):
        overfit_batch(model, x, y, F.cross_entropy, target="0.1")
    with pytest.raises(TypeError, match="Invalid target: True"):
        overfit_batch(model, x, y, F.cross_entropy, target=True)
    with pytest.raises(TypeError, match="Invalid steps: '5'"):
        overfit_batch(model, x, y, F.cross_entropy, steps="5")
    with pytest.raises(ValueError, match="Invalid steps: 0"):
        overfit_batch(model, x, y, F.cross_entropy, steps=0)
    with pytest.raises(TypeError, match="loss_fn must be callable, got str"):
        overfit_batch(model, x, y, "cross_entropy")
    with pytest.raises(TypeError, match="model must be an nn.Module, got function"):
        overfit_batch(lambda x: x, x, y, F.cross_entropy)
    with pytest.raises(TypeError, match=r"Invalid rtol: '0\.1' \(a real number\)"):
        check_initial_loss(model, x, y, rtol="0.1")
    with pytest.raises(ValueError, match="Invalid rtol: nan"):
        check_initial_loss(model, x, y, rtol=math.nan)
    with pytest.raises(TypeError, match="loss_fn must be callable, got NoneType"):
        check_initial_loss(model, x, y, None)
    with pytest.raises(TypeError, match="Invalid max_norm: '1'"):
        clip_grad_norm(make_grads(0), "1")
    with pytest.raises(TypeError, match="Invalid norm_type: None"):
        clip_grad_norm(make_grads(0), 1.0, norm_type=None)
    with pytest.raises(ValueError, match="Invalid norm_type: 'l2'"):
        clip_grad_norm(make_grads(0), 1.0, norm_type="l2")
    ours, theirs = make_grads(0), make_grads(0)  # "inf" works, as in torch
    total = clip_grad_norm(ours, 1.0, norm_type="inf")
    assert torch.equal(total, torch.nn.utils.clip_grad_norm_(theirs, 1.0, "inf"))
    assert overfit_batch(model, x, y, F.cross_entropy, target=0.5).expected == 0.5
