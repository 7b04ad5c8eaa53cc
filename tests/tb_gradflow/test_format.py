"""The event format: metadata, summary protos, and reading event files back."""

import dataclasses
import json
import os
import re
import struct
import warnings

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import summary_pb2
from tensorboard.util import tensor_util
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow
from tb_gradflow import metadata, overview, reader, stats, summary

LAYOUT = metadata.Layout(
    layers=("a", "b", "c"), every=2, name="gen", sparse=(False, True, False)
)


def write_steps(logdir, steps, *, layout=LAYOUT, offset=0.0, with_metadata=True):
    """Writes records whose abs_mean, abs_max and norm of layer l at step s are
    s + k/10 + l/100 (k = 0, 1, 2: each a possible gradient's), nonfinite 0 and
    rows 1; the first carries the layout unless ``with_metadata`` is False."""
    k, n = len(layout.stats), len(layout.layers)
    with SummaryWriter(logdir) as w:
        for i, step in enumerate(steps):
            stats = step + offset + np.arange(k)[:, None] / 10 + np.arange(n) / 100
            stats[layout.stats.index("nonfinite")] = 0.0
            stats[layout.stats.index("rows")] = 1.0
            proto = summary.gradflow_pb(
                layout,
                stats,
                np.array([0.0, 8.0]),
                with_metadata=with_metadata and i == 0,
            )
            w._get_file_writer().add_summary(proto, global_step=step)


def test_layout_round_trips_through_json():
    parsed = metadata.parse_plugin_metadata(LAYOUT.to_json())
    assert parsed == LAYOUT
    assert parsed.size == 5 * 3 + 2


@pytest.mark.parametrize(
    "content",
    [b"not json", b'{"layers": ["a"]}', b'{"version": 1, "layers": 3, "stats": []}'],
)
def test_bad_metadata_raises_format_error(content):
    with pytest.raises(metadata.FormatError, match="Invalid gradflow plugin metadata"):
        metadata.parse_plugin_metadata(content)


def _content(**changes):
    """LAYOUT's metadata content with some fields replaced (None: removed)."""
    raw = json.loads(LAYOUT.to_json())
    raw.update(changes)
    return json.dumps({k: v for k, v in raw.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (_content(every="ten"), "'every' is 'ten', not an integer"),
        (_content(every=0), "'every' is 0, not a positive integer"),
        (_content(every=True), "'every' is True, not an integer"),
        (_content(stats=[]), "'stats' is empty"),
        (_content(stats=None), "missing 'stats'"),
        (_content(version="1"), "'version' is '1', not an integer"),
        (_content(name=3), "'name' is 3, not a string"),
        (_content(layers=[]), "'layers' is empty"),
        (
            _content(layers=["a", 2, "c"]),
            "'layers' is ['a', 2, 'c'], not a list of str",
        ),
        (_content(layers=["a", "b", "a"]), "'layers' repeats ['a']"),
        (_content(sparse=[True]), "1 'sparse' entries for 3 layers"),
        (_content(numel=["x", 1, 2]), "'numel' is ['x', 1, 2], not a list of int"),
        (b"[1, 2]", "not a JSON object: [1, 2]"),
    ],
)
def test_malformed_metadata_raises_format_error_naming_the_problem(
    tmp_path, content, problem
):
    with pytest.raises(metadata.FormatError) as caught:
        metadata.parse_plugin_metadata(content)
    assert str(caught.value) == f"Invalid gradflow plugin metadata: {problem}"
    proto = summary.gradflow_pb(
        LAYOUT, np.zeros((5, 3)), np.zeros(2), with_metadata=True
    )
    proto.value[0].metadata.plugin_data.content = content
    with SummaryWriter(tmp_path) as w:
        w._get_file_writer().add_summary(proto, global_step=0)
    with (
        pytest.warns(
            UserWarning,
            match=re.escape(f"tag {metadata.layout_tag(LAYOUT)!r}: {caught.value}"),
        ),
        pytest.raises(ValueError, match="No gradflow data for watcher 'gen'"),
    ):
        tb_gradflow.load_run(tmp_path, name="gen")


def test_newer_version_is_skipped_with_one_warning():
    checker = metadata.VersionChecker()
    newer = metadata.Layout(layers=("a",), version=metadata.FORMAT_VERSION + 1)
    with pytest.warns(UserWarning, match="newer"):
        assert not checker.ok(newer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not checker.ok(newer)  # warned once only
    assert checker.ok(metadata.Layout(layers=("a",)))


def test_summary_proto_is_a_tensor_of_the_gradflow_plugin():
    stats = np.arange(15, dtype=np.float32).reshape(5, 3)
    proto = summary.gradflow_pb(LAYOUT, stats, np.array([1.0, 4.0]), with_metadata=True)
    (value,) = proto.value
    assert value.tag == f"gradflow@{metadata.layout_id(LAYOUT)}/gen"
    assert value.metadata.plugin_data.plugin_name == "gradflow"
    assert value.metadata.data_class == summary_pb2.DATA_CLASS_TENSOR
    flat = tensor_util.make_ndarray(value.tensor)
    assert flat.dtype == np.float32 and flat.shape == (17,)
    values, fields = metadata.split_values(flat, LAYOUT)
    np.testing.assert_array_equal(values, stats)
    np.testing.assert_array_equal(fields, [1.0, 4.0])
    bare = summary.gradflow_pb(LAYOUT, stats, np.array([0.0, 0.0]), with_metadata=False)
    assert not bare.value[0].HasField("metadata")


def test_summary_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"stats has shape \(3, 5\)"):
        summary.gradflow_pb(LAYOUT, np.zeros((3, 5)), np.zeros(2), with_metadata=False)
    with pytest.raises(ValueError, match="step_fields"):
        summary.gradflow_pb(LAYOUT, np.zeros((5, 3)), np.zeros(3), with_metadata=False)


def test_tensorboard_event_accumulator_reads_watch_output(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with SummaryWriter(tmp_path) as w, tb_gradflow.watch(model, w, optimizer=opt):
        for _ in range(30):
            opt.zero_grad()
            model(torch.randn(3, 4)).sum().backward()
            opt.step()
    acc = event_accumulator.EventAccumulator(
        str(tmp_path), size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    (tag,) = acc.PluginTagToContent("gradflow")
    layout = metadata.parse_plugin_metadata(acc.PluginTagToContent("gradflow")[tag])
    assert layout.layers == ("0", "2")
    assert tag == f"gradflow@{metadata.layout_id(layout)}"
    events = acc.Tensors(tag)
    assert [e.step for e in events] == list(range(30))
    run = tb_gradflow.load_run(tmp_path)
    last = tensor_util.make_ndarray(events[-1].tensor_proto)
    values, _ = metadata.split_values(last, layout)
    np.testing.assert_array_equal(values[0], run.values("abs_mean")[-1])
    # beside them, one overview record of the 30 steps (written on remove)
    (block_tag,) = acc.PluginTagToContent(overview.OVERVIEW_PLUGIN_NAME)
    assert sorted(acc.Tags()["tensors"]) == sorted([tag, block_tag])
    assert block_tag == overview.overview_tag(layout)
    (record,) = acc.Tensors(block_tag)
    assert record.step == 29
    blocks = overview.decode(
        layout, [record.step], [tensor_util.make_ndarray(record.tensor_proto)]
    )
    assert (blocks.first_steps.tolist(), blocks.steps.tolist()) == ([0], [30])
    for k, stat in enumerate(layout.stats):
        np.testing.assert_array_equal(blocks.maxima[0, k], run.values(stat).max(0))
        np.testing.assert_array_equal(blocks.minima[0, k], run.values(stat).min(0))


def test_load_reads_every_step_of_every_run(tmp_path):
    write_steps(tmp_path / "run1", range(0, 3000, 2))
    write_steps(tmp_path / "deep" / "run2", [0, 1])
    runs = tb_gradflow.load(tmp_path)
    assert sorted(runs) == ["deep/run2/gen", "run1/gen"]
    run = runs["run1/gen"]
    assert run.steps.tolist() == list(range(0, 3000, 2))
    assert run.layers == ["a", "b", "c"] and run.every == 2
    assert run.sparse == [False, True, False]
    np.testing.assert_allclose(run.values("abs_max")[10], 20 + 0.1 + np.arange(3) / 100)
    assert run.loss_scale.tolist() == [8.0] * 1500
    with pytest.raises(KeyError, match="Unknown statistic 'mean'"):
        run.values("mean")


def test_merged_layer_sets_take_the_last_sparse_flag_and_the_largest_every(tmp_path):
    dense = dataclasses.replace(LAYOUT, layers=("a", "b"), sparse=(False, False))
    sparse = dataclasses.replace(LAYOUT, layers=("b",), sparse=(True,), every=5)
    write_steps(tmp_path, [0, 2, 4], layout=dense)
    write_steps(tmp_path, [5, 10], layout=sparse)
    run = tb_gradflow.load_run(tmp_path, name="gen")
    assert run.layers == ["a", "b"] and run.steps.tolist() == [0, 2, 4, 5, 10]
    assert list(run.sparse) == [False, True] and run.every == 5


def test_load_refuses_a_key_that_two_watchers_would_share(tmp_path):
    write_steps(tmp_path / "a", [0, 1], layout=dataclasses.replace(LAYOUT, name="b"))
    write_steps(
        tmp_path / "a" / "b", [5, 6], layout=dataclasses.replace(LAYOUT, name=None)
    )
    with pytest.raises(ValueError) as caught:
        tb_gradflow.load(tmp_path)
    assert str(caught.value) == (
        f"Two watchers under {str(tmp_path)!r} have the key 'a/b': watcher 'b' in "
        f"{str(tmp_path / 'a')!r} and the unnamed watcher in "
        f"{str(tmp_path / 'a' / 'b')!r}; read them with load_run(path, name=...)"
    )
    assert tb_gradflow.load_run(tmp_path / "a", name="b").steps.tolist() == [0, 1]
    assert tb_gradflow.load_run(tmp_path / "a" / "b").steps.tolist() == [5, 6]


def test_a_name_with_a_slash_is_left_out_and_the_rest_still_clash(tmp_path):
    # watch() refuses a name with "/"; a Layout (and so gradflow_pb, and files
    # from other writers) takes one, and the reader now refuses it alike: before,
    # three watchers could share a key.
    for run, name in [("a", "b/c"), ("a/b", "c"), ("a/b/c", None)]:
        write_steps(tmp_path / run, [0], layout=dataclasses.replace(LAYOUT, name=name))
    with pytest.warns(UserWarning, match=r"Invalid name: 'b/c'"):
        with pytest.raises(ValueError) as caught:
            tb_gradflow.load(tmp_path)
    assert str(caught.value) == (
        f"Two watchers under {str(tmp_path)!r} have the key 'a/b/c': watcher 'c' in "
        f"{str(tmp_path / 'a' / 'b')!r} and the unnamed watcher in "
        f"{str(tmp_path / 'a' / 'b' / 'c')!r}; read them with load_run(path, name=...)"
    )


def test_load_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        tb_gradflow.load(missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        tb_gradflow.load_run(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No gradflow data under .*empty"):
        tb_gradflow.load(tmp_path / "empty")
    with SummaryWriter(tmp_path / "scalars") as w:
        w.add_scalar("loss", 1.0, 0)
    with pytest.raises(ValueError, match="No gradflow data .*scalars"):
        tb_gradflow.load_run(tmp_path / "scalars")


def test_file_cut_off_mid_record_loads_every_complete_step(tmp_path):
    write_steps(tmp_path, range(50))
    (path,) = [tmp_path / f for f in os.listdir(tmp_path)]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])  # killed while writing the last one
    run = tb_gradflow.load_run(tmp_path, name="gen")
    assert run.steps.tolist() == list(range(49))
    np.testing.assert_allclose(run.values("abs_mean")[-1], 48 + np.arange(3) / 100)


def test_a_corrupt_record_is_left_out_and_reading_goes_on(tmp_path):
    """Before, reading stopped at the damaged record and every step after it
    was lost."""
    write_steps(tmp_path, range(50))
    (path,) = [tmp_path / f for f in os.listdir(tmp_path)]
    data = bytearray(path.read_bytes())
    offset = record_offsets(data)[31]  # record 0 is the file_version event
    data[offset + 12 + 60] ^= 0xFF  # a byte inside step 30's values
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning) as caught:
        run = tb_gradflow.load_run(tmp_path, name="gen")
    (warning,) = caught
    assert str(warning.message) == (
        f"{path}: record checksum does not match its data at byte {offset}: "
        "step 30 left out; reading went on after it"
    )
    assert run.steps.tolist() == [s for s in range(50) if s != 30]
    (left_out,) = run.left_out
    assert left_out.step == 30
    assert left_out.reason == (
        f"record checksum does not match its data ({path.name} at byte {offset})"
    )


def record_offsets(data):
    """The byte offset of each TFRecord in an event file's bytes."""
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        offset += struct.unpack("<Q", data[offset : offset + 8])[0] + 16
    return offsets


def test_a_corrupt_record_length_is_skipped_to_the_next_sound_record(tmp_path):
    write_steps(tmp_path, range(50))
    (path,) = [tmp_path / f for f in os.listdir(tmp_path)]
    data = bytearray(path.read_bytes())
    offsets = record_offsets(data)
    offset = offsets[26]  # record 0 is the file_version event
    data[offset + 7] ^= 0x01  # the length now points far beyond the file's end
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning) as caught:
        run = tb_gradflow.load_run(tmp_path, name="gen")
    (warning,) = caught
    skipped = offsets[27] - offset
    assert str(warning.message) == (
        f"{path}: corrupt record length (its checksum does not match) at byte "
        f"{offset}: {skipped} bytes left out; reading went on after it"
    )
    assert run.steps.tolist() == [s for s in range(50) if s != 25]
    assert [lo.step for lo in run.left_out] == [None]  # its bytes tell nothing


def test_file_cut_off_in_a_record_header_loads_every_complete_step(tmp_path):
    write_steps(tmp_path, range(10))
    (path,) = [tmp_path / f for f in os.listdir(tmp_path)]
    data = path.read_bytes()
    path.write_bytes(data[: record_offsets(data)[-1] + 10])  # 10 of 12 header bytes
    run = tb_gradflow.load_run(tmp_path, name="gen")  # no warning: filterwarnings
    assert run.steps.tolist() == list(range(9))


def test_a_reopened_writer_s_file_without_metadata_is_read(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    writer = SummaryWriter(tmp_path)
    with tb_gradflow.watch(model, writer, optimizer=opt) as flow:
        for step in range(10):
            if step == 5:
                writer.close()  # the next record opens a second events file
            opt.zero_grad()
            model(torch.randn(3, 4)).sum().backward()
            opt.step()
    writer.close()
    assert len(os.listdir(tmp_path)) == 2
    run = tb_gradflow.load_run(tmp_path)
    assert run.steps.tolist() == list(range(10))
    np.testing.assert_array_equal(
        run.values("abs_mean")[-1], flow.last.stat("abs_mean").astype(np.float32)
    )


def test_event_files_are_read_in_the_order_they_were_written(tmp_path):
    write_steps(tmp_path / "a", range(5))
    write_steps(tmp_path / "b", range(5, 10), with_metadata=False)
    # Names as torch gives them: time, host, pid, per-process counter.
    for part, counter in (("a", 9), ("b", 10)):
        (old,) = (tmp_path / part).iterdir()
        old.rename(tmp_path / f"events.out.tfevents.1700000000.host.7.{counter}")
    run = tb_gradflow.load_run(tmp_path, name="gen")
    assert run.steps.tolist() == list(range(10))


@pytest.mark.parametrize("stray", ["notes_1\u00b2", "x1\u0663", "x01", "2", "\u00b2"])
def test_stray_files_beside_the_event_files_are_left_alone(tmp_path, stray):
    # str.isdigit() holds for "²" and Arabic-Indic digits: names that once
    # crashed the sort of a run directory's file names.
    write_steps(tmp_path / "run" / "a", range(5))
    write_steps(tmp_path / "run" / "b", range(5, 10), with_metadata=False)
    for part, counter in (("a", 9), ("b", 10)):  # a host name with such digits
        (old,) = (tmp_path / "run" / part).iterdir()
        old.rename(
            tmp_path / "run" / f"events.out.tfevents.1700000000.h\u0663.7.{counter}"
        )
    for name in (stray, "x1a", "x1"):
        (tmp_path / "run" / name).write_text("not an event file")
    assert tb_gradflow.load_run(tmp_path / "run", name="gen").steps.tolist() == list(
        range(10)
    )
    assert tb_gradflow.load(tmp_path)["run/gen"].steps.tolist() == list(range(10))


def test_natural_key_orders_any_names_the_same_way_from_any_order():
    from tb_gradflow.run_files import _natural_key

    names = [
        "x1\u0663",
        "x1a",
        "x01",
        "x1",
        "notes_1\u00b2",
        "\u00b2",
        "2",
        "x10",
        "x9",
    ]
    want = sorted(names, key=_natural_key)
    assert sorted(reversed(names), key=_natural_key) == want
    assert want.index("x9") < want.index("x10")
    assert want.index("x01") < want.index("x1")  # equal numbers: by the name


def test_changed_layer_set_across_resume_is_matched_by_name(tmp_path):
    write_steps(tmp_path, [0, 1])
    wider = metadata.Layout(
        layers=("a", "x", "c"), every=2, name="gen", sparse=(False, False, False)
    )
    write_steps(tmp_path, [2], layout=wider)
    run = tb_gradflow.load_run(tmp_path, name="gen")
    assert run.layers == ["a", "b", "c", "x"]
    mean = run.values("abs_mean")
    np.testing.assert_allclose(mean[2], [2.0, np.nan, 2.02, 2.01])
    np.testing.assert_allclose(mean[0], [0.0, 0.01, 0.02, np.nan])


def test_plot_draws_the_bar_plot(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    write_steps(tmp_path, range(5))
    run = tb_gradflow.load_run(tmp_path, name="gen")
    ax = run.plot(step=3)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["a", "b", "c"]
    assert "step 3" in ax.get_title()
    ax.figure.savefig(tmp_path / "flow.png")
    assert (tmp_path / "flow.png").stat().st_size > 1000
    # a layer set without "b" later on: b is marked absent there, not "no
    # gradient", in the words of the tab's legend
    later = dataclasses.replace(LAYOUT, layers=("a", "c"), sparse=(False, False))
    write_steps(tmp_path, [5], layout=later)
    run = tb_gradflow.load_run(tmp_path, name="gen")
    lines = run.plot().lines  # the marks, and the axis line (label "_child...")
    marks = {ln.get_label(): list(ln.get_xdata()) for ln in lines}
    assert {k: v for k, v in marks.items() if not k.startswith("_")} == {
        "no such layer": [1]
    }


def test_module_types_are_recorded_and_shown_beside_the_names(tmp_path, capsys):
    """An nn.Sequential's layers are named 0, 1, 3: the module type says what
    each is. Names stay the keys (include=, the reader); labels add the type."""
    from tb_gradflow import cli

    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with SummaryWriter(tmp_path) as w, tb_gradflow.watch(model, w, optimizer=opt):
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(4, 1, 4, 4)).sum().backward()
            opt.step()
    run = tb_gradflow.load_run(tmp_path)
    assert run.layers == ["0", "1", "4"]
    assert run.types == ["Conv2d", "BatchNorm2d", "Linear"]
    assert [run.label(n) for n in run.layers] == [
        "0 \u00b7 Conv2d",
        "1 \u00b7 BatchNorm2d",
        "4 \u00b7 Linear",
    ]
    assert cli.main(["report", str(tmp_path)]) == 0
    assert " ++ 1 \u00b7 BatchNorm2d=" in capsys.readouterr().out


def test_files_without_module_types_read_with_names_alone(tmp_path):
    write_steps(tmp_path, range(3))  # LAYOUT has no types
    run = tb_gradflow.load_run(tmp_path, name="gen")
    assert run.types == ["", "", ""]
    assert run.label("a") == "a"


def test_tied_and_wrapped_parameters_take_their_first_owners_type():
    from tb_gradflow.layers import module_types

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.lstm = nn.LSTM(4, 4)
            self.out = nn.Linear(4, 10)
            self.out.weight = self.emb.weight

    model = Tied()
    owners = module_types(torch.compile(model))
    assert owners[id(model.emb.weight)] == "Embedding"
    assert owners[id(model.lstm.weight_hh_l0)] == "LSTM"


@pytest.mark.parametrize("name", ["", "enc/dec"])
def test_metadata_with_a_name_watch_refuses_is_refused_alike(name):
    content = json.dumps(
        {"version": 1, "layers": ["a"], "stats": list(metadata.STATS), "name": name}
    ).encode()
    message = f"Invalid name: {name!r} (a non-empty str without '/')"
    with pytest.raises(metadata.FormatError, match=re.escape(message)):
        metadata.parse_plugin_metadata(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        tb_gradflow.watch(nn.Linear(2, 2), None, name=name)


def records(layout, steps):
    """Sound flat records, ``(N, layout.size)`` float32: step s's abs_mean of
    layer l is s + 1 + l / 10 (abs_max and norm 2x and 3x that)."""
    n = len(layout.layers)
    flat = np.zeros((len(steps), layout.size), dtype=np.float32)
    for i, step in enumerate(steps):
        mean = step + 1 + np.arange(n) / 10
        values = {"abs_mean": mean, "abs_max": 2 * mean, "norm": 3 * mean}
        values |= {"nonfinite": 0.0, "rows": 1.0}
        flat[i, : len(layout.stats) * n] = stats.record(
            values, n, order=layout.stats
        ).ravel()
    return flat


def test_a_statistic_the_files_lack_is_nan_and_takes_no_memory():
    layout = metadata.Layout(layers=("a", "b"), sparse=(False, False))
    run = reader.from_records("r", layout, range(4), list(records(layout, range(4))))
    lacking = [s for s in stats.names() if s not in layout.stats]
    assert lacking and run.not_logged == lacking
    assert run.stats == [*layout.stats, *lacking]
    # (T, K, L) float32 of the varying three, a row of the steady two
    assert run.nbytes == 4 * 3 * 2 * 4 + 2 * 2 * 4
    for stat in lacking:
        for nan in (run.values(stat), run.grouped("role").values(stat)):
            assert nan.shape == (4, 2) and nan.dtype == np.float32
            assert np.isnan(nan).all() and not nan.flags.writeable
    np.testing.assert_allclose(run.values("norm")[2], [9.0, 9.3], rtol=1e-6)


def test_a_statistic_steady_at_every_step_is_kept_once():
    """nonfinite 0 and rows 1 at every step (most runs): one row each, read
    back at every step; a layer without gradient (NaN) is steady too; a
    statistic that changes at one step, first, middle or last, is not."""
    layout = metadata.Layout(layers=("a", "b", "c"), sparse=(False,) * 3)
    flat = records(layout, range(600))  # more than one 256-step chunk
    nonfinite = list(layout.stats).index("nonfinite") * 3  # its first column
    flat[:, 2 : 3 * len(layout.stats) : 3] = np.nan  # layer c: no gradient, ever
    run = reader.from_records("r", layout, range(600), list(flat))
    for k, stat in enumerate(layout.stats):
        expected = flat[:, 3 * k : 3 * k + 3]  # (T, L)
        np.testing.assert_array_equal(run.values(stat), expected)
    assert not run.values("rows").flags.writeable
    assert run.values("rows").strides[0] == 0  # one row, not a copy a step
    assert run.nbytes == 600 * 3 * 3 * 4 + 2 * 3 * 4
    for at in (0, 300, 599):
        changed = flat.copy()
        changed[at, nonfinite] = 1.0  # layer a: one non-finite value
        again = reader.from_records("r", layout, range(600), list(changed))
        np.testing.assert_array_equal(
            again.values("nonfinite"), changed[:, nonfinite : nonfinite + 3]
        )
        assert again.values("nonfinite").strides[0] != 0


def test_records_in_order_are_views_and_out_of_order_ones_are_sorted():
    layout = metadata.Layout(layers=("a", "b", "c"), sparse=(False,) * 3)
    flat = records(layout, range(6))
    run = reader.from_records("r", layout, range(6), list(flat))
    # one stacked block of the records, each statistic a view of it
    assert run.values("abs_mean").base is run.values("norm").base is not None
    order = [3, 0, 5, 1, 4, 2, 3]  # step 3 twice: the later record wins
    again = flat[order]
    again[-1, :3] = [4.5, 4.6, 4.7]  # abs_mean of the last record of step 3
    shuffled = reader.from_records("r", layout, order, list(again))
    assert shuffled.steps.tolist() == list(range(6))
    for stat in layout.stats:
        want = run.values(stat).copy()
        if stat == "abs_mean":
            want[3] = [4.5, 4.6, 4.7]
        np.testing.assert_array_equal(shuffled.values(stat), want)
