"""The tb-gradflow command: report and demo, run as a user runs them."""

import shlex
import subprocess
import sys

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow
from tb_gradflow import cli, metadata, summary
from tb_gradflow import stats as tb_stats
from tb_gradflow.demo import DemoConfig, run_demo


def write_run(logdir, values_per_step, layers=("enc", "mid", "head"), start=0):
    layout = metadata.Layout(layers=layers, sparse=(False,) * len(layers))
    with SummaryWriter(logdir) as w:
        for step, stats in enumerate(values_per_step):
            proto = summary.gradflow_pb(
                layout, stats, np.array([0.0, np.nan]), with_metadata=step == 0
            )
            w._get_file_writer().add_summary(proto, global_step=start + step)


def stats(mean, nonfinite=(0, 0, 0)):
    mean = np.asarray(mean, dtype=float)
    nonfinite = np.asarray(nonfinite, dtype=float)
    rows = np.where(np.isnan(nonfinite), np.nan, 1.0)
    values = {"abs_mean": mean, "abs_max": mean * 3, "norm": mean * 10}
    return tb_stats.record({**values, "nonfinite": nonfinite, "rows": rows}, len(mean))


def test_report_marks_no_gradient_zero_nonfinite_and_blocked(tmp_path, capsys):
    steps = [stats([1e-3, 2e-3, 3e-3]) for _ in range(5)]
    steps += [stats([1e-12, 2e-3, 3e-3]) for _ in range(5)]  # enc stops
    write_run(tmp_path / "broken", steps)
    write_run(
        tmp_path / "odd",
        [stats([np.nan, 0.0, np.nan], nonfinite=[np.nan, 0, 2])] * 2,
    )
    assert cli.main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== broken  (step 9, 10 logged steps, 3 layers)" in out
    assert " !! enc=1e-12  blocked since step 5" in out
    assert " ++ mid=0.002" in out
    assert "blocked      enc  steps 5-9 (5 logged, ongoing)" in out
    assert " !! enc=no gradient" in out
    assert " !! mid=0  zero gradient" in out
    assert " !! head=nan  2 non-finite" in out
    assert "no_gradient  enc  steps 0-1" in out


def test_report_keeps_the_flag_of_a_streak_that_has_not_ended(tmp_path, capsys):
    """A run cut at its newest steps: enc blocked for 5 steps, then one step
    back above the threshold. Before, the report showed '++ enc' and a finding
    that had ended."""
    steps = [stats([1e-3, 2e-3, 3e-3]) for _ in range(5)]
    steps += [stats([1e-9, 2e-3, 3e-3]) for _ in range(5)]
    steps += [stats([1e-3, 2e-3, 3e-3])]
    write_run(tmp_path / "live", steps)
    assert cli.main(["report", str(tmp_path / "live")]) == 0
    out = capsys.readouterr().out
    assert " !! enc=0.001  blocked since step 5" in out
    assert "blocked      enc  steps 5-9 (5 logged, ongoing)" in out


def test_report_leaves_out_a_layer_the_last_session_did_not_log(tmp_path, capsys):
    write_run(tmp_path / "resumed", [stats([1e-3, 2e-3, 3e-3]) for _ in range(5)])
    later = [np.delete(stats([1e-3, 2e-3, 3e-3]), 1, axis=1) for _ in range(5)]
    write_run(tmp_path / "resumed", later, layers=("enc", "head"), start=5)
    assert cli.main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== resumed  (step 9, 10 logged steps, 2 layers)" in out
    assert "mid" not in out and " ++ head=0.003" in out


def test_report_lists_the_statistics_a_runs_files_lack(tmp_path, capsys):
    older = ("abs_mean", "abs_max", "norm", "nonfinite")  # written without rows
    layout = metadata.Layout(layers=("enc", "mid", "head"), stats=older)
    with SummaryWriter(tmp_path / "old") as w:
        for step in range(2):
            values = {n: [1e-3, 2e-3, 3e-3] for n in older} | {"nonfinite": 0}
            record = tb_stats.record(values, 3, order=older)
            proto = summary.gradflow_pb(
                layout, record, np.array([0.0, np.nan]), with_metadata=step == 0
            )
            w._get_file_writer().add_summary(proto, global_step=step)
    write_run(tmp_path / "new", [stats([1e-3, 2e-3, 3e-3])] * 2)
    assert cli.main(["report", str(tmp_path)]) == 0
    new, old = capsys.readouterr().out.split("\n\n")  # sorted by run
    # the gradient's statistics a file lacks; not those a watcher chooses
    lacking = [n for n in tb_stats.names("gradient") if n not in older]
    assert lacking == ["rows"]
    line = " -- not logged (the files lack them; they read as NaN): "
    assert f"{line}rows" in old.splitlines()
    assert " ++ enc=0.001" in old  # the statistics it has read as ever
    assert not [ln for ln in new.splitlines() if ln.startswith(line)]


def test_report_names_a_statistic_it_does_not_know(tmp_path, capsys):
    statistic = tb_stats.Statistic(
        "mean_square", "mean of g^2", ("sq_sum",), lambda p, numel: p["sq_sum"]
    )
    tb_stats.register(statistic)  # as the training process had it
    try:
        mean = np.array([1e-3, 2e-3, 3e-3])
        values = {"abs_mean": mean, "abs_max": mean, "norm": mean, "nonfinite": 0}
        values |= {"rows": 1.0, "mean_square": mean**2}
        write_run(tmp_path / "run", [tb_stats.record(values, 3)] * 2)
    finally:
        tb_stats.unregister("mean_square")
    assert cli.main(["report", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert " -- read by name, not known to this tb-gradflow: mean_square" in out


def test_report_names_a_run_directory_given_directly_by_its_folder(tmp_path, capsys):
    write_run(tmp_path / "lstm run", [stats([1e-3, 1e-3, 1e-3])])
    assert cli.main(["report", str(tmp_path / "lstm run")]) == 0
    assert capsys.readouterr().out.startswith("== lstm run  (step 0")
    assert cli.main(["report", str(tmp_path / "lstm run") + "/", "--run", "."]) == 0
    assert capsys.readouterr().out.startswith("== lstm run  (step 0")


def test_fail_on_makes_the_exit_status_1(tmp_path, capsys):
    steps = [stats([1e-3, 2e-3, 3e-3]) for _ in range(5)]
    steps += [stats([1e-12, 2e-3, 3e-3]) for _ in range(5)]  # enc blocked
    write_run(tmp_path / "broken", steps)
    write_run(tmp_path / "fine", [stats([1e-3, 2e-3, 3e-3])] * 3)
    assert cli.main(["report", str(tmp_path)]) == 0  # findings alone: 0
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path), "--fail-on", "nonfinite"]) == 0
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path), "--fail-on", "nonfinite,blocked"]) == 1
    err = capsys.readouterr().err
    assert err == "tb-gradflow report: failing on broken: blocked (--fail-on)\n"
    assert cli.main(["report", str(tmp_path / "fine"), "--fail-on", "all"]) == 0
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", str(tmp_path), "--fail-on", "blocked,nope"])
    assert exit_.value.code == 2
    assert "unknown finding kind(s) nope; choose from" in capsys.readouterr().err


def test_report_takes_every_threshold_as_an_option(tmp_path, capsys):
    # head's norm jumps x1000 at step 10 and stays there: with a window of 20
    # earlier steps the median stays low for all ten steps, with 5 for three.
    steps = [stats([1e-3, 1e-3, 1e-3]) for _ in range(10)]
    steps += [stats([1e-3, 1e-3, 1.0]) for _ in range(10)]
    write_run(tmp_path / "jump", steps)
    assert cli.main(["report", str(tmp_path)]) == 0
    assert (
        "exploding    head  steps 10-19 (10 logged, ongoing)" in capsys.readouterr().out
    )
    assert cli.main(["report", str(tmp_path), "--explode-window", "5"]) == 0
    assert "exploding    head  steps 10-12 (3 logged)" in capsys.readouterr().out
    assert cli.main(["report", str(tmp_path), "--explode-window", "2"]) == 2
    assert "Invalid explode_window: 2" in capsys.readouterr().err


def test_report_names_a_spike_and_where_it_began(tmp_path, capsys):
    # enc's norm x10 at step 40, mid's x5 one step later: two layer findings
    # and one for the model, enc first; --spike-min-ratio 6 leaves enc alone.
    rng = np.random.default_rng(0)
    mean = 1e-3 * (1 + 0.01 * rng.standard_normal((50, 3)))
    mean[40, 0] *= 10
    mean[41, 1] *= 5
    write_run(tmp_path / "spiky", [stats(m) for m in mean])
    assert cli.main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (
        "   spike        (model)  steps 40-41 (2 logged): gradient spike in 2 "
        "layers, began in enc (step 40), then mid (step 41)\n"
    ) in out
    assert "   spike        enc  steps 40-40 (1 logged): gradient norm spike" in out
    assert "   spike        mid  steps 41-41 (1 logged): gradient norm spike" in out
    assert cli.main(["report", str(tmp_path), "--spike-min-ratio", "6"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[:2] for line in out.splitlines() if "spike " in line] == [
        ["spike", "enc"]
    ]
    assert "and 6x above its median" in out
    assert cli.main(["report", str(tmp_path), "--spike-window", "5"]) == 2
    assert "Invalid spike_window: 5" in capsys.readouterr().err


def test_report_errors_are_one_line_with_the_path(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tb-gradflow report: error: No such log directory")
    assert "missing" in err and "Traceback" not in err
    write_run(tmp_path / "a", [stats([1e-3, 1e-3, 1e-3])])
    assert cli.main(["report", str(tmp_path), "--run", "b"]) == 2
    assert "No run 'b'" in capsys.readouterr().err


def test_report_reports_around_a_key_two_watchers_share(tmp_path, capsys):
    # Watcher "b" of run "a" and the unnamed watcher of run "a/b": key "a/b".
    write_run(tmp_path / "a" / "b", [stats([1e-3, 1e-3, 1e-3])] * 2)
    layout = metadata.Layout(layers=("enc", "mid", "head"), name="b")
    with SummaryWriter(tmp_path / "a") as w:
        proto = summary.gradflow_pb(
            layout,
            stats([1e-3, 1e-3, 1e-3]),
            np.array([0.0, np.nan]),
            with_metadata=True,
        )
        w._get_file_writer().add_summary(proto, global_step=7)
    write_run(tmp_path / "other", [stats([1e-3, 1e-3, 1e-3])])
    with pytest.raises(ValueError, match="have the key 'a/b'.*load_run"):
        tb_gradflow.load(tmp_path)  # the Python API: no key left out silently

    for run in ("other", "other/", "./other"):  # as a shell completes it
        assert cli.main(["report", str(tmp_path), "--run", run]) == 0
        out, err = capsys.readouterr()
        assert out.startswith("== other  (step 0") and err == ""

    assert cli.main(["report", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("== other  (step 0") and "== a/b" not in out
    (line,) = err.splitlines()
    first, commands = line.split("; report each from its own directory: ")
    assert first == (
        f"tb-gradflow report: error: Two watchers under {str(tmp_path)!r} have "
        f"the key 'a/b': watcher 'b' in {str(tmp_path / 'a')!r} and the unnamed "
        f"watcher in {str(tmp_path / 'a' / 'b')!r}"
    )
    assert "load_run" not in line
    steps = []
    for command in commands.split("; "):  # each reports one of the two
        argv = shlex.split(command)
        assert argv[0] == "tb-gradflow"
        assert cli.main(argv[1:]) == 0
        out, _ = capsys.readouterr()
        steps.append(out.splitlines()[0])
    assert steps == [  # a run directory given directly is named by its folder
        "== a/b  (step 7, 1 logged steps, 3 layers)",
        "== b  (step 1, 2 logged steps, 3 layers)",
    ]

    assert cli.main(["report", str(tmp_path), "--run", "a/b"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "have the key 'a/b'" in err


def test_demo_writes_a_healthy_and_a_blocked_run(tmp_path):
    losses = run_demo(str(tmp_path), DemoConfig(steps=120), progress=False)
    assert losses["healthy"] < 0.5 < losses["unnormalised_inputs"]
    runs = tb_gradflow.load(tmp_path)
    assert sorted(runs) == ["head_lr_too_high", "healthy", "unnormalised_inputs"]
    from tb_gradflow.diagnosis import diagnose

    assert diagnose(runs["healthy"]) == []
    blocked = {
        f.layer for f in diagnose(runs["unnormalised_inputs"]) if f.kind == "blocked"
    }
    assert blocked == {"lstm1.weight_ih_l0", "lstm1.weight_hh_l0"}
    # The text summary names the same layers as the tab's rule (the sanity
    # checks of trainkit join it in examples/demo.py: tests/test_examples.py).
    text = read_text(tmp_path / "unnormalised_inputs", "gradflow/checks/text_summary")
    assert "Sanity checks" not in text  # tb_gradflow never imports trainkit
    for layer in blocked:
        assert f"`blocked` **{layer}**" in text
    assert "none: the gradient reaches every watched layer" in read_text(
        tmp_path / "healthy", "gradflow/checks/text_summary"
    )
    # the update: the head's learning rate 100x too high is flagged, and the
    # healthy run's steps stay within 1e-3..1e-1 of its weights
    (too_large,) = diagnose(runs["head_lr_too_high"])
    assert (too_large.kind, too_large.layer) == ("update_too_large", "head")
    ratio = runs["healthy"].values("update_ratio")[10:]
    assert 1e-3 < np.median(ratio) < 1e-1 and np.all(ratio < 0.1)


def read_text(run_dir, tag):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    acc = event_accumulator.EventAccumulator(str(run_dir))
    acc.Reload()
    (event,) = acc.Tensors(tag)
    return tensor_util.make_ndarray(event.tensor_proto).item().decode()


def test_demo_is_deterministic(tmp_path):
    cfg = DemoConfig(steps=20, overfit_steps=5)
    first = run_demo(str(tmp_path / "a"), cfg, progress=False)
    second = run_demo(str(tmp_path / "b"), cfg, progress=False)
    assert first == second
    a, b = tb_gradflow.load(tmp_path / "a"), tb_gradflow.load(tmp_path / "b")
    np.testing.assert_array_equal(
        a["unnormalised_inputs"].values("norm"), b["unnormalised_inputs"].values("norm")
    )


def test_running_the_demo_again_replaces_its_runs_only(tmp_path, capsys):
    """A second demo run added a second event file per run before: every loss
    curve drawn twice."""
    argv = ["demo", "--logdir", str(tmp_path), "--steps", "3", "--no-progress"]
    mine = tmp_path / "mine"
    write_run(mine, [stats([1e-3, 1e-3, 1e-3])])
    assert cli.main(argv) == 0
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"Replacing the earlier demo run in {tmp_path / 'healthy'}" in out
    for run in ("healthy", "unnormalised_inputs", "head_lr_too_high"):
        assert len(list((tmp_path / run).iterdir())) == 1
    assert len(list(mine.iterdir())) == 1  # not the demo's: left alone
    (tmp_path / "healthy" / "notes.txt").write_text("mine")
    assert cli.main(argv) == 2
    assert "holds 'notes.txt', which the demo did not write" in capsys.readouterr().err
    assert (tmp_path / "healthy" / "notes.txt").exists()
    assert len(list((tmp_path / "unnormalised_inputs").iterdir())) == 1


@pytest.mark.parametrize("argv", [["--help"], ["report", "--help"], ["demo", "--help"]])
def test_console_script_help(argv):
    done = subprocess.run(
        [sys.executable, "-m", "tb_gradflow.cli", *argv], capture_output=True, text=True
    )
    assert done.returncode == 0 and "usage: tb-gradflow" in done.stdout


def test_report_by_block_lists_blocks_and_names_layers_in_findings(tmp_path, capsys):
    layers = ("h.0.attn", "h.0.mlp", "h.1.attn", "h.1.mlp", "head")
    steps = [stats([1e-3, 3e-3, 1e-3, 3e-3, 5e-3], nonfinite=[0] * 5)] * 3
    steps += [stats([1e-3, 3e-3, 1e-3, 3e-3, 5e-3], nonfinite=[0, 0, 0, 4, 0])]
    write_run(tmp_path / "gpt", steps, layers=layers)
    assert cli.main(["report", str(tmp_path), "--group", "block"]) == 0
    out = capsys.readouterr().out
    assert "== gpt  (step 3, 4 logged steps, 3 blocks)" in out
    # abs_mean of a block: weighted by elements (no numel here: equal weights)
    assert " ++ h.0=0.002" in out
    assert " !! h.1=0.002  4 non-finite" in out
    assert " ++ head=0.005" in out
    assert "nonfinite    h.1.mlp  steps 3-3" in out  # the layer, not the block
    assert cli.main(["report", str(tmp_path), "--group", "role"]) == 0
    out = capsys.readouterr().out
    assert "3 roles)" in out and " !! h.*.mlp=0.003  4 non-finite" in out
