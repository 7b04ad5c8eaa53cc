"""watch(..., trace_nonfinite=True): the module where NaN/Inf first appeared.

Three broken models, each with its fault at a known module and step: a
division by a value that reaches 0 (forward), a custom autograd function that
divides by zero in its backward only, and a float16 layer whose activations
overflow under a GradScaler. ``torch.autograd.detect_anomaly`` is run on the
same steps for comparison: it names an autograd node, not a module.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from broken_modules import DivideBy, SkipNonfiniteSGD
from tensorboard.backend.event_processing.event_file_loader import (
    RawEventFileLoader,
)
from tensorboard.compat.proto import event_pb2, summary_pb2, types_pb2
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow
from tb_gradflow import metadata, summary
from tb_gradflow.metadata import FormatError, NonfiniteOrigin
from tb_gradflow.module_tracer import TraceEvent
from tb_gradflow.nonfinite_trace import first_origin

BROKEN_AT = 3  # the step whose forward or backward pass turns non-finite


class _DivideGradByZero(torch.autograd.Function):
    """The identity forward; its backward divides 0 by 0."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * 0.0 / 0.0


class BackwardDivision(nn.Module):
    """The identity; once ``broken``, its backward pass returns NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _DivideGradByZero.apply(x) if self.broken else x


def forward_division_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 8),
        nn.ReLU(inplace=True),  # in place: full backward hooks would break it
        DivideBy(),
        nn.Dropout(0.25),
        nn.BatchNorm1d(8),
        nn.Linear(8, 2),
    )


def backward_division_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 8), nn.Tanh(), BackwardDivision(), nn.Linear(8, 2)
    )


def break_forward(model: nn.Sequential) -> None:
    model[2].divisor.fill_(0.0)


def break_amplifier(model: nn.Sequential) -> None:
    """``2.linear`` overflows float32: finite weights of 3e38, inputs tanh(5)."""
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(5.0)
        model[2].linear.weight.fill_(3e38)


def break_backward(model: nn.Sequential) -> None:
    model[2].broken = True


def train(
    model: nn.Module,
    steps: int,
    *,
    breaks: callable | None = None,
    closure: bool = True,
    trace: bool = True,
    writer=None,
    on_alert: str | None = "warn",
    forward: nn.Module | None = None,
) -> tuple[tb_gradflow.GradFlow, list[str], list[dict]]:
    """Trains ``model`` (through ``forward``, e.g. a compiled model) for
    ``steps`` SGD steps, ``breaks(model)`` before step ``BROKEN_AT``. Returns
    the watcher, the alerts warned and, per step, the gradients the optimizer
    applied with the buffers and CPU random state after the step."""
    forward = forward or model
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    flow = tb_gradflow.watch(
        forward,
        writer,
        optimizer=opt,
        trace_nonfinite=trace,
        on_alert=on_alert,
    )
    applied: list[dict] = []
    opt.register_step_post_hook(
        lambda o, a, k: applied.append(
            {
                "grads": [p.grad.clone() for p in model.parameters()],
                "buffers": [b.clone() for b in model.buffers()],
                "rng": torch.get_rng_state(),
            }
        )
    )
    generator = torch.Generator().manual_seed(1)
    alerts = []
    for step in range(steps):
        if step == BROKEN_AT and breaks is not None:
            breaks(model)
        x = torch.randn(6, 4, generator=generator)

        def loss_closure(x=x):
            opt.zero_grad()
            loss = forward(x).pow(2).mean()
            loss.backward()
            return loss

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if closure:
                opt.step(loss_closure)
            else:
                loss_closure()
                opt.step()
        alerts += [
            str(w.message) for w in caught if "nonfinite_origin" in str(w.message)
        ]
    return flow, alerts, applied


def hooks_registered(model: nn.Module) -> int:
    modules = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()
    )
    params = sum(len(p._backward_hooks or {}) for p in model.parameters())
    return modules + params


def test_a_forward_division_by_zero_is_traced_to_its_module_on_the_same_batch():
    model = forward_division_model()
    flow, alerts, _ = train(model, 6, breaks=break_forward)
    assert len(flow.nonfinite_origins) == 1
    origin = flow.nonfinite_origins[0]
    assert (origin.step, origin.since_step) == (BROKEN_AT, BROKEN_AT)
    assert (origin.phase, origin.module, origin.module_type, origin.where) == (
        "forward",
        "2",
        "DivideBy",
        "output",
    )
    assert origin.dtype == "float32"
    # 0/0 where ReLU gave 0, +Inf elsewhere; x/0 of modest inputs
    assert origin.nan > 0 and origin.posinf > 0 and origin.neginf == 0
    assert origin.nan + origin.posinf == 6 * 8
    assert 0 < origin.largest_input < 10
    assert "division by zero" in origin.message
    assert origin.layers == ()  # DivideBy has no parameter: no layer to show
    assert alerts == [
        f"gradflow: the model at step {BROKEN_AT}: nonfinite_origin: {origin.message}"
    ]
    assert hooks_registered(model) == 0  # disarmed


def test_the_replay_leaves_the_step_exactly_as_without_tracing():
    """Dropout's random state, BatchNorm's running statistics and the gradients
    the optimizer applies are those of an untraced run, bit for bit."""
    traced = train(forward_division_model(), 5, breaks=break_forward)[2]
    plain = train(forward_division_model(), 5, breaks=break_forward, trace=False)[2]
    assert len(traced) == len(plain) == 5
    for got, want in zip(traced, plain):
        for a, b in zip(got["grads"] + got["buffers"], want["grads"] + want["buffers"]):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(got["rng"], want["rng"])


def test_without_a_closure_the_weights_holding_nan_are_reported_once():
    model = forward_division_model()
    flow, alerts, _ = train(model, 8, breaks=break_forward, closure=False)
    assert len(flow.nonfinite_origins) == 1
    origin = flow.nonfinite_origins[0]
    assert origin.phase == "weights"
    assert (origin.step, origin.since_step) == (BROKEN_AT + 1, BROKEN_AT)
    # every parameter the NaN update reached; watched layers by layer name
    assert origin.layers == ("0", "0.bias", "4", "4.bias", "5", "5.bias")
    assert "hold NaN/Inf" in origin.message
    assert len(alerts) == 1 and "layer '0'" in alerts[0]
    assert hooks_registered(model) == 0


def test_a_division_in_the_backward_only_is_traced_where_detect_anomaly_names_a_node():
    model = backward_division_model()
    flow, _, _ = train(model, 6, breaks=break_backward)
    [origin] = flow.nonfinite_origins
    assert (origin.step, origin.phase) == (BROKEN_AT, "backward")
    assert (origin.module, origin.module_type) == ("2", "BackwardDivision")
    assert origin.where == "gradient of the input"
    assert origin.nan == 6 * 8 and origin.posinf == origin.neginf == 0
    assert origin.largest_input is not None  # the gradient it received
    assert "invalid operation" in origin.message
    # detect_anomaly stops at the node, not the module
    assert_anomaly_names(
        backward_division_model(), break_backward, "_DivideGradByZeroBackward"
    )


def assert_anomaly_names(broken, breaks, node):
    """``torch.autograd.detect_anomaly`` on one broken step of ``broken``
    raises, naming the autograd ``node``."""
    breaks(broken)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # detect_anomaly warns of its cost
        with torch.autograd.detect_anomaly(), pytest.raises(RuntimeError, match=node):
            broken(torch.randn(6, 4)).pow(2).mean().backward()


def test_detect_anomaly_blames_the_loss_for_the_forward_division():
    """For a NaN made in the forward pass, detect_anomaly stops at the first
    backward node that returns NaN: the loss's square, far from the division
    the trace names."""
    assert_anomaly_names(
        forward_division_model(), break_forward, "'PowBackward0' returned nan"
    )


class Amplifier(nn.Module):
    """A linear layer whose weights a test multiplies up to overflow float16."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def test_a_float16_overflow_under_a_grad_scaler_is_traced_after_repeated_skips():
    from tb_gradflow.nonfinite_trace import SCALER_SKIPS

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), Amplifier(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    flow = tb_gradflow.watch(
        model,
        None,
        optimizer=opt,
        scaler=scaler,
        trace_nonfinite=True,
        on_alert="warn",
    )
    generator = torch.Generator().manual_seed(1)
    broken_at = 12
    for step in range(broken_at + SCALER_SKIPS + 4):
        if step == broken_at:
            with torch.no_grad():  # tanh(5) x 3e4 x 8 > 65504 in every element
                model[0].weight.zero_()
                model[0].bias.fill_(5.0)
                model[2].linear.weight.fill_(3e4)  # itself representable
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(torch.randn(6, 4, generator=generator)).float().pow(2).mean()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        if step < broken_at:
            assert hooks_registered(model) == 0  # calibration skips arm nothing
    [origin] = flow.nonfinite_origins
    # armed after SCALER_SKIPS skipped logged steps in a row, traced on the next
    assert origin.since_step == broken_at + SCALER_SKIPS - 1
    assert origin.step == broken_at + SCALER_SKIPS
    assert (origin.phase, origin.module, origin.module_type, origin.where) == (
        "forward",
        "2.linear",
        "Linear",
        "output",
    )
    assert origin.dtype == "float16" and origin.posinf == 6 * 8
    assert origin.largest_input == pytest.approx(math.tanh(5.0), rel=1e-3)
    assert origin.layers == ("2.linear",)
    assert "beyond 6.55e+04" in origin.message


def test_bfloat16_autocast_names_the_dtype():
    model = forward_division_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    flow = tb_gradflow.watch(
        model, None, optimizer=opt, trace_nonfinite=True, on_alert="warn"
    )
    for step in range(5):
        if step == BROKEN_AT:
            break_forward(model)

        def closure():
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(torch.randn(6, 4)).float().pow(2).mean()
            loss.backward()
            return loss

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step(closure)
    [origin] = flow.nonfinite_origins
    assert (origin.step, origin.module, origin.dtype) == (BROKEN_AT, "2", "bfloat16")


def test_a_compiled_model_is_traced_eagerly_and_compiled_again_afterwards():
    torch._dynamo.reset()
    model = forward_division_model()
    compiled = torch.compile(model)
    flow, _, _ = train(model, 6, breaks=break_forward, forward=compiled)
    [origin] = flow.nonfinite_origins
    assert (origin.step, origin.phase, origin.module) == (BROKEN_AT, "forward", "2")
    assert hooks_registered(model) == 0
    torch._dynamo.reset()


def test_not_armed_no_hook_is_registered_and_remove_disarms():
    model = backward_division_model()
    flow, _, _ = train(model, 3)
    assert flow.nonfinite_origins == [] and hooks_registered(model) == 0
    # armed by a non-finite logged step without a closure, then removed
    model[2].broken = True
    opt = SkipNonfiniteSGD(model.parameters(), lr=0.1)  # the weights stay finite
    flow = tb_gradflow.watch(
        model, None, optimizer=opt, trace_nonfinite=True, on_alert="warn"
    )
    opt.zero_grad()
    model(torch.randn(6, 4)).sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.step()
    assert hooks_registered(model) > 0  # armed for the next step
    flow.remove()
    assert hooks_registered(model) == 0


def test_the_next_step_is_traced_when_the_weights_stayed_finite():
    """Without a closure, a step that left the weights finite (skipped by the
    optimizer) is followed by a traced step."""
    model = backward_division_model()
    break_backward(model)
    opt = SkipNonfiniteSGD(model.parameters(), lr=0.1)
    flow = tb_gradflow.watch(
        model, None, optimizer=opt, trace_nonfinite=True, on_alert="warn"
    )
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(6, 4)).sum().backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()
    [origin] = flow.nonfinite_origins
    assert (origin.step, origin.since_step, origin.module) == (1, 0, "2")
    assert origin.where == "gradient of the input"


def test_on_alert_raise_stops_at_the_origin():
    model = forward_division_model()
    with pytest.raises(tb_gradflow.GradFlowError) as raised:
        train(model, 6, breaks=break_forward, on_alert="raise")
    # the `nonfinite` alert of the same step comes first: it is raised first
    assert raised.value.finding.kind in ("nonfinite", "nonfinite_origin")


def test_the_origin_is_written_as_json_under_its_own_tag(tmp_path: Path):
    writer = SummaryWriter(str(tmp_path))
    model = forward_division_model()
    flow, _, _ = train(model, 5, breaks=break_forward, writer=writer)
    writer.close()
    found = []
    for path in sorted(tmp_path.glob("events.out.tfevents.*")):
        for record in RawEventFileLoader(str(path)).Load():
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                if value.tag == metadata.events_tag(None):
                    found.append((event.step, value))
    assert len(found) == 1
    step, value = found[0]
    assert step == BROKEN_AT
    assert value.metadata.plugin_data.plugin_name == metadata.EVENTS_PLUGIN_NAME
    origin = NonfiniteOrigin.from_json(value.tensor.string_val[0])
    assert origin == flow.nonfinite_origins[0]


def test_origin_json_refuses_what_it_cannot_read():
    origin = NonfiniteOrigin(step=3, since_step=3, phase="forward", module="a")
    assert NonfiniteOrigin.from_json(origin.to_json()) == origin
    with pytest.raises(FormatError, match="newer than"):
        NonfiniteOrigin.from_json(b'{"version": 99, "step": 1}')
    with pytest.raises(FormatError, match="'phase'"):
        NonfiniteOrigin.from_json(
            b'{"version": 1, "step": 1, "since_step": 1, "phase": "sideways"}'
        )
    with pytest.raises(FormatError, match="missing 'step'"):
        NonfiniteOrigin.from_json(b'{"version": 1}')
    with pytest.raises(FormatError, match="not UTF-8 JSON"):
        NonfiniteOrigin.from_json(b"\xff{")


def event(seq, phase, module, where, key, depth, *, nan=0, posinf=0, neginf=0):
    return TraceEvent(
        seq=seq,
        phase=phase,
        module=module,
        module_type="M",
        where=where,
        key=key,
        depth=depth,
        dtype="float32",
        nan=nan,
        posinf=posinf,
        neginf=neginf,
    )


def test_first_origin_picks_the_module_that_made_the_values():
    # a gradient seen by the output hook of `a` and the input hooks of `b`
    # and its child `b.c` (one tensor): `b.c`'s backward computed it
    events = [
        event(0, "forward", "a", "output", 1, 1),
        event(1, "backward", "a", "gradient of the output", 7, 1, nan=2),
        event(2, "backward", "b", "gradient of the input", 7, 1, nan=2),
        event(3, "backward", "b.c", "gradient of the input", 7, 2, nan=2),
        event(4, "backward", "z", "gradient of the input", 8, 1, nan=5),
    ]
    assert first_origin(events).module == "b.c"
    # a forward -Inf alone is a mask; the later NaN is the origin
    events = [
        event(0, "forward", "mask", "output", 1, 1, neginf=4),
        event(1, "forward", "attn", "output", 2, 1, nan=1),
        event(2, "backward", "attn", "gradient of the input", 3, 1, nan=1),
    ]
    assert first_origin(events).module == "attn"
    # a forward NaN whose gradient stays finite (masked out): no origin
    events = [
        event(0, "forward", "pad", "output", 1, 1, nan=3),
        event(1, "backward", "pad", "gradient of the input", 2, 1),
    ]
    assert first_origin(events) is None


def test_load_run_reads_the_origins_and_leaves_out_unreadable_ones(tmp_path: Path):
    writer = SummaryWriter(str(tmp_path))
    flow, _, _ = train(forward_division_model(), 5, breaks=break_forward, writer=writer)
    # a record a newer or broken writer made: left out, named, the rest kept
    broken = summary_pb2.Summary()
    value = broken.value.add(tag=metadata.events_tag(None))
    value.tensor.dtype = types_pb2.DT_STRING
    value.tensor.string_val.append(b'{"version": 1, "step": "seven"}')
    writer._get_file_writer().add_summary(broken, global_step=7)
    writer.close()
    with pytest.warns(UserWarning, match="'step' is 'seven', not an integer"):
        run = tb_gradflow.load_run(tmp_path)
    assert run.origins == flow.nonfinite_origins
    assert [(lo.step, "non-finite origin" in lo.reason) for lo in run.left_out] == [
        (7, True)
    ]
    with pytest.warns(UserWarning, match="'step' is 'seven'"):
        assert tb_gradflow.load(tmp_path)["."].origins == flow.nonfinite_origins


def test_origins_of_a_named_watcher_and_a_newer_format(tmp_path: Path):
    origin = NonfiniteOrigin(step=4, since_step=3, phase="backward", module="fc")
    with SummaryWriter(str(tmp_path)) as writer:
        flow = tb_gradflow.watch(nn.Linear(2, 2), writer, name="gen")
        flow.log(0)
        file_writer = writer._get_file_writer()
        file_writer.add_summary(summary.origin_pb(origin, "gen", with_metadata=True), 4)
        newer = summary.origin_pb(origin, "other", with_metadata=True)
        newer.value[0].metadata.plugin_data.content = b'{"version": 9, "name": null}'
        file_writer.add_summary(newer, 5)
    with pytest.warns(UserWarning, match="newer than this tb-gradflow"):
        run = tb_gradflow.load_run(tmp_path, name="gen")
    assert run.origins == [origin]
    assert run.left_out == []


def test_report_and_alerts_route_name_the_origin(tmp_path: Path, plugin_client, capsys):
    from tb_gradflow import cli

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), Amplifier(), nn.Linear(8, 2))
    with SummaryWriter(str(tmp_path / "run")) as writer:
        flow, _, _ = train(model, 6, breaks=break_amplifier, writer=writer)
    [origin] = flow.nonfinite_origins
    assert origin.module == "2.linear"
    # the report: one finding for the watched layer of the module
    assert cli.main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"nonfinite_origin 2.linear · Linear  steps {BROKEN_AT}-{BROKEN_AT}" in out
    assert origin.message in out
    # the tab's alerts route, through TensorBoard's data provider
    client, _ = plugin_client(tmp_path)
    answer = client.get("/data/plugin/gradflow/alerts?run=run").get_json()
    found = [a for a in answer["alerts"] if a["kind"] == "nonfinite_origin"]
    assert found == [
        {
            "kind": "nonfinite_origin",
            "layer": "2.linear",
            "first_step": BROKEN_AT,
            "last_step": BROKEN_AT,
            "steps": 1,
            "message": origin.message,
            "ongoing": False,
        }
    ]


class DivideInPlace(nn.Module):
    """Divides its input in place (returns the same tensor object)."""

    def __init__(self) -> None:
        super().__init__()
        self.divisor = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.div_(self.divisor)


def test_an_in_place_division_is_blamed_on_its_module_not_the_next():
    """The module's output is its input tensor, changed in place: what the
    hooks saw of it before the change must not stand for it after."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), DivideInPlace(), nn.Tanh(), nn.Linear(8, 2))

    def breaks(m):
        m[1].divisor = 0.0

    flow, _, _ = train(model, 5, breaks=breaks)
    [origin] = flow.nonfinite_origins
    assert (origin.step, origin.phase, origin.module, origin.where) == (
        BROKEN_AT,
        "forward",
        "1",
        "output",
    )


def test_compiled_code_runs_eagerly_while_any_tracer_is_armed_whatever_the_order():
    from tb_gradflow.module_tracer import ModuleTracer

    compiled = []

    def backend(gm, inputs):
        compiled.append(1)
        return gm.forward

    torch._dynamo.reset()
    add_one = torch.compile(lambda x: x + 1, backend=backend)
    a, b = ModuleTracer(nn.Linear(2, 2), {}), ModuleTracer(nn.Linear(2, 2), {})
    a.arm()
    b.arm()
    a.disarm()  # the first armed goes first: b is still armed
    add_one(torch.ones(2))
    assert compiled == []
    b.disarm()
    add_one(torch.ones(2))
    assert compiled == [1]  # the stance from before: compiled again
    torch._dynamo.reset()


class Prompted(nn.Module):
    """A learned prompt passed to a submodule as its input: a leaf tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.prompt = nn.Parameter(torch.randn(3, 4))
        self.inner = nn.Linear(4, 2)

    def forward(self, x):
        return self.inner(self.prompt).sum() + x.sum()


def test_hooks_on_leaf_tensors_go_when_the_step_is_taken():
    from tb_gradflow.module_tracer import ModuleTracer

    model = Prompted()
    tracer = ModuleTracer(model, {})
    tracer.arm()
    armed = len(model.prompt._backward_hooks or {})  # its own parameter hook
    for _ in range(3):
        model(torch.randn(2, 4)).backward()
        assert tracer.take()  # events of the step
        assert len(model.prompt._backward_hooks or {}) == armed
    tracer.disarm()
    assert len(model.prompt._backward_hooks or {}) == 0


class Square(nn.Module):
    def forward(self, x):
        return x * x


def test_a_float64_overflow_keeps_its_largest_input():
    model = nn.Sequential(nn.Linear(2, 2).double(), Square(), nn.Linear(2, 1).double())
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    flow = tb_gradflow.watch(
        model, None, optimizer=opt, trace_nonfinite=True, on_alert="warn"
    )

    def closure():
        opt.zero_grad()
        loss = model(torch.full((3, 2), 1e200, dtype=torch.float64)).sum()
        loss.backward()
        return loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.step(closure)
    [origin] = flow.nonfinite_origins
    assert (origin.module, origin.dtype) == ("1", "float64")
    assert origin.largest_input > 1e150  # past float32's range, kept
    assert "beyond 1.798e+308" in origin.message


class EMA(nn.Module):
    """Keeps a running average in a buffer that forward assigns anew."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("avg", torch.zeros(8))

    def forward(self, x):
        self.avg = 0.5 * self.avg + 0.5 * x.detach().mean(0)
        return x


def replayed_step(trace: bool):
    """One closure step with a backward NaN in the watched body, a head the
    optimizer steps but the watcher does not watch, and a closure that leaves
    zeroing the gradients to its caller; returns the head's gradient and the
    EMA buffer after the step."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(4, 8), EMA(), BackwardDivision())
    head = nn.Linear(8, 1)
    break_backward(body)
    opt = torch.optim.SGD([*body.parameters(), *head.parameters()], lr=0.0)
    flow = tb_gradflow.watch(body, None, optimizer=opt, trace_nonfinite=trace)
    x = torch.randn(6, 4)

    def closure():
        loss = head(body(x)).sum()
        loss.backward()
        return loss

    opt.zero_grad()
    opt.step(closure)
    return head.weight.grad.clone(), body[1].avg.clone(), flow


def test_the_replay_puts_back_every_optimized_gradient_and_reassigned_buffers():
    """Also: with no writer and no on_alert, trace_nonfinite still traces."""
    grad, avg, flow = replayed_step(trace=True)
    want_grad, want_avg, _ = replayed_step(trace=False)
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=0)
    torch.testing.assert_close(avg, want_avg, rtol=0, atol=0)
    [origin] = flow.nonfinite_origins
    assert (origin.module, origin.where) == ("2", "gradient of the input")


def test_a_closure_that_cannot_run_twice_is_traced_on_the_next_steps():
    model = backward_division_model()
    break_backward(model)
    opt = SkipNonfiniteSGD(model.parameters(), lr=0.1)
    flow = tb_gradflow.watch(model, None, optimizer=opt, trace_nonfinite=True)
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("this closure runs once per step")
        opt.zero_grad()
        loss = model(torch.randn(6, 4)).sum()
        loss.backward()
        return loss

    with pytest.warns(RuntimeWarning, match="the next steps are traced instead"):
        opt.step(closure)
    assert flow.nonfinite_origins == []
    opt.step(closure)  # traced as it runs
    [origin] = flow.nonfinite_origins
    assert (origin.step, origin.module) == (1, "2")
