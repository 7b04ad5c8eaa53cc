"""The Gradient Flow plugin's routes, through TensorBoard's own WSGI app.

Event files are written with tb_gradflow.summary, loaded through TensorBoard's
multiplexer data provider, and served by ``TensorBoardWSGI``; the tests assert
status, Content-Type and the exact JSON of docs/format.md's HTTP API.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import json
import logging
import math
import struct

import numpy as np
import pytest
from plugin_client import make_plugin_client
from tensorboard import context, default, errors, program
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins import base_plugin
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from tb_gradflow import (
    metadata,
    plugin,
    problem_log,
    query,
    reader,
    run_loader,
    static,
    watchers,
)
from tb_gradflow import stats as tb_stats
from tb_gradflow.diagnosis import diagnose
from tb_gradflow.loader import DEFAULT_SAMPLES_PER_RUN, GradFlowLoader
from tb_gradflow.rule_spec import Thresholds
from tb_gradflow.summary import gradflow_pb

LAYERS = ("conv.weight", "conv.bias", "<img src=x onerror=alert(1)>")
STEPS = (0, 10, 20, 30, 40, 50)
INF = math.inf
NAN = math.nan


@pytest.fixture(autouse=True)
def _no_security_warnings(caplog):
    """TensorBoard's SecurityValidatorMiddleware logs (not raises) responses that
    lack a Content-Type, nosniff or a CSP; none may."""
    yield
    assert not [r for r in caplog.records if "will become an error" in r.getMessage()]


def write_run(
    logdir, run, layout, steps, stats_at, fields_at=None, start=0, legacy=False
):
    """Writes one record per step; ``stats_at(i)`` gives the (K, L) statistics.
    ``legacy``: under the watcher's base tag, as files written before layout
    tags.

    Each call writes a new event file whose name sorts after the run's earlier
    ones (writers opened in one second differ only by a process-wide counter,
    and TensorBoard sorts names as text: ``.10`` before ``.9``)."""
    run_dir = logdir / run
    run_dir.mkdir(parents=True, exist_ok=True)
    earlier = set(run_dir.glob("*tfevents*"))
    writer = EventFileWriter(str(run_dir))
    for i, step in enumerate(steps, start=start):
        fields = fields_at(i) if fields_at else [0.0, NAN]
        summary = gradflow_pb(layout, stats_at(i), fields, with_metadata=i == 0)
        if legacy:
            summary.value[0].tag = metadata.tag_for(layout.name)
        writer.add_event(
            event_pb2.Event(step=step, wall_time=1000.0 + i, summary=summary)
        )
    writer.close()
    (new_file,) = set(run_dir.glob("*tfevents*")) - earlier
    new_file.rename(run_dir / f"events.out.tfevents.{len(earlier):010d}.test")


GRADIENT = ("abs_mean", "abs_max", "norm")  # the statistics of |g|'s size


def record(abs_mean, **values):
    """A ``(K, L)`` record built by name (``tb_gradflow.stats.record``), L the
    length of ``abs_mean``; ``nonfinite`` 0 and ``rows`` 1 unless given."""
    values = {"abs_mean": abs_mean, "nonfinite": 0.0, "rows": 1.0, **values}
    return tb_stats.record(values, len(abs_mean))


def possible(value, layers):
    """Statistics of a gradient every element of which has magnitude ``value``
    (abs_mean = abs_max = value, norm = value for 1 element; nonfinite 0, rows 1):
    ``(K, layers)``."""
    return record(np.full(layers, value), abs_max=value, norm=value)


def healthy_stats(i):
    """abs_mean 0.5 / 0.25 / 0.125. conv.bias is zero from step 20 on (blocked);
    the third layer has no gradient at step 10; conv.weight goes non-finite at 50."""
    mean = np.array([0.5, 0.25, 0.125])
    values = {"abs_mean": mean, "abs_max": 2 * mean, "norm": 4 * mean}
    values = {name: v.copy() for name, v in values.items()}
    nonfinite = np.zeros(3)
    if i >= 2:
        for name in GRADIENT:
            values[name][1] = 0.0
    if i == 5:
        for name in GRADIENT:
            values[name][0] = INF
        nonfinite[0] = 3
    stats = record(**values, nonfinite=nonfinite)  # (K, L)
    if i == 1:
        stats[:, 2] = NAN  # no gradient: NaN in every statistic
    return stats


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("logs")
    layout = metadata.Layout(layers=LAYERS, every=10, sparse=(False, False, True))
    write_run(d, "healthy", layout, STEPS, healthy_stats)
    two = [metadata.Layout(layers=("a",), name=n) for n in ("enc", "dec")]
    for layout in two:
        write_run(d, "two", layout, [0, 1], lambda i: possible(0.5, 1))
    future = metadata.Layout(layers=("a",), version=metadata.FORMAT_VERSION + 1)
    write_run(d, "future", future, [0], lambda i: possible(0.5, 1))
    return d


@pytest.fixture(scope="module")
def client(logdir):
    return make_plugin_client(logdir)[0]


def get(client, route, **params):
    return client.get(f"/data/plugin/gradflow/{route}", query_string=params)


def get_json(client, route, **params):
    response = get(client, route, **params)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/json"
    return json.loads(response.get_data())


BLOCKED = {
    "kind": "blocked",
    "layer": "conv.bias",
    "first_step": 20,
    "last_step": 50,
    "steps": 4,
    "message": "gradient exactly zero: it does not flow into this layer",
    "ongoing": True,  # through the run's last step
}
NONFINITE = {
    "kind": "nonfinite",
    "layer": "conv.weight",
    "first_step": 50,
    "last_step": 50,
    "steps": 1,
    "message": "NaN/Inf in the gradient",
    "ongoing": True,
}


def test_flow_at_the_newest_step_keeps_an_ongoing_streaks_alert(tmp_path):
    """enc blocked for 5 steps, then one healthy step (the newest): fewer than
    `patience` healthy steps, so the streak is open and the tab, which marks
    layers from `alerts`, keeps enc blocked. Before, the newest step showed it
    as ok."""
    layout = metadata.Layout(layers=("enc", "head"), sparse=(False, False))
    # blocked: below 1e-2 x head's and x its own peak; then just above the line
    means = [[1e-3, 2e-3]] * 3 + [[5e-6, 2e-3]] * 5 + [[3e-5, 2e-3]]

    def stats_at(i):
        mean = np.array(means[i])
        return record(mean, abs_max=3 * mean, norm=10 * mean)

    write_run(tmp_path, "live", layout, range(len(means)), stats_at)
    flow = get_json(make_plugin_client(tmp_path)[0], "flow", run="live")
    assert flow["step"] == 8
    (alert,) = flow["alerts"]
    assert (alert["kind"], alert["layer"], alert["first_step"]) == ("blocked", "enc", 3)
    assert (alert["last_step"], alert["ongoing"]) == (7, True)


def test_plugins_listing_enables_the_tab(client):
    listing = json.loads(client.get("/data/plugins_listing").get_data())
    assert listing["gradflow"] == {
        "disable_reload": False,
        "enabled": True,
        "remove_dom": False,
        "tab_name": "Gradient Flow",
        "loading_mechanism": {
            "type": "IFRAME",
            "module_path": "/data/plugin/gradflow/index.js",
        },
    }
    entry = client.get("/data/plugin_entry.html", query_string={"name": "gradflow"})
    assert entry.status_code == 200
    assert b'import("./index.js")' in entry.get_data()


def test_runs_lists_readable_runs_and_watchers_without_reading_them(
    logdir, monkeypatch
):
    client, _ = make_plugin_client(logdir)  # a fresh plugin: nothing read yet
    reads = []
    original = tb_data_provider.MultiplexerDataProvider.read_tensors

    def counting(self, *args, **kwargs):
        reads.append(kwargs["run_tag_filter"].runs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(
        tb_data_provider.MultiplexerDataProvider, "read_tensors", counting
    )
    not_read = {"steps": None, "first_step": None, "expected_steps": None}
    lacks = lacking(BUILT_IN)  # none but registered ones of the gradient
    not_read |= {"stats": [*BUILT_IN, *lacks], "not_logged": lacks}
    assert get_json(client, "runs") == {
        "runs": [
            {
                "run": "healthy",
                "tag": "gradflow",
                "name": None,
                "layers": 3,
                "last_step": 50,
                "every": 10,
                "last_wall_time": 1005.0,  # write_run: 1000 + the record's index
                "groups": {"block": 3, "role": 3},  # no numbered blocks
                **not_read,
            },
            *(
                {
                    "run": "two",
                    "tag": f"gradflow/{name}",
                    "name": name,
                    "layers": 1,
                    "last_step": 1,
                    "every": 1,
                    "last_wall_time": 1001.0,
                    "groups": {"block": 1, "role": 1},
                    **not_read,
                }
                for name in ("dec", "enc")
            ),
        ],
        "stats": {name: described(name) for name in [*BUILT_IN, *lacks]},
    }
    assert reads == []  # from list_tensors alone
    # once the tab has read a run, the listing says how many steps were kept
    get_json(client, "steps", run="healthy")
    (healthy, *_) = get_json(client, "runs")["runs"]
    assert (healthy["steps"], healthy["first_step"], healthy["expected_steps"]) == (
        6,
        0,
        6,
    )
    assert reads == [{"healthy"}]


BUILT_IN = ["abs_mean", "abs_max", "norm", "nonfinite", "rows"]
UNITS_AND_BAD = {  # as docs/format.md gives them
    "abs_mean": ("value", "low"),
    "abs_max": ("value", "high"),
    "norm": ("value", "high"),
    "nonfinite": ("count", "high"),
    "rows": ("fraction", "none"),
    "update_ratio": ("value", "high"),
}


def described(name):
    """What the ``runs`` answer says of a registered statistic."""
    s = tb_stats.get(name)
    return {"meaning": s.meaning, "unit": s.unit, "bad": s.bad}


def lacking(names):
    """The registered statistics of the gradient (those every watcher logs)
    ``names`` lacks, in registration order; a statistic a watcher may choose
    (``watch(stats=...)``) is not missed."""
    return [s.name for s in tb_stats.statistics("gradient") if s.name not in names]


@pytest.fixture
def mean_square():
    """A test-only statistic, registered in this process only."""
    statistic = tb_stats.Statistic(
        name="mean_square",
        meaning="mean of g^2 over all elements",
        partials=("sq_sum",),
        finish=lambda p, numel: p["sq_sum"] / numel,
        bad="high",
    )
    tb_stats.register(statistic)
    yield statistic
    tb_stats.unregister("mean_square")


def write_by_name(logdir, run, layout, steps, values):
    """``write_run`` of records built by name in ``layout.stats`` order."""
    n = len(layout.layers)
    write_run(
        logdir,
        run,
        layout,
        steps,
        lambda i: tb_stats.record(values, n, order=layout.stats),
    )


def test_runs_lists_each_watchers_statistics_by_name_from_the_listing_alone(
    tmp_path, monkeypatch, mean_square
):
    """What the tab's Statistic menu offers: the statistics a watcher's layouts
    hold, in order of first appearance, with what the registry says of them
    (null for one this version does not know), then the registered ones its
    files lack, not logged."""
    gradient = {"abs_mean": 0.5, "abs_max": 1.0, "norm": 2.0, "nonfinite": 0.0}
    older = metadata.Layout(layers=("a", "b"), stats=tuple(gradient))  # no rows
    write_by_name(tmp_path, "old", older, [0, 1], gradient)
    unknown = metadata.Layout(layers=("a",), stats=(*gradient, "zeta", "rows"))
    write_by_name(tmp_path, "newer", unknown, [0], gradient | {"zeta": -3.0, "rows": 1})
    # a watcher resumed by a version that logs rows: two layer sets, one union
    write_by_name(tmp_path, "upgraded", older, [0, 1], gradient)
    newer = dataclasses.replace(older, stats=(*gradient, "rows"))
    write_by_name(tmp_path, "upgraded", newer, [2, 3], gradient | {"rows": 1})
    # a watcher that chose a statistic of the update (watch(stats=[...]))
    chose = dataclasses.replace(older, stats=(*newer.stats, "update_ratio"))
    ratio = {"rows": 1, "update_ratio": 1e-3}
    write_by_name(tmp_path, "chose", chose, [0], gradient | ratio)
    client, _ = make_plugin_client(tmp_path)
    reads = []
    monkeypatch.setattr(
        tb_data_provider.MultiplexerDataProvider,
        "read_tensors",
        lambda self, *a, **k: reads.append(k) or {},
    )
    answer = get_json(client, "runs")
    assert reads == []
    found = {r["run"]: (r["stats"], r["not_logged"]) for r in answer["runs"]}
    four = BUILT_IN[:4]
    assert found["old"] == ([*four, *lacking(four)], lacking(four))
    assert "rows" in lacking(four) and lacking(four)[-1] == "mean_square"
    newer = [*four, "zeta", "rows"]  # zeta: carried through by name
    assert found["newer"] == ([*newer, *lacking(newer)], lacking(newer))
    assert found["upgraded"] == ([*BUILT_IN, *lacking(BUILT_IN)], lacking(BUILT_IN))
    assert lacking(BUILT_IN)[-1] == "mean_square"
    # one a watcher may choose is listed where chosen, and not missed elsewhere
    assert tb_stats.get("update_ratio").reads == "update"
    chosen = [*BUILT_IN, "update_ratio"]
    assert found["chose"] == ([*chosen, *lacking(chosen)], lacking(chosen))
    for run in ("old", "newer", "upgraded"):
        assert "update_ratio" not in found[run][0]
    # each statistic named is described once: the registry's words, its unit
    # and bad direction; null for one this version does not know
    names = dict.fromkeys(n for r in answer["runs"] for n in r["stats"])
    assert list(answer["stats"]) == list(names)
    for name, about in answer["stats"].items():
        assert about == (None if name == "zeta" else described(name)), name
    for name, (unit, bad) in UNITS_AND_BAD.items():
        assert (answer["stats"][name]["unit"], answer["stats"][name]["bad"]) == (
            unit,
            bad,
        )
    assert answer["stats"]["mean_square"] == {
        "meaning": "mean of g^2 over all elements",
        "unit": "value",
        "bad": "high",
    }


def test_flow_and_heatmap_say_which_statistics_the_files_lack(tmp_path):
    gradient = {"abs_mean": 0.5, "abs_max": 1.0, "norm": 2.0, "nonfinite": 0.0}
    older = metadata.Layout(layers=("a", "b"), stats=tuple(gradient))  # no rows
    write_by_name(tmp_path, "old", older, [0, 1], gradient)
    current = metadata.Layout(layers=LAYERS)
    write_run(tmp_path, "new", current, [0], healthy_stats)
    client, _ = make_plugin_client(tmp_path)

    def registered_but_not_in(layout):
        return [name for name in tb_stats.names() if name not in layout.stats]

    flow = get_json(client, "flow", run="old")
    assert "rows" in flow["not_logged"]
    assert flow["not_logged"] == registered_but_not_in(older)
    assert flow["stats"]["rows"] == ["NaN", "NaN"]  # read as NaN, by name
    assert flow["no_grad"] == [False, False]
    new = get_json(client, "flow", run="new")
    assert new["not_logged"] == registered_but_not_in(current)
    assert "rows" not in new["not_logged"]
    for fmt in ("json", "binary"):
        for stat, logged in (("rows", False), ("abs_mean", True)):
            if fmt == "json":
                head = get_json(client, "heatmap", run="old", stat=stat)
            else:
                head = heatmap_binary(client, run="old", stat=stat)[0]
            assert head["logged"] is logged, (fmt, stat)


def test_flow_without_step_is_the_latest_with_nan_as_strings(client):
    # registered statistics the file lacks (those a watcher may choose, or
    # one registered elsewhere): read as NaN, and named as not logged
    lacks = [name for name in tb_stats.names() if name not in BUILT_IN]
    assert get_json(client, "flow", run="healthy") == {
        "run": "healthy",
        "tag": "gradflow",
        "step": 50,
        "layers": list(LAYERS),
        "types": ["", "", ""],  # not in this layout
        "sparse": [False, False, True],
        "stats": {
            "abs_mean": ["Infinity", 0.0, 0.125],
            "abs_max": ["Infinity", 0.0, 0.25],
            "norm": ["Infinity", 0.0, 0.5],
            "nonfinite": [3.0, 0.0, 0.0],
            "rows": [1.0, 1.0, 1.0],
            **{name: ["NaN"] * 3 for name in lacks},
        },
        "no_grad": [False, False, False],
        "absent": [False, False, False],
        "skipped": False,
        "loss_scale": "NaN",
        "alerts": [BLOCKED, NONFINITE],
        "left_out": [],
        "not_logged": lacks,
    }


@pytest.mark.parametrize(
    ("asked", "served"), [("10", 10), ("14", 10), ("16", 20), ("-5", 0), ("999", 50)]
)
def test_flow_serves_the_nearest_logged_step(client, asked, served):
    assert get_json(client, "flow", run="healthy", step=asked)["step"] == served


def test_flow_marks_layers_without_gradient(client):
    flow = get_json(client, "flow", run="healthy", step="10")
    assert flow["no_grad"] == [False, False, True]
    assert flow["stats"]["abs_mean"] == [0.5, 0.25, "NaN"]
    assert flow["stats"]["nonfinite"] == [0.0, 0.0, "NaN"]
    assert flow["alerts"] == []  # the blocked streak starts at 20


def test_steps_lists_the_kept_steps_and_how_many_were_logged(client):
    assert get_json(client, "steps", run="healthy") == {
        "run": "healthy",
        "tag": "gradflow",
        "steps": list(STEPS),
        "first_step": 0,
        "last_step": 50,
        "every": 10,
        "expected_steps": 6,
        "left_out": [],
    }


def test_heatmap_downsamples_with_the_max_and_marks_nonfinite(client):
    assert get_json(
        client, "heatmap", run="healthy", stat="abs_mean", max_steps="2"
    ) == {
        "run": "healthy",
        "tag": "gradflow",
        "stat": "abs_mean",
        "layers": list(LAYERS),
        "types": ["", "", ""],
        "steps": [0, 30],
        "first_steps": [0, 30],
        "last_steps": [20, 50],
        "downsampled": True,
        "logged": True,
        # norm 4 x abs_mean; the largest total of steps 0-20 is step 0's
        "total_norm": [math.sqrt(2.0**2 + 1.0**2 + 0.5**2), "Infinity"],
        "values": [[0.5, "Infinity"], [0.25, 0.0], [0.125, 0.125]],
    }


def test_heatmap_without_downsampling_keeps_nan_for_no_gradient(client):
    heatmap = get_json(client, "heatmap", run="healthy", stat="abs_mean")
    assert heatmap["steps"] == heatmap["first_steps"] == heatmap["last_steps"]
    assert heatmap["steps"] == list(STEPS)
    assert heatmap["downsampled"] is False
    assert heatmap["values"] == [
        [0.5, 0.5, 0.5, 0.5, 0.5, "Infinity"],
        [0.25, 0.25, 0.0, 0.0, 0.0, 0.0],
        [0.125, "NaN", 0.125, 0.125, 0.125, 0.125],
    ]


def test_heatmap_binary_matches_json(client):
    for max_steps in ("2", "1000"):
        params = dict(run="healthy", stat="norm", max_steps=max_steps)
        expected = get_json(client, "heatmap", **params)
        response = get(client, "heatmap", format="binary", **params)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/octet-stream"
        body = response.get_data()
        (n,) = struct.unpack("<I", body[:4])
        header = json.loads(body[4 : 4 + n].decode("utf-8"))
        offset = 4 + n + (-(4 + n) % 4)
        assert offset % 4 == 0 and set(body[4 + n : offset]) <= {0}
        values = np.frombuffer(body[offset:], dtype="<f4")
        rows, columns = len(header["layers"]), len(header["steps"])
        assert values.size == rows * columns
        assert header == {k: v for k, v in expected.items() if k != "values"}
        as_json = json.loads(json.dumps(values.reshape(rows, columns).tolist()))
        cleaned = [[_clean(x) for x in row] for row in as_json]
        assert cleaned == expected["values"]


def _clean(x):
    return "NaN" if math.isnan(x) else "Infinity" if math.isinf(x) else x


def test_heatmap_json_is_the_same_with_gzip(client):
    params = {"run": "healthy", "stat": "abs_max", "max_steps": "3"}
    plain = get(client, "heatmap", **params)
    zipped = client.get(
        "/data/plugin/gradflow/heatmap",
        query_string=params,
        headers={"Accept-Encoding": "gzip"},
    )
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(zipped.get_data())) == json.loads(
        plain.get_data()
    )


LINE_LAYERS = ("embed", "block.0", "block.1", "head")
LINE_STEPS = 250  # logged steps, one every 2
SPIKE = (123, 0, 1e3)  # (step index, layer, value): far above every other value
DIP = (77, 1, 1e-9)  # far below every other value
NO_GRAD = (2, range(10, 41))  # (layer, step indices): no gradient
NONFINITE_AT = (3, 200)  # (layer, step index)


def line_values(i):
    """abs_mean of every layer at step index ``i`` (before NO_GRAD and
    NONFINITE_AT): log-normal around 1e-3, seeded per step."""
    values = np.random.default_rng(i).lognormal(np.log(1e-3), 0.5, len(LINE_LAYERS))
    for at, layer, value in (SPIKE, DIP):
        if i == at:
            values[layer] = value
    return values


def line_stats(i):
    """A record of :func:`line_values`; ``NO_GRAD`` and ``NONFINITE_AT`` applied."""
    mean = line_values(i)
    nonfinite = np.zeros(len(LINE_LAYERS))
    layer, at = NONFINITE_AT
    if i == at:
        mean[layer] = INF
        nonfinite[layer] = 5
    stats = record(mean, abs_max=2 * mean, norm=4 * mean, nonfinite=nonfinite)
    layer, steps = NO_GRAD
    if i in steps:
        stats[:, layer] = NAN  # no gradient: NaN in every statistic
    return stats


def reference_lines(columns):
    """Each layer's largest and smallest abs_mean per bin, in plain loops over
    the written values (float32, as stored): bins of (nearly) equal count;
    largest: "Infinity" when a value was non-finite, "NaN" with no value;
    smallest: the smallest finite value, "NaN" with none."""
    rows = [
        line_stats(i)[tb_stats.names().index("abs_mean")] for i in range(LINE_STEPS)
    ]
    n = min(columns, LINE_STEPS)
    largest = [[None] * n for _ in LINE_LAYERS]
    smallest = [[None] * n for _ in LINE_LAYERS]
    for c in range(n):
        for layer in range(len(LINE_LAYERS)):
            seen = [
                float(np.float32(rows[i][layer]))
                for i in range(c * LINE_STEPS // n, (c + 1) * LINE_STEPS // n)
                if not math.isnan(rows[i][layer])
            ]
            finite = [v for v in seen if math.isfinite(v)]
            if len(finite) < len(seen):
                largest[layer][c] = "Infinity"
            else:
                largest[layer][c] = max(finite) if finite else "NaN"
            smallest[layer][c] = min(finite) if finite else "NaN"
    return largest, smallest


@pytest.fixture(scope="module")
def lines_client(tmp_path_factory):
    d = tmp_path_factory.mktemp("lines")
    layout = metadata.Layout(layers=LINE_LAYERS, every=2)
    write_run(d, "run", layout, range(0, 2 * LINE_STEPS, 2), line_stats)
    return make_plugin_client(d)[0]


@pytest.mark.parametrize("columns", [7, 50, 1000])
def test_lines_keep_each_bins_largest_and_smallest_value(lines_client, columns):
    answer = get_json(
        lines_client, "lines", run="run", stat="abs_mean", max_steps=str(columns)
    )
    largest, smallest = reference_lines(columns)
    assert answer["max"] == largest
    assert answer["min"] == smallest
    n = min(columns, LINE_STEPS)
    assert answer["first_steps"] == [2 * (c * LINE_STEPS // n) for c in range(n)]
    assert answer["last_steps"] == [
        2 * ((c + 1) * LINE_STEPS // n - 1) for c in range(n)
    ]
    assert answer["downsampled"] is (n < LINE_STEPS)
    heat = get_json(
        lines_client, "heatmap", run="run", stat="abs_mean", max_steps=str(columns)
    )
    assert {k: v for k, v in answer.items() if k not in ("max", "min")} == {
        k: v for k, v in heat.items() if k != "values"
    }
    assert answer["max"] == heat["values"]  # the heatmap's values are the max


def test_a_spike_survives_in_max_and_a_dip_in_min_however_few_the_columns(
    lines_client,
):
    for columns in ("1", "7", "50"):
        answer = get_json(
            lines_client, "lines", run="run", stat="abs_mean", max_steps=columns
        )
        spike_at, layer, spike = SPIKE
        column = _column_of(answer, 2 * spike_at)
        assert answer["max"][layer][column] == float(np.float32(spike))
        dip_at, layer, dip = DIP
        column = _column_of(answer, 2 * dip_at)
        assert answer["min"][layer][column] == float(np.float32(dip))


def _column_of(answer, step):
    (column,) = [
        c
        for c, (a, z) in enumerate(zip(answer["first_steps"], answer["last_steps"]))
        if a <= step <= z
    ]
    return column


def reference_total_norm(columns):
    """The model's total gradient norm per bin, in plain float64 loops over
    every kept step: sqrt of the sum of the layers' squared norms (a layer
    without gradient adds nothing), the largest per bin, "Infinity" for a bin
    with a non-finite norm."""
    norm = tb_stats.names().index("norm")
    totals = []
    for i in range(LINE_STEPS):
        squares, bad = 0.0, False
        for value in line_stats(i)[norm]:
            value = float(np.float32(value))  # as stored
            if math.isnan(value) and i in NO_GRAD[1]:
                continue
            if not math.isfinite(value):
                bad = True
                continue
            squares += value * value
        totals.append(math.inf if bad else math.sqrt(squares))
    n = min(columns, LINE_STEPS)
    out = []
    for c in range(n):
        top = max(totals[c * LINE_STEPS // n : (c + 1) * LINE_STEPS // n])
        out.append("Infinity" if top == math.inf else top)
    return out


@pytest.mark.parametrize("columns", [1, 7, 50, 1000])
def test_total_norm_is_the_largest_total_of_every_kept_step_per_column(
    lines_client, columns
):
    expected = reference_total_norm(columns)
    for route in ("heatmap", "lines"):
        # whatever the statistic: the total is of the layers' norms
        answer = get_json(
            lines_client, route, run="run", stat="abs_max", max_steps=str(columns)
        )
        got = answer["total_norm"]
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g == e if isinstance(e, str) else g == pytest.approx(e, rel=1e-12)
    binary = get(
        lines_client,
        "heatmap",
        run="run",
        stat="abs_max",
        max_steps=str(columns),
        format="binary",
    ).get_data()
    (n,) = struct.unpack("<I", binary[:4])
    assert json.loads(binary[4 : 4 + n])["total_norm"] == answer["total_norm"]


def test_a_one_step_spike_of_the_total_norm_survives_in_its_column(lines_client):
    spike_at, layer, spike = SPIKE  # norm 4 x abs_mean
    for columns in ("7", "50"):
        answer = get_json(
            lines_client, "heatmap", run="run", stat="abs_mean", max_steps=columns
        )
        total = answer["total_norm"][_column_of(answer, 2 * spike_at)]
        assert total >= 4 * float(np.float32(spike))
        others = [t for t in answer["total_norm"] if t != "Infinity"]
        assert max(others) == total


def test_lines_binary_is_the_header_then_max_then_min(lines_client):
    params = dict(run="run", stat="abs_mean", max_steps="7")
    expected = get_json(lines_client, "lines", **params)
    response = get(lines_client, "lines", format="binary", **params)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/octet-stream"
    body = response.get_data()
    (n,) = struct.unpack("<I", body[:4])
    header = json.loads(body[4 : 4 + n].decode("utf-8"))
    assert header == {k: v for k, v in expected.items() if k not in ("max", "min")}
    offset = 4 + n + (-(4 + n) % 4)
    shape = (2, len(header["layers"]), len(header["steps"]))
    matrices = np.frombuffer(body[offset:], dtype="<f4")
    assert matrices.size == shape[0] * shape[1] * shape[2]
    for name, matrix in zip(("max", "min"), matrices.reshape(shape)):
        as_json = json.loads(json.dumps(matrix.tolist()))
        assert [[_clean(x) for x in row] for row in as_json] == expected[name]


def test_alerts_with_default_and_given_thresholds(client):
    assert get_json(client, "alerts", run="healthy") == {
        "run": "healthy",
        "tag": "gradflow",
        "thresholds": {
            "patience": 3,
            "min_ratio_to_others": 0.01,
            "min_ratio_to_own_peak": 0.01,
            "floor_ratio_to_others": 1e-06,
            "explode_ratio": 100.0,
            "explode_window": 20,
            "spike_k": 7.0,
            "spike_window": 50,
            "spike_min_ratio": 2.0,
            "max_update_ratio": 0.1,
            "min_update_ratio": 1e-07,
        },
        "alerts": [BLOCKED, NONFINITE],
    }
    patient = get_json(client, "alerts", run="healthy", patience="5")
    assert patient["thresholds"]["patience"] == 5
    assert patient["alerts"] == [NONFINITE]  # 4 blocked steps < patience 5


def test_alerts_name_a_spike_and_take_its_thresholds(tmp_path):
    # enc's norm x10 at step 40, head's x5 one step later
    layout = metadata.Layout(layers=("enc", "head"), sparse=(False, False))
    mean = 1e-3 * (1 + 0.01 * np.random.default_rng(0).standard_normal((50, 2)))
    mean[40, 0] *= 10
    mean[41, 1] *= 5
    write_run(tmp_path, "spiky", layout, range(50), lambda i: possible(mean[i], 2))
    client = make_plugin_client(tmp_path)[0]
    alerts = get_json(client, "alerts", run="spiky")["alerts"]
    assert [(a["kind"], a["layer"], a["first_step"]) for a in alerts] == [
        ("spike", None, 40),
        ("spike", "enc", 40),
        ("spike", "head", 41),
    ]
    assert alerts[0]["message"] == (
        "gradient spike in 2 layers, began in enc (step 40), then head (step 41)"
    )
    given = get_json(client, "alerts", run="spiky", spike_min_ratio="6")
    assert given["thresholds"]["spike_min_ratio"] == 6.0
    assert [a["layer"] for a in given["alerts"]] == ["enc"]
    response = get(client, "alerts", run="spiky", spike_window="1001")
    assert response.status_code == 400
    assert b"Invalid spike_window: '1001' (an integer from 6 to 1000)" in (
        response.get_data()
    )


def test_alerts_take_explode_window_up_to_its_cap(client):
    alerts = get_json(client, "alerts", run="healthy", explode_window="1000000")
    assert alerts["thresholds"]["explode_window"] == 1_000_000
    assert alerts["alerts"] == [BLOCKED, NONFINITE]


def test_the_capped_explode_window_on_a_long_run_costs_log_steps_a_median(
    tmp_path, monkeypatch
):
    # A zero norm at step 0 lets every cell past the window-minimum prefilter;
    # each then needed a median over all earlier steps (steps^2 x layers work).
    # Now: one RangeSelect per block of layers, at most 2 queries per cell.
    rule = importlib.import_module("tb_gradflow.exploding_rule")
    t, n = 2000, 3
    rng = np.random.default_rng(0)
    norm = rng.lognormal(-3, 0.3, (t, n))
    norm[0] = 0.0
    norm[1500, 1] *= 1e3

    def stats(i):
        mean, big = norm[i] / 10, norm[i] / 2
        return record(mean, abs_max=big, norm=norm[i])  # (K, L)

    layout = metadata.Layout(layers=("a", "b", "c"))
    write_run(tmp_path, "long", layout, range(t), stats)
    client, _ = make_plugin_client(tmp_path, sampling_hints={"gradflow": "0"})
    built, queried = [], []

    class Counting(rule.RangeSelect):
        def __init__(self, values):
            super().__init__(values)
            built.append(len(values))

        def kth(self, start, stop, k):
            queried.append(len(k))
            return super().kth(start, stop, k)

    monkeypatch.setattr(rule, "RangeSelect", Counting)
    alerts = get_json(client, "alerts", run="long", explode_window="1000000")
    assert [(a["kind"], a["layer"], a["first_step"]) for a in alerts["alerts"]] == [
        ("exploding", "b", 1500)
    ]
    assert sum(built) <= 2 * t * n  # the window's rows and the run's
    assert (t - 3) * n <= sum(queried) <= 2 * t * n


def test_alerts_take_an_explode_window_longer_than_the_run(client):
    # The diagnosis takes such a window as the whole run: no 400, no MemoryError.
    alerts = get_json(client, "alerts", run="healthy", explode_window="1000000")
    assert alerts["thresholds"]["explode_window"] == 1_000_000
    assert alerts["alerts"] == [BLOCKED, NONFINITE]
    response = get(client, "alerts", run="healthy", explode_window="1000001")
    assert response.status_code == 400
    assert response.get_data(as_text=True).endswith(
        "Invalid explode_window: '1000001' (an integer from 3 to 1000000)"
    )


@pytest.mark.parametrize(
    ("lo", "hi", "message"),
    [
        (3, None, "Invalid n: '2' (an integer >= 3)"),
        (None, 1, "Invalid n: '2' (an integer <= 1)"),
        (None, None, "Invalid n: '2.5' (an integer)"),
    ],
)
def test_int_arg_names_only_the_bounds_it_has(lo, hi, message):
    value = "2.5" if lo is None and hi is None else "2"
    with pytest.raises(errors.InvalidArgumentError) as caught:
        query.int_arg({"n": value}, "n", lo, hi)
    assert str(caught.value) == f"Invalid argument: {message}"


def test_named_watchers_need_a_tag(client):
    response = get(client, "flow", run="two")
    assert response.status_code == 400
    assert "several gradflow tags (gradflow/dec, gradflow/enc)" in response.get_data(
        as_text=True
    )
    flow = get_json(client, "flow", run="two", tag="gradflow/enc")
    assert (flow["tag"], flow["layers"]) == ("gradflow/enc", ["a"])


@pytest.mark.parametrize(
    ("route", "params", "code", "message"),
    [
        ("flow", {}, 400, "Missing parameter: run"),
        ("flow", {"run": ""}, 400, "Missing parameter: run"),
        ("steps", {}, 400, "Missing parameter: run"),
        ("alerts", {}, 400, "Missing parameter: run"),
        ("flow", {"run": "nope"}, 404, "No gradflow data for run 'nope'"),
        ("steps", {"run": "nope"}, 404, "No gradflow data for run 'nope'"),
        ("flow", {"run": "healthy", "tag": "gradflow/x"}, 404, "tag 'gradflow/x'"),
        ("flow", {"run": "future"}, 404, "newer than this tb-gradflow"),
        ("flow", {"run": "healthy", "step": "abc"}, 400, "Invalid step: 'abc'"),
        ("flow", {"run": "healthy", "step": "1.5"}, 400, "Invalid step"),
        ("flow", {"run": "healthy", "step": "9" * 30}, 400, "Invalid step"),
        ("alerts", {"run": "healthy", "patience": "0"}, 400, "Invalid patience: 0"),
        ("alerts", {"run": "healthy", "patience": "x"}, 400, "Invalid patience: 'x'"),
        (
            "alerts",
            {"run": "healthy", "min_ratio_to_others": "2"},
            400,
            "Invalid min_ratio_to_others: 2.0",
        ),
        (
            "alerts",
            {"run": "healthy", "explode_ratio": "nan"},
            400,
            "Invalid explode_ratio",
        ),
        (
            "alerts",
            {"run": "healthy", "floor_ratio_to_others": "abc"},
            400,
            "Invalid floor_ratio_to_others: 'abc' (a number)",
        ),
        (
            "alerts",
            {"run": "healthy", "explode_window": "100000000"},
            400,
            "Invalid explode_window: '100000000' (an integer from 3 to 1000000)",
        ),
        (
            "alerts",
            {"run": "healthy", "explode_window": "9" * 18},
            400,
            "Invalid explode_window",
        ),
        (
            "alerts",
            {"run": "healthy", "explode_window": "2"},
            400,
            "Invalid explode_window: '2' (an integer from 3 to 1000000)",
        ),
    ],
)
def test_bad_requests_answer_400_or_404_in_plain_text(
    client, route, params, code, message
):
    assert_plain_text_error(get(client, route, **params), code, message)


def assert_plain_text_error(response, code, message):
    assert response.status_code == code
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert message in response.get_data(as_text=True)


@pytest.mark.parametrize("route", ["heatmap", "lines"])
@pytest.mark.parametrize(
    ("params", "code", "message"),
    [
        ({"stat": "norm"}, 400, "Missing parameter: run"),
        ({"run": "healthy"}, 400, "Missing parameter: stat"),
        ({"run": "healthy", "stat": "x"}, 400, "Invalid stat: 'x'"),
        (
            {"run": "healthy", "stat": "norm", "max_steps": "0"},
            400,
            "Invalid max_steps: '0' (an integer from 1 to 100000)",
        ),
        (
            {"run": "healthy", "stat": "norm", "max_steps": "100001"},
            400,
            "Invalid max_steps: '100001' (an integer from 1 to 100000)",
        ),
        (
            {"run": "healthy", "stat": "norm", "max_steps": "many"},
            400,
            "Invalid max_steps: 'many'",
        ),
        (
            {"run": "healthy", "stat": "norm", "format": "xml"},
            400,
            "Invalid format: 'xml' (json or binary)",
        ),
        ({"run": "nope", "stat": "norm"}, 404, "No gradflow data for run 'nope'"),
    ],
)
def test_heatmap_and_lines_answer_bad_binning_requests_in_plain_text(
    client, route, params, code, message
):
    assert_plain_text_error(get(client, route, **params), code, message)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"every": "ten"}, "'every' is 'ten', not an integer"),
        ({"stats": []}, "'stats' is empty"),
    ],
)
def test_malformed_metadata_is_left_out_of_runs_and_answers_404(
    tmp_path, caplog, changes, problem
):
    layout = metadata.Layout(layers=("a",))
    write_run(tmp_path, "fine", layout, [0, 1], lambda i: possible(0.5, 1))
    summary = gradflow_pb(layout, possible(0.5, 1), [0.0, NAN], with_metadata=True)
    content = json.loads(layout.to_json()) | changes
    summary.value[0].metadata.plugin_data.content = json.dumps(content).encode()
    writer = EventFileWriter(str(tmp_path / "bad"))
    writer.add_event(event_pb2.Event(step=0, wall_time=1000.0, summary=summary))
    writer.close()
    client, _ = make_plugin_client(tmp_path)
    tag = metadata.layout_tag(layout)  # no watcher name can be read from it
    for _ in range(2):  # the tab asks every 5 s; logged once
        assert [r["run"] for r in get_json(client, "runs")["runs"]] == ["fine"]
    problem = f"Invalid gradflow plugin metadata: {problem}"
    assert [
        r.getMessage() for r in caplog.records if r.name == "tb_gradflow.plugin"
    ] == [f"gradflow: left out run 'bad', tag {tag!r}: {problem}"]
    for route, params in [
        ("flow", {}),
        ("steps", {}),
        ("heatmap", {"stat": "norm"}),
        ("alerts", {}),
        ("flow", {"tag": tag}),
    ]:
        response = get(client, route, run="bad", **params)
        assert response.status_code == 404
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert f"Run 'bad', tag {tag!r}: {problem}" in response.get_data(as_text=True)


def test_an_old_format_run_whose_layer_set_changed_is_refused_not_shown_in_part(
    tmp_path, caplog
):
    # Files written before layout tags hold every layer set under one tag.
    layout = metadata.Layout(layers=LAYERS, sparse=(False,) * 3)
    write_run(tmp_path, "fine", layout, [0, 1], healthy_stats, legacy=True)
    write_run(tmp_path, "resumed", layout, [0, 1], healthy_stats, legacy=True)
    wider = metadata.Layout(layers=(*LAYERS, "head"), sparse=(False,) * 4)
    four = lambda i: possible(0.5, 4)  # noqa: E731
    write_run(tmp_path, "resumed", wider, [2, 3], four, legacy=True)
    client, _ = make_plugin_client(tmp_path)
    # listed from TensorBoard's listing: what is wrong shows when it is read
    runs = get_json(client, "runs")["runs"]
    assert [(r["run"], r["steps"]) for r in runs] == [("fine", None), ("resumed", None)]
    problem = "the layer set changed between writer sessions: 2 of 4 steps"
    for route, params in [
        ("flow", {}),
        ("flow", {"step": "0"}),
        ("steps", {}),
        ("heatmap", {"stat": "norm", "format": "binary"}),
        ("alerts", {}),
    ]:
        response = get(client, route, run="resumed", **params)
        assert response.status_code == 404
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        text = response.get_data(as_text=True)
        assert f"Run 'resumed', tag 'gradflow': {problem}" in text
        assert "tb_gradflow.load_run()" in text
    for _ in range(2):  # the tab asks every 5 s: still listed, logged once
        runs = get_json(client, "runs")["runs"]
        assert [(r["run"], r["steps"]) for r in runs] == [
            ("fine", None),
            ("resumed", None),
        ]
    (logged,) = [r.getMessage() for r in caplog.records if r.name == plugin.__name__]
    assert logged.startswith(
        f"gradflow: cannot show run 'resumed', tag 'gradflow': {problem}"
    )
    run = reader.load_run(tmp_path / "resumed")  # what the message points to
    assert run.layers == [*LAYERS, "head"] and run.steps.tolist() == [0, 1, 2, 3]


def test_an_old_format_changed_layer_set_is_logged_once_while_the_run_keeps_training(
    tmp_path, caplog
):
    layout = metadata.Layout(layers=LAYERS, sparse=(False,) * 3)
    wider = metadata.Layout(layers=(*LAYERS, "head"), sparse=(False,) * 4)
    four = lambda i: possible(0.5, 4)  # noqa: E731
    write_run(tmp_path, "resumed", layout, [0, 1], healthy_stats, legacy=True)
    write_run(tmp_path, "resumed", wider, [2, 3], four, legacy=True)
    client, mux = make_plugin_client(tmp_path)
    problems = []
    for k in range(4):  # training goes on: new steps at every poll of `runs`
        write_run(tmp_path, "resumed", wider, [4 + k], four, start=1, legacy=True)
        mux.Reload()
        (listed,) = get_json(client, "runs")["runs"]
        assert (listed["run"], listed["last_step"], listed["steps"]) == (
            "resumed",
            4 + k,
            None,
        )
        response = get(client, "steps", run="resumed")
        assert response.status_code == 404
        problems.append(response.get_data(as_text=True))
    assert "3 of 5 steps" in problems[0] and "6 of 8 steps" in problems[-1]
    (logged,) = [r.getMessage() for r in caplog.records if r.name == plugin.__name__]
    assert "3 of 5 steps" in logged


def test_more_problem_runs_than_remembered_keys_are_each_logged_once(
    tmp_path, monkeypatch, caplog
):
    # With more problems than MAX_REMEMBERED, a least-recently-used bound forgot
    # each key before the next poll came round to it: every poll logged them all.
    monkeypatch.setattr(problem_log, "MAX_REMEMBERED", 3)
    layout = metadata.Layout(layers=LAYERS, sparse=(False,) * 3)
    wider = metadata.Layout(layers=(*LAYERS, "head"), sparse=(False,) * 4)
    four = lambda i: possible(0.5, 4)  # noqa: E731
    for run in "abcd":  # 4 old-format runs whose layer set changed > 3 keys
        write_run(tmp_path, run, layout, [0, 1], healthy_stats, legacy=True)
        write_run(tmp_path, run, wider, [2, 3], four, legacy=True)
    client, _ = make_plugin_client(tmp_path)
    for _ in range(3):  # the tab asks every 5 s, and shows each run in turn
        assert [r["run"] for r in get_json(client, "runs")["runs"]] == list("abcd")
        for run in "abcd":
            assert get(client, "steps", run=run).status_code == 404
    logged = [r.getMessage() for r in caplog.records if r.name == plugin.__name__]
    assert [m.split("'")[1] for m in logged] == ["a", "b", "c", "d"]


def test_the_problem_log_forgets_what_the_listing_lacks_and_bounds_other_experiments(
    monkeypatch, caplog
):
    monkeypatch.setattr(problem_log, "MAX_REMEMBERED", 2)
    log = problem_log.ProblemLog(logging.getLogger(plugin.__name__))

    def listing(experiment, runs):
        keys = [(experiment, run, "gradflow", "problem") for run in runs]
        log.listed(experiment, {k: f"{experiment}/{k[1]}" for k in keys})

    for runs in ["abc", "abc", "ac", "abc"]:  # b is fixed, then broken again
        listing("x", runs)
    listing("y", "d")  # two keys are kept beyond y's: x's oldest, a, goes
    listing("x", "ab")
    assert [r.getMessage() for r in caplog.records if r.name == plugin.__name__] == [
        "x/a",
        "x/b",
        "x/c",
        "x/b",
        "y/d",
        "x/a",
    ]
    assert [key[:2] for key in log._warned] == [("y", "d"), ("x", "a"), ("x", "b")]


def test_static_files_name_every_frontend_module():
    # A module the tab imports must be routed even in an install where
    # listing the frontend folder fails.
    folder = static.frontend_dir()
    shipped = {f.name for f in folder.iterdir() if f.suffix in (".js", ".css")}
    assert set(static.STATIC_FILES) == shipped


def test_static_files_are_served_with_explicit_types(client):
    names = static.static_names()
    assert set(static.STATIC_FILES) <= set(names)
    folder = static.frontend_dir()
    present = [n for n in names if folder.joinpath(n).is_file()]
    for name in names:
        response = client.get(f"/data/plugin/gradflow/{name}")
        if name not in present:
            assert response.status_code == 404
            continue
        assert response.status_code == 200
        assert response.get_data() == folder.joinpath(name).read_bytes()
        expected = "text/css" if name.endswith(".css") else "text/javascript"
        assert response.headers["Content-Type"] == f"{expected}; charset=utf-8"
        assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    [
        "plugin.py",
        "__init__.py",
        "../plugin.py",
        "..%2fplugin.py",
        "..%2f..%2fpyproject.toml",
        "%2e%2e/plugin.py",
        "..\\plugin.py",
        "..%5cplugin.py",
        "static/../plugin.py",
        "frontend/index.js",
        "%2fetc%2fpasswd",
        "index.js%00.py",
        "index.js/..",
        "INDEX.JS",
        ".",
    ],
)
def test_static_route_serves_nothing_outside_the_list(client, path):
    response = client.get(f"/data/plugin/gradflow/{path}")
    assert response.status_code == 404
    assert b"import" not in response.get_data()


def test_routes_work_under_an_experiment_prefix(client):
    response = client.get(
        "/experiment/abc/data/plugin/gradflow/steps", query_string={"run": "healthy"}
    )
    assert response.status_code == 200
    assert json.loads(response.get_data())["steps"] == list(STEPS)


def test_sampling_hint_limits_the_steps_read(logdir):
    few, _ = make_plugin_client(logdir, {"gradflow": 3})
    steps = get_json(few, "steps", run="healthy")["steps"]
    assert len(steps) == 3 and steps[-1] == 50  # TensorBoard keeps the latest
    (run,) = (r for r in get_json(few, "runs")["runs"] if r["run"] == "healthy")
    assert run["steps"] == 3
    assert run["first_step"] == steps[0]  # the first kept step: an estimate
    assert run["expected_steps"] == (50 - steps[0]) // 10 + 1
    answer = get_json(few, "steps", run="healthy")  # what the tab's note reads
    assert (answer["first_step"], answer["last_step"]) == (steps[0], 50)
    assert answer["expected_steps"] == run["expected_steps"]
    everything, _ = make_plugin_client(logdir, {"gradflow": 0})
    assert get_json(everything, "steps", run="healthy")["steps"] == list(STEPS)


def test_new_steps_invalidate_the_cache_and_reads_are_reused(tmp_path, monkeypatch):
    layout = metadata.Layout(layers=LAYERS, sparse=(False,) * 3)
    write_run(tmp_path, "live", layout, [0, 1, 2], healthy_stats)
    client, mux = make_plugin_client(tmp_path)
    reads = []
    original = tb_data_provider.MultiplexerDataProvider.read_tensors

    def counting(self, *args, **kwargs):
        reads.append(kwargs["run_tag_filter"].runs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(
        tb_data_provider.MultiplexerDataProvider, "read_tensors", counting
    )
    assert get_json(client, "steps", run="live")["steps"] == [0, 1, 2]
    get_json(client, "flow", run="live")
    get(client, "heatmap", run="live", stat="norm", format="binary")
    get(client, "heatmap", run="live", stat="norm", format="binary")
    get_json(client, "alerts", run="live")
    get_json(client, "runs")
    assert len(reads) == 1
    write_run(tmp_path, "live", layout, [3, 4], healthy_stats, start=3)
    mux.Reload()
    assert get_json(client, "steps", run="live")["steps"] == [0, 1, 2, 3, 4]
    assert get_json(client, "runs")["runs"][0]["steps"] == 5
    assert len(reads) == 2


def test_loader_sets_the_sampling_limit_unless_the_user_did(tmp_path):
    def flags(*argv):  # TensorBoard's own plugin list: core's flags, then ours
        tb = program.TensorBoard(plugins=default.get_plugins())
        tb.configure(argv=["tensorboard", f"--logdir={tmp_path}", *argv])
        return tb.flags.samples_per_plugin

    ours = {  # per-step records, overview records, non-finite origins
        "gradflow": DEFAULT_SAMPLES_PER_RUN,
        "gradflow_overview": DEFAULT_SAMPLES_PER_RUN,
        "gradflow_events": 1000,
    }
    assert flags() == ours
    assert flags("--samples_per_plugin=images=3") == {**ours, "images": 3}
    assert flags("--samples_per_plugin=gradflow=7") == {**ours, "gradflow": 7}
    assert flags("--samples_per_plugin=gradflow=0") == {**ours, "gradflow": 0}
    assert flags("--samples_per_plugin=gradflow_overview=5")["gradflow_overview"] == 5
    from tb_gradflow import loader, metadata, overview

    assert loader._OVERVIEW_PLUGIN_NAME == overview.OVERVIEW_PLUGIN_NAME
    assert loader._EVENTS_PLUGIN_NAME == metadata.EVENTS_PLUGIN_NAME


def test_entry_point_is_the_loader():
    assert GradFlowLoader in default.get_dynamic_plugins()
    assert isinstance(
        GradFlowLoader().load(base_plugin.TBContext()), plugin.GradFlowPlugin
    )


def test_listings_are_trusted_for_listing_ttl_seconds(tmp_path):
    layout = metadata.Layout(layers=LAYERS, sparse=(False,) * 3)
    write_run(tmp_path, "live", layout, [0, 1], healthy_stats)
    client, mux = make_plugin_client(tmp_path, listing_ttl=3600)
    assert get_json(client, "steps", run="live")["steps"] == [0, 1]
    write_run(tmp_path, "live", layout, [2], healthy_stats, start=2)
    mux.Reload()
    assert get_json(client, "steps", run="live")["steps"] == [0, 1]  # trusted
    get_json(client, "runs")  # lists every run afresh
    assert get_json(client, "steps", run="live")["steps"] == [0, 1, 2]


class _TooLarge(Exception):
    """What grpc raises for a reply above the client's message size limit."""

    def code(self):
        class Code:
            name = "RESOURCE_EXHAUSTED"

        return Code()


def test_a_run_too_large_for_one_grpc_reply_is_read_sampled(
    logdir, monkeypatch, caplog
):
    original = tb_data_provider.MultiplexerDataProvider.read_tensors
    asked = []

    def limited(self, *args, downsample, **kwargs):
        asked.append(downsample)
        if downsample > 4:
            raise _TooLarge()
        return original(self, *args, downsample=downsample, **kwargs)

    monkeypatch.setattr(
        tb_data_provider.MultiplexerDataProvider, "read_tensors", limited
    )
    monkeypatch.setattr(run_loader, "READ_BYTES", 4 * (4 * (5 * 3 + 2) + 64))
    fresh, _ = make_plugin_client(logdir)
    steps = get_json(fresh, "steps", run="healthy")["steps"]
    assert asked == [DEFAULT_SAMPLES_PER_RUN, 4]
    assert len(steps) == 4 and steps[-1] == 50
    assert "does not fit in one data-server reply" in caplog.text


def test_impls_return_builtins_for_direct_callers(logdir):
    provider = make_plugin_client(logdir)[0].application._data_provider
    gradflow = plugin.GradFlowPlugin(base_plugin.TBContext(data_provider=provider))
    ctx = context.RequestContext()
    heatmap = gradflow.binned_impl(ctx, "", "healthy", None, "abs_mean", 2)
    assert heatmap["values"] == [[0.5, INF], [0.25, 0.0], [0.125, 0.125]]
    assert type(heatmap["values"][0][0]) is float
    flow = gradflow.flow_impl(ctx, "", "healthy", "gradflow", 20)
    assert flow["step"] == 20 and flow["alerts"] == [BLOCKED]
    with pytest.raises(errors.InvalidArgumentError, match="max_steps"):
        gradflow.binned_impl(ctx, "", "healthy", None, "abs_mean", 0)
    lines = gradflow.binned_impl(
        ctx, "", "healthy", None, "abs_mean", 2, answer="lines"
    )
    assert lines["max"] == heatmap["values"]
    assert lines["min"] == [[0.5, 0.5], [0.0, 0.0], [0.125, 0.125]]
    assert type(lines["min"][0][0]) is float


# A watcher resumed with other layer sets: a layer added, one removed, one
# renamed with the same count (which one tag could not tell from a relabelling).
SESSIONS = [
    (("a", "b", "c"), [0, 1]),
    (("a", "b", "c", "d"), [2, 3]),  # d added
    (("a", "c", "d"), [4, 5]),  # b removed
    (("a", "x", "d"), [6, 7]),  # c renamed x: as many layers as before
]
CODE = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "x": 5.0}


def write_sessions(logdir, run="resumed", name=None):
    """Writes each session of SESSIONS as a writer session of its own: abs_mean
    is the layer's code plus step / 100; ``b`` has no gradient at step 3."""
    for layers, steps in SESSIONS:
        layout = metadata.Layout(layers=layers, name=name)

        def stats_at(i, layers=layers, steps=steps):
            step = steps[i]
            mean = np.array([CODE[n] + step / 100 for n in layers])
            stats = record(mean, abs_max=mean, norm=mean)
            if step == 3:
                stats[:, layers.index("b")] = NAN
            return stats

        write_run(logdir, run, layout, steps, stats_at)


def heatmap_binary(client, **params):
    body = get(client, "heatmap", format="binary", **params).get_data()
    (n,) = struct.unpack("<I", body[:4])
    head = json.loads(body[4 : 4 + n])
    start = -(-(4 + n) // 4) * 4
    values = np.frombuffer(body[start:], dtype="<f4")
    return head, values.reshape(len(head["layers"]), -1)


def test_each_layer_set_has_its_own_tag_and_a_resumed_one_continues_it(tmp_path):
    write_sessions(tmp_path)
    write_run(
        tmp_path,
        "resumed",
        metadata.Layout(layers=("a", "x", "d")),
        [8],
        lambda i: possible(1.0, 3),
        start=1,
    )
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    tags = mux.Runs()["resumed"]["tensors"]
    expected = [
        metadata.layout_tag(metadata.Layout(layers=layers)) for layers, _ in SESSIONS
    ]
    assert sorted(tags) == sorted(expected) and len(set(tags)) == 4
    assert all(t.startswith("gradflow@") and "/" not in t for t in tags)
    named = metadata.layout_tag(metadata.Layout(layers=("a",), name="enc"))
    assert named.startswith("gradflow@") and named.endswith("/enc")
    # the last layer set, written again by a later session, is one series
    last = mux.Tensors("resumed", expected[-1])
    assert [e.step for e in last] == [6, 7, 8]


def test_a_resumed_run_with_other_layer_sets_is_merged_by_layer_name(tmp_path):
    write_sessions(tmp_path)
    write_sessions(tmp_path, name="enc")
    client, _ = make_plugin_client(tmp_path)
    runs = get_json(client, "runs")["runs"]
    # the union of the layer sets, from their layouts alone
    assert [(r["tag"], r["name"], r["layers"], r["last_step"]) for r in runs] == [
        ("gradflow", None, 5, 7),
        ("gradflow/enc", "enc", 5, 7),
    ]
    layers = ["a", "b", "c", "d", "x"]  # in order of first appearance
    expected_absent = {
        0: [False, False, False, True, True],
        2: [False, False, False, False, True],
        4: [False, True, False, False, True],
        7: [False, True, True, False, False],
    }
    for tag in ("gradflow", "gradflow/enc"):
        for step, absent in expected_absent.items():
            flow = get_json(client, "flow", run="resumed", tag=tag, step=str(step))
            assert (flow["tag"], flow["step"], flow["layers"]) == (tag, step, layers)
            assert flow["absent"] == absent
            assert flow["no_grad"] == [False] * 5
            assert flow["stats"]["abs_mean"] == [
                "NaN" if gone else pytest.approx(CODE[n] + step / 100)
                for n, gone in zip(layers, absent)
            ]
    flow = get_json(client, "flow", run="resumed", tag="gradflow", step="3")
    assert flow["no_grad"] == [False, True, False, False, False]  # a real one
    assert flow["absent"] == [False, False, False, False, True]
    # a layout tag names its watcher
    some = metadata.layout_tag(metadata.Layout(layers=("a", "c", "d")))
    assert get_json(client, "steps", run="resumed", tag=some) == {
        "run": "resumed",
        "tag": "gradflow",
        "steps": list(range(8)),
        "first_step": 0,
        "last_step": 7,
        "every": 1,
        "expected_steps": 8,
        "left_out": [],
    }
    head, values = heatmap_binary(
        client, run="resumed", tag="gradflow", stat="abs_mean", max_steps="4"
    )
    assert head["layers"] == layers and head["first_steps"] == [0, 2, 4, 6]
    np.testing.assert_array_equal(
        values,
        np.array(
            [
                [1.01, 1.03, 1.05, 1.07],
                [2.01, 2.02, -INF, -INF],  # b: no gradient at 3, absent from 4
                [3.01, 3.03, 3.05, -INF],  # -inf: in none of the bin's layer sets
                [-INF, 4.03, 4.05, 4.07],
                [-INF, -INF, -INF, 5.07],
            ],
            dtype=np.float32,
        ),
    )
    alerts = get_json(client, "alerts", run="resumed", tag="gradflow", patience="1")
    assert [a for a in alerts["alerts"] if a["kind"] == "no_gradient"] == [
        {
            "kind": "no_gradient",
            "layer": "b",
            "first_step": 3,
            "last_step": 3,
            "steps": 1,
            "message": "no gradient (.grad is None): detached or unused",
            "ongoing": False,  # a step follows it (b absent there: not a hit)
        }
    ]
    assert [a["kind"] for a in alerts["alerts"]] == ["no_gradient"]


def test_load_run_merges_layer_sets_and_diagnosis_skips_absent_layers(tmp_path):
    write_sessions(tmp_path)
    run = reader.load_run(tmp_path / "resumed")
    assert run.layers == ["a", "b", "c", "d", "x"]
    assert run.steps.tolist() == list(range(8))
    assert run.absent[:, 4].tolist() == [True] * 6 + [False] * 2
    assert run.no_grad.sum() == 1 and run.no_grad[3, 1]
    np.testing.assert_allclose(run.values("abs_mean")[7, 4], 5.07, rtol=1e-6)
    assert [f.kind for f in diagnose(run, Thresholds(patience=1))] == ["no_gradient"]
    # without the absent mask, the same NaNs read as "no gradient"
    present = dataclasses.replace(run, absent=np.zeros_like(run.absent))
    kinds = {(f.kind, f.layer) for f in diagnose(present, Thresholds(patience=2))}
    assert kinds == {
        ("no_gradient", "b"),
        ("no_gradient", "c"),
        ("no_gradient", "d"),
        ("no_gradient", "x"),
    }
    assert set(reader.load(tmp_path)) == {"resumed"}


def test_old_format_files_are_read_alongside_layout_tags(tmp_path):
    old = metadata.Layout(layers=("a", "b"), name="enc")
    write_run(tmp_path, "up", old, [0, 1], lambda i: possible(1.0, 2), legacy=True)
    new = metadata.Layout(layers=("a", "b", "c"), name="enc")
    write_run(tmp_path, "up", new, [2, 3], lambda i: possible(1.0, 3))
    client, _ = make_plugin_client(tmp_path)
    (entry,) = get_json(client, "runs")["runs"]
    assert (entry["tag"], entry["layers"], entry["last_step"]) == ("gradflow/enc", 3, 3)
    steps = get_json(client, "steps", run="up", tag="gradflow/enc")
    assert (steps["steps"], steps["expected_steps"]) == ([0, 1, 2, 3], 4)
    flow = get_json(client, "flow", run="up", tag="gradflow/enc", step="0")
    assert flow["absent"] == [False, False, True]
    run = reader.load_run(tmp_path / "up", name="enc")
    assert run.layers == ["a", "b", "c"] and run.absent[:, 2].tolist() == [
        True,
        True,
        False,
        False,
    ]


def test_the_layout_cache_holds_every_layer_set_of_a_run(monkeypatch):
    """With more layer sets in a run than a fixed cache of 64 held, every one
    was parsed again on each request (two passes per request)."""
    parsed = []
    real = metadata.parse_plugin_metadata
    monkeypatch.setattr(
        metadata,
        "parse_plugin_metadata",
        lambda content: parsed.append(content) or real(content),
    )
    cache = watchers.LayoutCache()
    contents = [metadata.Layout(layers=(f"layer{i}",)).to_json() for i in range(100)]
    cache.fit(len(contents))
    for _ in range(3):  # three requests
        for content in contents:
            assert cache.parse(content).layers == (json.loads(content)["layers"][0],)
    assert len(parsed) == 100  # each once


def test_heatmap_tells_absent_layers_from_layers_without_gradient(tmp_path):
    """b has no gradient at step 2 and is absent from the second session's
    layer set (steps 3-5): a bin of only absent steps is -Infinity, one with a
    step without gradient NaN, in JSON and binary alike. Before, both were NaN
    and the tab called an absent layer "no gradient"."""
    first = metadata.Layout(layers=("a", "b"), types=("Linear", "Conv2d"))

    def two(i):
        stats = possible(0.5, 2)
        if i == 2:
            stats[:, 1] = NAN
        return stats

    write_run(tmp_path, "resumed", first, [0, 1, 2], two)
    second = metadata.Layout(layers=("a",), types=("Linear",))
    write_run(tmp_path, "resumed", second, [3, 4, 5], lambda i: possible(0.25, 1))
    client, _ = make_plugin_client(tmp_path)
    answer = get_json(client, "heatmap", run="resumed", stat="abs_mean", max_steps="3")
    assert (answer["layers"], answer["types"]) == (["a", "b"], ["Linear", "Conv2d"])
    assert answer["first_steps"] == [0, 2, 4]
    assert answer["values"] == [[0.5, 0.5, 0.25], [0.5, "NaN", "-Infinity"]]
    every = get_json(client, "heatmap", run="resumed", stat="abs_mean")
    assert every["values"][1] == [
        0.5,
        0.5,
        "NaN",
        "-Infinity",
        "-Infinity",
        "-Infinity",
    ]
    head, values = heatmap_binary(client, run="resumed", stat="abs_mean", max_steps="3")
    assert head == {k: v for k, v in answer.items() if k != "values"}
    assert values[1, 0] == 0.5 and np.isnan(values[1, 1]) and values[1, 2] == -INF
