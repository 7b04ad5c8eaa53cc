"""The ``heatmap`` answer's binning and encodings (tb_gradflow/heatmap.py), on
runs built in memory: no TensorBoard app, no data provider."""

from __future__ import annotations

import gzip
import json
import math
import struct

import numpy as np
import pytest
from tensorboard import errors

from tb_gradflow import heatmap, metadata, overview, overview_merge, reader
from tb_gradflow import stats as tb_stats

INF = math.inf
NAN = math.nan


def make_run(means, absent=None, layers=("a", "b")):
    """A run of one record per step (steps 0, 10, 20, ...): abs_mean ``means[t]``
    (NaN: no gradient, in every statistic), abs_max and norm twice it;
    ``absent``: ``(T, L)`` layers not in that step's layer set."""
    layout = metadata.Layout(layers=layers, types=("Linear",) * len(layers))
    rows = []
    for mean in np.asarray(means, dtype=np.float64):
        values = {"abs_mean": mean, "abs_max": 2 * mean, "norm": 2 * mean}
        nonfinite = np.where(np.isnan(mean), NAN, np.where(np.isinf(mean), 1.0, 0.0))
        record = tb_stats.record(
            {**values, "nonfinite": nonfinite, "rows": 1.0}, len(layers)
        )
        rows.append(np.concatenate([record.reshape(-1), [0.0, NAN]]))
    steps = [10 * t for t in range(len(means))]
    return reader.from_records("run", layout, steps, rows, absent=absent)


def test_bins_keep_the_largest_finite_value_and_mark_nonfinite_and_no_gradient():
    run = make_run(
        [[1.0, 3.0], [2.0, NAN], [INF, NAN], [0.5, NAN], [0.25, 4.0]],
    )
    header, values = heatmap.bin_steps(run, "gradflow", "abs_mean", 2)
    # 5 steps in 2 bins of (nearly) equal count: indices 0-1 and 2-4
    assert header == {
        "run": "run",
        "tag": "gradflow",
        "stat": "abs_mean",
        "layers": ["a", "b"],
        "types": ["Linear", "Linear"],
        "steps": [0, 20],
        "first_steps": [0, 20],
        "last_steps": [10, 40],
        "downsampled": True,
        "logged": True,
        # norm 2 x abs_mean; no gradient adds 0; a non-finite norm: +inf
        "total_norm": [2 * math.hypot(1.0, 3.0), INF],
    }
    assert values.dtype == np.float32 and values.shape == (2, 2)  # (L, N)
    np.testing.assert_array_equal(values, [[2.0, INF], [3.0, 4.0]])
    _, bins = heatmap.bin_steps(run, "gradflow", "abs_mean", 3)
    # b: no gradient at any step of the middle bin
    assert np.isnan(bins[1, 1]) and bins[1, 0] == 3.0 and bins[0, 1] == INF


def test_a_bin_where_the_layer_was_in_no_layer_set_is_minus_infinity():
    absent = np.array([[False, False], [False, True], [False, True]])
    run = make_run([[1.0, 2.0], [1.0, NAN], [1.0, NAN]], absent=absent)
    _, values = heatmap.bin_steps(run, "gradflow", "abs_mean", 3)
    np.testing.assert_array_equal(values[1], [2.0, -INF, -INF])
    _, pooled = heatmap.bin_steps(run, "gradflow", "abs_mean", 1)
    assert pooled[1, 0] == 2.0


def test_total_norms_match_a_plain_float64_loop_over_every_step():
    rng = np.random.default_rng(0)
    means = rng.lognormal(np.log(1e-3), 2.0, size=(40, 3))
    means[5, 1] = NAN  # no gradient
    means[9, 2] = INF  # non-finite
    absent = np.zeros((40, 3), dtype=bool)
    absent[20:, 0] = True
    means[20:, 0] = NAN
    run = make_run(means, absent=absent, layers=("a", "b", "c"))
    expected = []
    for t in range(40):
        squares, bad = 0.0, False
        for j in range(3):
            norm = float(np.float32(2 * means[t, j]))  # as stored
            if math.isnan(norm):
                continue
            if math.isinf(norm):
                bad = True
            else:
                squares += norm * norm
        expected.append(INF if bad else math.sqrt(squares))
    totals = heatmap.total_norms(run)
    assert totals.dtype == np.float64 and totals.shape == (40,)
    np.testing.assert_allclose(totals, expected, rtol=1e-13)
    header, _ = heatmap.bin_steps(run, "gradflow", "abs_mean", 3)
    starts = [0, 13, 26]  # 40 steps in 3 bins
    bins = [max(expected[a:z]) for a, z in zip(starts, [*starts[1:], 40])]
    np.testing.assert_allclose(header["total_norm"], bins, rtol=1e-13)


def test_a_one_step_spike_of_the_total_norm_survives_binning_into_one_column():
    means = np.full((1000, 2), 1e-3)
    means[617, 1] = 1e-2  # 10x, one step
    run = make_run(means)
    header, _ = heatmap.bin_steps(run, "gradflow", "abs_mean", 1)
    spike = math.hypot(2 * np.float32(1e-3), 2 * np.float32(1e-2))
    assert header["total_norm"] == [pytest.approx(spike, rel=1e-6)]


def test_total_norm_is_none_for_a_run_without_norm_and_binary_says_infinity():
    order = ("abs_mean", "nonfinite")
    layout = metadata.Layout(layers=("a",), stats=order)
    rows = [np.array([1.0, 0.0, 0.0, NAN])]
    run = reader.from_records("run", layout, [0], rows)
    if "norm" in run.stats:  # the reader adds every registered statistic, as NaN
        assert "norm" in run.not_logged
    assert heatmap.total_norms(run) is None
    assert heatmap.bin_steps(run, "gradflow", "abs_mean", 5)[0]["total_norm"] is None
    header = {"total_norm": [1.5, INF]}
    body, _, _ = heatmap.encode(header, {}, "binary")
    (n,) = struct.unpack("<I", body[:4])
    assert json.loads(body[4 : 4 + n]) == {"total_norm": [1.5, "Infinity"]}


def test_without_downsampling_every_step_is_a_column():
    run = make_run([[1.0, 2.0], [3.0, 4.0]])
    header, values = heatmap.bin_steps(run, "gradflow", "norm", 1000)
    assert header["steps"] == header["first_steps"] == header["last_steps"] == [0, 10]
    assert header["downsampled"] is False
    np.testing.assert_array_equal(values, [[2.0, 6.0], [4.0, 8.0]])


def test_extremes_keep_each_bins_smallest_finite_value_beside_the_heatmaps_largest():
    run = make_run(
        [[1.0, 3.0], [2.0, NAN], [INF, NAN], [0.5, NAN], [0.25, 4.0]],
    )
    header, largest, smallest = heatmap.bin_extremes(run, "gradflow", "abs_mean", 2)
    assert header == heatmap.bin_steps(run, "gradflow", "abs_mean", 2)[0]
    np.testing.assert_array_equal(largest, [[2.0, INF], [3.0, 4.0]])
    # a non-finite value is not the smallest; NaN (no gradient) is no value
    np.testing.assert_array_equal(smallest, [[1.0, 0.25], [3.0, 4.0]])
    assert smallest.dtype == np.float32 and smallest.shape == (2, 2)  # (L, N)
    _, _, middle = heatmap.bin_extremes(run, "gradflow", "abs_mean", 3)
    assert np.isnan(middle[1, 1])  # b: no gradient in the middle bin
    assert middle[0, 1] == 2.0  # a: 2.0 and INF


def test_the_smallest_value_of_a_bin_without_the_layer_is_nan():
    absent = np.array([[False, False], [False, True], [False, True]])
    run = make_run([[1.0, 2.0], [1.0, NAN], [1.0, NAN]], absent=absent)
    _, largest, smallest = heatmap.bin_extremes(run, "gradflow", "abs_mean", 3)
    np.testing.assert_array_equal(largest[1], [2.0, -INF, -INF])
    np.testing.assert_array_equal(smallest[1], [2.0, NAN, NAN])


@pytest.mark.parametrize(
    ("stat", "columns", "message"),
    [
        ("nope", 10, "Invalid stat: 'nope'"),
        ("norm", 0, r"Invalid max_steps: 0 \(from 1 to 100000\)"),
        ("norm", heatmap.MAX_COLUMNS + 1, "Invalid max_steps"),
    ],
)
def test_bad_arguments_raise_invalid_argument(stat, columns, message):
    run = make_run([[1.0, 2.0]])
    with pytest.raises(errors.InvalidArgumentError, match=message):
        heatmap.bin_steps(run, "gradflow", stat, columns)


def test_the_binary_body_is_a_length_a_json_header_padding_and_float32_values():
    header = {"layers": ["a", "\u00e9"], "steps": [0, 5, 9]}
    values = np.array([[1.0, NAN, INF], [-INF, 0.5, 2.0]], dtype=np.float32)
    body, content_type, encoding = heatmap.encode(header, {"values": values}, "binary")
    assert (content_type, encoding) == ("application/octet-stream", None)
    (n,) = struct.unpack("<I", body[:4])
    assert json.loads(body[4 : 4 + n].decode("utf-8")) == header
    start = 4 + n + (-(4 + n) % 4)
    assert start % 4 == 0 and set(body[4 + n : start]) <= {0}
    decoded = np.frombuffer(body[start:], dtype="<f4").reshape(2, 3)
    np.testing.assert_array_equal(decoded, values)


def test_the_json_body_is_gzipped_with_non_finite_values_as_strings():
    values = np.array([[1.0, NAN], [INF, -INF]], dtype=np.float32)
    body, content_type, encoding = heatmap.encode(
        {"stat": "norm"}, {"values": values}, "json"
    )
    assert (content_type, encoding) == ("application/json", "gzip")
    assert json.loads(gzip.decompress(body)) == {
        "stat": "norm",
        "values": [[1.0, "NaN"], ["Infinity", "-Infinity"]],
    }


def test_the_binary_body_holds_each_matrix_in_order_and_json_names_them():
    largest = np.array([[1.0, INF], [2.0, NAN]], dtype=np.float32)
    smallest = np.array([[0.5, 3.0], [2.0, NAN]], dtype=np.float32)
    matrices = {"max": largest, "min": smallest}
    body, _, _ = heatmap.encode({"stat": "norm"}, matrices, "binary")
    (n,) = struct.unpack("<I", body[:4])
    start = 4 + n + (-(4 + n) % 4)
    decoded = np.frombuffer(body[start:], dtype="<f4").reshape(2, 2, 2)
    np.testing.assert_array_equal(decoded[0], largest)
    np.testing.assert_array_equal(decoded[1], smallest)
    body, _, _ = heatmap.encode({"stat": "norm"}, matrices, "json")
    assert json.loads(gzip.decompress(body)) == {
        "stat": "norm",
        "max": [[1.0, "Infinity"], [2.0, "NaN"]],
        "min": [[0.5, 3.0], [2.0, "NaN"]],
    }


def test_only_json_and_binary_are_formats():
    heatmap.check_format("json")
    heatmap.check_format("binary")
    with pytest.raises(errors.InvalidArgumentError, match="Invalid format: 'xml'"):
        heatmap.check_format("xml")


def test_each_answer_names_its_matrices_in_the_order_of_its_body():
    largest = np.ones((2, 3), dtype=np.float32)
    smallest = np.zeros((2, 3), dtype=np.float32)
    assert list(heatmap.matrices("heatmap", largest, smallest)) == ["values"]
    lines = heatmap.matrices("lines", largest, smallest)
    assert list(lines) == ["max", "min"]
    assert lines["max"] is largest and lines["min"] is smallest
    with pytest.raises(ValueError, match="Invalid answer: 'pie'"):
        heatmap.matrices("pie", largest, smallest)


def blocks_of(run, size, layout=None):
    """The overview records of ``run``'s steps in blocks of ``size`` steps,
    as a watcher writes them, merged (``overview_merge.merge_overview``)."""
    layout = layout or metadata.Layout(layers=tuple(run.layers), types=tuple(run.types))
    acc = overview.BlockAccumulator(layout)
    steps, rows = [], []
    stats = np.stack([run.values(s) for s in layout.stats], axis=1)  # (T, K, L)
    for i, step in enumerate(run.steps.tolist()):
        acc.add(step, stats[i], skipped=False)
        if acc.steps == size or i == len(run.steps) - 1:
            steps.append(acc.last_step)
            rows.append(acc.take())
    part = overview_merge.OverviewPart(layout, steps, [0.0] * len(steps), rows)
    found, left_out = overview_merge.merge_overview(run.layers, [part])
    assert left_out == []
    return found


def kept(run, indices):
    """``run`` with only the steps at ``indices``, as TensorBoard's sample."""
    layout = metadata.Layout(layers=tuple(run.layers), types=tuple(run.types))
    stats = np.stack([run.values(s) for s in layout.stats], axis=1)  # (T, K, L)
    rows = [np.concatenate([stats[i].reshape(-1), [0.0, NAN]]) for i in indices]
    return reader.from_records("run", layout, run.steps[indices], rows)


def test_overview_blocks_stand_for_the_logged_steps_that_were_not_kept():
    rng = np.random.default_rng(1)
    means = rng.lognormal(np.log(1e-3), 0.3, size=(95, 2))
    means[41, 1] = 0.5  # a spike at a step not kept
    means[77, 0] = 1e-9  # a dip at a step not kept
    full = make_run(means)
    sample = kept(full, [i for i in range(95) if i % 7 == 3] + [94])
    header, largest, smallest = heatmap.bin_extremes(
        sample, "gradflow", "abs_mean", 1000, blocks_of(full, 10)
    )
    # ten blocks of 10 steps each (the last of 5), each a column
    assert header["first_steps"] == list(range(0, 950, 100))
    assert header["last_steps"] == [*range(90, 900, 100), 940]
    assert (header["from"], header["logged_steps"]) == ("overview", 95)
    assert header["downsampled"] is True
    values = full.values("abs_mean")
    for c in range(10):
        np.testing.assert_array_equal(
            largest[:, c], values[10 * c : 10 * c + 10].max(0)
        )
        np.testing.assert_array_equal(
            smallest[:, c], values[10 * c : 10 * c + 10].min(0)
        )
    assert largest[1, 4] == np.float32(0.5) and smallest[0, 7] == np.float32(1e-9)
    totals = heatmap.total_norms(full)
    np.testing.assert_allclose(
        header["total_norm"],
        [totals[10 * c : 10 * c + 10].max() for c in range(10)],
        rtol=1e-6,
    )
    # three columns of ~32 logged steps, never splitting a block
    header, largest, _ = heatmap.bin_extremes(
        sample, "gradflow", "abs_mean", 3, blocks_of(full, 10)
    )
    assert header["first_steps"] == [0, 300, 600]
    assert header["last_steps"] == [290, 590, 940]
    assert largest[1, 1] == np.float32(0.5)


def test_a_block_whose_every_step_was_kept_is_binned_step_by_step():
    means = np.full((40, 2), 1e-3)
    full = make_run(means)
    sample = kept(full, [*range(0, 20), 25, 39])  # blocks 0 and 1 kept in full
    header, _, _ = heatmap.bin_extremes(
        sample, "gradflow", "abs_mean", 1000, blocks_of(full, 10)
    )
    assert header["first_steps"] == [*range(0, 200, 10), 200, 300]
    assert header["last_steps"] == [*range(0, 200, 10), 290, 390]
    assert header["logged_steps"] == 40
    every = kept(full, list(range(40)))  # nothing missing: no block used
    with_blocks = heatmap.bin_extremes(
        every, "gradflow", "abs_mean", 7, blocks_of(full, 10)
    )
    without = heatmap.bin_extremes(every, "gradflow", "abs_mean", 7)
    assert with_blocks[0] == without[0] and "from" not in without[0]
    np.testing.assert_array_equal(with_blocks[1], without[1])


def test_blocks_keep_the_marks_of_nonfinite_no_gradient_and_absent_layers():
    means = np.full((30, 3), 1e-3)
    means[:10, 1] = NAN  # b: no gradient in block 0
    means[15, 2] = INF  # c: non-finite in block 1
    full = make_run(means, layers=("a", "b", "c"))
    one = metadata.Layout(layers=("a", "b", "c"), types=("Linear",) * 3)
    found = blocks_of(full, 10, one)
    sample = kept(full, [29])
    _, largest, smallest = heatmap.bin_extremes(
        sample, "gradflow", "abs_mean", 1000, found
    )
    assert np.isnan(largest[1, 0]) and np.isnan(smallest[1, 0])
    assert largest[2, 1] == INF and smallest[2, 1] == np.float32(1e-3)
    # a layer set without b: b is absent from its blocks
    other = metadata.Layout(layers=("a", "c"))
    acc = overview.BlockAccumulator(other)
    for step in range(300, 310):
        acc.add(step, np.stack([[1e-3, 1e-3]] * 5) * [[1], [1], [1], [0], [1]], False)
    part = overview_merge.OverviewPart(other, [309], [1.0], [acc.take()])
    merged, _ = overview_merge.merge_overview(["a", "b", "c"], [part])
    assert merged.absent.tolist() == [[False, True, False]]
    largest, _, grad = merged.extremes("abs_mean")
    assert np.isnan(largest[0, 1]) and grad.tolist() == [[True, False, True]]


def test_a_block_overlapped_by_a_later_one_is_not_used():
    layout = metadata.Layout(layers=("a",))

    def record(first, last, value):
        acc = overview.BlockAccumulator(layout)
        for step in range(first, last + 1):
            stats = tb_stats.record(
                {
                    "abs_mean": value,
                    "abs_max": value,
                    "norm": value,
                    "nonfinite": 0.0,
                    "rows": 1.0,
                },
                1,
            )
            acc.add(step, stats, False)
        return acc.take()

    # one layer set, served in the order written: 0-9, 10-19, then resumed
    # at 15: 15-24, 25-34
    spans = [(0, 9, 1.0), (10, 19, 2.0), (15, 24, 3.0), (25, 34, 4.0)]
    part = overview_merge.OverviewPart(
        layout,
        [z for _, z, _ in spans],
        [float(i) for i in range(4)],
        [record(*s) for s in spans],
    )
    found, _ = overview_merge.merge_overview(["a"], [part])
    assert found.first_steps.tolist() == [0, 15, 25]
    assert found.extremes("abs_mean")[0][:, 0].tolist() == [1.0, 3.0, 4.0]
    # two layer sets: the one that starts later wins, whatever the order served
    later = overview_merge.OverviewPart(layout, [14], [0.0], [record(5, 14, 9.0)])
    first = overview_merge.OverviewPart(
        layout, [9, 19], [5.0, 6.0], [record(0, 9, 1.0), record(10, 19, 2.0)]
    )
    found, _ = overview_merge.merge_overview(["a"], [later, first])
    assert found.first_steps.tolist() == [5]


def test_a_block_ending_after_its_layer_sets_last_served_step_is_not_used():
    layout = metadata.Layout(layers=("a",))
    acc = overview.BlockAccumulator(layout)
    rows = []
    for first in (0, 10):
        for step in range(first, first + 10):
            acc.add(step, np.array([[1.0], [1.0], [1.0], [0.0], [1.0]]), False)
        rows.append(acc.take())
    part = overview_merge.OverviewPart(layout, [9, 19], [0.0, 1.0], rows, until=15)
    found, left_out = overview_merge.merge_overview(["a"], [part])
    assert found.first_steps.tolist() == [0] and left_out == []
    part.until = 8
    assert overview_merge.merge_overview(["a"], [part]) == (None, [])
