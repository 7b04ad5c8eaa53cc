"""An independent record of the gradient an optimizer applies, and checks of
logged statistics against it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plugin_client import make_plugin_client

from tb_gradflow.layers import layer_name


class RecordingSGD(torch.optim.Optimizer):
    """Plain SGD (``p -= lr * grad``) that records, at each step, the gradient of
    every parameter it applies, by parameter, after running the closure as
    torch's SGD does. Subclasses ``Optimizer`` directly, so that no parent
    ``step`` runs the step hooks a second time."""

    def __init__(self, params, lr: float = 0.05) -> None:
        super().__init__(params, {"lr": lr})
        self.applied: list[dict[torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    grads[p] = p.grad.detach().double().clone()
                    p.add_(p.grad, alpha=-group["lr"])
        self.applied.append(grads)
        return loss


@pytest.fixture
def recording_sgd():
    return RecordingSGD


def assert_logged_applied(run, model, applied, steps, *, layers=None, rtol=1e-6):
    """The run's statistics at ``steps`` equal those of the gradients in
    ``applied`` (one ``{parameter: grad}`` per step, in order), for the run's
    layers (the model's non-bias parameters, or ``layers``)."""
    by_name = {
        layer_name(n): p
        for n, p in model.named_parameters()
        if not n.rsplit(".", 1)[-1].startswith("bias")
    }
    assert list(run.steps) == list(steps)
    assert run.layers == (layers if layers is not None else list(by_name))
    for t, grads in enumerate(applied):
        for k, layer in enumerate(run.layers):
            g = grads[by_name[layer]]
            want = [g.abs().mean().item(), g.abs().max().item(), g.norm().item()]
            got = [run.values(s)[t, k] for s in ("abs_mean", "abs_max", "norm")]
            np.testing.assert_allclose(got, want, rtol=rtol, err_msg=f"{layer} @ {t}")


@pytest.fixture
def logged_equals_applied():
    return assert_logged_applied


def assert_served_beside_scalars(tensorboard_process, logdir, run, scalar_tag, run_obj):
    """A real ``tensorboard --logdir logdir`` serves the gradient flow of ``run``
    (as ``run_obj`` holds it) in the Gradient Flow tab's routes, and the
    framework's scalar ``scalar_tag`` under the same run name, at the same steps."""
    import time
    import urllib.parse

    tb = tensorboard_process(logdir)
    try:
        deadline = time.monotonic() + 60.0
        while True:
            runs = tb.get_json("/data/plugin/gradflow/runs")["runs"]
            scalars = tb.get_json("/data/plugin/scalars/tags")
            if any(r["run"] == run for r in runs) and scalar_tag in scalars.get(
                run, {}
            ):
                break
            assert time.monotonic() < deadline, (runs, scalars)
            time.sleep(0.5)
        query = urllib.parse.urlencode({"run": run})
        steps = tb.get_json(f"/data/plugin/gradflow/steps?{query}")["steps"]
        assert steps == list(run_obj.steps)
        query = urllib.parse.urlencode({"run": run, "tag": scalar_tag})
        points = tb.get_json(f"/data/plugin/scalars/scalars?{query}")
        assert [p[1] for p in points] == steps  # [wall_time, step, value]
        query = urllib.parse.urlencode({"run": run, "step": steps[-1]})
        flow = tb.get_json(f"/data/plugin/gradflow/flow?{query}")
        assert flow["layers"] == run_obj.layers
        np.testing.assert_allclose(
            flow["stats"]["abs_mean"], run_obj.values("abs_mean")[-1], rtol=1e-6
        )
    finally:
        tb.close()


@pytest.fixture
def served_beside_scalars(tensorboard_process):
    return lambda *args: assert_served_beside_scalars(tensorboard_process, *args)


@pytest.fixture
def plugin_client():
    """``make_plugin_client``: ``plugin_client(logdir) -> (client, mux)``."""
    return make_plugin_client
