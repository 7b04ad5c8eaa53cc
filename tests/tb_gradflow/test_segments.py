"""Segments: a layer set's per-step records over several tags by step, read
back whole by load_run and by the plugin (both of TensorBoard's loaders),
and a resumed session's records replacing the abandoned timeline."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from plugin_client import make_plugin_client
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import event_accumulator
from watched_runs import ORDER, gradients, layout_of, write_watched

from tb_gradflow import metadata, run_loader, segments, watchers
from tb_gradflow.reader import load_run

LAYERS = 4
ABS_MEAN = ORDER.index("abs_mean")


@pytest.fixture
def hundred_step_segments(monkeypatch):
    """Segments of 100 logged steps for ``layout_of(LAYERS)`` (a layer set
    that small keeps one tag otherwise): the smallest segment, so that short
    runs hold several."""
    size = layout_of(LAYERS).size
    monkeypatch.setattr(segments, "ONE_TAG_BYTES", 0)
    monkeypatch.setattr(segments, "SEGMENT_BYTES", 4 * size * 100)
    assert segments.segment_steps(layout_of(LAYERS)) == 100


def tags_in(run_dir):
    """{tag: (steps, segment in the first record's metadata or None)}."""
    acc = event_accumulator.EventAccumulator(
        str(run_dir), size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        content = acc.SummaryMetadata(tag).plugin_data
        if content.plugin_name != metadata.PLUGIN_NAME:
            continue
        raw = json.loads(content.content)
        out[tag] = ([e.step for e in acc.Tensors(tag)], raw.get("segment"))
    return out


def test_segment_steps_fill_about_segment_bytes_in_whole_hundreds_past_one_tag():
    llama = metadata.Layout(layers=tuple(f"l{i}" for i in range(723)))
    assert segments.segment_steps(llama) == 2_300  # 32 MiB / (4 x 3,617)
    assert 4 * llama.size * 2_300 <= segments.SEGMENT_BYTES
    assert segments.segment_steps(layout_of(66)) is None  # one tag: 100,000 x 1.3 kB
    assert segments.segment_steps(layout_of(67)) == 24_800
    huge = metadata.Layout(layers=tuple(f"l{i}" for i in range(10**6)))
    assert segments.segment_steps(huge) == 100  # never fewer than a block


def test_a_session_writes_a_tag_per_segment(tmp_path, hundred_step_segments):
    layout = layout_of(LAYERS)
    values, _ = gradients(np.random.default_rng(0), 250, layers=LAYERS)
    write_watched(tmp_path, "run", layout, values)
    plain = metadata.layout_tag(layout)
    expected = {
        plain: (list(range(100)), None),
        f"{plain}#0.1": (list(range(100, 200)), [0, 1]),
        f"{plain}#0.2": (list(range(200, 250)), [0, 2]),
    }
    assert tags_in(tmp_path / "run") == expected
    run = load_run(tmp_path / "run")
    assert run.steps.tolist() == list(range(250))
    np.testing.assert_array_equal(run.values("abs_mean"), values[:, ABS_MEAN])


def test_a_named_watcher_keeps_its_name_at_the_end_of_a_segment_tag(
    tmp_path, hundred_step_segments
):
    layout = layout_of(LAYERS, name="enc")
    values, _ = gradients(np.random.default_rng(1), 150, layers=LAYERS)
    write_watched(tmp_path, "run", layout, values)
    plain = metadata.layout_tag(layout)
    assert plain.endswith("/enc")
    assert set(tags_in(tmp_path / "run")) == {
        plain,
        plain.replace("/enc", "#0.1/enc"),
    }


def resumed_run(logdir):
    """Session 1 logs steps 0-249 (three segments); session 2 resumes from a
    checkpoint at step 150 and logs 150-180 with other values."""
    layout = layout_of(LAYERS)
    rng = np.random.default_rng(2)
    one, _ = gradients(rng, 250, layers=LAYERS)
    two, _ = gradients(rng, 31, layers=LAYERS)
    write_watched(logdir, "resumed", layout, one, wall=1e9)
    write_watched(logdir, "resumed", layout, two, start=150, wall=2e9)
    expected = np.concatenate([one[:150], two])[:, ABS_MEAN]  # (181, L)
    return layout, expected


def test_load_run_leaves_out_the_abandoned_timeline(tmp_path, hundred_step_segments):
    _, expected = resumed_run(tmp_path)
    run = load_run(tmp_path / "resumed")
    assert run.steps.tolist() == list(range(181))
    np.testing.assert_array_equal(run.values("abs_mean"), expected)


@pytest.mark.parametrize("load_fast", ["true", "false"])
def test_tensorboard_shows_every_segment_and_the_resumed_timeline(
    tmp_path, tensorboard_process, load_fast, hundred_step_segments
):
    """Both of TensorBoard's loaders; the values of the flow route at a step
    of each segment, and of the resumed session, are the written ones."""
    _, expected = resumed_run(tmp_path / "logs")
    layout = layout_of(LAYERS)
    long_values, _ = gradients(np.random.default_rng(3), 450, layers=LAYERS)
    write_watched(tmp_path / "logs", "long", layout, long_values)
    tb = tensorboard_process(tmp_path / "logs", f"--load_fast={load_fast}")
    try:
        deadline = time.monotonic() + 120
        for run, steps in (("long", 450), ("resumed", 181)):
            while True:  # until TensorBoard has read the run
                status, _, body = tb.get(f"/data/plugin/gradflow/steps?run={run}")
                if status == 200 and json.loads(body)["last_step"] == steps - 1:
                    break
                assert time.monotonic() < deadline, (status, body[:200])
                time.sleep(0.5)
            assert json.loads(body)["steps"] == list(range(steps))
        for step in (0, 99, 100, 349, 449):
            flow = tb.get_json(f"/data/plugin/gradflow/flow?run=long&step={step}")
            assert flow["step"] == step
            assert flow["stats"]["abs_mean"] == long_values[step, ABS_MEAN].tolist()
        for step in (149, 150, 180):
            flow = tb.get_json(f"/data/plugin/gradflow/flow?run=resumed&step={step}")
            assert flow["stats"]["abs_mean"] == expected[step].tolist()
    finally:
        tb.close()


class _CountingProvider(tb_data_provider.MultiplexerDataProvider):
    """TensorBoard's Python data provider, recording each read's tags and
    downsample."""

    reads: list[tuple[list[str], int]]

    def read_tensors(self, ctx, *, run_tag_filter, downsample, **kwargs):
        self.reads.append((sorted(run_tag_filter.tags), downsample))
        return super().read_tensors(
            ctx, run_tag_filter=run_tag_filter, downsample=downsample, **kwargs
        )


def test_segments_are_read_in_batches_that_fit_one_reply(
    tmp_path, monkeypatch, hundred_step_segments
):
    layout = layout_of(LAYERS)
    values, _ = gradients(np.random.default_rng(4), 450, layers=LAYERS)
    write_watched(tmp_path, "long", layout, values)
    # two full segments per reply
    monkeypatch.setattr(run_loader, "READ_BYTES", 2 * 100 * (4 * layout.size + 64))
    monkeypatch.setattr(tb_data_provider, "MultiplexerDataProvider", _CountingProvider)
    _CountingProvider.reads = []
    client, _ = make_plugin_client(tmp_path)
    answer = client.get("/data/plugin/gradflow/steps", query_string={"run": "long"})
    assert answer.json["steps"] == list(range(450))
    plain = metadata.layout_tag(layout)
    per_step = [tags for tags, _ in _CountingProvider.reads if plain in tags[0]]
    assert per_step == [
        [plain, f"{plain}#0.1"],
        [f"{plain}#0.2", f"{plain}#0.3"],
        [f"{plain}#0.4"],
    ]
    flow = client.get("/data/plugin/gradflow/flow", query_string={"run": "long"}).json
    assert flow["stats"]["abs_mean"] == values[449, ABS_MEAN].tolist()


def test_the_read_cap_keeps_a_run_within_its_budget():
    def brute(bound, points, sizes, nbytes):
        def fits(c):
            kept = {t: min(b, c) for t, b in bound.items()}
            total = sum(kept[t] * sizes[t] for t in kept)
            return sum(kept.values()) <= points and total <= nbytes

        if fits(max(bound.values())):
            return points
        return max([c for c in range(1, max(bound.values()) + 1) if fits(c)] or [1])

    rng = np.random.default_rng(5)
    for _ in range(300):
        tags = [f"t{i}" for i in range(int(rng.integers(1, 6)))]
        bound = {t: int(rng.integers(1, 400)) for t in tags}
        sizes = {t: int(rng.integers(1, 50)) for t in tags}
        points = int(rng.integers(1, 800))
        nbytes = int(rng.integers(1, 20_000))
        assert run_loader._cap(bound, points, sizes, nbytes) == brute(
            bound, points, sizes, nbytes
        )


def test_abandoned_matches_a_plain_loop():
    rng = np.random.default_rng(6)
    for _ in range(200):
        sessions = rng.choice([0, 40, 90, 150], size=60)
        steps = sessions + rng.integers(0, 120, size=60)
        expected = [
            any(s < t <= step for t in sessions)
            for s, step in zip(sessions.tolist(), steps.tolist())
        ]
        assert segments.abandoned(sessions, steps).tolist() == expected


@pytest.mark.parametrize(
    "segment, problem",
    [
        ("[1]", "'segment' is [1], not [session step, index >= 0]"),
        ('[0, "1"]', "'segment' is [0, '1'], not [session step, index >= 0]"),
        ("[5, -1]", "'segment' is [5, -1], not [session step, index >= 0]"),
        ("[1.5, 0]", "'segment' is [1.5, 0], not [session step, index >= 0]"),
    ],
)
def test_a_malformed_segment_is_named(segment, problem):
    content = layout_of(LAYERS).to_json()[:-1] + f', "segment": {segment}}}'.encode()
    with pytest.raises(metadata.FormatError) as caught:
        segments.parse_segment(content)
    assert str(caught.value) == f"Invalid gradflow plugin metadata: {problem}"


def test_a_tag_with_a_malformed_segment_is_listed_as_unreadable():
    class Listed:
        max_step, max_wall_time = 0, 0.0

        def __init__(self, content):
            self.plugin_content = content

    good = layout_of(LAYERS).to_json()
    bad = good[:-1] + b', "segment": "x"}'
    grouped, unreadable = watchers.group({"a": Listed(good), "b": Listed(bad)})
    assert list(grouped["gradflow"]) == ["a"]
    assert "'segment' is 'x'" in unreadable["b"]


def test_segments_order_by_session_then_index():
    assert sorted(
        [segments.Segment(150, 0), segments.Segment(0, 2), segments.Segment(0, 0)]
    ) == [segments.Segment(0, 0), segments.Segment(0, 2), segments.Segment(150, 0)]


def test_a_small_layer_set_keeps_one_tag_per_session(tmp_path):
    layout = layout_of(LAYERS)
    values, _ = gradients(np.random.default_rng(7), 250, layers=LAYERS)
    write_watched(tmp_path, "run", layout, values)
    plain = metadata.layout_tag(layout)
    assert tags_in(tmp_path / "run") == {plain: (list(range(250)), None)}
    write_watched(tmp_path, "run", layout, values[:20], start=150)  # resumed
    assert tags_in(tmp_path / "run") == {
        plain: (list(range(250)), None),
        f"{plain}#150.0": (list(range(150, 170)), [150, 0]),
    }
    assert load_run(tmp_path / "run").steps.tolist() == list(range(170))
