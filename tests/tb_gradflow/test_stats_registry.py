"""Statistics by name: a statistic registered in a test flows to the event file,
the reader and the plugin's routes; a file lacking a statistic reads it as NaN
("not logged"); one a reader does not know is carried through by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow
from tb_gradflow import metadata, stats, summary


@pytest.fixture
def signed_sum():
    """A test-only statistic with a partial of its own: the sum of the
    gradient's elements (a sparse gradient: of its stored values)."""
    partial = stats.Partial("signed", "sum", local=lambda g: g.sum())
    statistic = stats.Statistic(
        name="signed_sum",
        meaning="sum of the gradient's elements",
        partials=("signed",),
        finish=lambda p, numel: p["signed"],
        group="sum",
        low=-np.inf,
    )
    stats.register(statistic, partial)
    yield statistic
    stats.unregister("signed_sum")


@pytest.fixture
def mean_square():
    """A test-only statistic finished from a built-in partial."""
    statistic = stats.Statistic(
        name="mean_square",
        meaning="mean of g^2",
        partials=("sq_sum",),
        finish=lambda p, numel: p["sq_sum"] / numel,
    )
    stats.register(statistic)
    yield statistic
    stats.unregister("mean_square")


def train(model, logdir, steps=3, **watch_options):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = []
    with SummaryWriter(logdir) as writer:
        with tb_gradflow.watch(model, writer, optimizer=opt, **watch_options):
            for _ in range(steps):
                opt.zero_grad()
                model(torch.randn(5, 4)).pow(2).mean().backward()
                grads.append(model[0].weight.grad.double().clone())
                opt.step()
    return grads


def test_a_registered_statistic_flows_end_to_end(
    tmp_path, signed_sum, mean_square, plugin_client
):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    grads = train(model, tmp_path / "run")
    run = tb_gradflow.load_run(tmp_path / "run")
    assert run.stats[5:7] == ["signed_sum", "mean_square"]  # after the gradient's
    assert "signed_sum" not in run.not_logged
    want_sum = [g.sum().item() for g in grads]
    want_ms = [g.pow(2).mean().item() for g in grads]
    np.testing.assert_allclose(run.values("signed_sum")[:, 0], want_sum, rtol=1e-5)
    np.testing.assert_allclose(run.values("mean_square")[:, 0], want_ms, rtol=1e-5)
    # the plugin's routes: flow and heatmap take it by name
    client = plugin_client(tmp_path)[0]
    flow = _get(client, "flow", run="run", step="2")
    assert flow["stats"]["signed_sum"][0] == pytest.approx(want_sum[2], rel=1e-5)
    heat = _get(client, "heatmap", run="run", stat="mean_square", format="json")
    assert heat["values"][0][-1] == pytest.approx(want_ms[2], rel=1e-5)


def test_a_statistic_this_version_does_not_know_is_carried_through(
    tmp_path, signed_sum, plugin_client
):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 2))
    grads = train(model, tmp_path / "run", steps=2)
    stats.unregister("signed_sum")  # a reader without it
    try:
        run = tb_gradflow.load_run(tmp_path / "run")
        assert "signed_sum" in run.stats and stats.get("signed_sum") is None
        np.testing.assert_allclose(
            run.values("signed_sum")[:, 0], [g.sum().item() for g in grads], rtol=1e-5
        )
        flow = _get(plugin_client(tmp_path)[0], "flow", run="run")
        assert "signed_sum" in flow["stats"]
    finally:  # the fixture unregisters it again
        stats.register(signed_sum, stats.Partial("signed", "sum", local=torch.sum))


def test_a_file_lacking_a_statistic_reads_it_as_not_logged(tmp_path, plugin_client):
    layout = metadata.Layout(
        layers=("a", "b"), stats=("abs_mean", "abs_max", "norm", "nonfinite")
    )
    with SummaryWriter(tmp_path / "old") as w:
        for step in range(3):
            values = stats.record(
                {"abs_mean": 0.5, "abs_max": 1.0, "norm": 2.0, "nonfinite": 0.0},
                2,
                order=layout.stats,
            )
            proto = summary.gradflow_pb(
                layout, values, np.array([0.0, np.nan]), with_metadata=step == 0
            )
            w._get_file_writer().add_summary(proto, global_step=step)
    run = tb_gradflow.load_run(tmp_path / "old")
    assert run.not_logged == ["rows", "update_ratio", "weight_norm"]
    assert np.isnan(run.values("rows")).all()
    assert (run.values("abs_mean") == 0.5).all()
    assert tb_gradflow.diagnose(run) == []
    flow = _get(plugin_client(tmp_path)[0], "flow", run="old")
    assert flow["stats"]["rows"] == ["NaN", "NaN"]


def test_record_builds_by_name_and_names_what_is_missing():
    got = stats.record(
        {"abs_mean": [1, 2], "abs_max": 3, "norm": 4, "nonfinite": 0, "rows": 1}, 2
    )
    assert got.shape == (len(stats.names("gradient")), 2)
    assert got[stats.names("gradient").index("abs_mean")].tolist() == [1.0, 2.0]
    with pytest.raises(KeyError, match=r"missing \['rows'\], unknown \['x'\]"):
        stats.record(
            {"abs_mean": 1, "abs_max": 1, "norm": 1, "nonfinite": 0, "x": 1}, 1
        )


def test_registry_refuses_clashes_and_unknown_partials(signed_sum):
    with pytest.raises(ValueError, match="named 'signed_sum' is registered"):
        stats.register(signed_sum)
    with pytest.raises(ValueError, match=r"reads unknown partials \['nope'\]"):
        stats.register(stats.Statistic("x", "x", ("nope",), lambda p, n: p["nope"]))
    with pytest.raises(ValueError, match="is built in"):
        stats.unregister("norm")
    with pytest.raises(ValueError, match="Invalid unit"):
        stats.Statistic("y", "y", ("sq_sum",), lambda p, n: p["sq_sum"], unit="m")


def _get(client, route, **params):
    reply = client.get(f"/data/plugin/gradflow/{route}", query_string=params)
    assert reply.status_code == 200, reply.get_data(as_text=True)
    return json.loads(reply.get_data())
