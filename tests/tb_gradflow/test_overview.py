"""Overview records: each block of logged steps' smallest and largest values,
written beside the per-step records, equal to a plain loop over those steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_file_loader import (
    RawEventFileLoader,
)
from tensorboard.compat.proto import event_pb2
from tensorboard.util import tensor_util
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow
from tb_gradflow import heatmap, metadata, overview
from tb_gradflow.metadata import FormatError


def overview_records(run_dir: Path) -> tuple[metadata.Layout, overview.Blocks]:
    """The overview records in ``run_dir``'s event files, decoded."""
    steps, rows, layout, names = [], [], None, set()
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for raw in RawEventFileLoader(str(path)).Load():
            event = event_pb2.Event.FromString(raw)
            for value in event.summary.value:
                plugin = value.metadata.plugin_data
                if plugin.plugin_name == metadata.PLUGIN_NAME:
                    layout = metadata.parse_plugin_metadata(plugin.content)
                elif plugin.plugin_name == overview.OVERVIEW_PLUGIN_NAME:
                    names.add(overview.parse_overview_metadata(plugin.content))
                if value.tag.startswith("gradflow_overview@"):
                    steps.append(event.step)
                    rows.append(tensor_util.make_ndarray(value.tensor).reshape(-1))
    assert names == {layout.name}
    return layout, overview.decode(layout, steps, rows)


def test_blocks_of_a_watched_run_hold_the_extremes_of_their_steps(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with SummaryWriter(str(tmp_path)) as writer:
        with tb_gradflow.watch(model, writer, optimizer=opt, every=2, name="net"):
            for _ in range(2 * 250):
                opt.zero_grad()
                model(torch.randn(5, 4)).pow(2).mean().backward()
                opt.step()
    run = tb_gradflow.load_run(tmp_path, name="net")
    layout, blocks = overview_records(tmp_path)
    assert overview.overview_tag(layout).endswith("/net")
    # 250 logged steps: two full blocks, then the 50 written on remove()
    assert blocks.steps.tolist() == [100, 100, 50]
    assert blocks.first_steps.tolist() == [0, 200, 400]
    assert blocks.last_steps.tolist() == [198, 398, 498]
    for b in range(3):
        mine = (run.steps >= blocks.first_steps[b]) & (
            run.steps <= blocks.last_steps[b]
        )
        for k, stat in enumerate(layout.stats):
            values = run.values(stat)[mine]  # (steps, L)
            np.testing.assert_array_equal(blocks.maxima[b, k], values.max(axis=0))
            np.testing.assert_array_equal(blocks.minima[b, k], values.min(axis=0))
        # the largest total norm, as the plugin computes it at each kept step
        total = heatmap.total_norms(run)[mine].max()
        assert blocks.totals[b] == pytest.approx(total, rel=1e-6)
    assert overview.record_problems(layout, [np.zeros(3)]) == [
        "Invalid gradflow overview record: has 3 values, not 24"  # 2 x 5 x 2 + 4
    ]


def test_a_block_marks_nonfinite_values_and_ignores_steps_without_gradient():
    """Statistics ``(K=2, L=3)``: layer 0 healthy, layer 1 without a gradient
    at every step, layer 2 without one at some and NaN/Inf at one."""
    layout = metadata.Layout(layers=("a", "b", "c"), stats=("norm", "nonfinite"))
    acc = overview.BlockAccumulator(layout)
    nan = np.nan
    rows = [
        [[1.0, nan, nan], [0.0, nan, nan]],
        [[3.0, nan, 5.0], [0.0, nan, 0.0]],
        [[2.0, nan, np.inf], [0.0, nan, 4.0]],  # Inf in layer 2, 4 elements
        [[0.5, nan, 7.0], [0.0, nan, 0.0]],
    ]
    for step, stats in zip(range(10, 14), rows):
        acc.add(step, np.array(stats), skipped=step == 12)
    assert (acc.steps, acc.last_step) == (4, 13)
    record = acc.take()
    blocks = overview.decode(layout, [13], [record])
    np.testing.assert_array_equal(
        blocks.maxima[0], [[3.0, nan, np.inf], [0.0, nan, 4.0]]
    )
    np.testing.assert_array_equal(blocks.minima[0], [[0.5, nan, 5.0], [0.0, nan, 0.0]])
    assert (blocks.first_steps[0], blocks.steps[0]) == (10, 4)
    assert record[-2] == 1  # one skipped step
    assert blocks.totals[0] == np.inf  # the step where layer 2's norm was Inf
    assert acc.steps == 0  # a new block begins
    for step, stats in zip(range(20, 22), [rows[0], rows[1]]):
        acc.add(step, np.array(stats), skipped=False)
    # the larger of sqrt(1) and sqrt(3² + 5²); a layer without gradient adds 0
    assert overview.decode(layout, [21], [acc.take()]).totals[0] == np.float32(
        np.hypot(3.0, 5.0)
    )
    assert overview.record_problems(layout, [record]) == [None]


def test_a_layout_without_norm_has_no_total():
    layout = metadata.Layout(layers=("a",), stats=("abs_mean", "nonfinite"))
    acc = overview.BlockAccumulator(layout)
    acc.add(0, np.array([[1.0], [0.0]]), skipped=False)
    assert np.isnan(overview.decode(layout, [0], [acc.take()]).totals[0])


def _record(layout, stats_at, steps):
    acc = overview.BlockAccumulator(layout)
    for step in steps:
        acc.add(step, np.asarray(stats_at(step), dtype=float), skipped=False)
    return acc.take()


@pytest.mark.parametrize(
    ("where", "value", "reason"),
    [
        (-4, -1.0, "its step range, steps or skipped steps are impossible"),
        (-4, 2.5, "its step range, steps or skipped steps are impossible"),
        (-3, 0.0, "its step range, steps or skipped steps are impossible"),
        (-3, 50.0, "its step range, steps or skipped steps are impossible"),
        (-2, 11.0, "its step range, steps or skipped steps are impossible"),
        (-1, -2.0, "its total norm is negative"),
        (0, -1.0, "abs_mean is negative (layer 'a')"),  # largest abs_mean
        (0, 0.9, "abs_mean is above abs_max (layer 'a')"),
        (4, 0.7, "a smallest value is above the largest"),  # smallest abs_max
    ],
)
def test_an_overview_record_that_cannot_be_real_says_why(where, value, reason):
    layout = metadata.Layout(layers=("a",), stats=("abs_mean", "abs_max", "nonfinite"))
    record = _record(layout, lambda s: [[0.1 * (s % 3 + 1)], [0.5], [0.0]], range(10))
    assert overview.record_problems(layout, [record]) == [None]
    record[where] = value
    assert overview.record_problems(layout, [record, record[:-1]]) == [
        f"Invalid gradflow overview record: {reason}",
        f"Invalid gradflow overview record: has {record.size - 1} values, "
        f"not {record.size}",
    ]
    bad = np.array([b"x"] * record.size, dtype=object)
    assert "not numbers" in overview.record_problems(layout, [bad])[0]


def test_overview_metadata_is_versioned_and_checked():
    layout = metadata.Layout(layers=("a",), name="gen")
    content = overview.overview_metadata(layout).plugin_data.content
    assert overview.parse_overview_metadata(content) == "gen"
    with pytest.raises(FormatError, match="newer than this tb-gradflow"):
        overview.parse_overview_metadata(b'{"version": 2, "name": null}')
    with pytest.raises(FormatError, match="Invalid name"):
        overview.parse_overview_metadata(b'{"version": 1, "name": "a/b"}')
    with pytest.raises(FormatError, match="not UTF-8 JSON"):
        overview.parse_overview_metadata(b"{")
    with pytest.raises(FormatError, match="has 4 values, not"):
        overview.decode(layout, [3], [np.zeros(4, np.float32)])


def test_a_watcher_removed_after_its_writer_closed_opens_no_new_file(tmp_path):
    model = nn.Linear(3, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    writer = SummaryWriter(str(tmp_path))
    flow = tb_gradflow.watch(model, writer, optimizer=opt)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
    writer.close()  # as the Hugging Face Trainer's callback does at the end
    flow.remove()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    assert tb_gradflow.load_run(tmp_path).steps.tolist() == [0, 1, 2]
