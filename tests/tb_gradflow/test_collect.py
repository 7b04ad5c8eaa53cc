"""watch(): what is logged, when, and that it equals a direct computation."""

import copy
import functools
import gc
import itertools
import math
import pickle
import weakref

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow
from tb_gradflow import _reduce
from tb_gradflow.gradient_stats import layer_stats
from tb_gradflow.layers import layer_name, select_layers


def reference_stats(grad: torch.Tensor) -> dict[str, float]:
    """The statistics of one gradient, computed directly in float64."""
    g = grad.to_dense().double() if grad.is_sparse else grad.double()
    finite = torch.isfinite(g)
    return {
        "abs_mean": g.abs().mean().item(),
        "abs_max": g.abs().max().item(),
        "norm": g.norm().item(),
        "nonfinite": float((~finite).sum()),
    }


class MLP(nn.Module):
    def __init__(self, sizes=(8, 16, 16, 4)):
        super().__init__()
        self.layers = nn.Sequential(
            *[
                m
                for a, b in zip(sizes[:-1], sizes[1:])
                for m in (nn.Linear(a, b), nn.Tanh())
            ][:-1]
        )

    def forward(self, x):
        return self.layers(x)


def train_steps(model, opt, n_steps, *, batch=5, in_dim=8):
    for _ in range(n_steps):
        opt.zero_grad()
        model(torch.randn(batch, in_dim)).pow(2).mean().backward()
        opt.step()


def stat_of(last, layers, name, stat):
    return last.stat(stat)[layers.index(name)]


# -- layer selection -----------------------------------------------------------


def test_layer_name_drops_trailing_weight_and_compile_component():
    assert layer_name("fc1.weight") == "fc1"
    assert layer_name("weight") == "weight"
    assert layer_name("a._orig_mod.b.weight") == "a.b"
    assert layer_name("lstm.weight_ih_l0") == "lstm.weight_ih_l0"


def test_select_layers_excludes_biases_frozen_and_ties():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.lstm = nn.LSTM(4, 4)
            self.frozen = nn.Linear(4, 4)
            self.frozen.requires_grad_(False)
            self.out = nn.Linear(4, 10)
            self.out.weight = self.emb.weight  # tied

    names = [n for n, _, _ in select_layers(Tied())]
    assert names == ["emb", "lstm.weight_ih_l0", "lstm.weight_hh_l0"]
    with_bias = [n for n, _, _ in select_layers(Tied(), include_bias=True)]
    assert "lstm.bias_ih_l0" in with_bias and "out.bias" in with_bias
    assert with_bias.count("emb") == 1


def test_select_layers_globs():
    model = MLP()
    assert [n for n, _, _ in select_layers(model, include="layers.0")] == ["layers.0"]
    names = [n for n, _, _ in select_layers(model, exclude=["layers.0", "layers.2"])]
    assert names == ["layers.4"]
    with pytest.raises(ValueError, match="No layer to watch"):
        select_layers(model, exclude="layers.*")


def test_an_include_pattern_matching_nothing_lists_the_layers():
    """Also when another pattern matches: a typo must not pass silently."""
    model = MLP()
    with pytest.raises(
        ValueError,
        match=r"include pattern 'layer.0' matches no layer; the model's layers "
        r"\(3\): layers\.0, layers\.2, layers\.4$",
    ):
        select_layers(model, include=["layers.2", "layer.0"])
    big = nn.Sequential(*[nn.Linear(2, 2) for _ in range(30)])
    with pytest.raises(ValueError, match=r"\(30\): 0, 1, .*, 19, \.\.\.$"):
        select_layers(big, include="x")
    assert [n for n, _, _ in select_layers(model, exclude="nothing*")] == [
        "layers.0",
        "layers.2",
        "layers.4",
    ]


def test_a_second_watcher_on_one_writer_and_name_is_refused(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    model = MLP()
    with SummaryWriter(tmp_path) as writer:
        first = tb_gradflow.watch(model, writer)
        with pytest.raises(ValueError, match="already has a watcher unnamed: GradFlow"):
            tb_gradflow.watch(model, writer)
        other = tb_gradflow.watch(model, writer, name="copy")  # another name: fine
        first.remove()
        again = tb_gradflow.watch(model, writer)  # the first was removed
        with pytest.raises(ValueError, match="watcher named 'copy'"):
            tb_gradflow.watch(MLP(), writer, name="copy")
        other.remove()
        again.remove()
    tb_gradflow.watch(model, None)
    tb_gradflow.watch(model, None)  # no writer: nothing written twice


def test_select_layers_reads_a_pattern_generator_once():
    model = MLP()
    got = select_layers(model, include=(p for p in ["layers.4", "layers.0"]))
    assert [n for n, _, _ in got] == ["layers.0", "layers.4"]


def test_wrapper_prefixes_are_stripped():
    model = MLP()
    plain = [n for n, _, _ in select_layers(model)]
    assert [n for n, _, _ in select_layers(nn.DataParallel(model))] == plain
    compiled = torch.compile(model)  # not run: the wrapper alone
    assert [n for n, _, _ in select_layers(compiled)] == plain

    class Wrapper(nn.Module):  # e.g. an engine that keeps the model as .module
        def __init__(self, m):
            super().__init__()
            self.module = m

    assert [n for n, _, _ in select_layers(Wrapper(model))] == plain


def test_sparse_embedding_is_marked_sparse():
    model = nn.Sequential(nn.Embedding(10, 3, sparse=True), nn.Linear(3, 2))
    assert [s for _, _, s in select_layers(model)] == [True, False]


# -- statistics ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_stats_equal_direct_computation(tmp_path, dtype):
    model = MLP().to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with (
        SummaryWriter(tmp_path) as w,
        tb_gradflow.watch(model, w, optimizer=opt) as flow,
    ):
        opt.zero_grad()
        model(torch.randn(5, 8, dtype=dtype)).pow(2).mean().backward()
        params = [p for n, p in model.named_parameters() if n.endswith("weight")]
        grads = [p.grad.clone() for p in params]
        opt.step()
    for name, g in zip(flow.layers, grads):
        ref = reference_stats(g)
        for stat, want in ref.items():
            assert stat_of(flow.last, flow.layers, name, stat) == pytest.approx(
                want, rel=1e-6, abs=1e-30
            ), (name, stat)


def test_large_tensors_are_chunked_and_stay_precise(tmp_path):
    # 3 scratch chunks; float32 dot products over 1M elements alone would lose
    # ~1e-5 relative precision.
    layer = nn.Linear(1024, _reduce._CHUNK * 3 // 1024 + 7, bias=False)
    layer.weight.grad = torch.randn_like(layer.weight) * 1e-3
    layer.weight.grad[5, 5] = 0.75  # the max sits in one chunk only
    flow = tb_gradflow.watch(layer, SummaryWriter(tmp_path))
    last = flow.log(0)
    ref = reference_stats(layer.weight.grad)
    for stat in ("abs_mean", "abs_max", "norm"):
        assert last.stat(stat)[0] == pytest.approx(ref[stat], rel=1e-6, abs=0)


@pytest.fixture
def threads():
    """Restores torch's thread count after a test that changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("rows", [3, 8, 40])
def test_packed_cpu_reduction_equals_float64_per_layer(
    monkeypatch, threads, n_threads, rows
):
    # A scratch of a few rows: pieces split across groups and over the threads'
    # regions, several gradients share a group, regions fill unevenly, padded
    # tails must not leak the previous group's values, and the layers' order in
    # `owners` is not their order in `grads`.
    monkeypatch.setattr(_reduce, "_CHUNK", rows * _reduce._ROW)
    torch.set_num_threads(n_threads)
    torch.manual_seed(0)
    grads = [
        torch.randn(5000) * 3,  # split over two groups, ends mid-row
        torch.randn(7, 3),  # shares a row-aligned group with others
        torch.randn(0),  # empty: no rows
        torch.randn(40, 90).t(),  # not contiguous
        torch.randn(2500, dtype=torch.float64),  # widened
        torch.randn(1024) * 1e-3,  # exactly one row
        torch.randn(3 * 2048 + 5),  # one part per region, and a tail
    ]
    owners = [4, 0, 5, 2, 1, 3, 6]
    scratch: dict = {}
    for _ in range(2):  # the second call reuses the plan
        got, _ = _reduce.combine([_reduce.reduce_dense(grads, owners, scratch)], 7)
        for g, layer in zip(grads, owners):
            d = g.double()
            want = [
                d.abs().sum(),
                d.abs().max() if d.numel() else 0.0,
                d.square().sum(),
            ]
            np.testing.assert_allclose(got[:, layer], want, rtol=1e-6)


@pytest.mark.parametrize("seed", range(12))
def test_packed_cpu_reduction_on_random_layouts(monkeypatch, threads, seed):
    """Random gradient sizes, dtypes, strides, scratch sizes and thread counts
    against a float64 computation per layer; one scratch serves every call
    (plans reused, rebuilt for another thread count or a grown buffer)."""
    gen = torch.Generator().manual_seed(seed)

    def draw(high: int) -> int:
        return int(torch.randint(high, (1,), generator=gen))

    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    monkeypatch.setattr(_reduce, "_CHUNK", (2 + draw(30)) * _reduce._ROW)
    grads = []
    for _ in range(1 + draw(8)):
        n = draw(3) * 2048 + draw(3000)
        g = torch.randn(n, generator=gen) * 10.0 ** (draw(7) - 3)
        if draw(4) == 0 and n > 1:  # strided: every other element of a larger one
            g = torch.randn(2 * n, generator=gen)[::2]
        grads.append(g.to(dtypes[draw(6) % 4 if draw(3) == 0 else 0]))
    owners = torch.randperm(len(grads), generator=gen).tolist()
    scratch: dict = {}
    for n_threads in (1 + draw(4), 1 + draw(4), 1 + draw(4)):
        torch.set_num_threads(n_threads)
        got, _ = _reduce.combine(
            [_reduce.reduce_dense(grads, owners, scratch)], len(grads)
        )
        for g, layer in zip(grads, owners):
            d = g.double().abs()
            want = [d.sum(), d.max() if d.numel() else 0.0, d.square().sum()]
            np.testing.assert_allclose(got[:, layer], want, rtol=1e-6)
        grads.append(torch.randn(1000 + draw(3000), generator=gen))  # grows it
        owners.append(len(owners))


@pytest.mark.parametrize("path", ["packed", "foreach"])
def test_huge_and_tiny_gradients_give_float64_statistics(monkeypatch, path):
    """Squares of 1e30-sized values overflow float32, sums of 1e36-sized ones
    too, squares of 1e-25-sized ones underflow it: those layers' sums are
    computed in float64. "foreach" is the accelerators' path, run on the CPU."""
    if path == "foreach":
        monkeypatch.setattr(
            _reduce, "reduce_dense", lambda g, o, _: _reduce._reduce_dense_foreach(g, o)
        )
    grads = [
        torch.full((64, 64), 1e30),
        torch.full((3000,), -2e30),
        torch.full((2048,), 1e36),
        torch.randn(50, 70) * 1e-25,
        torch.sparse_coo_tensor(
            [[1, 5]], torch.full((2, 3), 1e-30), (8, 3), check_invariants=True
        ),
    ]
    stats, _ = layer_stats(grads)
    for k, g in enumerate(grads):
        ref = reference_stats(g)
        assert ref["norm"] > 0 and math.isfinite(ref["norm"])
        assert stats[0, k] == pytest.approx(ref["abs_mean"], rel=1e-6, abs=0)
        assert stats[1, k] == pytest.approx(ref["abs_max"], rel=1e-6, abs=0)
        assert stats[2, k] == pytest.approx(ref["norm"], rel=1e-6, abs=0)
        assert stats[3, k] == 0  # nothing non-finite


def test_tiny_squares_flushed_to_zero_do_not_change_the_norm():
    """With denormals flushed to zero (a common speed setting), squares of
    1e-20 are 0 in float32: here they are 9% of Σg², found by mean|g|."""
    g = torch.full((100_000,), 1e-20)
    g[7] = 1e-17
    assert torch.set_flush_denormal(True)
    try:
        stats, _ = layer_stats([g])
    finally:
        torch.set_flush_denormal(False)
    assert stats[2, 0] == pytest.approx(reference_stats(g)["norm"], rel=1e-6, abs=0)


def test_loaded_values_equal_logged_values(tmp_path):
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    logged = []
    with (
        SummaryWriter(tmp_path) as w,
        tb_gradflow.watch(model, w, optimizer=opt) as flow,
    ):
        for _ in range(3):
            train_steps(model, opt, 1)
            logged.append(flow.last)
    run = tb_gradflow.load_run(tmp_path)
    assert run.steps.tolist() == [0, 1, 2]
    assert run.layers == flow.layers
    for stat in logged[0].names:  # what was written, by name
        np.testing.assert_array_equal(
            run.values(stat),
            np.stack([s.stat(stat).astype(np.float32) for s in logged]),
        )


def test_gradient_accumulation_logs_once_per_optimizer_step(tmp_path):
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with (
        SummaryWriter(tmp_path) as w,
        tb_gradflow.watch(model, w, optimizer=opt),
    ):
        for _ in range(2):
            opt.zero_grad()
            for _ in range(4):  # micro-batches
                (model(torch.randn(5, 8)).pow(2).mean() / 4).backward()
            accumulated = model.layers[0].weight.grad.clone()
            opt.step()
    run = tb_gradflow.load_run(tmp_path)
    assert run.steps.tolist() == [0, 1]
    ref = reference_stats(accumulated)
    assert run.values("abs_mean")[-1, 0] == pytest.approx(
        ref["abs_mean"], rel=1e-6, abs=0
    )
    assert run.values("norm")[-1, 0] == pytest.approx(ref["norm"], rel=1e-6, abs=0)


def test_every_logs_only_due_steps_and_computes_nothing_else(tmp_path, monkeypatch):
    calls = []
    real = _reduce.reduce_dense
    monkeypatch.setattr(_reduce, "reduce_dense", lambda *a: calls.append(1) or real(*a))
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with (
        SummaryWriter(tmp_path) as w,
        tb_gradflow.watch(model, w, optimizer=opt, every=3) as flow,
    ):
        train_steps(model, opt, 7)
    assert len(calls) == 3
    assert tb_gradflow.load_run(tmp_path).steps.tolist() == [0, 3, 6]
    assert tb_gradflow.load_run(tmp_path).every == 3
    assert flow.step == 7


def test_writer_none_writes_and_computes_nothing(monkeypatch):
    monkeypatch.setattr(_reduce, "reduce_dense", lambda *a: pytest.fail("computed"))
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with tb_gradflow.watch(model, None, optimizer=opt) as flow:
        train_steps(model, opt, 2)
        assert flow.log(2) is None
    assert flow.last is None and flow.step == 2


def test_manual_log_without_optimizer(tmp_path):
    model = MLP()
    with SummaryWriter(tmp_path) as w:
        flow = tb_gradflow.watch(model, w, every=2)
        for step in range(5):
            model.zero_grad()
            model(torch.randn(5, 8)).sum().backward()
            logged = flow.log(step)
            assert (logged is not None) == (step % 2 == 0)
    assert tb_gradflow.load_run(tmp_path).steps.tolist() == [0, 2, 4]


def test_detached_layer_has_no_gradient_not_zero(tmp_path):
    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.lower = nn.Linear(8, 8)
            self.dead = nn.Linear(8, 8)
            self.upper = nn.Linear(8, 1)

        def forward(self, x):
            h = self.lower(x).detach()  # the bug: nothing reaches `lower`
            return self.upper(h) + 0 * self.dead(h)  # `dead` gets an exact zero

    model = Detached()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with SummaryWriter(tmp_path) as w, tb_gradflow.watch(model, w, optimizer=opt):
        train_steps(model, opt, 2)
    run = tb_gradflow.load_run(tmp_path)
    assert run.layers == ["lower", "dead", "upper"]
    assert run.no_grad[:, 0].all() and not run.no_grad[:, 1:].any()
    assert np.isnan(run.values("abs_mean")[:, 0]).all()
    assert (run.values("abs_mean")[:, 1] == 0).all()
    assert (run.values("abs_mean")[:, 2] > 0).all()


def test_nan_gradient_is_counted_and_training_goes_on(tmp_path):
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with SummaryWriter(tmp_path) as w, tb_gradflow.watch(model, w, optimizer=opt):
        train_steps(model, opt, 1)
        opt.zero_grad()
        model(torch.randn(5, 8)).pow(2).mean().backward()
        model.layers[2].weight.grad[0, :3] = float("nan")
        model.layers[2].weight.grad[1, 0] = float("inf")
        opt.step()
        with torch.no_grad():  # repair, as a user would, and go on
            for p in model.parameters():
                p.nan_to_num_(0.0, 0.0, 0.0)
        train_steps(model, opt, 1)
    run = tb_gradflow.load_run(tmp_path)
    assert run.steps.tolist() == [0, 1, 2]
    assert run.values("nonfinite")[:, 1].tolist() == [0, 4, 0]
    assert run.values("nonfinite")[:, [0, 2]].sum() == 0
    assert math.isnan(run.values("abs_mean")[1, 1])


def test_sparse_embedding_counts_as_dense_and_records_rows(tmp_path):
    model = nn.Sequential(nn.Embedding(100, 6, sparse=True), nn.Linear(6, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.tensor([[3, 7, 3, 9]])  # row 3 twice: its gradients add up
    with (
        SummaryWriter(tmp_path) as w,
        tb_gradflow.watch(model, w, optimizer=opt) as flow,
    ):
        opt.zero_grad()
        model(ids).pow(2).sum().backward()
        assert model[0].weight.grad.is_sparse
        ref = reference_stats(model[0].weight.grad)
        opt.step()
    for stat in ("abs_mean", "abs_max", "norm"):
        assert flow.last.stat(stat)[0] == pytest.approx(ref[stat], rel=1e-6, abs=0)
    assert flow.last.stat("rows")[0] == pytest.approx(3 / 100)
    assert flow.last.stat("rows")[1] == 1.0
    run = tb_gradflow.load_run(tmp_path)
    assert run.sparse == [True, False]


def test_two_named_watchers_share_a_writer(tmp_path):
    gen, disc = MLP(), MLP()
    opt_g = torch.optim.SGD(gen.parameters(), lr=0.01)
    opt_d = torch.optim.SGD(disc.parameters(), lr=0.01)
    with SummaryWriter(tmp_path) as w:
        fg = tb_gradflow.watch(gen, w, optimizer=opt_g, name="generator")
        fd = tb_gradflow.watch(disc, w, optimizer=opt_d, name="discriminator", every=2)
        train_steps(gen, opt_g, 3)
        train_steps(disc, opt_d, 3)
        fg.remove(), fd.remove()
    runs = tb_gradflow.load(tmp_path)
    assert sorted(runs) == ["./discriminator", "./generator"]
    assert runs["./generator"].steps.tolist() == [0, 1, 2]
    assert runs["./discriminator"].steps.tolist() == [0, 2]
    assert tb_gradflow.load_run(tmp_path, name="generator").name == "generator"
    with pytest.raises(ValueError, match="generator"):
        tb_gradflow.load_run(tmp_path)  # unnamed: none here; lists what there is


def test_resumed_run_continues_and_later_record_wins(tmp_path):
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with SummaryWriter(tmp_path) as w, tb_gradflow.watch(model, w, optimizer=opt):
        train_steps(model, opt, 4)  # steps 0..3
    # The job died after a checkpoint at step 2 and resumes from there.
    with (
        SummaryWriter(tmp_path) as w,
        tb_gradflow.watch(model, w, optimizer=opt, start_step=2) as flow,
    ):
        train_steps(model, opt, 3)  # steps 2..4
        resumed = flow.last
    run = tb_gradflow.load_run(tmp_path)
    assert run.steps.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(
        run.values("norm")[-1], resumed.stat("norm").astype(np.float32)
    )


def test_remove_leaves_no_hooks(tmp_path):
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    before = dict(opt._optimizer_step_pre_hooks)
    with SummaryWriter(tmp_path) as w:
        flow = tb_gradflow.watch(model, w, optimizer=opt, scaler=scaler)
        assert len(opt._optimizer_step_pre_hooks) == len(before) + 1
        assert "step" in vars(scaler)
        flow.remove()
    assert dict(opt._optimizer_step_pre_hooks) == before
    assert "step" not in vars(scaler)
    assert not any(m._backward_hooks or m._forward_hooks for m in model.modules())
    train_steps(model, opt, 1)
    assert flow.last is None


# -- AMP -----------------------------------------------------------------------


def scaled_step(model, opt, scaler, *, poison=False):
    opt.zero_grad()
    loss = model(torch.randn(5, 8)).pow(2).mean()
    scaler.scale(loss).backward()
    if poison:
        model.layers[0].weight.grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()


@pytest.mark.parametrize("fused", [False, True])
def test_grad_scaler_logs_unscaled_gradients(tmp_path, fused):
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    with (
        SummaryWriter(tmp_path) as w,
        tb_gradflow.watch(model, w, optimizer=opt, scaler=scaler) as flow,
    ):
        # The same gradient without scaling is the reference.
        x = torch.randn(5, 8)
        model.zero_grad()
        model(x).pow(2).mean().backward()
        want = reference_stats(model.layers[0].weight.grad)
        opt.zero_grad()
        scaler.scale(model(x).pow(2).mean()).backward()
        scaler.step(opt)
        scaler.update()
    for stat in ("abs_mean", "abs_max", "norm"):
        assert flow.last.stat(stat)[0] == pytest.approx(want[stat], rel=1e-5, abs=0)
    assert flow.last.loss_scale == 2.0**12
    assert not flow.last.skipped


@pytest.mark.parametrize("fused", [False, True])
def test_step_skipped_by_scaler_is_logged(tmp_path, fused):
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    with (
        SummaryWriter(tmp_path) as w,
        tb_gradflow.watch(model, w, optimizer=opt, scaler=scaler),
    ):
        scaled_step(model, opt, scaler)
        scaled_step(model, opt, scaler, poison=True)
        scaled_step(model, opt, scaler)
    run = tb_gradflow.load_run(tmp_path)
    assert run.steps.tolist() == [0, 1, 2]
    assert run.skipped.tolist() == [False, True, False]
    assert run.values("nonfinite")[:, 0].tolist() == [0, 1, 0]
    assert run.loss_scale.tolist() == [2.0**12, 2.0**12, 2.0**11]


def test_removed_watcher_writes_nothing_and_log_raises(tmp_path):
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    with SummaryWriter(tmp_path) as w:
        flow = tb_gradflow.watch(model, w, optimizer=opt, scaler=scaler)
        covered = scaler.step

        def library_step(optimizer, *args, **kwargs):  # patched after watch()
            return covered(optimizer, *args, **kwargs)

        scaler.step = library_step
        scaled_step(model, opt, scaler)
        flow.remove()
        flow.remove()  # harmless
        assert vars(scaler)["step"] is library_step
        scaled_step(model, opt, scaler, poison=True)  # skipped by the scaler
        scaled_step(model, opt, scaler)
        train_steps(model, opt, 1)
        with pytest.raises(RuntimeError, match="GradFlow was removed"):
            flow.log(4)
    assert tb_gradflow.load_run(tmp_path).steps.tolist() == [0]
    assert flow.last.step == 0 and flow.step == 1


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("patched_before", [False, True])
def test_scaler_step_is_restored_in_any_removal_order(tmp_path, order, patched_before):
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    calls = []
    if patched_before:  # by the user or another library

        def user_step(optimizer, *args, **kwargs):
            calls.append(optimizer)
            return type(scaler).step(scaler, optimizer, *args, **kwargs)

        scaler.step = user_step
    before = dict(vars(scaler))
    names = ["a", "b", "c"]
    with SummaryWriter(tmp_path) as w:
        flows = [
            tb_gradflow.watch(model, w, optimizer=opt, scaler=scaler, name=n)
            for n in names
        ]
        for i in order:
            scaled_step(model, opt, scaler)
            scaled_step(model, opt, scaler, poison=True)
            flows[i].remove()
        weight = model.layers[0].weight.detach().clone()
        scaled_step(model, opt, scaler)
    assert not torch.equal(model.layers[0].weight, weight)  # the step still steps
    assert vars(scaler).get("step") is before.get("step")
    assert vars(scaler).keys() == before.keys()
    assert calls == ([opt] * (2 * len(order) + 1) if patched_before else [])
    runs = tb_gradflow.load(tmp_path)
    for k, i in enumerate(order):  # each logged until it was removed
        run = runs[f"./{names[i]}"]
        assert run.steps.tolist() == list(range(2 * k + 2))
        assert run.skipped.tolist() == [False, True] * (k + 1)


def cover(scaler):
    """Patches ``scaler.step`` as another library would; returns the undo."""
    covered = scaler.step

    def library_step(optimizer, *args, **kwargs):
        return covered(optimizer, *args, **kwargs)

    scaler.step = library_step

    def undo():
        scaler.step = covered

    return undo


def test_removed_watcher_is_collectable_while_its_patch_is_covered():
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    flow = tb_gradflow.watch(model, None, optimizer=opt, scaler=scaler)
    cover(scaler)  # never undone: our patch stays in the library's chain
    flow.remove()
    ref = weakref.ref(flow)
    del flow
    gc.collect()
    assert ref() is None
    weight = model.layers[0].weight.detach().clone()
    scaled_step(model, opt, scaler)
    assert not torch.equal(model.layers[0].weight, weight)


def watch_a(model, opt, scaler):
    return tb_gradflow.watch(model, None, optimizer=opt, scaler=scaler, name="a")


def watch_b(model, opt, scaler):
    return tb_gradflow.watch(model, None, optimizer=opt, scaler=scaler, name="b")


def covered_then_uncovered(model, opt, scaler):
    # a is removed under the cover; b comes after the cover is undone.
    a = watch_a(model, opt, scaler)
    undo = cover(scaler)
    a.remove()
    undo()
    b = watch_b(model, opt, scaler)
    b.remove()
    return [a, b]


def removed_under_cover(first, model, opt, scaler):
    # Both watch; `first` is removed under a cover that is then undone, the
    # other after. first="b": b is on top, inert, until a (below it) goes.
    flows = {"a": watch_a(model, opt, scaler), "b": watch_b(model, opt, scaler)}
    undo = cover(scaler)
    flows[first].remove()
    undo()
    flows["a" if first == "b" else "b"].remove()
    return [flows["a"], flows["b"]]


@pytest.mark.parametrize(
    "scenario",
    [
        covered_then_uncovered,
        functools.partial(removed_under_cover, "b"),
        functools.partial(removed_under_cover, "a"),
    ],
    ids=[
        "covered_then_uncovered",
        "top_removed_under_cover",
        "bottom_removed_under_cover",
    ],
)
@pytest.mark.parametrize("patched_before", [False, True])
def test_scaler_is_restored_once_a_covering_patch_is_undone(scenario, patched_before):
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    if patched_before:

        def user_step(optimizer, *args, **kwargs):
            return type(scaler).step(scaler, optimizer, *args, **kwargs)

        scaler.step = user_step
    before = dict(vars(scaler))
    refs = [weakref.ref(flow) for flow in scenario(model, opt, scaler)]
    gc.collect()
    assert vars(scaler).get("step") is before.get("step")
    assert vars(scaler).keys() == before.keys()
    assert [ref() for ref in refs] == [None, None]
    weight = model.layers[0].weight.detach().clone()
    scaled_step(model, opt, scaler)
    assert not torch.equal(model.layers[0].weight, weight)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copied_scaler_is_unwatched_and_steps_its_own_optimizer(tmp_path, how):
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    with (
        SummaryWriter(tmp_path) as w,
        tb_gradflow.watch(model, w, optimizer=opt, scaler=scaler, name="a") as a,
        tb_gradflow.watch(model, w, optimizer=opt, scaler=scaler, name="b"),
    ):
        scaled_step(model, opt, scaler)
        if how == "deepcopy":
            scaler2 = copy.deepcopy(scaler)
        else:
            scaler2 = pickle.loads(pickle.dumps(scaler))
        model2 = copy.deepcopy(model)
        opt2 = torch.optim.SGD(model2.parameters(), lr=0.01)
        step2 = vars(scaler2)["step"]  # the class's step, bound to the copy
        assert step2.__func__ is type(scaler).step and step2.__self__ is scaler2
        weight, weight2 = (m.layers[0].weight.detach().clone() for m in (model, model2))
        scaled_step(model2, opt2, scaler2)
        scaled_step(model2, opt2, scaler2, poison=True)  # skipped by the copy
        assert torch.equal(model.layers[0].weight, weight)
        assert not torch.equal(model2.layers[0].weight, weight2)
        assert scaler2.get_scale() == 2.0**3 and scaler.get_scale() == 2.0**4
        assert a.step == 1  # the copy's steps reach no watcher
        scaled_step(model, opt, scaler, poison=True)  # the original stays watched
        assert a.step == 2 and a.last.skipped
    assert "step" not in vars(scaler)
    runs = tb_gradflow.load(tmp_path)
    assert [runs[f"./{n}"].steps.tolist() for n in "ab"] == [[0, 1], [0, 1]]


# -- arguments -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every": 0}, ValueError, "Invalid every: 0"),
        ({"every": 1.5}, ValueError, "Invalid every"),
        ({"start_step": -1}, ValueError, "Invalid start_step: -1"),
        ({"name": "a/b"}, ValueError, "Invalid name"),
        ({"optimizer": object()}, TypeError, "torch.optim.Optimizer"),
        ({"scaler": object()}, ValueError, "pass optimizer"),
        ({"thresholds": {}}, TypeError, "thresholds must be .*Thresholds or None"),
        (
            {"thresholds": tb_gradflow.Thresholds(patience=2)},
            ValueError,
            "thresholds apply only to alerts while training: pass on_alert",
        ),
        ({"include": 5}, TypeError, "include must be a str or an iterable of str"),
        ({"exclude": ["*", 1]}, TypeError, "exclude patterns must be str, got int"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        tb_gradflow.watch(MLP(), None, **kwargs)


CLASS_STEP = torch.amp.GradScaler.step


class SlottedScaler:
    __slots__ = ()

    def step(self, optimizer):
        return optimizer.step()


class PropertyStepScaler(torch.amp.GradScaler):
    @property
    def step(self):
        return super().step


@pytest.mark.parametrize(
    ("scaler", "match"),
    [
        (1.0, "got float$"),
        (object(), "got object$"),
        (torch.amp.GradScaler, "got the class GradScaler"),
        (SlottedScaler(), "got SlottedScaler, which has no instance __dict__"),
        (PropertyStepScaler("cpu"), "got PropertyStepScaler, whose step is a data"),
    ],
    ids=["float", "object", "class", "slots", "property"],
)
def test_bad_scaler_raises_before_any_hook(tmp_path, scaler, match):
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    hooks = dict(opt._optimizer_step_pre_hooks)
    with SummaryWriter(tmp_path) as w:
        with pytest.raises(
            TypeError, match="scaler must be a torch.amp.GradScaler, " + match
        ):
            tb_gradflow.watch(model, w, optimizer=opt, scaler=scaler)
        train_steps(model, opt, 2)
    assert dict(opt._optimizer_step_pre_hooks) == hooks
    assert torch.amp.GradScaler.step is CLASS_STEP  # the class is left alone
    with pytest.raises(ValueError, match="No gradflow data"):
        tb_gradflow.load(tmp_path)


class FrozenStepScaler(torch.amp.GradScaler):
    """A scaler whose step cannot be wrapped, which only shows when we try."""

    def __setattr__(self, name, value):
        if name == "step":
            raise AttributeError("step is frozen")
        super().__setattr__(name, value)


def test_watch_that_fails_after_a_hook_leaves_nothing_registered(tmp_path):
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = FrozenStepScaler("cpu")
    hooks = dict(opt._optimizer_step_pre_hooks)
    with SummaryWriter(tmp_path) as w:
        with pytest.raises(AttributeError, match="step is frozen"):
            tb_gradflow.watch(model, w, optimizer=opt, scaler=scaler)
        assert dict(opt._optimizer_step_pre_hooks) == hooks
        assert "step" not in vars(scaler)
        scaled_step(model, opt, scaler)
        train_steps(model, opt, 2)
    with pytest.raises(ValueError, match="No gradflow data"):
        tb_gradflow.load(tmp_path)


def test_bad_writer_and_model_raise():
    with pytest.raises(TypeError, match="SummaryWriter"):
        tb_gradflow.watch(MLP(), "runs/x")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        tb_gradflow.watch(lambda x: x, None)
    with pytest.raises(ValueError, match="Invalid step"):
        tb_gradflow.watch(MLP(), None).log(-1)


def test_foreach_path_equals_cpu_path():
    # The accelerator path (multi-tensor norms) run on CPU tensors, against the
    # CPU path, so both paths are checked where no GPU is present.
    grads = [torch.randn(300, 200), torch.randn(7), torch.randn(1000, 300) * 1e-4]
    owners = [0, 1, 2]
    cpu, _ = _reduce.combine([_reduce.reduce_dense(grads, owners, {})], 3)
    foreach, _ = _reduce.combine([_reduce._reduce_dense_foreach(grads, owners)], 3)
    np.testing.assert_allclose(foreach, cpu, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gradients_match_direct_computation(tmp_path):
    model = MLP().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with (
        SummaryWriter(tmp_path) as w,
        tb_gradflow.watch(model, w, optimizer=opt) as flow,
    ):
        opt.zero_grad()
        model(torch.randn(5, 8, device="cuda")).pow(2).mean().backward()
        grads = [p.grad.clone() for n, p in model.named_parameters() if "weight" in n]
        opt.step()
    for i, g in enumerate(grads):
        for stat, want in reference_stats(g).items():
            assert flow.last.stat(stat)[i] == pytest.approx(want, rel=1e-5, abs=0)
