"""The repository's example scripts, run as ``./run demo`` runs them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

import tb_gradflow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def text(run_dir) -> str:
    acc = event_accumulator.EventAccumulator(str(run_dir))
    acc.Reload()
    (event,) = acc.Tensors("gradflow/checks/text_summary")
    return tensor_util.make_ndarray(event.tensor_proto).item().decode()


def test_the_demo_puts_trainkit_s_checks_beside_the_findings(tmp_path, capsys):
    demo = load("demo")
    argv = ["--logdir", str(tmp_path), "--steps", "120", "--no-progress"]
    assert demo.main(argv) == 0
    assert "unnormalised_inputs: final loss" in capsys.readouterr().out
    blocked = text(tmp_path / "unnormalised_inputs")
    checks, findings = blocked.split("### Gradient-flow findings")
    assert "**initial loss** passed" in checks  # at chance, ln 2
    assert "**overfit one batch**" in checks  # on a copy at its start: it can
    for layer in ("lstm1.weight_ih_l0", "lstm1.weight_hh_l0"):
        assert f"`blocked` **{layer}**" in findings
    healthy = text(tmp_path / "healthy")
    assert "none: the gradient reaches every watched layer" in healthy
    assert sorted(tb_gradflow.load(tmp_path)) == [
        "head_lr_too_high",
        "healthy",
        "unnormalised_inputs",
    ]


def test_tb_gradflow_never_imports_trainkit():
    code = (
        "import importlib, pkgutil, sys, tb_gradflow\n"
        "for m in pkgutil.walk_packages(tb_gradflow.__path__, 'tb_gradflow.'):\n"
        "    if '.integrations.' not in m.name:\n"
        "        importlib.import_module(m.name)\n"
        "from tb_gradflow.demo import run_demo, DemoConfig\n"
        "assert not [m for m in sys.modules if m.startswith('trainkit')], 'imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
