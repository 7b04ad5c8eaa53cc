"""The tab per block and per role: the `group` parameter of the `flow`,
`heatmap` and `lines` routes and the group counts of `runs`, through
TensorBoard's WSGI app. Grouped binned answers are checked against the
statistics written, combined and binned here in plain loops, and against the
per-layer answers; a run TensorBoard kept a sample of is drawn from its
overview records, whose values for a group are bounds."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
from plugin_client import make_plugin_client
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from tb_gradflow import metadata
from tb_gradflow import stats as tb_stats
from tb_gradflow.record_writer import RecordWriter
from tb_gradflow.stats import record
from tb_gradflow.summary import gradflow_pb

ROLES = ("self_attn.q_proj", "mlp.down_proj")
LAYERS = (
    "model.embed_tokens",
    *(f"model.layers.{i}.{r}" for i in range(3) for r in ROLES),
    "lm_head",
)


def write(logdir, steps=3):
    """A Llama-shaped run: layer j's abs_mean j+1, norm 10(j+1), one layer
    (block 1's down_proj) without a gradient and one (block 2's q_proj) with
    2 NaN at the last step."""
    layout = metadata.Layout(layers=LAYERS, sparse=(False,) * len(LAYERS))
    n = len(LAYERS)
    writer = EventFileWriter(str(logdir / "llama"))
    for step in range(steps):
        mean = np.arange(1, n + 1, dtype=float)
        nonfinite = np.zeros(n)
        values = {"abs_mean": mean, "abs_max": 2 * mean, "norm": 10 * mean}
        values = {k: v.copy() for k, v in values.items()}
        if step == steps - 1:
            nonfinite[5] = 2.0  # model.layers.2.self_attn.q_proj
        for stat in values:
            values[stat][4] = np.nan  # model.layers.1.mlp.down_proj: no gradient
        nonfinite[4] = np.nan
        stats = record({**values, "nonfinite": nonfinite, "rows": np.ones(n)}, n)
        proto = gradflow_pb(layout, stats, [0.0, np.nan], with_metadata=step == 0)
        writer.add_event(
            event_pb2.Event(step=step, wall_time=1.0 + step, summary=proto)
        )
    writer.close()


def test_runs_count_the_groups_and_flow_answers_per_block_and_per_role(tmp_path):
    write(tmp_path)
    client, _ = make_plugin_client(tmp_path)
    (entry,) = client.get("/data/plugin/gradflow/runs").get_json()["runs"]
    assert entry["layers"] == 8 and entry["groups"] == {"block": 5, "role": 4}
    plain = client.get("/data/plugin/gradflow/flow?run=llama").get_json()
    assert plain["layers"] == list(LAYERS)
    assert "group" not in plain and "members" not in plain
    blocks = client.get("/data/plugin/gradflow/flow?run=llama&group=block").get_json()
    assert blocks["group"] == "block"
    assert blocks["layers"] == [
        "model.embed_tokens",
        "model.layers.0",
        "model.layers.1",
        "model.layers.2",
        "lm_head",
    ]
    assert blocks["members"][1] == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.mlp.down_proj",
    ]
    # equal sizes unknown to the files: abs_mean is the mean of the members'
    mean = blocks["stats"]["abs_mean"]
    assert mean[1] == 2.5  # layers 2 and 3 (1-based)
    assert mean[2] == 4.0  # layer 4 only: layer 5 had no gradient
    np.testing.assert_allclose(blocks["stats"]["norm"][1], np.hypot(20, 30), rtol=1e-6)
    assert blocks["stats"]["nonfinite"][3] == 2.0 and blocks["no_grad"] == [False] * 5
    # the alerts still name layers
    assert {a["layer"] for a in blocks["alerts"]} >= {"model.layers.2.self_attn.q_proj"}
    roles = client.get(
        "/data/plugin/gradflow/flow?run=llama&group=role&step=0"
    ).get_json()
    assert roles["layers"] == [
        "model.embed_tokens",
        "model.layers.*.self_attn.q_proj",
        "model.layers.*.mlp.down_proj",
        "lm_head",
    ]
    assert roles["stats"]["abs_max"][2] == 2 * 7.0  # the largest of 3, (5), 7


def test_a_bad_group_answers_400(tmp_path):
    write(tmp_path)
    client, _ = make_plugin_client(tmp_path)
    response = client.get("/data/plugin/gradflow/flow?run=llama&group=stage")
    assert response.status_code == 400
    assert "Invalid group: 'stage' (one of layer, block, role)" in response.get_data(
        as_text=True
    )


# --- heatmap and lines per group -------------------------------------------

ORDER = tb_stats.names("gradient")  # the statistics a layout holds by default
BLOCKS = {  # the groups of LAYERS by block: their layers' indices
    "model.embed_tokens": [0],
    "model.layers.0": [1, 2],
    "model.layers.1": [3, 4],
    "model.layers.2": [5, 6],
    "lm_head": [7],
}
NUMEL = (64, 16, 48, 16, 48, 16, 48, 64)  # unequal: abs_mean weighs its layers


class _FileWriter:
    """What ``RecordWriter`` needs of a ``SummaryWriter``: its file writer,
    adding each summary at its step."""

    def __init__(self, path) -> None:
        self.events = EventFileWriter(str(path))
        self.file_writer = self.events

    def _get_file_writer(self):
        return self

    def add_summary(self, summary, global_step: int) -> None:
        event = event_pb2.Event(
            step=global_step, wall_time=1e9 + global_step, summary=summary
        )
        self.events.add_event(event)


def watched_values(seed: int, steps: int) -> np.ndarray:
    """Random healthy statistics ``(steps, K, L)`` float32 in ``ORDER``
    (abs_mean lognormal around 1e-3, abs_max 5x and norm 10x it: possible
    for every size of NUMEL), a 50x spike of one layer at one random step,
    block 1's down_proj (layer 4) without a gradient at every third step."""
    rng = np.random.default_rng(seed)
    n = len(LAYERS)
    mean = np.exp(rng.normal(np.log(1e-3), 1.0, (steps, n)))
    mean[rng.integers(steps), rng.integers(1, n - 1)] *= 50.0
    values = {"abs_mean": mean, "abs_max": 5 * mean, "norm": 10 * mean}
    values |= {"nonfinite": np.zeros((steps, n)), "rows": np.ones((steps, n))}
    out = np.stack([values[name] for name in ORDER], axis=1).astype(np.float32)
    out[::3, :, 4] = np.nan  # no gradient: NaN in every statistic
    return out


def write_watched(logdir, run: str, values: np.ndarray) -> None:
    """``values`` ``(T, K, L)`` written as a watcher writes them, at steps
    0..T-1: per-step records and an overview record per 100 steps."""
    layout = metadata.Layout(layers=LAYERS, numel=NUMEL)
    (logdir / run).mkdir(parents=True)
    writer = _FileWriter(logdir / run)
    records = RecordWriter(writer, layout, "torch")
    for step, stats in enumerate(values):
        records.write_step(step, stats, False, math.nan)
    records.close()
    writer.events.close()


def group_values(values: np.ndarray, stat: str) -> np.ndarray:
    """``stat`` per block at every step, combined in a plain loop as the
    registry says (abs_mean weighted by elements, abs_max the largest, norm
    the root of the sum of squares), over the layers with a gradient:
    ``(T, G)`` float64."""
    v = values[:, ORDER.index(stat)].astype(np.float64)  # (T, L)
    has = ~np.isnan(values[:, ORDER.index("nonfinite")])
    out = np.full((len(v), len(BLOCKS)), np.nan)
    for t in range(len(v)):
        for g, members in enumerate(BLOCKS.values()):
            m = [j for j in members if has[t, j]]
            if not m:
                continue
            if stat == "abs_mean":
                w = np.array([NUMEL[j] for j in m], dtype=np.float64)
                out[t, g] = (v[t, m] * w).sum() / w.sum()
            elif stat == "abs_max":
                out[t, g] = v[t, m].max()
            else:
                out[t, g] = math.sqrt((v[t, m] ** 2).sum())
    return out


def column_extremes(answer, per_step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column's largest and smallest of ``per_step`` ``(T, G)`` over
    every logged step in its range: two ``(G, N)``."""
    ranges = zip(answer["first_steps"], answer["last_steps"])
    cols = [per_step[a : z + 1] for a, z in ranges]
    return (
        np.stack([np.nanmax(c, axis=0) for c in cols], axis=1),
        np.stack([np.nanmin(c, axis=0) for c in cols], axis=1),
    )


def get_json(client, route: str, **params) -> dict:
    response = client.get(f"/data/plugin/gradflow/{route}", query_string=params)
    assert response.status_code == 200, response.get_data(as_text=True)
    return json.loads(response.get_data())


def floats(matrix) -> np.ndarray:
    """A JSON matrix ("NaN", "Infinity" as strings) as float64."""
    return np.array([[float(x) for x in row] for row in matrix])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """By run, a client and the values written: ``kept``, 250 logged steps,
    all kept; ``sampled``, 1,250 logged steps of which the plugin keeps 50
    (its heatmap and lines are drawn from the overview records)."""
    out = {}
    for run, steps, hints in (("kept", 250, None), ("sampled", 1250, 50)):
        logdir = tmp_path_factory.mktemp(run)
        values = watched_values(steps, steps)
        write_watched(logdir, run, values)
        # the Python loader keeps every record; the plugin reads `hints` per tag
        hint = None if hints is None else {"gradflow": hints}
        out[run] = make_plugin_client(logdir, sampling_hints=hint)[0], values
    return out


@pytest.mark.parametrize("stat", ["abs_mean", "abs_max", "norm"])
@pytest.mark.parametrize("columns", ["1000", "7"])
def test_grouped_lines_of_kept_steps_are_the_groups_values_binned(runs, stat, columns):
    client, values = runs["kept"]
    steps = get_json(client, "steps", run="kept")["steps"]
    assert len(steps) == 250  # all kept: the answers are exact
    lines = get_json(
        client, "lines", run="kept", stat=stat, max_steps=columns, group="block"
    )
    assert lines["group"] == "block"
    assert lines["layers"] == list(BLOCKS)
    assert lines["members"] == [[LAYERS[j] for j in m] for m in BLOCKS.values()]
    assert "from" not in lines and "bounds" not in lines
    largest, smallest = column_extremes(lines, group_values(values, stat))
    np.testing.assert_allclose(floats(lines["max"]), largest, rtol=1e-6)
    np.testing.assert_allclose(floats(lines["min"]), smallest, rtol=1e-6)
    heat = get_json(
        client, "heatmap", run="kept", stat=stat, max_steps=columns, group="block"
    )
    assert heat["values"] == lines["max"]
    # the columns and the model's total norm are those of the per-layer answer
    plain = get_json(client, "heatmap", run="kept", stat=stat, max_steps=columns)
    for key in ("steps", "first_steps", "last_steps", "total_norm", "downsampled"):
        assert heat[key] == plain[key]
    # a group of one layer is that layer
    assert heat["values"][0] == plain["values"][0]
    assert heat["values"][-1] == plain["values"][-1]


def test_grouped_columns_of_the_overview_hold_bounds_and_say_so(runs):
    client, values = runs["sampled"]
    assert len(get_json(client, "steps", run="sampled")["steps"]) == 50
    true = {s: group_values(values, s) for s in ("abs_max", "norm")}
    answers = {}
    for stat in ("abs_max", "norm"):
        lines = get_json(
            client, "lines", run="sampled", stat=stat, max_steps="1000", group="block"
        )
        plain = get_json(client, "lines", run="sampled", stat=stat, max_steps="1000")
        assert lines["from"] == "overview" and lines["logged_steps"] == 1250
        assert lines["steps"] == plain["steps"]  # one column per block
        assert len(lines["steps"]) == 13
        answers[stat] = lines, plain
    # abs_max per block: the largest of its layers' largest, exactly
    lines, plain = answers["abs_max"]
    assert lines["bounds"] == {
        "columns": list(range(13)),
        "max": "exact",
        "min": "lower",
    }
    per_layer = floats(plain["max"])  # (L, N)
    members_max = np.stack([per_layer[m].max(axis=0) for m in BLOCKS.values()])
    np.testing.assert_array_equal(floats(lines["max"]), members_max)
    largest, smallest = column_extremes(lines, true["abs_max"])
    np.testing.assert_allclose(floats(lines["max"]), largest, rtol=1e-6)
    assert (floats(lines["min"]) <= smallest * (1 + 1e-6)).all()
    # norm per block: at least the group's largest norm of every logged step,
    # the root of the sum of its layers' largest squared; its smallest at most
    lines, plain = answers["norm"]
    assert lines["bounds"]["max"] == "upper"
    largest, smallest = column_extremes(lines, true["norm"])
    high, low = floats(lines["max"]), floats(lines["min"])
    assert (high >= largest * (1 - 1e-6)).all() and (low <= smallest * (1 + 1e-6)).all()
    per_layer_max, per_layer_min = floats(plain["max"]), floats(plain["min"])
    for g, members in enumerate(BLOCKS.values()):
        bound = np.sqrt((per_layer_max[members].astype(np.float64) ** 2).sum(0))
        np.testing.assert_allclose(high[g], bound, rtol=1e-6)
        np.testing.assert_array_equal(low[g], per_layer_min[members].min(axis=0))
    # groups of one layer are exact: their layer's values
    assert lines["max"][0] == plain["max"][0] and lines["min"][-1] == plain["min"][-1]


def test_the_spike_of_a_layer_shows_in_its_groups_overview_column(runs):
    client, values = runs["sampled"]
    abs_max = values[:, ORDER.index("abs_max")]  # (T, L)
    step, layer = np.unravel_index(np.nanargmax(abs_max), abs_max.shape)
    heat = get_json(
        client, "heatmap", run="sampled", stat="abs_max", max_steps="1000", group="role"
    )
    (row,) = [g for g, m in enumerate(heat["members"]) if LAYERS[layer] in m]
    column = int(step) // 100
    assert heat["first_steps"][column] <= step <= heat["last_steps"][column]
    assert heat["values"][row][column] == float(abs_max[step, layer])
    assert max(max(row) for row in floats(heat["values"]).tolist()) == float(
        abs_max[step, layer]
    )


def test_binary_grouped_answers_match_json(runs):
    client, _ = runs["sampled"]
    params = dict(run="sampled", stat="abs_mean", max_steps="5", group="block")
    expected = get_json(client, "lines", **params)
    body = client.get(
        "/data/plugin/gradflow/lines", query_string={**params, "format": "binary"}
    ).get_data()
    (n,) = struct.unpack("<I", body[:4])
    header = json.loads(body[4 : 4 + n])
    assert header == {k: v for k, v in expected.items() if k not in ("max", "min")}
    assert header["bounds"]["max"] == "upper"
    matrices = np.frombuffer(body[4 + n + (-(4 + n) % 4) :], dtype="<f4")
    maxima, minima = matrices.reshape(2, len(BLOCKS), -1)
    assert maxima.tolist() == expected["max"] and minima.tolist() == expected["min"]


@pytest.mark.parametrize("route", ["heatmap", "lines"])
def test_a_bad_group_of_a_binned_answer_answers_400(runs, route):
    client, _ = runs["kept"]
    response = client.get(
        f"/data/plugin/gradflow/{route}",
        query_string={"run": "kept", "stat": "norm", "group": "stage"},
    )
    assert response.status_code == 400
    assert "Invalid group: 'stage' (one of layer, block, role)" in response.get_data(
        as_text=True
    )
