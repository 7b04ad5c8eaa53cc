"""The tab's overview of a run TensorBoard did not keep every step of: the
``heatmap`` and ``lines`` answers drawn from the watcher's overview records
(``tb_gradflow/overview_merge.py``), through TensorBoard's WSGI app and its
Python multiplexer, and through a real ``tensorboard`` with its Rust data
server.

Runs are written by the watcher's own ``RecordWriter`` (per-step records and
an overview record per 100 logged steps, the last partial block on close),
and sampled by a ``samples_per_plugin`` limit for ``gradflow`` far below
their length. Each column's largest and smallest values are then checked
against a plain loop over every logged step of its range.
"""

from __future__ import annotations

import json
import math
import struct
import time
import urllib.parse

import numpy as np
import pytest
from plugin_client import make_plugin_client
from watched_runs import ORDER, FileWriter, gradients, layout_of, write_watched

from tb_gradflow import heatmap, metadata, overview, reader
from tb_gradflow.record_writer import RecordWriter
from tb_gradflow.summary import gradflow_pb, overview_pb

LAYERS = 20
SAMPLED = {"gradflow": 500}  # steps kept per tag, far below the runs' lengths
SEEDS = range(6)
STEPS = 6_050  # logged steps of each seeded run: 60 blocks and a partial one
ABS_MEAN = ORDER.index("abs_mean")
SIZES = [ORDER.index(n) for n in ("abs_mean", "abs_max", "norm")]


def scale(values, step, layer, to):
    """Sets abs_mean at ``step`` in ``layer`` to ``to``, abs_max and norm
    with it."""
    values[step, SIZES, layer] *= to / values[step, ABS_MEAN, layer]


def seeded_run(seed):
    """A run of ``STEPS`` logged steps with a 10x spike (abs_mean) at one
    random step of one random layer and a 10x dip at another: ``(values,
    (spike step, layer), (dip step, layer))``."""
    rng = np.random.default_rng(seed)
    values, medians = gradients(rng, STEPS)
    spike = (int(rng.integers(STEPS)), int(rng.integers(LAYERS)))
    dip = (int(rng.integers(STEPS)), int(rng.integers(LAYERS)))
    if dip[0] == spike[0]:
        dip = ((dip[0] + 1) % STEPS, dip[1])
    for (step, layer), factor in ((spike, 10.0), (dip, 0.1)):
        scale(values, step, layer, factor * medians[layer])
    return values, spike, dip


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """One run per seed, and a plugin client keeping 500 of each run's steps."""
    logdir = tmp_path_factory.mktemp("seeded")
    runs = {}
    for seed in SEEDS:
        runs[f"seed{seed}"] = seeded_run(seed)
        write_watched(logdir, f"seed{seed}", layout_of(), runs[f"seed{seed}"][0])
    client, _ = make_plugin_client(logdir, sampling_hints=SAMPLED)
    return client, runs


def get(client, route, **params):
    return client.get(f"/data/plugin/gradflow/{route}", query_string=params)


def get_json(client, route, **params):
    response = get(client, route, **params)
    assert response.status_code == 200, response.get_data(as_text=True)
    return json.loads(response.get_data())


def numbers(matrix):
    """A JSON matrix with the strings "NaN", "Infinity" and "-Infinity" as
    floats."""
    return np.array([[float(x) for x in row] for row in matrix])


def column_of(answer, step):
    (column,) = [
        c
        for c, (a, z) in enumerate(zip(answer["first_steps"], answer["last_steps"]))
        if a <= step <= z
    ]
    return column


def every_step_extremes(answer, steps, values):
    """Each column's largest and smallest value per layer over every logged
    step in its range, in a plain loop: ``([layer][column], [layer][column])``.

    Shape:
        - steps: ``(T,)``; values: ``(T, L)`` float32
    """
    largest, smallest = [], []
    for a, z in zip(answer["first_steps"], answer["last_steps"]):
        mine = values[(steps >= a) & (steps <= z)]
        largest.append([float(v) for v in mine.max(axis=0)])
        smallest.append([float(v) for v in mine.min(axis=0)])
    return [list(c) for c in zip(*largest)], [list(c) for c in zip(*smallest)]


def test_the_tab_keeps_only_a_sample_of_these_runs(seeded):
    client, _ = seeded
    answer = get_json(client, "steps", run="seed0")
    assert len(answer["steps"]) == 500
    assert answer["last_step"] == STEPS - 1


@pytest.mark.parametrize("columns", [1000, 37, 1])
@pytest.mark.parametrize("seed", SEEDS)
def test_a_one_step_spike_and_dip_anywhere_survive_in_the_overview(
    seeded, seed, columns
):
    client, runs = seeded
    values, (spike_at, spike_layer), (dip_at, dip_layer) = runs[f"seed{seed}"]
    abs_mean = values[:, ABS_MEAN]  # (T, L)
    steps = np.arange(STEPS)
    lines = get_json(
        client, "lines", run=f"seed{seed}", stat="abs_mean", max_steps=str(columns)
    )
    assert lines["from"] == "overview"
    assert lines["logged_steps"] == STEPS
    assert lines["downsampled"] is True
    assert lines["first_steps"][0] == 0 and lines["last_steps"][-1] == STEPS - 1
    # every logged step is in exactly one column, blocks never split
    assert all(
        z + 1 == a for z, a in zip(lines["last_steps"], lines["first_steps"][1:])
    )
    assert all(a % overview.BLOCK == 0 for a in lines["first_steps"])
    assert len(lines["steps"]) == min(columns, math.ceil(STEPS / overview.BLOCK))
    largest, smallest = every_step_extremes(lines, steps, abs_mean)
    assert lines["max"] == largest
    assert lines["min"] == smallest
    spike = float(abs_mean[spike_at, spike_layer])
    column = column_of(lines, spike_at)
    assert lines["max"][spike_layer][column] == spike
    if columns > 1:  # the spike's column, and no other
        others = [v for c, v in enumerate(lines["max"][spike_layer]) if c != column]
        assert max(others) < spike / 2
    assert lines["min"][dip_layer][column_of(lines, dip_at)] == float(
        abs_mean[dip_at, dip_layer]
    )
    heat = get_json(
        client, "heatmap", run=f"seed{seed}", stat="abs_mean", max_steps=str(columns)
    )
    assert heat["values"] == lines["max"]
    assert {k: v for k, v in heat.items() if k != "values"} == {
        k: v for k, v in lines.items() if k not in ("max", "min")
    }


def test_total_norm_of_the_overview_is_the_largest_of_every_logged_step(seeded):
    client, runs = seeded
    values, _, _ = runs["seed3"]
    norm = values[:, ORDER.index("norm")].astype(np.float64)  # (T, L)
    totals = np.sqrt((norm**2).sum(axis=1))  # (T,)
    answer = get_json(client, "heatmap", run="seed3", stat="abs_max", max_steps="40")
    want = [
        totals[a : z + 1].max()
        for a, z in zip(answer["first_steps"], answer["last_steps"])
    ]
    np.testing.assert_allclose(answer["total_norm"], want, rtol=1e-6)
    # the largest total of the run, at a step the plugin most likely did not keep
    top = int(np.argmax(totals))
    assert int(np.argmax(answer["total_norm"])) == column_of(answer, top)


def test_binary_answers_of_the_overview_match_json(seeded):
    client, _ = seeded
    params = dict(run="seed1", stat="norm", max_steps="50")
    expected = get_json(client, "lines", **params)
    body = get(client, "lines", format="binary", **params).get_data()
    (n,) = struct.unpack("<I", body[:4])
    header = json.loads(body[4 : 4 + n])
    assert header == {k: v for k, v in expected.items() if k not in ("max", "min")}
    matrices = np.frombuffer(body[4 + n + (-(4 + n) % 4) :], dtype="<f4")
    maxima = matrices.reshape(2, LAYERS, -1)[0]
    assert maxima.tolist() == expected["max"]


def test_a_run_whose_every_step_was_kept_answers_as_without_overview(tmp_path):
    """Every logged step kept: the kept steps are binned one by one, as for a
    run written without overview records (old runs), with the same answer."""
    values, _ = gradients(np.random.default_rng(7), 1_234)
    layout = layout_of(4)
    write_watched(tmp_path, "with", layout, values[:, :, :4])
    write_bare(tmp_path, "without", layout, values[:, :, :4])
    client, _ = make_plugin_client(tmp_path)
    for columns in ("1000", "7", "5000"):
        for route in ("heatmap", "lines"):
            params = dict(stat="abs_mean", max_steps=columns)
            got = get_json(client, route, run="with", **params)
            want = get_json(client, route, run="without", **params)
            assert "from" not in got
            assert {**got, "run": "without"} == want


def test_steps_counts_the_logged_steps_from_the_overview_records(tmp_path):
    """Steps that are token counts (irregular gaps): of 1,234 logged steps
    the plugin reads 50; the blocks count every one, where the first and last
    kept steps and ``every`` would say ~6e5."""
    layout = layout_of(4)
    values, _ = gradients(np.random.default_rng(8), 1_234, layers=4)
    at = np.cumsum(np.random.default_rng(9).integers(1, 1_000, 1_234))  # (T,)
    (tmp_path / "tokens").mkdir()
    writer = FileWriter(tmp_path / "tokens", 1e9)
    records = RecordWriter(writer, layout, "torch")
    for step, stats in zip(at.tolist(), values):
        records.write_step(step, stats, False, math.nan)
    records.close()
    writer.events.close()
    client, _ = make_plugin_client(tmp_path, sampling_hints={"gradflow": 50})
    steps = get_json(client, "steps", run="tokens")
    assert len(steps["steps"]) == 50 and steps["last_step"] == int(at[-1])
    assert steps["expected_steps"] == 1_234
    runs = get_json(client, "runs")["runs"]
    assert [r["expected_steps"] for r in runs] == [1_234]


def write_bare(logdir, run, layout, values):
    """Per-step records alone, as a watcher of a version before overview
    records wrote them."""
    run_dir = logdir / run
    run_dir.mkdir(parents=True)
    writer = FileWriter(run_dir, 1e9)
    for i, stats in enumerate(values):
        proto = gradflow_pb(layout, stats, [0.0, math.nan], with_metadata=i == 0)
        writer.add_summary(proto, i)
    writer.events.close()


def test_an_old_sampled_run_without_overview_records_is_binned_from_its_kept_steps(
    tmp_path,
):
    values, _ = gradients(np.random.default_rng(8), 3_000, layers=4)
    layout = layout_of(4)
    write_bare(tmp_path, "old", layout, values)
    client, _ = make_plugin_client(tmp_path, sampling_hints=SAMPLED)
    kept = get_json(client, "steps", run="old")["steps"]
    assert len(kept) == 500
    answer = get_json(client, "lines", run="old", stat="abs_mean", max_steps="100")
    assert "from" not in answer and "logged_steps" not in answer
    run = reader.from_records(
        "old",
        layout,
        kept,
        [np.concatenate([values[s].reshape(-1), [0.0, math.nan]]) for s in kept],
    )
    header, largest, smallest = heatmap.bin_extremes(run, "gradflow", "abs_mean", 100)
    assert {k: v for k, v in answer.items() if k not in ("max", "min")} == {
        **header,
        "run": "old",
    }
    assert answer["max"] == largest.tolist()
    assert answer["min"] == smallest.tolist()


def test_steps_not_in_any_overview_record_yet_are_binned_from_kept_steps(tmp_path):
    """A live run: its last partial block has no record yet, so its kept
    steps are binned one by one; once the record is written (as
    ``flow.remove()`` does, at the same step as the last per-step record),
    the next answer draws from it."""
    rng = np.random.default_rng(11)
    values, medians = gradients(rng, 3_050, layers=4)
    spike_at = 3_020
    scale(values, spike_at, 2, 10 * medians[2])
    layout = layout_of(4)
    write_watched(tmp_path, "live", layout, values, finish=False)
    client, mux = make_plugin_client(tmp_path, sampling_hints={"gradflow": 100})
    kept = get_json(client, "steps", run="live")["steps"]
    answer = get_json(client, "lines", run="live", stat="abs_mean")
    assert answer["from"] == "overview"
    tail = [s for s in kept if s >= 3_000]
    assert answer["first_steps"][-len(tail) :] == tail  # one column each
    assert answer["logged_steps"] == 3_000 + len(tail)
    run_dir = tmp_path / "live"
    acc = overview.BlockAccumulator(layout)
    for step in range(3_000, 3_050):
        acc.add(step, values[step], False)
    writer = FileWriter(run_dir, 2e9)
    writer.add_summary(overview_pb(layout, acc.take(), with_metadata=True), 3_049)
    writer.events.close()
    mux.Reload()
    after = get_json(client, "lines", run="live", stat="abs_mean")
    assert after["last_steps"][-1] == 3_049 and after["logged_steps"] == 3_050
    spike = float(values[spike_at, ABS_MEAN, 2])
    assert after["max"][2][column_of(after, spike_at)] == spike
    # runs and triage still know the run read (its per-step records' version)
    (listed,) = get_json(client, "runs")["runs"]
    assert listed["steps"] == len(kept)
    get_json(client, "alerts", run="live")
    (judged,) = get_json(client, "triage")["runs"]
    assert (judged["basis"], judged["steps"]) == ("all", len(kept))


def test_a_run_resumed_with_another_layer_set_merges_its_blocks_by_layer_name(
    tmp_path,
):
    """Session 1 logs steps 0-3999 with layers a0-a5; session 2 resumes from
    the checkpoint of step 3000 with a0-a2 and b0-b1, to step 6999. Steps
    3000-3999 are session 2's: a spike session 1 logged at 3500 is not shown,
    one of session 2's at 3700 is."""
    rng = np.random.default_rng(5)
    first = metadata.Layout(layers=tuple(f"a{i}" for i in range(6)))
    second = metadata.Layout(layers=("a0", "a1", "a2", "b0", "b1"))
    one, _ = gradients(rng, 4_000, layers=6)
    two, _ = gradients(rng, 4_000, layers=5)
    one[3_500, SIZES, 1] *= 1000.0  # logged again by session 2: not shown
    two[700, SIZES, 1] *= 50.0  # step 3700, layer a1
    write_watched(tmp_path, "resumed", first, one, wall=1e9)
    write_watched(tmp_path, "resumed", second, two, start=3_000, wall=2e9)
    client, _ = make_plugin_client(tmp_path, sampling_hints=SAMPLED)
    answer = get_json(client, "lines", run="resumed", stat="abs_mean", max_steps="70")
    assert answer["layers"] == ["a0", "a1", "a2", "a3", "a4", "a5", "b0", "b1"]
    assert answer["from"] == "overview" and answer["logged_steps"] == 7_000
    assert answer["first_steps"] == list(range(0, 7_000, 100))
    steps = np.arange(7_000)
    merged = np.full((7_000, 8), np.nan, dtype=np.float32)  # by layer name
    merged[:3_000, :6] = one[:3_000, ABS_MEAN]
    merged[3_000:, [0, 1, 2, 6, 7]] = two[:, ABS_MEAN]
    largest, smallest = every_step_extremes(
        answer, steps, np.where(np.isnan(merged), -np.inf, merged)
    )
    # -Infinity: not in the layer sets of the column's steps; NaN: no value
    np.testing.assert_array_equal(numbers(answer["max"]), largest)
    smallest = np.where(np.isinf(smallest), np.nan, smallest)
    np.testing.assert_array_equal(numbers(answer["min"]), smallest)
    spike = float(two[700, ABS_MEAN, 1])
    assert max(answer["max"][1]) == spike == answer["max"][1][37]


def test_a_resumed_session_with_the_same_layer_set_wins_the_steps_it_logged_again(
    tmp_path,
):
    """The same layer set (one tag, so TensorBoard's Python loader keeps both
    sessions' records): session 1's blocks of steps that session 2 logged
    again are not used."""
    rng = np.random.default_rng(6)
    layout = layout_of(3)
    one, _ = gradients(rng, 2_000, layers=3)
    two, _ = gradients(rng, 1_500, layers=3)
    one[1_750, SIZES, 0] *= 1000.0  # step 1750, logged again by session 2
    write_watched(tmp_path, "again", layout, one, wall=1e9)
    write_watched(tmp_path, "again", layout, two, start=1_500, wall=2e9)
    client, _ = make_plugin_client(tmp_path, sampling_hints={"gradflow": 200})
    answer = get_json(client, "lines", run="again", stat="abs_mean", max_steps="30")
    assert answer["first_steps"] == list(range(0, 3_000, 100))
    merged = np.concatenate([one[:1_500, ABS_MEAN], two[:, ABS_MEAN]])
    largest, smallest = every_step_extremes(answer, np.arange(3_000), merged)
    assert answer["max"] == largest
    assert answer["min"] == smallest


def test_a_malformed_overview_record_is_left_out_with_why(tmp_path):
    values, _ = gradients(np.random.default_rng(9), 1_000, layers=4)
    layout = layout_of(4)
    write_watched(tmp_path, "damaged", layout, values)
    acc = overview.BlockAccumulator(layout)
    for step in range(1_000, 1_100):
        acc.add(step, values[step - 1_000], False)
    negative = acc.take()
    negative[ABS_MEAN * 4] = -3.0  # abs_mean's largest value, layer 0
    writer = FileWriter(tmp_path / "damaged", 2e9)
    writer.add_summary(overview_pb(layout, negative, with_metadata=False), 1_099)
    short = overview_pb(layout, np.zeros(5, np.float32), with_metadata=False)
    writer.add_summary(short, 1_199)
    writer.events.close()
    client, _ = make_plugin_client(tmp_path, sampling_hints={"gradflow": 100})
    left_out = get_json(client, "steps", run="damaged")["left_out"]
    assert left_out == [
        {
            "step": 1_099,
            "reason": "Invalid gradflow overview record: abs_mean is negative "
            "(layer 'layer0.weight')",
        },
        {
            "step": 1_199,
            "reason": "Invalid gradflow overview record: has 5 values, not "
            f"{overview.record_size(layout)}",
        },
    ]
    answer = get_json(client, "heatmap", run="damaged", stat="abs_mean")
    assert answer["from"] == "overview" and answer["last_steps"][-1] == 999


def test_an_overview_tag_of_a_newer_version_is_left_out_with_why(tmp_path):
    values, _ = gradients(np.random.default_rng(10), 300, layers=2)
    layout = layout_of(2)
    write_bare(tmp_path, "future", layout, values)
    acc = overview.BlockAccumulator(layout)
    for step in range(300):
        acc.add(step, values[step], False)
    proto = overview_pb(layout, acc.take(), with_metadata=True)
    content = json.dumps({"version": overview.OVERVIEW_VERSION + 1, "name": None})
    proto.value[0].metadata.plugin_data.content = content.encode()
    writer = FileWriter(tmp_path / "future", 2e9)
    writer.add_summary(proto, 299)
    writer.events.close()
    client, _ = make_plugin_client(tmp_path, sampling_hints={"gradflow": 50})
    (left_out,) = get_json(client, "steps", run="future")["left_out"]
    assert left_out["step"] is None
    assert left_out["reason"].startswith(overview.overview_tag(layout) + ": ")
    assert "newer than this tb-gradflow" in left_out["reason"]
    assert "from" not in get_json(client, "heatmap", run="future", stat="norm")


BIG_STEPS = 30_050  # 300 blocks and a partial one
_LOAD_TIMEOUT = 120.0  # s until TensorBoard has ingested the big run


@pytest.fixture(scope="module")
def big_logdir(tmp_path_factory):
    """20 layers x 30,050 logged steps with a 10x spike at a random step."""
    logdir = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(2026)
    values, medians = gradients(rng, BIG_STEPS)
    at, layer = int(rng.integers(BIG_STEPS)), int(rng.integers(LAYERS))
    scale(values, at, layer, 10 * medians[layer])
    write_watched(logdir, "big", layout_of(), values)
    return logdir, values, (at, layer)


@pytest.mark.parametrize("load_fast", ["true", "false"])
def test_a_real_tensorboard_serves_the_overview_of_a_sampled_run(
    big_logdir, tensorboard_process, load_fast
):
    logdir, values, (at, layer) = big_logdir
    tb = tensorboard_process(
        logdir, f"--load_fast={load_fast}", "--samples_per_plugin=gradflow=500"
    )
    try:
        deadline = time.monotonic() + _LOAD_TIMEOUT
        while True:
            runs = tb.get_json("/data/plugin/gradflow/runs")["runs"]
            if runs and runs[0]["last_step"] == BIG_STEPS - 1:
                query = urllib.parse.urlencode({"run": "big", "stat": "abs_mean"})
                lines = tb.get_json(f"/data/plugin/gradflow/lines?{query}")
                if lines.get("logged_steps") == BIG_STEPS:  # every record ingested
                    break
            assert time.monotonic() < deadline, runs
            time.sleep(0.5)
        steps = tb.get_json("/data/plugin/gradflow/steps?run=big")["steps"]
        assert len(steps) == 500
        assert lines["from"] == "overview"
        assert len(lines["steps"]) == 301  # one column per block
        abs_mean = values[:, ABS_MEAN]
        largest, smallest = every_step_extremes(lines, np.arange(BIG_STEPS), abs_mean)
        assert lines["max"] == largest and lines["min"] == smallest
        assert lines["max"][layer][column_of(lines, at)] == float(abs_mean[at, layer])
        status, _, body = tb.get(
            f"/data/plugin/gradflow/heatmap?{query}&max_steps=100&format=binary"
        )
        assert status == 200
        (n,) = struct.unpack("<I", body[:4])
        header = json.loads(body[4 : 4 + n])
        matrix = np.frombuffer(body[4 + n + (-(4 + n) % 4) :], dtype="<f4")
        matrix = matrix.reshape(LAYERS, len(header["steps"]))
        assert header["from"] == "overview" and len(header["steps"]) == 100
        column = column_of(header, at)
        assert matrix[layer, column] == abs_mean[at, layer]
        assert int(np.argmax(matrix[layer])) == column
    finally:
        tb.close()


@pytest.mark.parametrize("load_fast", ["true", "false"])
def test_a_session_resumed_before_its_first_block_ends_the_overview_where_its_steps_do(
    tmp_path, tensorboard_process, load_fast
):
    """Session 1 logs steps 0-3999; session 2, the same layer set, resumes at
    3000 and has logged 3000-3050, no block yet. Session 2's records are a
    segment of their own (tb_gradflow.segments); the plugin drops session 1's
    per-step records from 3000 on (an abandoned timeline, as the Rust data
    server drops a tag's records from a step logged again), with either
    loader, so the overview ends at 3050 too, without session 1's blocks of
    the steps dropped."""
    rng = np.random.default_rng(12)
    layout = layout_of(3)
    one, _ = gradients(rng, 4_000, layers=3)
    two, _ = gradients(rng, 51, layers=3)
    write_watched(tmp_path / "logs", "resumed", layout, one, wall=1e9)
    write_watched(
        tmp_path / "logs", "resumed", layout, two, start=3_000, finish=False, wall=2e9
    )
    tb = tensorboard_process(
        tmp_path / "logs",
        f"--load_fast={load_fast}",
        "--samples_per_plugin=gradflow=300",
    )
    try:
        deadline = time.monotonic() + _LOAD_TIMEOUT
        while True:  # until session 2's records are in
            steps = tb.get("/data/plugin/gradflow/steps?run=resumed")
            if steps[0] == 200 and 3_050 in json.loads(steps[2])["steps"]:
                break
            assert time.monotonic() < deadline, steps
            time.sleep(0.5)
        last = json.loads(steps[2])["last_step"]
        assert last == 3_050
        lines = tb.get_json(
            "/data/plugin/gradflow/lines?run=resumed&stat=abs_mean&max_steps=100"
        )
        assert lines["from"] == "overview" and lines["last_steps"][-1] == last
    finally:
        tb.close()
