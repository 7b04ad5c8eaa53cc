"""tensorboardX writers: ``watch`` and ``clip_grad_norm`` write through them the
very bytes they write through ``torch.utils.tensorboard``'s, which tensorboard's
own event loader, ``load_run`` and a real ``tensorboard`` read alike; any other
writer is refused, naming the two."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import tensorboardX
import torch
from tensorboard.backend.event_processing.event_file_loader import (
    RawEventFileLoader,
)
from tensorboard.compat.proto import event_pb2, summary_pb2
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow
from trainkit.checks import clip_grad_norm

_LOAD_TIMEOUT = 60.0  # s until tensorboard serves the last logged step
_REFUSED = (
    r"writer must be a torch\.utils\.tensorboard\.SummaryWriter or a "
    r"tensorboardX\.SummaryWriter or None, got {}"
)


class Net(nn.Module):
    """A sparse embedding, two linear layers, and a layer the forward pass never
    uses (no gradient: NaN in every statistic)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 6, sparse=True)
        self.fc = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)
        self.unused = nn.Linear(3, 3)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc(self.emb(idx))))  # (N, 3)


class LookAlike:
    """Has what the writer check once asked for (``_get_file_writer``), and is
    no writer."""

    def _get_file_writer(self) -> None:
        return None


def train_watched(writers: dict[str, object], steps: int, **options) -> dict:
    """Trains one ``Net`` for ``steps`` SGD steps with one watcher per writer
    (all of them see the same gradients); returns the watchers by key."""
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    idx, y = torch.randint(0, 20, (16,)), torch.randint(0, 3, (16,))
    flows = {
        key: tb_gradflow.watch(model, w, optimizer=opt, **options)
        for key, w in writers.items()
    }
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(idx), y).backward()
        opt.step()
    for flow in flows.values():
        flow.remove()
    return flows


def summaries(run_dir: Path) -> list[tuple[int, bytes]]:
    """``(step, serialized Summary)`` of each event with a summary in the event
    files of ``run_dir``, as tensorboard's own raw record loader reads them."""
    found = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for record in RawEventFileLoader(str(path)).Load():
            event = event_pb2.Event.FromString(record)
            if event.HasField("summary"):
                found.append((event.step, event.summary.SerializeToString()))
    return found


def write_both(logdir: Path, steps: int, **options) -> dict:
    """The same training logged to ``logdir/torch`` through torch's writer and to
    ``logdir/tensorboardX`` through tensorboardX's; returns the watchers."""
    with (
        SummaryWriter(str(logdir / "torch")) as torch_writer,
        tensorboardX.SummaryWriter(str(logdir / "tensorboardX")) as tbx_writer,
    ):
        return train_watched(
            {"torch": torch_writer, "tensorboardX": tbx_writer}, steps, **options
        )


def test_a_tensorboardx_writer_writes_the_bytes_a_torch_writer_writes(tmp_path):
    flows = write_both(tmp_path, 5, every=2, name="net", include_bias=True)
    want = summaries(tmp_path / "torch")
    got = summaries(tmp_path / "tensorboardX")
    # the three logged steps, then the overview record of them (on remove)
    assert [step for step, _ in want] == [0, 2, 4, 4]
    assert got == want  # metadata with the first record, then the same tensors

    ref = tb_gradflow.load_run(tmp_path / "torch", "net")
    run = tb_gradflow.load_run(tmp_path / "tensorboardX", "net")
    assert run.steps.tolist() == ref.steps.tolist() == [0, 2, 4]
    for field in ("name", "layers", "stats", "every", "sparse", "types"):
        assert getattr(run, field) == getattr(ref, field), field
    assert run.layers == flows["tensorboardX"].layers
    assert run.sparse == [True, False, False, False, False, False, False]
    np.testing.assert_array_equal(run.skipped, ref.skipped)
    np.testing.assert_array_equal(run.loss_scale, ref.loss_scale)
    np.testing.assert_array_equal(run.absent, ref.absent)
    for stat in run.stats:
        np.testing.assert_array_equal(run.values(stat), ref.values(stat))
    for stat in flows["tensorboardX"].last.names:  # by name
        np.testing.assert_array_equal(  # what the watcher computed, as float32
            run.values(stat)[-1], flows["tensorboardX"].last.stat(stat).astype("f4")
        )
    unused = [run.layers.index("unused"), run.layers.index("unused.bias")]
    assert run.no_grad[:, unused].all() and not run.no_grad[:, :-2].any()


def test_one_live_watcher_per_tensorboardx_writer_and_name(tmp_path):
    model = Net()
    with tensorboardX.SummaryWriter(str(tmp_path)) as writer:
        first = tb_gradflow.watch(model, writer)
        with pytest.raises(ValueError, match="already has a watcher unnamed"):
            tb_gradflow.watch(model, writer)
        named = tb_gradflow.watch(model, writer, name="copy")  # another name
        first.remove()
        again = tb_gradflow.watch(model, writer)  # the first was removed
        with pytest.raises(ValueError, match="watcher named 'copy'"):
            tb_gradflow.watch(Net(), writer, name="copy")
        model(torch.tensor([1, 2])).sum().backward()
        again.log(3)
        named.log(3)
        again.remove()
        named.remove()
    assert tb_gradflow.load_run(tmp_path).steps.tolist() == [3]
    assert tb_gradflow.load_run(tmp_path, "copy").steps.tolist() == [3]


def test_watch_refuses_other_writers_naming_both_without_importing_tensorboardx(
    tmp_path,
):
    with tensorboardX.SummaryWriter(str(tmp_path)) as tbx_writer:
        others = [
            ("runs/x", "str"),
            (LookAlike(), "LookAlike"),
            (tbx_writer._get_file_writer(), "FileWriter"),
        ]
        for writer, kind in others:
            with pytest.raises(TypeError, match=_REFUSED.format(kind)):
                tb_gradflow.watch(Net(), writer)
    # torch's writer, both writer-taking functions and a refusal: tensorboardX
    # stays unimported (it is optional)
    code = """
import sys, tempfile, torch
from torch.utils.tensorboard import SummaryWriter
import tb_gradflow
from trainkit.checks import clip_grad_norm
model = torch.nn.Linear(3, 2)
with tempfile.TemporaryDirectory() as d, SummaryWriter(d) as w:
    flow = tb_gradflow.watch(model, w)
    model(torch.randn(4, 3)).sum().backward()
    flow.log(0)
    clip_grad_norm(model.parameters(), 1.0, writer=w, step=0)
    flow.remove()
    try:
        tb_gradflow.watch(model, object())
    except TypeError as e:
        assert "tensorboardX.SummaryWriter" in str(e), e
    else:
        raise AssertionError("object() accepted as a writer")
assert "tensorboardX" not in sys.modules, "tensorboardX imported"
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_clip_grad_norm_logs_through_tensorboardx_and_refuses_other_writers(
    tmp_path,
):
    lin = nn.Linear(5, 4)
    lin(torch.randn(8, 5)).pow(2).sum().mul(10).backward()
    grads = [p.grad.clone() for p in lin.parameters()]
    reference, twin = copy.deepcopy(lin), copy.deepcopy(lin)  # without .grad
    for copied in (reference, twin):
        for p, g in zip(copied.parameters(), grads):
            p.grad = g.clone()
    want_total = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
    assert float(want_total) > 1.0  # it clips

    for writer, kind in (("runs/x", "str"), (LookAlike(), "LookAlike")):
        with pytest.raises(TypeError, match=_REFUSED.format(kind)):
            clip_grad_norm(lin.parameters(), 1.0, writer=writer, step=3)
        for p, g in zip(lin.parameters(), grads):  # refused before clipping
            assert torch.equal(p.grad, g)

    with tensorboardX.SummaryWriter(str(tmp_path / "tensorboardX")) as w:
        total = clip_grad_norm(lin.parameters(), 1.0, writer=w, step=3)
    with SummaryWriter(str(tmp_path / "torch")) as w:
        clip_grad_norm(twin.parameters(), 1.0, writer=w, step=3)
    assert torch.equal(total, want_total)
    for p, q in zip(lin.parameters(), reference.parameters()):
        assert torch.equal(p.grad, q.grad)
    got = summaries(tmp_path / "tensorboardX")
    assert got == summaries(tmp_path / "torch")
    logged = {}
    for step, raw in got:
        (value,) = summary_pb2.Summary.FromString(raw).value
        logged[value.tag] = (step, value.simple_value)
    assert logged == {
        "grad_clip/total_norm": (3, pytest.approx(float(want_total), rel=1e-6)),
        "grad_clip/max_norm": (3, 1.0),
        "grad_clip/clipped": (3, 1.0),
    }


@pytest.mark.slow
@pytest.mark.parametrize("load_fast", ["true", "false"])
def test_tensorboard_serves_a_tensorboardx_run_as_a_torch_run(
    tmp_path, tensorboard_process, load_fast
):
    write_both(tmp_path, 6, every=1)
    tb = tensorboard_process(tmp_path, f"--load_fast={load_fast}")
    try:
        deadline = time.monotonic() + _LOAD_TIMEOUT
        while True:
            runs = tb.get_json("/data/plugin/gradflow/runs")["runs"]
            by_run = {r["run"]: r for r in runs}
            if all(
                by_run.get(k, {}).get("last_step") == 5
                for k in ("torch", "tensorboardX")
            ):
                break
            assert time.monotonic() < deadline, runs
            time.sleep(0.5)
        assert len(runs) == 2
        same = {"run": "torch", "last_wall_time": None}  # written at other times
        assert {**by_run["tensorboardX"], **same} == {**by_run["torch"], **same}

        def get(route: str, run: str, **args) -> dict:
            query = urllib.parse.urlencode({"run": run, **args})
            answer = tb.get_json(f"/data/plugin/gradflow/{route}?{query}")
            assert answer.pop("run") == run
            return answer

        steps = get("steps", "tensorboardX")
        assert steps == get("steps", "torch")
        assert steps["steps"] == list(range(6)) and steps["expected_steps"] == 6
        for step in (0, 3, 5):
            flow = get("flow", "tensorboardX", step=step)
            assert flow == get("flow", "torch", step=step)
            assert flow["step"] == step
            assert flow["layers"] == ["emb", "fc", "head", "unused"]
            assert flow["no_grad"] == [False, False, False, True]
    finally:
        tb.close()
