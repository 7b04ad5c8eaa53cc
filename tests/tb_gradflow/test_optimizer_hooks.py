"""watch() with closure steps, optimizer wrappers, compiled steps, step_fn and a
parameter filter: the logged statistics against the gradient the optimizer
applied (recorded independently, by the optimizer itself)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3), nn.Linear(3, 1))


def batches(n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 4, generator=gen), torch.randn(16, 1, generator=gen))] * n


def loss_of(model, x, y):
    return ((model(x) - y) ** 2).mean()


def test_closure_steps_log_the_gradient_the_step_applies(
    tmp_path, recording_sgd, logged_equals_applied
):
    """Before, each step showed the previous step's gradient (step 0: none)."""
    model = mlp()
    opt = recording_sgd(model.parameters())
    with SummaryWriter(tmp_path) as writer:
        flow = tb_gradflow.watch(model, writer, optimizer=opt)
        for x, y in batches(4):

            def closure(x=x, y=y):
                opt.zero_grad()
                loss = loss_of(model, x, y)
                loss.backward()
                return loss

            opt.step(closure)
        flow.remove()
    run = tb_gradflow.load_run(tmp_path)
    logged_equals_applied(run, model, opt.applied, range(4))


def test_closure_by_keyword_with_clipping_inside(
    tmp_path, recording_sgd, logged_equals_applied
):
    """As Lightning steps: step(closure=...), the closure clipping after backward."""
    model = mlp()
    opt = recording_sgd(model.parameters(), lr=0.5)
    with SummaryWriter(tmp_path) as writer:
        flow = tb_gradflow.watch(model, writer, optimizer=opt, every=2)
        for x, y in batches(5):

            def closure(x=x, y=y):
                opt.zero_grad()
                loss = loss_of(model, x, y) * 50.0
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
                return loss

            opt.step(closure=closure)
        flow.remove()
    run = tb_gradflow.load_run(tmp_path)
    logged_equals_applied(run, model, opt.applied[::2], [0, 2, 4])
    total = torch.sqrt(sum(g.norm() ** 2 for g in opt.applied[0].values()))
    assert total.item() == pytest.approx(0.1, rel=1e-5)  # clipped before the step


def test_lbfgs_logs_the_gradient_its_step_starts_from(tmp_path):
    """LBFGS evaluates the closure several times a step: the first evaluation's
    gradient is the one logged (recorded here by the closure itself)."""
    model = mlp()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    first: list[torch.Tensor] = []
    with SummaryWriter(tmp_path) as writer:
        flow = tb_gradflow.watch(model, writer, optimizer=opt)
        for x, y in batches(3):
            calls = []

            def closure(x=x, y=y, calls=calls):
                opt.zero_grad()
                loss = loss_of(model, x, y)
                loss.backward()
                if not calls:
                    first.append(model[0].weight.grad.double().clone())
                calls.append(1)
                return loss

            opt.step(closure)
            assert len(calls) > 1
        flow.remove()
    run = tb_gradflow.load_run(tmp_path)
    assert list(run.steps) == [0, 1, 2]
    want = [g.abs().mean().item() for g in first]
    got = run.values("abs_mean")[:, run.layers.index("0")]
    assert got.tolist() == pytest.approx(want, rel=1e-6)


class IgnoresClosure(torch.optim.SGD):
    """An optimizer that never calls the closure it is given."""

    @torch.no_grad()
    def step(self, closure=None):
        return super().step()


def test_a_closure_never_called_is_logged_after_the_step():
    model = mlp()
    x, y = batches(1)[0]
    torch.optim.SGD(model.parameters())  # torch hooks SGD.step too: called twice
    opt = IgnoresClosure(model.parameters(), lr=0.0)
    flow = tb_gradflow.watch(model, None, optimizer=opt, on_alert="warn")
    loss_of(model, x, y).backward()
    want = model[0].weight.grad.abs().mean().item()
    opt.step(lambda: pytest.fail("called"))
    assert flow.last.step == 0
    assert flow.last.stat("abs_mean")[0] == pytest.approx(want, rel=1e-6)


def test_a_closure_that_raises_logs_nothing(recording_sgd):
    model = mlp()
    opt = recording_sgd(model.parameters())
    flow = tb_gradflow.watch(model, None, optimizer=opt, on_alert="warn")

    def failing():
        raise RuntimeError("data loader broke")

    with pytest.raises(RuntimeError, match="data loader broke"):
        opt.step(failing)
    assert flow.last is None
    x, y = batches(1)[0]
    opt.step(lambda: loss_of(model, x, y).backward())
    assert flow.last.step == 1  # the failed step still counts


class AdamWithSuper(torch.optim.Adam):
    """A subclass whose step calls its parent's (hooked) step."""

    def step(self, closure=None):
        return super().step(closure)


@pytest.mark.parametrize("with_closure", [False, True])
def test_a_subclass_calling_a_hooked_parent_step_is_one_step(tmp_path, with_closure):
    """torch hooks the class of each optimizer it creates: once a plain Adam
    exists, Adam.step runs the hooks too, and a subclass's super().step() ran
    them a second time (two steps counted and logged per step)."""
    model = mlp()
    torch.optim.Adam(model.parameters())
    opt = AdamWithSuper(model.parameters(), lr=0.01)
    grads = []
    with SummaryWriter(tmp_path) as writer:
        flow = tb_gradflow.watch(model, writer, optimizer=opt)
        for x, y in batches(3):

            def closure(x=x, y=y):
                opt.zero_grad()
                loss_of(model, x, y).backward()
                grads.append(model[0].weight.grad.double().clone())

            if with_closure:
                opt.step(closure)
            else:
                closure()
                opt.step()
        flow.remove()
    run = tb_gradflow.load_run(tmp_path)
    assert list(run.steps) == [0, 1, 2]
    want = [g.abs().mean().item() for g in grads]
    assert run.values("abs_mean")[:, 0].tolist() == pytest.approx(want, rel=1e-6)


def test_a_step_that_raised_does_not_make_the_next_one_nested(recording_sgd):
    model = mlp()
    opt = recording_sgd(model.parameters())
    flow = tb_gradflow.watch(model, None, optimizer=opt, on_alert="warn")
    with pytest.raises(ZeroDivisionError):
        opt.step(lambda: 1 / 0)
    x, y = batches(1)[0]
    for _ in range(2):
        opt.step(lambda: loss_of(model, x, y).backward())
    assert flow.last.step == 2 and len(opt.applied) == 2


def test_closures_of_steps_not_logged_are_passed_as_they_are():
    seen = []

    class Sees(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(closure)
            return super().step(closure)

    model = mlp()
    opt = Sees(model.parameters(), lr=0.1)
    tb_gradflow.watch(model, None, optimizer=opt, every=2, on_alert="warn")
    x, y = batches(1)[0]
    closures = [lambda: loss_of(model, x, y).backward() for _ in range(3)]
    for c in closures:
        opt.step(c)
    assert seen[1] is closures[1]
    assert seen[0] is not closures[0] and seen[0].closure is closures[0]


# -- optimizer wrappers ------------------------------------------------------------


def test_accelerate_wrapper_is_followed_to_the_optimizer_it_wraps(
    tmp_path, recording_sgd, logged_equals_applied
):
    from accelerate import Accelerator

    model = mlp()
    accelerator = Accelerator(cpu=True)
    model, opt = accelerator.prepare(model, recording_sgd(model.parameters()))
    assert type(opt).__name__ == "AcceleratedOptimizer"
    with SummaryWriter(tmp_path) as writer:
        flow = tb_gradflow.watch(model, writer, optimizer=opt)
        for x, y in batches(3):
            opt.zero_grad()
            accelerator.backward(loss_of(model, x, y))
            opt.step()
        flow.remove()
    logged_equals_applied(
        tb_gradflow.load_run(tmp_path), model, opt.optimizer.applied, range(3)
    )


def test_lightning_wrapper_is_followed_to_the_optimizer_it_wraps(recording_sgd):
    from lightning.pytorch.core.optimizer import LightningOptimizer

    model = mlp()
    inner = recording_sgd(model.parameters())
    flow = tb_gradflow.watch(
        model, None, optimizer=LightningOptimizer(inner), on_alert="warn"
    )
    x, y = batches(1)[0]
    inner.step(lambda: loss_of(model, x, y).backward())
    want = inner.applied[0][model[0].weight].abs().mean().item()
    assert flow.last.stat("abs_mean")[0] == pytest.approx(want, rel=1e-6)


class NoInit(torch.optim.Optimizer):
    def __init__(self) -> None:  # never calls Optimizer.__init__
        pass


@pytest.mark.parametrize(
    "optimizer, message",
    [
        (object(), r"got object; pass the optimizer whose step\(\) updates"),
        (NoInit(), r"got NoInit, a torch.optim.Optimizer subclass whose __init__"),
        ("adam", r"got str"),
    ],
)
def test_other_objects_are_refused_naming_what_was_passed(optimizer, message):
    with pytest.raises(TypeError, match=message):
        tb_gradflow.watch(mlp(), None, optimizer=optimizer)


# -- compiled steps --------------------------------------------------------------


def test_compiled_optimizer_step_logs_exact_values(tmp_path):
    """PyTorch's compiled-optimizer recipe: the hook runs outside the graph."""
    torch._dynamo.reset()
    model, reference = mlp(), mlp()
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01))
    ref_opt = torch.optim.Adam(reference.parameters(), lr=torch.tensor(0.01))

    @torch.compile(fullgraph=False)
    def compiled_step():
        opt.step()

    applied = []
    with SummaryWriter(tmp_path) as writer:
        flow = tb_gradflow.watch(model, writer, optimizer=opt)
        for x, y in batches(3):
            for m, o in ((model, opt), (reference, ref_opt)):
                o.zero_grad()
                loss_of(m, x, y).backward()
            applied.append({p: p.grad.double().clone() for p in model.parameters()})
            compiled_step()
            ref_opt.step()
        flow.remove()
    torch._dynamo.reset()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)
    run = tb_gradflow.load_run(tmp_path)
    want = [g[model[0].weight].abs().mean().item() for g in applied]
    assert run.values("abs_mean")[:, 0].tolist() == pytest.approx(want, rel=1e-6)


def test_compiled_model_with_optimizer(tmp_path, recording_sgd, logged_equals_applied):
    torch._dynamo.reset()
    model = mlp()
    compiled = torch.compile(model)
    opt = recording_sgd(model.parameters())
    with SummaryWriter(tmp_path) as writer:
        flow = tb_gradflow.watch(compiled, writer, optimizer=opt)
        for x, y in batches(2):
            opt.zero_grad()
            loss_of(compiled, x, y).backward()
            opt.step()
        flow.remove()
    torch._dynamo.reset()
    logged_equals_applied(tb_gradflow.load_run(tmp_path), model, opt.applied, [0, 1])


# -- step_fn and parameters --------------------------------------------------------


def test_step_fn_numbers_and_selects_the_logged_steps(tmp_path, recording_sgd):
    model = mlp()
    opt = recording_sgd(model.parameters())
    counter = {"step": 100}
    with SummaryWriter(tmp_path) as writer:
        flow = tb_gradflow.watch(
            model,
            writer,
            optimizer=opt,
            every=3,
            step_fn=lambda: counter["step"] if counter["step"] % 3 == 2 else None,
        )
        for x, y in batches(7):
            opt.zero_grad()
            loss_of(model, x, y).backward()
            opt.step()
            counter["step"] += 1
        flow.remove()
    run = tb_gradflow.load_run(tmp_path)
    assert list(run.steps) == [101, 104]
    assert run.every == 3
    want = opt.applied[1][model[0].weight].abs().mean().item()
    assert run.values("abs_mean")[0, 0] == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("bad", [-1, 1.5, "7", True])
def test_step_fn_returning_no_step_number_is_named(bad, recording_sgd):
    model = mlp()
    opt = recording_sgd(model.parameters())
    tb_gradflow.watch(model, None, optimizer=opt, on_alert="warn", step_fn=lambda: bad)
    with pytest.raises(ValueError, match=r"step_fn returned .*int >= 0"):
        opt.step(lambda: None)


def test_step_fn_needs_an_optimizer_and_a_callable():
    with pytest.raises(ValueError, match="step_fn numbers optimizer steps"):
        tb_gradflow.watch(mlp(), None, step_fn=lambda: 0)
    model = mlp()
    with pytest.raises(TypeError, match="step_fn must be callable"):
        tb_gradflow.watch(
            model, None, optimizer=torch.optim.SGD(model.parameters()), step_fn=3
        )


def test_parameters_keep_one_optimizers_layers():
    """One watcher per optimizer of a GAN-like pair, each over its own layers."""
    model = mlp()
    first = torch.optim.SGD(model[0].parameters(), lr=0.1)
    rest = torch.optim.SGD([*model[2].parameters(), *model[3].parameters()], lr=0.1)
    flows = [
        tb_gradflow.watch(
            model,
            None,
            optimizer=o,
            name=f"opt{i}",
            parameters=[p for g in o.param_groups for p in g["params"]],
        )
        for i, o in enumerate((first, rest))
    ]
    assert [f.layers for f in flows] == [["0"], ["2", "3"]]
    with pytest.raises(ValueError, match=r"shape \(2, 2\) that is not a parameter"):
        tb_gradflow.watch(model, None, parameters=[nn.Parameter(torch.ones(2, 2))])
    with pytest.raises(ValueError, match="No layer to watch.*1 parameters given"):
        tb_gradflow.watch(model, None, parameters=[model[0].bias])
    with pytest.raises(TypeError, match="parameters must be an iterable"):
        tb_gradflow.watch(model, None, parameters=model[0].weight)
