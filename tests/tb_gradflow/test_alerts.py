"""on_alert in watch(), and check_flow() for users' own unit tests."""

import inspect
import warnings

import pytest
import torch
from torch import nn

import tb_gradflow


class Net(nn.Module):
    def __init__(self, *, detach=False, zero=False):
        super().__init__()
        self.lower = nn.Linear(6, 8)
        self.middle = nn.Linear(8, 8)
        self.upper = nn.Linear(8, 2)
        self.detach, self.zero = detach, zero

    def forward(self, x):
        h = torch.tanh(self.lower(x))
        if self.detach:
            h = h.detach()  # nothing flows into `lower`
        branch = torch.tanh(self.middle(h))
        if self.zero:
            branch = branch * 0.0  # a layer multiplied by zero: exact zeros
        return self.upper(h + branch)


def step(model, opt, *, poison=None):
    opt.zero_grad()
    model(torch.randn(4, 6)).pow(2).mean().backward()
    if poison is not None:
        poison.grad[0, 0] = float("nan")
    opt.step()


def test_check_flow_finds_detached_and_zeroed_layers_without_touching_grad():
    healthy = Net()
    assert tb_gradflow.check_flow(healthy, healthy(torch.randn(4, 6)).sum()) == []
    for p in healthy.parameters():
        assert p.grad is None
    detached = Net(detach=True)
    found = tb_gradflow.check_flow(detached, detached(torch.randn(4, 6)).sum())
    assert [(f.kind, f.layer) for f in found] == [("no_gradient", "lower")]
    zeroed = Net(zero=True)
    zeroed.upper.weight.grad = torch.ones_like(zeroed.upper.weight)
    found = tb_gradflow.check_flow(zeroed, zeroed(torch.randn(4, 6)).sum())
    assert [(f.kind, f.layer) for f in found] == [("blocked", "middle")]
    assert torch.equal(zeroed.upper.weight.grad, torch.ones_like(zeroed.upper.weight))


def test_check_flow_reports_nonfinite_and_keeps_the_graph():
    model = Net()
    out = model(torch.randn(4, 6))
    loss = (out * torch.tensor([1.0, float("inf")])).sum()
    found = tb_gradflow.check_flow(model, loss)
    assert {(f.kind, f.layer) for f in found} >= {("nonfinite", "upper")}
    out.sum().backward()  # the graph is still there


def test_check_flow_rejects_bad_losses():
    model = Net()
    with pytest.raises(ValueError, match="scalar"):
        tb_gradflow.check_flow(model, model(torch.randn(4, 6)))
    with torch.no_grad():
        loss = model(torch.randn(4, 6)).sum()
    with pytest.raises(ValueError, match="does not require grad"):
        tb_gradflow.check_flow(model, loss)


def test_on_alert_raise_stops_on_nan_naming_the_layer():
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with tb_gradflow.watch(model, None, optimizer=opt, on_alert="raise"):
        step(model, opt)
        with pytest.raises(
            tb_gradflow.GradFlowError, match="'middle' at step 1: nonfinite"
        ):
            step(model, opt, poison=model.middle.weight)


def test_on_alert_warn_warns_once_per_layer_and_kind():
    model = Net(detach=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tb_gradflow.watch(model, None, optimizer=opt, on_alert="warn"):
            for _ in range(10):
                step(model, opt)
    alerts = [w for w in caught if issubclass(w.category, tb_gradflow.GradFlowAlert)]
    assert [str(w.message) for w in alerts] == [
        "gradflow: layer 'lower' at step 2: no_gradient: "
        "no gradient (.grad is None): detached or unused"
    ]


def test_on_alert_none_is_silent_and_bad_mode_rejected():
    model = Net(detach=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with tb_gradflow.watch(model, None, optimizer=opt):
            for _ in range(5):
                step(model, opt)
    with pytest.raises(ValueError, match="Invalid on_alert: 'loud'"):
        tb_gradflow.watch(model, None, on_alert="loud")


def test_an_alert_points_at_the_users_line():
    """Not at torch/optim/optimizer.py (a fixed stacklevel pointed there)."""
    model = Net(detach=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tb_gradflow.watch(model, None, optimizer=opt, on_alert="warn"):
            for _ in range(3):
                model(torch.randn(4, 6)).sum().backward()
                opt.step()  # the user's line
                opt.zero_grad()
    (alert,) = [w for w in caught if issubclass(w.category, tb_gradflow.GradFlowAlert)]
    source = inspect.getsource(test_an_alert_points_at_the_users_line).splitlines()
    first = test_an_alert_points_at_the_users_line.__code__.co_firstlineno
    line = next(i for i, s in enumerate(source) if "the user's line" in s) + first
    assert (alert.filename, alert.lineno) == (__file__, line)


def test_an_alert_under_a_compiled_step_points_at_the_users_line():
    """Under torch.compile the hook runs from torch's frames: still the user's
    line, here the call of the compiled function."""
    torch._dynamo.reset()
    model = Net(detach=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    compiled = torch.compile(opt.step)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tb_gradflow.watch(model, None, optimizer=opt, on_alert="warn"):
            for _ in range(3):
                model(torch.randn(4, 6)).sum().backward()
                compiled()  # the user's line
                opt.zero_grad()
    torch._dynamo.reset()
    (alert,) = [w for w in caught if issubclass(w.category, tb_gradflow.GradFlowAlert)]
    assert alert.filename == __file__


def test_on_alert_warns_of_a_layer_whose_learning_rate_is_too_high():
    """stats=["update_ratio"] makes the update findings alerts too: the
    upper layer's parameter group has a learning rate 1000x the others'."""
    torch.manual_seed(0)
    model = Net()
    upper = list(model.upper.parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in upper)]
    opt = torch.optim.SGD([{"params": rest}, {"params": upper, "lr": 10.0}], lr=0.01)
    flow = tb_gradflow.watch(
        model, None, optimizer=opt, stats=["update_ratio"], on_alert="warn"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            step(model, opt)
    texts = [str(w.message) for w in caught if "update_too_large" in str(w.message)]
    # the first, once its streak reaches patience (3 logged steps); the other
    # layers follow once the run diverges
    assert texts[0] == (
        "gradflow: layer 'upper' at step 2: update_too_large: "
        "update_ratio above 0.1: the step is too large for these weights "
        "(the learning rate is too high for this layer)"
    )
    assert flow.last.stat("update_ratio")[2] > 0.1
