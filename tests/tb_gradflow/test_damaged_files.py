"""An event file with a damaged record: the reader leaves the record out and
reads on, the report names it, and a real TensorBoard tab never draws it as
data (the Rust data server reads without checksums: its values are checked),
and says when TensorBoard's Python loader stopped at it."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
import torch
from tensorboard.compat.proto import event_pb2
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow
from tb_gradflow import cli

STEPS = 40
DAMAGED = 25


def record_spans(data: bytes):
    """``(offset, length)`` of each record's data in an event file's bytes."""
    spans, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        spans.append((offset + 12, length))
        offset += length + 16
    return spans


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    """A watched MLP, 40 steps; in step 25's record the sign bit of the first
    layer's abs_mean is flipped (its checksum no longer matches)."""
    d = tmp_path_factory.mktemp("damaged")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with SummaryWriter(d / "mlp") as writer:
        with tb_gradflow.watch(model, writer, optimizer=opt):
            for _ in range(STEPS):
                opt.zero_grad()
                model(torch.randn(8, 4)).pow(2).mean().backward()
                opt.step()
    (path,) = (d / "mlp").glob("events.*")
    data = bytearray(path.read_bytes())
    for start, length in record_spans(bytes(data)):
        event = event_pb2.Event.FromString(bytes(data[start : start + length]))
        values = [v for v in event.summary.value if v.tag.startswith("gradflow")]
        if event.step == DAMAGED and values:
            content = values[0].tensor.tensor_content
            at = start + bytes(data[start : start + length]).index(content)
            data[at + 3] ^= 0x80  # float32 little-endian: the sign bit
            break
    else:
        raise AssertionError("no record of the damaged step")
    path.write_bytes(bytes(data))
    return d


def test_load_run_leaves_the_record_out_and_reads_on(logdir):
    with pytest.warns(UserWarning, match=f"step {DAMAGED} left out; reading went on"):
        run = tb_gradflow.load_run(logdir / "mlp")
    assert run.steps.tolist() == [s for s in range(STEPS) if s != DAMAGED]
    assert [lo.step for lo in run.left_out] == [DAMAGED]
    assert "checksum does not match" in run.left_out[0].reason
    assert (run.values("abs_mean") > 0).all()


def test_report_names_the_step_and_prints_plain_warnings(logdir, capsys):
    assert cli.main(["report", str(logdir / "mlp")]) == 0
    out, err = capsys.readouterr()
    assert f" !! 1 record(s) left out: steps {DAMAGED}" in out
    (line,) = err.splitlines()  # one line, no Python source
    assert line.startswith("tb-gradflow report: warning: ")
    assert f"step {DAMAGED} left out" in line


def served(tb, path: str, timeout: float = 60.0):
    """The JSON at ``path`` once TensorBoard has loaded the run."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, _ = tb.get(path)
        if status == 200:
            return tb.get_json(path)
        assert time.monotonic() < deadline, (status, path)
        time.sleep(0.5)


@pytest.mark.slow
def test_the_rust_data_server_reads_it_and_the_values_are_checked(
    logdir, tensorboard_process
):
    tb = tensorboard_process(logdir, "--load_fast=true")
    try:
        steps = served(tb, "/data/plugin/gradflow/steps?run=mlp")
        deadline = time.monotonic() + 60
        while steps["steps"][-1] != STEPS - 1 and time.monotonic() < deadline:
            time.sleep(0.5)  # still loading
            steps = tb.get_json("/data/plugin/gradflow/steps?run=mlp")
        assert steps["steps"] == [s for s in range(STEPS) if s != DAMAGED]
        (left_out,) = steps["left_out"]
        assert left_out["step"] == DAMAGED
        assert left_out["reason"] == "abs_mean is negative (layer '0')"
        flow = tb.get_json(f"/data/plugin/gradflow/flow?run=mlp&step={DAMAGED}")
        assert flow["step"] != DAMAGED
        assert np.all(np.array(flow["stats"]["abs_mean"], dtype=float) > 0)
    finally:
        tb.close()


@pytest.mark.slow
def test_the_python_loader_stops_at_it_and_the_tab_is_told(logdir, tensorboard_process):
    tb = tensorboard_process(logdir, "--load_fast=false")
    try:
        steps = served(tb, "/data/plugin/gradflow/steps?run=mlp")
        deadline = time.monotonic() + 60
        while steps["steps"][-1] < DAMAGED - 1 and time.monotonic() < deadline:
            time.sleep(0.5)  # still loading
            steps = tb.get_json("/data/plugin/gradflow/steps?run=mlp")
        assert steps["steps"] == list(range(DAMAGED))
        (left_out,) = steps["left_out"]
        assert left_out["step"] is None
        assert left_out["reason"].startswith("TensorBoard stopped reading events.")
        assert f"steps after {DAMAGED - 1} up to {STEPS - 1}" in left_out["reason"]
    finally:
        tb.close()
