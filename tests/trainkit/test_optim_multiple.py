"""MultipleOptimizer, split_sparse_dense and sparse_dense_optimizer."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainkit.optim import (
    SMORMS3,
    MultipleOptimizer,
    sparse_dense_optimizer,
    split_sparse_dense,
)


class BagOfWords(nn.Module):
    """A sparse embedding and a sparse embedding bag feeding two dense layers."""

    def __init__(self, vocab: int = 50, dim: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, sparse=True)
        self.bag = nn.EmbeddingBag(vocab, dim, mode="sum", sparse=True)
        self.fc1 = nn.Linear(dim, 16)
        self.fc2 = nn.Linear(16, 1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # idx: (B, T) int64
        h = self.emb(idx).mean(1) + self.bag(idx)  # (B, D)
        return self.fc2(torch.tanh(self.fc1(h)))  # (B, 1)


def _batches(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    # ids < 40: rows 40..49 of both tables are never used
    return [
        (
            torch.randint(0, 40, (16, 5), generator=gen),
            torch.randn(16, 1, generator=gen),
        )
        for _ in range(n)
    ]


def _train(model, opt, batches, scheduler=None):
    for idx, target in batches:
        opt.zero_grad()
        F.mse_loss(model(idx), target).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def _model(seed: int = 0) -> BagOfWords:
    torch.manual_seed(seed)
    return BagOfWords()


# -- split_sparse_dense -------------------------------------------------------------


def test_split_finds_sparse_embedding_weights():
    model = _model()
    sparse, dense = split_sparse_dense(model)
    assert [id(p) for p in sparse] == [id(model.emb.weight), id(model.bag.weight)]
    assert [id(p) for p in dense] == [
        id(p) for p in (*model.fc1.parameters(), *model.fc2.parameters())
    ]


def test_split_treats_dense_embeddings_and_frozen_params_as_torch_would():
    model = nn.Sequential(
        nn.Embedding(5, 2), nn.Embedding(5, 2, sparse=True), nn.Linear(2, 1)
    )
    model[2].bias.requires_grad_(False)
    sparse, dense = split_sparse_dense(model)
    assert [id(p) for p in sparse] == [id(model[1].weight)]
    assert [id(p) for p in dense] == [
        id(model[0].weight),
        id(model[2].weight),
        id(model[2].bias),
    ]


def test_embedding_shared_by_two_sparse_modules_is_listed_once():
    model = _model()
    model.bag.weight = (
        model.emb.weight
    )  # both sparse: the sum of sparse grads is sparse
    sparse, _ = split_sparse_dense(model)
    assert [id(p) for p in sparse] == [id(model.emb.weight)]


def test_sparse_weight_tied_to_a_dense_layer_is_a_clear_error():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4, sparse=True)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight

    with pytest.raises(
        ValueError,
        match=r"emb\.weight is the weight of a sparse embedding.*"
        r"also head\.weight \(Linear\)",
    ):
        split_sparse_dense(Tied())
    with pytest.raises(ValueError, match="tied weight"):
        sparse_dense_optimizer(Tied())


def test_split_rejects_a_non_module():
    with pytest.raises(TypeError, match="must be a torch.nn.Module, got list"):
        split_sparse_dense([nn.Parameter(torch.ones(1))])


# -- sparse_dense_optimizer -----------------------------------------------------------


def test_trains_a_sparse_plus_dense_model_and_only_touches_used_rows():
    model = _model()
    opt = sparse_dense_optimizer(model, lr=0.01)
    sparse_child, dense_child = opt.optimizers
    # the SparseAdam child carries its dense-gradient guard through copies
    assert isinstance(sparse_child, torch.optim.SparseAdam)
    assert type(sparse_child).__name__ == "SparseAdam"
    assert type(dense_child) is torch.optim.Adam
    assert opt.optimizers[0].param_groups[0]["params"] == [
        model.emb.weight,
        model.bag.weight,
    ]
    unused = model.emb.weight[40:].detach().clone()
    batches = _batches(60)
    with torch.no_grad():
        first = sum(F.mse_loss(model(i), t) for i, t in batches).item()
    _train(model, opt, batches)
    with torch.no_grad():
        last = sum(F.mse_loss(model(i), t) for i, t in batches).item()
    assert last < 0.7 * first
    assert torch.equal(model.emb.weight[40:], unused)  # lazy (sparse) updates
    assert not torch.equal(model.emb.weight[:40], _model().emb.weight[:40])


def test_smorms3_as_the_dense_optimizer():
    model = _model()
    opt = sparse_dense_optimizer(
        model, dense=SMORMS3, lr=0.01, dense_kwargs={"weight_decay": 1e-4}
    )
    assert isinstance(opt.optimizers[1], SMORMS3)
    assert opt.optimizers[1].param_groups[0]["weight_decay"] == 1e-4
    before = model.fc1.weight.detach().clone()
    _train(model, opt, _batches(3))
    assert not torch.equal(model.fc1.weight, before)


def test_options_go_to_their_child_and_unknown_ones_are_named():
    opt = sparse_dense_optimizer(
        _model(),
        lr=0.02,
        dense_kwargs={"weight_decay": 0.1, "foreach": False},
        sparse_kwargs={"lr": 0.005, "betas": (0.8, 0.9)},
    )
    sparse_group, dense_group = opt.param_groups[0], opt.param_groups[1]
    assert (sparse_group["lr"], sparse_group["betas"]) == (0.005, (0.8, 0.9))
    assert (dense_group["lr"], dense_group["weight_decay"]) == (0.02, 0.1)
    with pytest.raises(
        ValueError,
        match=r"SparseAdam does not accept 'weight_decay' \(from sparse_kwargs\)",
    ):
        sparse_dense_optimizer(_model(), sparse_kwargs={"weight_decay": 0.1})
    with pytest.raises(ValueError, match=r"SparseAdam does not accept 'fused'"):
        sparse_dense_optimizer(_model(), sparse_kwargs={"fused": True})


def test_model_without_sparse_or_any_parameters():
    opt = sparse_dense_optimizer(nn.Linear(3, 2))
    assert [type(o) for o in opt.optimizers] == [torch.optim.Adam]
    with pytest.raises(ValueError, match="ReLU has no parameters to optimize"):
        sparse_dense_optimizer(nn.ReLU())


def test_weight_used_outside_its_embedding_gets_a_named_error_at_step():
    class SharedInForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4, sparse=True)

        def forward(self, idx):
            return F.linear(self.emb(idx), self.emb.weight)  # dense grad on emb.weight

    model = SharedInForward()
    opt = sparse_dense_optimizer(model)
    model(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"emb\.weight got a dense gradient"):
        opt.step()


class SharedInForward(nn.Module):
    """A sparse embedding whose weight is also used densely."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4, sparse=True)

    def forward(self, idx):
        return F.linear(self.emb(idx), self.emb.weight)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_the_dense_gradient_guard_survives_copies(how):
    """An optimizer's hooks are not copied: the guard was lost by
    copy.deepcopy and pickling, and SparseAdam's own error followed."""
    import pickle

    model = SharedInForward()
    opt = sparse_dense_optimizer(model)
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    else:
        model2, opt2 = pickle.loads(pickle.dumps((model, opt)))
    assert opt2.optimizers[0]._dense_grad_names == {model2.emb.weight: "emb.weight"}
    model2(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"emb\.weight got a dense gradient"):
        opt2.step()
    # and a copy trains as the original does on sparse gradients
    model3 = BagOfWords()
    opt3 = copy.deepcopy(sparse_dense_optimizer(model3))
    assert isinstance(opt3.optimizers[0], torch.optim.SparseAdam)


# -- MultipleOptimizer ----------------------------------------------------------------


def test_is_an_optimizer_whose_param_groups_are_the_childrens_dicts():
    model = _model()
    opt = sparse_dense_optimizer(model)
    assert isinstance(opt, torch.optim.Optimizer)
    groups = [g for child in opt.optimizers for g in child.param_groups]
    assert len(opt.param_groups) == 2
    assert all(a is b for a, b in zip(opt.param_groups, groups))
    _train(model, opt, _batches(1))
    assert set(opt.state) == set(model.parameters())
    assert opt.state[model.fc1.weight] is opt.optimizers[1].state[model.fc1.weight]


def test_step_lr_changes_both_children_also_after_load_state_dict():
    model = _model()
    opt = sparse_dense_optimizer(model, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _train(model, opt, _batches(2), sched)
    assert [child.param_groups[0]["lr"] for child in opt.optimizers] == [0.025, 0.025]

    saved = opt.state_dict()
    opt.load_state_dict(saved)  # the children replace their group dicts
    _train(model, opt, _batches(1), sched)
    assert [child.param_groups[0]["lr"] for child in opt.optimizers] == [0.0125, 0.0125]

    model2 = _model()
    opt2 = sparse_dense_optimizer(model2, lr=0.1)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    _train(model2, opt2, _batches(1), sched2)
    assert [child.param_groups[0]["lr"] for child in opt2.optimizers] == [
        0.00625,
        0.00625,
    ]


def test_resume_mid_training_is_bit_identical():
    batches = _batches(10, seed=3)
    model = _model()
    opt = sparse_dense_optimizer(model, lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    _train(model, opt, batches[:5], sched)
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
        },
        buffer,
    )
    _train(model, opt, batches[5:], sched)

    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = _model(seed=1)  # different initial weights, overwritten by the checkpoint
    resumed.load_state_dict(saved["model"])
    opt2 = sparse_dense_optimizer(resumed, lr=0.01)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=3, gamma=0.5)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    _train(resumed, opt2, batches[5:], sched2)
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_a_parameter_in_two_children_is_an_error():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    with pytest.raises(
        ValueError,
        match=r"shape \(2,\) is in optimizers\[0\] \(SGD\) and in "
        r"optimizers\[1\] \(Adam\)",
    ):
        MultipleOptimizer(torch.optim.SGD([a], lr=0.1), torch.optim.Adam([b, a]))


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((), ValueError, "at least one optimizer"),
        (
            ("sgd",),
            TypeError,
            r"optimizers\[0\] must be a torch.optim.Optimizer, got str",
        ),
    ],
)
def test_bad_children_raise(args, error, message):
    with pytest.raises(error, match=message):
        MultipleOptimizer(*args)


def test_the_same_child_twice_and_a_list_of_children_raise():
    sgd = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(
        ValueError, match=r"optimizers\[1\] is the same object as optimizers\[0\]"
    ):
        MultipleOptimizer(sgd, sgd)
    with pytest.raises(TypeError, match="separate arguments"):
        MultipleOptimizer([sgd])


def test_closure_is_evaluated_once_and_its_loss_returned():
    model = _model()
    opt = sparse_dense_optimizer(model)
    idx, target = _batches(1)[0]
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = F.mse_loss(model(idx), target)
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert calls == [True]
    assert loss.requires_grad


def test_step_hooks_on_the_wrapper_and_on_children_fire():
    model = _model()
    opt = sparse_dense_optimizer(model)
    seen = []
    handles = [
        opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(("pre", o))),
        opt.register_step_post_hook(lambda o, args, kwargs: seen.append(("post", o))),
        opt.optimizers[1].register_step_pre_hook(
            lambda o, args, kwargs: seen.append(("child", o))
        ),
    ]
    _train(model, opt, _batches(2))
    assert seen == [("pre", opt), ("child", opt.optimizers[1]), ("post", opt)] * 2
    for handle in handles:
        handle.remove()
    _train(model, opt, _batches(1))
    assert len(seen) == 6


def test_state_dict_hooks_fire():
    opt = sparse_dense_optimizer(_model())
    seen = []
    opt.register_state_dict_pre_hook(lambda o: seen.append("sd-pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    opt.register_load_state_dict_pre_hook(lambda o, sd: seen.append(sorted(sd)))
    opt.register_load_state_dict_post_hook(lambda o: seen.append("load-post"))
    saved = opt.state_dict()
    assert saved["extra"] == 1
    opt.load_state_dict(saved)
    assert seen == ["sd-pre", ["classes", "extra", "optimizers"], "load-post"]


def test_tb_gradflow_watch_logs_through_it(tmp_path):
    tb_gradflow = pytest.importorskip("tb_gradflow")
    from torch.utils.tensorboard import SummaryWriter

    model = _model()
    opt = sparse_dense_optimizer(model, lr=0.01)
    writer = SummaryWriter(str(tmp_path))
    with tb_gradflow.watch(model, writer, optimizer=opt) as flow:
        _train(model, opt, _batches(3))
        assert flow.last is not None and flow.last.step == 2
        abs_mean = flow.last.stat("abs_mean")
    writer.close()
    assert len(abs_mean) == len(flow.layers) and (abs_mean > 0).all()
    run = tb_gradflow.load_run(tmp_path)
    assert run.steps.tolist() == [0, 1, 2]
    assert run.layers == flow.layers


def test_zero_grad_reaches_every_child():
    model = _model()
    opt = sparse_dense_optimizer(model)
    idx, target = _batches(1)[0]
    F.mse_loss(model(idx), target).backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None for p in model.parameters())
    assert all(not p.grad.to_dense().any() for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_load_state_dict_checks_what_it_loads():
    model = _model()
    opt = sparse_dense_optimizer(model)
    with pytest.raises(
        ValueError, match="holds 1 optimizers, this MultipleOptimizer has 2"
    ):
        opt.load_state_dict(sparse_dense_optimizer(nn.Linear(2, 2)).state_dict())
    swapped = opt.state_dict()
    swapped["classes"] = swapped["classes"][::-1]
    with pytest.raises(ValueError, match=r"holds optimizers \['Adam', 'SparseAdam'\]"):
        opt.load_state_dict(swapped)
    with pytest.raises(ValueError, match="not a MultipleOptimizer state dict"):
        opt.load_state_dict(opt.optimizers[1].state_dict())


def test_add_param_group_points_to_the_children():
    opt = sparse_dense_optimizer(_model())
    with pytest.raises(NotImplementedError, match=r"optimizers\[i\]\.add_param_group"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(1))]})


def test_repr_lists_the_children():
    text = repr(sparse_dense_optimizer(_model(), lr=0.5))
    assert text.startswith("MultipleOptimizer(\n  (0): SparseAdam (")
    assert "\n  (1): Adam (" in text and "lr: 0.5" in text and text.endswith("\n)")


def test_deepcopy_gives_an_independent_working_copy():
    model = _model()
    opt = sparse_dense_optimizer(model)
    _train(model, opt, _batches(1))
    model2, opt2 = copy.deepcopy((model, opt))
    _train(model2, opt2, _batches(2))
    assert not torch.equal(model.fc1.weight, model2.fc1.weight)
    assert opt2.optimizers[1].param_groups[0]["params"][0] is model2.fc1.weight


def test_grad_scaler_steps_it_and_skips_on_inf():
    model = _model()
    opt = sparse_dense_optimizer(model, lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    idx, target = _batches(1)[0]
    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(F.mse_loss(model(idx), target)).backward()
    scaler.step(opt)
    scaler.update()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    opt.zero_grad()
    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(F.mse_loss(model(idx), target)).backward()
    model.fc1.weight.grad[0, 0] = float("inf")
    scaler.step(opt)  # skipped: inf in a dense gradient
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.get_scale() == 512.0


def _one_cycle_trace(opt, steps: int = 6):
    """(lr, beta1) of every group after each OneCycleLR step."""
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=steps + 1, cycle_momentum=True
    )
    trace = []
    for _ in range(steps):
        opt.step()
        sched.step()
        trace.append([(g["lr"], g["betas"][0]) for g in opt.param_groups])
    return trace


def test_one_cycle_with_momentum_cycles_both_childrens_betas_as_on_one_adam():
    model = _model()
    multi = sparse_dense_optimizer(model, lr=0.01)
    reference = torch.optim.Adam([nn.Parameter(torch.ones(1))], lr=0.01)
    multi_trace = _one_cycle_trace(multi)
    reference_trace = _one_cycle_trace(reference)
    assert [t[0] for t in multi_trace] == [t[1] for t in multi_trace]  # same per child
    assert [t[0] for t in multi_trace] == [t[0] for t in reference_trace]
    assert len({beta for step in multi_trace for _, beta in step}) > 2  # it cycles


def test_cyclic_lr_cycles_momentum_of_sgd_children():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    multi = MultipleOptimizer(
        torch.optim.SGD([a], lr=0.1, momentum=0.9),
        torch.optim.RMSprop([b], lr=0.1, momentum=0.9),
    )
    sched = torch.optim.lr_scheduler.CyclicLR(
        multi, base_lr=0.01, max_lr=0.1, step_size_up=2, cycle_momentum=True
    )
    momenta = []
    for _ in range(4):
        multi.step()
        sched.step()
        momenta.append([g["momentum"] for g in multi.param_groups])
    assert all(m0 == m1 for m0, m1 in momenta)
    assert momenta[1][0] == pytest.approx(0.8, abs=0)  # max_lr reached: base_momentum


def test_defaults_are_the_options_every_child_shares():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    multi = MultipleOptimizer(
        torch.optim.SGD([a], lr=0.1, momentum=0.9), torch.optim.Adam([b], lr=0.1)
    )
    assert multi.defaults["lr"] == 0.1
    assert "momentum" not in multi.defaults and "betas" not in multi.defaults
    multi.optimizers[1].defaults["lr"] = 0.2
    assert multi.defaults["lr"] is None
    with pytest.raises(ValueError, match="must support momentum or beta1"):
        torch.optim.lr_scheduler.OneCycleLR(multi, max_lr=0.1, total_steps=5)


def test_a_parameter_added_to_a_second_child_is_an_error_before_any_step():
    model = _model()
    multi = sparse_dense_optimizer(model, lr=0.1)
    _train(model, multi, _batches(1))
    multi.optimizers[1].add_param_group({"params": [model.emb.weight]})
    before = [p.detach().clone() for p in model.parameters()]
    idx, target = _batches(1, seed=1)[0]
    F.mse_loss(model(idx), target).backward()
    with pytest.raises(
        ValueError, match=r"optimizers\[0\] \(SparseAdam\) and in optimizers\[1\]"
    ):
        multi.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_child_that_needs_a_closure_is_refused():
    p = nn.Parameter(torch.ones(2))
    with pytest.raises(TypeError, match=r"optimizers\[1\] \(LBFGS\) needs a closure"):
        MultipleOptimizer(
            torch.optim.SGD([p], lr=0.1),
            torch.optim.LBFGS([nn.Parameter(torch.ones(1))]),
        )


def test_state_reads_empty_for_a_parameter_without_state():
    model = _model()
    multi = sparse_dense_optimizer(model)
    assert multi.state[model.fc1.weight] == {}
    _train(model, multi, _batches(1))
    assert multi.state[model.fc1.weight] is multi.optimizers[1].state[model.fc1.weight]


@pytest.mark.parametrize("bad", [None, "checkpoint.pt", [1, 2]])
def test_load_state_dict_names_a_non_dict(bad):
    with pytest.raises(TypeError, match=rf"got {type(bad).__name__}"):
        sparse_dense_optimizer(_model()).load_state_dict(bad)


def test_bad_factories_and_kwargs_are_named():
    with pytest.raises(TypeError, match="dense must be an optimizer class.*got str"):
        sparse_dense_optimizer(_model(), dense="adam")
    with pytest.raises(TypeError, match="sparse_kwargs must be a dict.*got list"):
        sparse_dense_optimizer(_model(), sparse_kwargs=[("lr", 0.1)])

    def sgd_without_lr(params):
        return torch.optim.SGD(params, lr=0.1)

    with pytest.raises(
        ValueError, match=r"does not accept 'lr' \(from lr \(or dense_kwargs\)\)"
    ):
        sparse_dense_optimizer(_model(), dense=sgd_without_lr)


def test_pickle_round_trip_keeps_training_and_hooks_work_again():
    import pickle

    model = _model()
    multi = sparse_dense_optimizer(model)
    _train(model, multi, _batches(1))
    model2, multi2 = pickle.loads(pickle.dumps((model, multi)))
    calls = []
    multi2.register_step_pre_hook(lambda *args: calls.append(1))
    _train(model2, multi2, _batches(2))
    assert len(calls) == 2
    assert multi2.state_dict()["optimizers"][1]["state"][0]["step"] == 3


def test_a_parameter_appended_to_an_existing_group_of_another_child_is_an_error():
    model = _model()
    multi = sparse_dense_optimizer(model, lr=0.1)
    _train(model, multi, _batches(1))
    dense_group = multi.optimizers[1].param_groups[0]
    dense_group["params"].append(model.emb.weight)
    with pytest.raises(ValueError, match=r"optimizers\[0\] \(SparseAdam\) and in"):
        multi.step()
    dense_group["params"].pop()
    multi.step()  # fixed again: steps
    original = list(dense_group["params"])
    params = list(original)
    params[0] = model.bag.weight  # same length, another list
    dense_group["params"] = params
    with pytest.raises(ValueError, match=r"optimizers\[0\] \(SparseAdam\) and in"):
        multi.step()
    dense_group["params"] = original
    multi.step()
    dense_group["params"][1] = model.emb.weight  # in place: same list, same length
    with pytest.raises(ValueError, match=r"optimizers\[0\] \(SparseAdam\) and in"):
        multi.step()


def test_state_pickled_by_an_earlier_version_loads_and_steps():
    # Earlier versions pickled {"optimizers": ..., "defaults": {}} and kept no
    # other attribute; pickle calls __setstate__ on a bare instance.
    model = _model()
    children = sparse_dense_optimizer(model).optimizers
    multi = MultipleOptimizer.__new__(MultipleOptimizer)
    multi.__setstate__({"optimizers": children, "defaults": {}})
    calls = []
    multi.register_step_pre_hook(lambda *args: calls.append(1))
    _train(model, multi, _batches(2))
    assert len(calls) == 2 and multi.defaults["betas"] == (0.9, 0.999)
