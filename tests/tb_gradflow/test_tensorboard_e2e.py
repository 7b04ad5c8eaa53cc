"""End to end: a real ``tensorboard`` process, with no flags but its address,
serves every one of 2,000 steps logged by ``tb_gradflow.watch``, with the Rust
data server (``--load_fast=true``) and with the Python loader
(``--load_fast=false``). Without the plugin's loader TensorBoard would keep 100
or 10 of them.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow

STEPS = 2000
LAYERS = ["0", "2"]  # the Linear layers' weights (biases are left out by default)
_LOAD_TIMEOUT = 60.0  # s until every step is served


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    threads = torch.get_num_threads()
    # Tiny ops: intra-op threads only add contention on a busy small machine.
    torch.set_num_threads(1)
    try:
        with (
            SummaryWriter(str(d / "mlp")) as writer,
            tb_gradflow.watch(model, writer, optimizer=opt),
        ):
            for _ in range(STEPS):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return d


@pytest.fixture
def start(logdir, tensorboard_process):
    started = []

    def start(*flags: str):
        started.append(tensorboard_process(logdir, *flags))
        return started[-1]

    yield start
    for tb in started:
        tb.close()


def wait_for_last_step(tb) -> list[dict]:
    """The ``runs`` answer once TensorBoard, loading in the background, has the
    last logged step."""
    deadline = time.monotonic() + _LOAD_TIMEOUT
    while True:
        runs = tb.get_json("/data/plugin/gradflow/runs")["runs"]
        if runs and runs[0]["last_step"] == STEPS - 1:
            return runs
        assert time.monotonic() < deadline, runs
        time.sleep(0.5)


@pytest.mark.parametrize("load_fast", ["true", "false"])
def test_every_logged_step_is_served_without_flags(start, load_fast):
    tensorboard = start(f"--load_fast={load_fast}")
    runs = wait_for_last_step(tensorboard)
    assert isinstance(runs[0].pop("last_wall_time"), float)
    assert runs == [
        {
            "run": "mlp",
            "tag": "gradflow",
            "name": None,
            "layers": len(LAYERS),
            "last_step": STEPS - 1,
            "every": 1,
            "steps": None,  # not read yet: runs answers from TensorBoard's listing
            "first_step": None,
            "expected_steps": None,
            "groups": {"block": len(LAYERS), "role": len(LAYERS)},  # no blocks
            # the statistics of the gradient every watcher logs, by name
            "stats": ["abs_mean", "abs_max", "norm", "nonfinite", "rows"],
            "not_logged": [],
        }
    ]
    answer = tensorboard.get_json("/data/plugin/gradflow/steps?run=mlp")
    assert answer["steps"] == list(range(STEPS))
    assert (answer["first_step"], answer["expected_steps"]) == (0, STEPS)
    flow = tensorboard.get_json("/data/plugin/gradflow/flow?run=mlp&step=1234")
    assert (flow["step"], flow["layers"]) == (1234, LAYERS)
    assert all(v > 0 for v in flow["stats"]["abs_mean"])

    listing = tensorboard.get_json("/data/plugins_listing")["gradflow"]
    assert listing["enabled"] is True
    assert listing["tab_name"] == "Gradient Flow"
    module = listing["loading_mechanism"]["module_path"]
    assert module == "/data/plugin/gradflow/index.js"
    status, content_type, body = tensorboard.get(module)
    assert (status, content_type) == (200, "text/javascript; charset=utf-8")
    assert b"render" in body

    status, content_type, body = tensorboard.get(
        "/data/plugin/gradflow/heatmap?run=mlp&stat=abs_mean&format=binary"
    )
    assert (status, content_type) == (200, "application/octet-stream")
    assert len(body) > 4 * len(LAYERS) * 1000  # 1000 columns of float32


def test_a_samples_per_plugin_flag_of_the_user_wins(start):
    tensorboard = start("--load_fast=false", "--samples_per_plugin=gradflow=50")
    wait_for_last_step(tensorboard)
    run = tensorboard.get_json("/data/plugin/gradflow/steps?run=mlp")
    assert len(run["steps"]) == 50
    # counted by the overview records, not estimated from the first kept step
    assert run["first_step"] > 0 and run["expected_steps"] == STEPS
