"""One rule for merging a watcher's layer sets, in the tab and in load_run.

A run resumed on another machine, whose clock differs, repeats steps under
another layer set: the tab (records as TensorBoard's data provider serves
them, with their wall times) and ``load_run`` (records as the files hold
them) must agree on which record of a repeated step wins and on the layer
order, whichever way the clocks are skewed. Old-format files (every layer set
under the watcher's base tag) followed by layout tags show the layout tags'
steps and name what is left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from plugin_client import make_plugin_client
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

import tb_gradflow
from tb_gradflow import metadata
from tb_gradflow.stats import record
from tb_gradflow.summary import gradflow_pb

FIRST = metadata.Layout(layers=("a", "b"), sparse=(False, False))
RESUMED = metadata.Layout(layers=("c", "a", "b"), sparse=(False, False, False))


def write_session(run_dir: Path, layout, steps, value, wall, *, legacy=False):
    """One writer session: a new event file (named to sort after the earlier
    ones, as a later session's file does) with one record per step, every
    statistic of every layer ``value`` (nonfinite 0, rows 1), wall times from
    ``wall`` on."""
    run_dir.mkdir(parents=True, exist_ok=True)
    earlier = set(run_dir.glob("*tfevents*"))
    writer = EventFileWriter(str(run_dir))
    n = len(layout.layers)
    stats = record(
        {
            "abs_mean": value,
            "abs_max": value,
            "norm": value,
            "nonfinite": 0.0,
            "rows": 1.0,
        },
        n,
    )
    for i, step in enumerate(steps):
        proto = gradflow_pb(layout, stats, [0.0, np.nan], with_metadata=i == 0)
        if legacy:
            proto.value[0].tag = metadata.tag_for(layout.name)
        writer.add_event(event_pb2.Event(step=step, wall_time=wall + i, summary=proto))
    writer.close()
    (new_file,) = set(run_dir.glob("*tfevents*")) - earlier
    new_file.rename(run_dir / f"events.out.tfevents.{len(earlier):010d}.test")


def served(tmp_path: Path, run: str) -> tuple[list[int], list[str], dict]:
    """The tab's steps, layers and abs_mean per step (layer -> value; None
    for an absent layer)."""
    client, _ = make_plugin_client(tmp_path)
    steps = client.get(f"/data/plugin/gradflow/steps?run={run}").get_json()
    out = {}
    layers = None
    for step in steps["steps"]:
        flow = client.get(f"/data/plugin/gradflow/flow?run={run}&step={step}")
        flow = flow.get_json()
        layers = flow["layers"]
        out[step] = {
            name: None if absent else value
            for name, value, absent in zip(
                layers, flow["stats"]["abs_mean"], flow["absent"]
            )
        }
    return steps["steps"], layers, out


def read(tmp_path: Path, run: str) -> tuple[list[int], list[str], dict]:
    """The same from load_run."""
    got = tb_gradflow.load_run(tmp_path / run)
    values = got.values("abs_mean")
    out = {
        int(step): {
            name: None if got.absent[t, j] else float(values[t, j])
            for j, name in enumerate(got.layers)
        }
        for t, step in enumerate(got.steps)
    }
    return got.steps.tolist(), got.layers, out


@pytest.mark.parametrize("resumed_clock", [-5000.0, +5000.0])
def test_the_tab_and_load_run_merge_a_resumed_run_alike_whatever_the_clocks(
    tmp_path, resumed_clock
):
    run_dir = tmp_path / "run"
    write_session(run_dir, FIRST, range(0, 10), 1.0, wall=10_000.0)
    # resumed from the checkpoint of step 5, on a machine whose clock is off
    write_session(run_dir, RESUMED, range(5, 13), 2.0, wall=10_000.0 + resumed_clock)
    tab, files = served(tmp_path, "run"), read(tmp_path, "run")
    assert tab == files
    steps, layers, values = files
    assert steps == list(range(13))
    assert layers == ["a", "b", "c"]  # first appearance, first session first
    for step in range(13):
        resumed = step >= 5  # the resumed session's records win its steps
        want = {"a": 2.0, "b": 2.0, "c": 2.0} if resumed else {"a": 1.0, "b": 1.0}
        if not resumed:
            want["c"] = None  # absent: not in the first session's layer set
        assert values[step] == want, step


def test_an_old_format_run_whose_layer_set_changed_shows_its_layout_tag_steps(
    tmp_path,
):
    run_dir = tmp_path / "old"
    write_session(run_dir, FIRST, [0, 1, 2], 1.0, wall=100.0, legacy=True)
    write_session(run_dir, RESUMED, [3, 4], 2.0, wall=200.0, legacy=True)
    write_session(run_dir, RESUMED, [5, 6, 7], 3.0, wall=300.0)  # a layout tag
    client, _ = make_plugin_client(tmp_path)
    steps = client.get("/data/plugin/gradflow/steps?run=old").get_json()
    # the base tag's records of its first layer set, and the layout tag's
    assert steps["steps"] == [0, 1, 2, 5, 6, 7]
    left = steps["left_out"]
    assert [lo["step"] for lo in left] == [3, 4]
    assert all("under 'gradflow'" in lo["reason"] for lo in left)
    assert all("tb_gradflow.load_run() reads it" in lo["reason"] for lo in left)
    flow = client.get("/data/plugin/gradflow/flow?run=old&step=6").get_json()
    assert flow["stats"]["abs_mean"] == [3.0, 3.0, 3.0]
    # load_run matches every record by the layout written with it
    assert tb_gradflow.load_run(run_dir).steps.tolist() == list(range(8))
