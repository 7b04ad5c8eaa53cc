"""The ``triage`` route: runs ranked by their most severe finding, then the most
recently written, judged from a sample of each run or from the plugin's cache
(tb_gradflow/triage.py), served through TensorBoard's own WSGI app."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from plugin_client import make_plugin_client
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from tb_gradflow import metadata, triage
from tb_gradflow import stats as tb_stats
from tb_gradflow.rule_spec import KINDS
from tb_gradflow.summary import gradflow_pb

LAYERS = ("a", "b", "c")
NAN = math.nan


def stats(mean, norm=None):
    """(K, L) statistics of abs_mean ``mean`` (nonfinite 0 unless the mean is)."""
    mean = np.asarray(mean, dtype=np.float64)
    norm = 10 * mean if norm is None else np.asarray(norm, dtype=np.float64)
    bad = np.where(np.isfinite(mean), 0.0, 5.0)
    bad[np.isnan(mean)] = NAN
    values = {"abs_mean": mean, "abs_max": 2 * mean, "norm": norm, "nonfinite": bad}
    return tb_stats.record({**values, "rows": 1.0}, len(mean))


HEALTHY = [1e-3, 2e-3, 3e-3]


def write(logdir, run, n, stats_at, wall, fields_at=None, name=None):
    layout = metadata.Layout(layers=LAYERS, name=name)
    writer = EventFileWriter(str(logdir / run))
    for i in range(n):
        fields = fields_at(i) if fields_at else [0.0, NAN]
        summary = gradflow_pb(layout, stats_at(i), fields, with_metadata=i == 0)
        event = event_pb2.Event(step=i, wall_time=wall + i / 1000, summary=summary)
        writer.add_event(event)
    writer.close()


def get_json(client, route, **params):
    response = client.get(f"/data/plugin/gradflow/{route}", query_string=params)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/json"
    return json.loads(response.get_data())


@pytest.fixture
def reads(monkeypatch):
    """The ``(runs, downsample)`` of every read_tensors call."""
    calls = []
    original = tb_data_provider.MultiplexerDataProvider.read_tensors

    def counting(self, *args, **kwargs):
        calls.append((sorted(kwargs["run_tag_filter"].runs), kwargs["downsample"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(
        tb_data_provider.MultiplexerDataProvider, "read_tensors", counting
    )
    return calls


def test_severity_orders_the_kinds_and_puts_unknown_then_none_last():
    kinds = [*triage.SEVERITY, "some_new_kind", None]
    assert [triage.severity(k) for k in kinds] == list(range(len(kinds)))
    assert triage.SEVERITY == (
        "nonfinite_origin",
        "nonfinite",
        "exploding",
        "spike",
        "no_gradient",
        "all_zero",
        "blocked",
        "update_too_large",
        "not_updating",
        "skipped",
    )
    assert set(triage.SEVERITY) == set(KINDS)  # every kind of the rule ranked


def test_rank_is_severity_then_newest_then_name():
    def t(run, worst, wall):
        kinds = () if worst is None else (worst,)
        return triage.RunTriage(run, "gradflow", worst, kinds, wall, 10, "sample")

    items = [
        t("quiet_new", None, 9.0),
        t("blocked_old", "blocked", 1.0),
        t("nan_old", "nonfinite", 1.0),
        t("blocked_new", "blocked", 5.0),
        t("b_tie", "skipped", 3.0),
        t("a_tie", "skipped", 3.0),
        t("nan_new", "nonfinite", 2.0),
        t("quiet_old", None, 1.0),
    ]
    assert [x.run for x in triage.rank(items)] == [
        "nan_new",
        "nan_old",
        "blocked_new",
        "blocked_old",
        "a_tie",
        "b_tie",
        "quiet_new",
        "quiet_old",
    ]


def test_triage_ranks_every_kind_of_finding_then_the_newest(tmp_path, reads):
    n = 30
    late = lambda i: i >= n - 5  # noqa: E731 (the last five steps)
    runs = {
        # run: (abs_mean at step i, norm at step i or None, step fields, wall time)
        "a_clean_old": (lambda i: HEALTHY, None, None, 1000),
        "clean_new": (lambda i: HEALTHY, None, None, 9000),
        "skipped": (lambda i: HEALTHY, None, lambda i: [float(late(i)), 8.0], 2000),
        "blocked": (lambda i: [1e-3, 0.0 if late(i) else 2e-3, 3e-3], None, None, 8000),
        "blocked_old": (lambda i: [0.0, 2e-3, 3e-3], None, None, 1500),
        "all_zero": (lambda i: [0.0] * 3 if late(i) else HEALTHY, None, None, 1000),
        "no_grad": (lambda i: [1e-3, 2e-3, NAN], None, None, 1000),
        "exploding": (
            lambda i: HEALTHY,
            lambda i: [1.0, 1.0, 1e6 if i == n - 1 else 1.0],
            None,
            1000,
        ),
        "nan_old": (
            lambda i: [1e-3, math.inf if late(i) else 2e-3, 3e-3],
            None,
            None,
            500,
        ),
        "nan_new": (lambda i: [math.inf, 2e-3, 3e-3], None, None, 600),
    }
    for run, (mean, norm, fields, wall) in runs.items():
        write(
            tmp_path,
            run,
            n,
            lambda i, mean=mean, norm=norm: stats(mean(i), norm and norm(i)),
            wall,
            fields_at=fields,
        )
    future = metadata.Layout(layers=("a",), version=metadata.FORMAT_VERSION + 1)
    writer = EventFileWriter(str(tmp_path / "future"))
    values = tb_stats.record(dict.fromkeys(future.stats, 0.5), 1, order=future.stats)
    pb = gradflow_pb(future, values, [0.0, NAN], with_metadata=True)
    writer.add_event(event_pb2.Event(step=0, wall_time=99999.0, summary=pb))
    writer.close()
    client, _ = make_plugin_client(tmp_path)

    answer = get_json(client, "triage")["runs"]
    assert [(r["run"], r["worst"]) for r in answer] == [
        ("nan_new", "nonfinite"),
        ("nan_old", "nonfinite"),
        ("exploding", "exploding"),
        ("no_grad", "no_gradient"),
        ("all_zero", "all_zero"),
        ("blocked", "blocked"),
        ("blocked_old", "blocked"),
        ("skipped", "skipped"),
        ("clean_new", None),
        ("a_clean_old", None),
    ]  # "future" (a newer format) is left out, as the runs route leaves it out
    assert answer[0] == {
        "run": "nan_new",
        "tag": "gradflow",
        "worst": "nonfinite",
        "kinds": ["nonfinite"],
        "wall_time": 600 + (n - 1) / 1000,
        "steps": n,
        "basis": "sample",  # TensorBoard's sample of 100 holds all 30 steps
    }
    # all runs in one read of at most SAMPLE_STEPS steps each
    assert reads == [(sorted(runs), triage.SAMPLE_STEPS)]


def test_a_long_run_is_judged_from_a_sample_in_one_read(tmp_path, reads):
    # 1,000 steps; layer b stops receiving a gradient half-way and stays so
    blocked = lambda i: [1e-3, 0.0 if i >= 500 else 2e-3, 3e-3]  # noqa: E731
    write(tmp_path, "long", 1000, lambda i: stats(blocked(i)), 5000)
    write(tmp_path, "short", 10, lambda i: stats(HEALTHY), 6000)
    client, _ = make_plugin_client(tmp_path)
    answer = get_json(client, "triage")["runs"]
    assert [(r["run"], r["worst"], r["steps"]) for r in answer] == [
        ("long", "blocked", triage.SAMPLE_STEPS),
        ("short", None, 10),
    ]
    assert reads == [(["long", "short"], triage.SAMPLE_STEPS)]


def test_runs_the_plugin_has_read_are_judged_from_its_cache(tmp_path, reads):
    # one non-finite step among 1,000: a sample of 100 would miss it (and
    # does, below); the cached diagnosis of every step does not
    spike = lambda i: [1e-3, math.inf if i == 377 else 2e-3, 3e-3]  # noqa: E731
    write(tmp_path, "spike", 1000, lambda i: stats(spike(i)), 5000)
    write(tmp_path, "other", 1000, lambda i: stats(HEALTHY), 6000)
    client, _ = make_plugin_client(tmp_path)
    first = get_json(client, "triage")["runs"]
    assert [(r["run"], r["worst"], r["basis"]) for r in first] == [
        ("other", None, "sample"),
        ("spike", None, "sample"),  # missed by the sample
    ]
    reads.clear()

    get_json(client, "alerts", run="spike")  # the tab shows it: read and diagnosed
    get_json(client, "steps", run="other")  # read, not diagnosed
    assert len(reads) == 2
    reads.clear()
    answer = get_json(client, "triage")["runs"]
    assert [(r["run"], r["worst"], r["steps"], r["basis"]) for r in answer] == [
        ("spike", "nonfinite", 1000, "all"),
        ("other", None, triage.SAMPLE_STEPS, "sample"),  # rows of the cached run
    ]
    assert reads == []  # neither was read again


def test_new_data_is_not_judged_from_a_stale_cache_entry(tmp_path, reads):
    write(tmp_path, "live", 5, lambda i: stats(HEALTHY), 5000)
    client, _ = make_plugin_client(tmp_path)
    get_json(client, "alerts", run="live")
    reads.clear()
    assert get_json(client, "triage")["runs"][0]["basis"] == "all"
    assert reads == []
    # more steps, now non-finite: the cached version is stale
    write(tmp_path, "live", 5, lambda i: stats([math.inf, 1.0, 1.0]), 6000)
    client.application._data_provider._multiplexer.Reload()
    (entry,) = get_json(client, "triage")["runs"]
    assert (entry["worst"], entry["basis"]) == ("nonfinite", "sample")
    assert reads == [(["live"], triage.SAMPLE_STEPS)]


def test_several_watchers_of_a_run_are_ranked_apart(tmp_path):
    write(tmp_path, "gan", 10, lambda i: stats(HEALTHY), 5000, name="gen")
    write(tmp_path, "gan", 10, lambda i: stats([0.0, 1e-3, 1e-3]), 4000, name="disc")
    client, _ = make_plugin_client(tmp_path)
    answer = get_json(client, "triage")["runs"]
    assert [(r["run"], r["tag"], r["worst"]) for r in answer] == [
        ("gan", "gradflow/disc", "blocked"),
        ("gan", "gradflow/gen", None),
    ]


def test_many_runs_are_read_in_batches_that_fit_one_reply(tmp_path, reads, monkeypatch):
    for k in range(5):
        write(tmp_path, f"r{k}", 20, lambda i: stats(HEALTHY), 1000 + k)
    client, _ = make_plugin_client(tmp_path)
    whole = get_json(client, "triage")["runs"]
    assert len(reads) == 1
    reads.clear()
    size = metadata.Layout(layers=LAYERS).size
    # room for two runs' samples per read
    monkeypatch.setattr(
        triage, "_BATCH_BYTES", 2 * triage.SAMPLE_STEPS * (4 * size + 64)
    )
    assert get_json(client, "triage")["runs"] == whole
    assert [r for r, _ in reads] == [["r0", "r1"], ["r2", "r3"], ["r4"]]


def test_an_empty_logdir_ranks_nothing(tmp_path):
    client, _ = make_plugin_client(tmp_path)
    assert get_json(client, "triage") == {"runs": []}
