"""Gradient flow at scale: DDP and FSDP2 on 2 CPU processes (gloo), torch.compile."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow

WORKER = Path(__file__).with_name("_dist_worker.py")
STATS = ("abs_mean", "abs_max", "norm", "nonfinite", "update_ratio", "weight_norm")


def load_worker():
    spec = importlib.util.spec_from_file_location("_dist_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def single_process_reference(logdir):
    """The same model trained in one process on the whole batch."""
    w = load_worker()
    model = w.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = w.make_batch()
    with (
        SummaryWriter(logdir) as writer,
        tb_gradflow.watch(model, writer, optimizer=opt, stats=w.UPDATE),
    ):
        w.train(model, opt, x, y)
    return tb_gradflow.load_run(logdir)


def run_two_ranks(mode, tmp_path):
    """Runs both ranks of the worker; each must exit 0 having written its .done
    file (the worker ends a rank by os._exit(0), see _dist_worker.finish)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                mode,
                str(rank),
                "2",
                str(tmp_path / "init"),
                str(tmp_path),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for rank in range(2)
    ]
    try:
        for p in procs:
            try:
                out, _ = p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{mode} ranks did not finish in 120 s")
            assert p.returncode == 0, out
        for rank in range(2):  # it got through its work and the final barrier
            assert (tmp_path / f"{mode}-rank{rank}.done").read_text() == "done\n"
    finally:  # a failed rank leaves no process running into the next test
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_log_what_one_process_logs_and_only_rank_0_writes(mode, tmp_path):
    run_two_ranks(mode, tmp_path)
    ref = single_process_reference(tmp_path / "reference")
    got = tb_gradflow.load_run(tmp_path / f"{mode}-rank0")
    assert got.layers == ref.layers == ["0", "2", "4"]  # no "module." prefix
    assert got.steps.tolist() == ref.steps.tolist() == [0, 1, 2]
    for stat in STATS:
        np.testing.assert_allclose(got.values(stat), ref.values(stat), rtol=1e-5)
    with pytest.raises(ValueError, match="No gradflow data"):
        tb_gradflow.load_run(tmp_path / f"{mode}-rank1")  # it had a writer; unused


def test_under_ddp_only_the_logging_rank_traces_the_nonfinite_origin(tmp_path):
    """Step 1 divides by zero on both ranks; the optimizer skips it; rank 0
    traces step 2 and names the module, rank 1 (no writer) traces nothing."""
    run_two_ranks("ddp-trace", tmp_path)
    rank0 = (tmp_path / "ddp-trace-rank0.jsonl").read_bytes().splitlines()
    rank1 = (tmp_path / "ddp-trace-rank1.jsonl").read_bytes().splitlines()
    assert rank1 == []
    [origin] = [tb_gradflow.NonfiniteOrigin.from_json(line) for line in rank0]
    assert (origin.step, origin.since_step) == (2, 1)
    assert (origin.phase, origin.module, origin.module_type, origin.where) == (
        "forward",
        "2",
        "DivideBy",
        "output",
    )


def test_compiled_model_logs_eager_names_and_values(tmp_path):
    from torch._dynamo.utils import counters

    w = load_worker()
    x, y = w.make_batch()
    counters.clear()
    runs = {}
    for kind in ("eager", "compiled"):
        model = w.make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        net = torch.compile(model) if kind == "compiled" else model
        with (
            SummaryWriter(tmp_path / kind) as writer,
            tb_gradflow.watch(net, writer, optimizer=opt, stats=w.UPDATE),
        ):
            w.train(net, opt, x, y)
        runs[kind] = tb_gradflow.load_run(tmp_path / kind)
    assert not counters["graph_break"]  # collection runs outside the graph
    assert counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert runs["compiled"].layers == runs["eager"].layers
    for stat in STATS:
        np.testing.assert_allclose(
            runs["compiled"].values(stat), runs["eager"].values(stat), rtol=1e-5
        )
