"""The diagnosis rule, on synthetic runs with known answers."""

import dataclasses
import importlib
import warnings

import numpy as np
import pytest
from online_feed import feed_online

from tb_gradflow import metadata
from tb_gradflow.blocked_rule import median_of_others
from tb_gradflow.diagnosis import diagnose
from tb_gradflow.rule_spec import Thresholds


@dataclasses.dataclass
class FakeRun:
    """The attributes diagnose() reads, from plain arrays (T steps, L layers)."""

    abs_mean: np.ndarray
    norm: np.ndarray | None = None
    nonfinite: np.ndarray | None = None
    rows: np.ndarray | None = None
    skipped: np.ndarray | None = None
    sparse: list | None = None
    steps: np.ndarray | None = None

    def __post_init__(self):
        t, n = self.abs_mean.shape
        self.layers = [f"l{j}" for j in range(n)]
        self.steps = np.arange(0, 10 * t, 10) if self.steps is None else self.steps
        self.norm = self.abs_mean * 10 if self.norm is None else self.norm
        self.nonfinite = np.zeros((t, n)) if self.nonfinite is None else self.nonfinite
        self.rows = np.ones((t, n)) if self.rows is None else self.rows
        self.skipped = np.zeros(t, bool) if self.skipped is None else self.skipped
        self.sparse = [False] * n if self.sparse is None else self.sparse

    def values(self, stat):
        assert stat in metadata.STATS
        return getattr(self, stat)


def healthy(t=10, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return np.exp(rng.normal(np.log(1e-3), 0.5, size=(t, n)))


def summary(findings):
    return [(f.kind, f.layer, f.first_step, f.last_step, f.steps) for f in findings]


def test_healthy_run_has_no_findings():
    assert diagnose(FakeRun(healthy(50, 6))) == []


def test_zero_gradient_for_patience_steps_is_blocked():
    mean = healthy()
    mean[4:, 2] = 0.0
    assert summary(diagnose(FakeRun(mean))) == [("blocked", "l2", 40, 90, 6)]
    mean = healthy()
    mean[4:6, 2] = 0.0  # two steps only: below the default patience of 3
    assert diagnose(FakeRun(mean)) == []
    assert len(diagnose(FakeRun(mean), Thresholds(patience=2))) == 1


def test_vanishing_layer_is_blocked_but_uniform_decay_is_not():
    mean = healthy(20)
    mean[8:, 0] *= 1e-5  # fell 1e5 below its own peak and below the others
    assert summary(diagnose(FakeRun(mean))) == [("blocked", "l0", 80, 190, 12)]
    # Every layer shrinking together (a converging run) is not blocking.
    decay = healthy(20) * np.logspace(0, -5, 20)[:, None]
    assert diagnose(FakeRun(decay)) == []


def test_layer_small_from_the_start_is_blocked_only_far_below_the_others():
    mean = healthy()
    mean[:, 1] *= 1e-3  # small but steady: a layer of another scale
    assert diagnose(FakeRun(mean)) == []
    mean[:, 1] *= 1e-4  # 1e-7 of the others: no learning rate makes up for that
    assert summary(diagnose(FakeRun(mean))) == [("blocked", "l1", 0, 90, 10)]


def test_hovering_at_the_threshold_gives_one_streak():
    mean = healthy(30)
    mean[5:, 3] *= 1e-5
    mean[[12, 20], 3] = 1e-3  # single healthy-looking steps inside the streak
    steady_norm = healthy(30) * 10
    found = diagnose(FakeRun(mean, norm=steady_norm))
    assert summary(found) == [("blocked", "l3", 50, 290, 23)]


def test_no_gradient_is_its_own_kind():
    nonfinite = np.zeros((10, 3))
    nonfinite[:, 1] = np.nan  # .grad is None at every step
    mean = healthy(n=3)
    mean[:, 1] = np.nan
    found = summary(diagnose(FakeRun(mean, nonfinite=nonfinite)))
    assert found == [("no_gradient", "l1", 0, 90, 10)]


def test_sparse_layer_is_judged_by_touched_rows():
    mean = healthy()
    rows = np.ones((10, 4))
    mean[:, 0] *= 1e-7  # a big embedding: few rows get a gradient ...
    rows[:, 0] = 1e-7  # ... but those rows get a normal one
    assert diagnose(FakeRun(mean, rows=rows, sparse=[True, False, False, False])) == []
    assert diagnose(FakeRun(mean, rows=rows))  # judged as dense it would be blocked


def test_nonfinite_and_skipped_steps():
    mean = healthy()
    nonfinite = np.zeros((10, 4))
    nonfinite[3, 1] = 5  # a NaN step that the scaler skipped
    nonfinite[7, 2] = 1  # a NaN step that was not skipped
    skipped = np.zeros(10, bool)
    skipped[3] = True
    found = summary(diagnose(FakeRun(mean, nonfinite=nonfinite, skipped=skipped)))
    assert found == [("skipped", None, 30, 30, 1), ("nonfinite", "l2", 70, 70, 1)]


def test_online_alerts_say_exactly_zero_as_the_batch_rule_does():
    mean = healthy(20, 4)
    mean[4:, 1] = 0.0  # exactly zero from step 40 on
    mean[6:, 2] *= 1e-7  # near zero from step 60 on
    run = FakeRun(mean)
    batch = {f.layer: f.message for f in diagnose(run) if f.kind == "blocked"}
    online = {f.layer: f.message for f in feed_online(run) if f.kind == "blocked"}
    assert online == batch
    assert batch["l1"].startswith("gradient exactly zero")
    assert batch["l2"].startswith("gradient near zero")


def test_where_nan_inf_began_comes_first():
    """A traced origin is listed before every other finding, though the
    non-finite steps it explains may come first ("weights": traced at the
    step after, when the optimizer had written NaN into the weights)."""
    nonfinite = np.zeros((10, 4))
    nonfinite[5:, :] = 3  # every layer non-finite from step 50 on
    run = FakeRun(healthy(), nonfinite=nonfinite)
    run.origins = [
        metadata.NonfiniteOrigin(
            step=60, since_step=60, phase="weights", layers=["l2", "l3"]
        )
    ]
    found = summary(diagnose(run))
    assert found[0] == ("nonfinite_origin", "l2", 60, 60, 1)
    assert found[1:] == [("nonfinite", f"l{j}", 50, 90, 5) for j in range(4)]


def test_skipped_steps_neither_break_nor_extend_a_streak():
    mean = healthy()
    mean[3:, 0] = 0.0
    skipped = np.zeros(10, bool)
    skipped[[4, 6]] = True
    found = diagnose(FakeRun(mean, skipped=skipped))
    assert [f for f in summary(found) if f[0] == "blocked"] == [
        ("blocked", "l0", 30, 90, 5)
    ]


def test_exploding_norm():
    mean = healthy(30)
    norm = mean * 10
    norm[20, 1] *= 1e4
    found = summary(diagnose(FakeRun(mean, norm=norm)))
    assert found == [("exploding", "l1", 200, 200, 1)]


def test_median_of_others_equals_a_loop():
    rng = np.random.default_rng(1)
    x = rng.random((40, 7))
    x[rng.random((40, 7)) < 0.3] = np.nan
    got = median_of_others(x)
    for t in range(40):
        for j in range(7):
            rest = np.delete(x[t], j)
            rest = rest[np.isfinite(rest)]
            want = np.median(rest) if rest.size else np.nan
            np.testing.assert_allclose(got[t, j], want)


def test_fewer_steps_than_patience_count_as_a_streak():
    mean = healthy(t=2)
    mean[:, 0] = 0
    assert summary(diagnose(FakeRun(mean))) == [("blocked", "l0", 0, 10, 2)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patience": 0}, "Invalid patience"),
        ({"min_ratio_to_others": 2.0}, "Invalid min_ratio_to_others"),
        ({"explode_ratio": 0.5}, "Invalid explode_ratio"),
        ({"explode_window": 1}, "Invalid explode_window"),
    ],
)
def test_bad_thresholds(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Thresholds(**kwargs)


@pytest.mark.parametrize("seed", range(6))
def test_online_alerts_agree_with_the_batch_rule(seed):
    rng = np.random.default_rng(seed)
    t, n = 40, 6
    mean = healthy(t, n, seed)
    nonfinite = np.zeros((t, n))
    for j in rng.choice(n, 3, replace=False):  # a few broken layers
        start = rng.integers(0, t - 5)
        kind = rng.integers(3)
        if kind == 0:
            mean[start:, j] *= 1e-7
        elif kind == 1:
            mean[start:, j] = np.nan
            nonfinite[start:, j] = np.nan
        else:
            nonfinite[start, j] = 3
    skipped = rng.random(t) < 0.1
    run = FakeRun(mean, nonfinite=nonfinite, skipped=skipped)
    batch = [
        f for f in diagnose(run) if f.kind in ("no_gradient", "blocked", "nonfinite")
    ]
    online = feed_online(run)
    first = {}
    for f in batch:
        first.setdefault((f.kind, f.layer), f)
    assert {(f.kind, f.layer) for f in online} == set(first)
    for f in online:  # an alert fires when the batch streak reaches patience
        streak = first[(f.kind, f.layer)]
        live = run.steps[~run.skipped]
        live = live[(live >= streak.first_step) & (live <= streak.last_step)]
        need = 3 if f.kind != "nonfinite" else 1
        assert f.last_step == live[need - 1]  # the step the alert fired at
        assert f.first_step == streak.first_step and f.ongoing


def test_median_of_others_with_ties_and_gaps_equals_a_loop():
    rng = np.random.default_rng(2)
    for _ in range(30):
        t, n = rng.integers(1, 30), rng.integers(1, 10)
        x = np.round(rng.random((t, n)) * 4) / 4  # many ties
        x[rng.random((t, n)) < 0.3] = np.nan
        got = median_of_others(x)
        for i in range(t):
            for j in range(n):
                rest = np.delete(x[i], j)
                rest = rest[np.isfinite(rest)]
                want = np.median(rest) if rest.size else np.nan
                np.testing.assert_allclose(got[i, j], want)


def random_cells(rng, t, n, dtype=np.float64):
    """Positive values over many scales, with ties, zeros and NaN (no value)."""
    x = np.exp(rng.normal(np.log(1e-3), 4.0, (t, n)))
    if rng.random() < 0.5:
        x = rng.choice([0.0, 1e-9, 1e-5, 1e-3, 1e-1, 1.0], size=(t, n))  # ties
    x[rng.random((t, n)) < 0.2] = np.nan
    if n > 1 and rng.random() < 0.5:
        x[:, rng.integers(n)] = np.nan  # a layer that never has a gradient
    return x.astype(dtype)


def blocked_by_a_loop(judged, th):
    """``blocked`` cell by cell, with np.median and max: the reference."""
    t, n = judged.shape
    want = np.zeros((t, n), dtype=bool)
    for i in range(t):
        for j in range(n):
            x = judged[i, j]
            if not np.isfinite(x):
                continue
            rest = np.delete(judged[i], j)
            rest = rest[np.isfinite(rest)]
            others = np.median(rest) if rest.size else np.nan
            earlier = judged[:i, j][np.isfinite(judged[:i, j])]
            peak = earlier.max() if earlier.size else np.nan
            want[i, j] = (
                x == 0
                or (
                    x < th.min_ratio_to_others * others
                    and x < th.min_ratio_to_own_peak * peak
                )
                or x < th.floor_ratio_to_others * others
            )
    return want


@pytest.mark.parametrize("seed", range(40))
def test_blocked_mask_equals_a_loop(seed):
    from tb_gradflow.blocked_rule import blocked_mask

    rng = np.random.default_rng(seed)
    t, n = rng.integers(1, 25), rng.integers(1, 12)
    judged = random_cells(rng, t, n)
    th = Thresholds(
        min_ratio_to_others=float(rng.choice([0.0, 1e-2, 0.5, 1.0])),
        min_ratio_to_own_peak=float(rng.choice([0.0, 1e-2, 0.5, 1.0])),
        floor_ratio_to_others=float(rng.choice([0.0, 1e-6, 0.3, 1.0])),
    )
    got = blocked_mask(judged, np.isfinite(judged), th)
    np.testing.assert_array_equal(got, blocked_by_a_loop(judged, th))


def exploding_by_a_loop(norm, th):
    """``exploding`` cell by cell: a window median of float32 norms (the
    documented precision), the reference."""
    t, n = norm.shape
    w = th.explode_window
    want = np.zeros((t, n), dtype=bool)
    for i in range(t):
        for j in range(n):
            prev = norm[max(0, i - w) : i, j]
            prev = prev[np.isfinite(prev)].astype(np.float32)
            if prev.size < 3 or not np.isfinite(norm[i, j]):
                continue
            recent = float(np.median(prev))
            want[i, j] = recent > 0 and norm[i, j] > th.explode_ratio * recent
    return want


@pytest.mark.parametrize("sort_window", [32, 2], ids=["sorted", "selected"])
@pytest.mark.parametrize("seed", range(40))
def test_exploding_mask_equals_a_loop(seed, sort_window, monkeypatch):
    from tb_gradflow.exploding_rule import exploding_mask

    rng = np.random.default_rng(seed)
    module = importlib.import_module("tb_gradflow.exploding_rule")
    monkeypatch.setattr(module, "_SORT_WINDOW", sort_window)  # 2: no sorting
    if seed % 4 == 0:  # chunks of the fewest steps (or one layer), and of one cell
        monkeypatch.setattr(module, "_BLOCK_CELLS", 1)
    t, n = rng.integers(1, 60), rng.integers(1, 6)
    dtype = np.float32 if seed % 2 else np.float64
    norm = random_cells(rng, t, n, dtype)
    norm[rng.random((t, n)) < 0.1] = np.inf
    norm[rng.random((t, n)) < 0.05] *= 1e4  # spikes
    th = Thresholds(
        explode_ratio=float(rng.choice([1.5, 10.0, 100.0])),
        explode_window=int(rng.integers(3, 25)),
    )
    np.testing.assert_array_equal(
        exploding_mask(norm, th), exploding_by_a_loop(norm, th)
    )


def test_exploding_mask_at_the_threshold():
    from tb_gradflow.exploding_rule import exploding_mask

    norm = np.full((12, 3), 1e-3)
    at = 100.0 * float(np.float32(1e-3))  # the window median is a float32
    norm[10] = [at, np.nextafter(at, np.inf), np.nextafter(at, 0)]
    want = np.zeros((12, 3), dtype=bool)
    want[10, 1] = True
    np.testing.assert_array_equal(exploding_mask(norm, Thresholds()), want)
    np.testing.assert_array_equal(exploding_by_a_loop(norm, Thresholds()), want)


@pytest.mark.parametrize("window", [20, 1000], ids=["sorted", "selected"])
def test_exploding_at_a_ratio_that_rounds_differently_in_float32(window):
    # 40 earlier norms alternating 1 and 2: the median is 1.5, the mean of the
    # two middle ones. A norm between the float64 and the float32 products of
    # the ratio and the lower middle one must not be judged by that one alone.
    from tb_gradflow.exploding_rule import exploding_mask

    norm = np.tile(np.array([[1.0], [2.0]], dtype=np.float32), (20, 1))  # (40, 1)
    norm = np.concatenate([norm, [[np.float32(1.1)]]]).astype(np.float32)
    th = Thresholds(explode_ratio=1.1, explode_window=window)
    assert not exploding_by_a_loop(norm, th)[40, 0]
    assert not exploding_mask(norm, th)[40, 0]


def test_exploding_near_the_float32_maximum_gives_no_overflow_warning():
    from tb_gradflow.exploding_rule import exploding_mask

    # a tiny first norm lets every later cell past the cheap pre-check; the
    # window medians are then ~3e38, whose product with the ratio overflows
    # float32
    norm = np.full((60, 2), 3e38, dtype=np.float32)
    norm[::2, 1] = 1e38
    norm[0] = 1e-3
    th = Thresholds(explode_ratio=1000.0, explode_window=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = exploding_mask(norm, th)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the loop's own casts
        want = exploding_by_a_loop(norm, th)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(8))
def test_an_explode_window_longer_than_the_run_is_the_whole_run(seed):
    from tb_gradflow.exploding_rule import exploding_mask

    rng = np.random.default_rng(seed)
    t, n = rng.integers(1, 40), rng.integers(1, 5)
    norm = random_cells(rng, t, n)
    norm[rng.random((t, n)) < 0.1] = np.inf
    norm[rng.random((t, n)) < 0.1] *= 1e4  # spikes
    masks = []
    for window in (t, t + 1, 10**6):
        th = Thresholds(explode_ratio=10.0, explode_window=max(window, 3))
        want = exploding_by_a_loop(norm, th)
        np.testing.assert_array_equal(exploding_mask(norm, th), want)
        masks.append(want)
    np.testing.assert_array_equal(masks[0], masks[-1])


@pytest.mark.parametrize("seed", range(20))
def test_range_select_equals_a_sort(seed):
    from tb_gradflow.exploding_rule import RangeSelect

    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 70))
    values = rng.choice([0.0, 0.5, 1.0, 2.0, np.nan], size) if seed % 2 else None
    if values is None:
        values = rng.lognormal(0, 1, size)
        values[rng.random(size) < 0.2] = np.nan
    values = values.astype(np.float32)
    start = rng.integers(0, size, 50)
    stop = start + 1 + (rng.random(50) * (size - start)).astype(int)  # <= size
    k = (rng.random(50) * (stop - start)).astype(int)
    want = [np.sort(values[a:b])[i] for a, b, i in zip(start, stop, k)]  # NaN last
    got = RangeSelect(values).kth(start, stop, k)
    np.testing.assert_array_equal(got, np.array(want, dtype=np.float32))


def test_the_work_for_a_whole_run_explode_window_grows_as_the_run_not_its_square(
    monkeypatch,
):
    # An early zero norm lets every later cell past the window-minimum prefilter,
    # so each one needs its median over all earlier steps: the work is that of
    # one RangeSelect per block of layers and at most 2 queries per cell, each
    # through log2(its size) levels, whatever the window.
    module = importlib.import_module("tb_gradflow.exploding_rule")

    rng = np.random.default_rng(0)
    t, n = 3000, 4
    norm = rng.lognormal(0, 0.3, (t, n))
    norm[0] = 0.0
    norm[2500, 2] *= 1e3
    built, queried = [], []
    select = module.RangeSelect

    class Counting(select):
        def __init__(self, values):
            super().__init__(values)
            built.append((len(values), len(self.zeros)))

        def kth(self, start, stop, k):
            queried.append(len(k))
            return super().kth(start, stop, k)

    monkeypatch.setattr(module, "RangeSelect", Counting)
    th = Thresholds(explode_ratio=10.0, explode_window=10**6)
    want = np.zeros((t, n), dtype=bool)
    want[2500, 2] = True
    np.testing.assert_array_equal(module.exploding_mask(norm, th), want)
    assert sum(size for size, _ in built) <= 2 * t * n  # window + run rows
    assert all(levels == (size - 1).bit_length() for size, levels in built)
    assert (t - 3) * n <= sum(queried) <= 2 * t * n


def test_a_huge_explode_window_takes_no_more_memory_than_the_run():
    import tracemalloc

    norm = healthy(50, 4) * 10
    norm[40, 1] *= 1e4
    tracemalloc.start()
    try:
        found = diagnose(
            FakeRun(norm / 10, norm=norm), Thresholds(explode_window=10**6)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary(found) == [("exploding", "l1", 400, 400, 1)]
    assert peak < 1_000_000  # bytes; a window-sized buffer would be 16 MB


# -- ongoing streaks: the flag must not flicker at the newest steps -------------


def test_a_streak_with_fewer_healthy_steps_than_patience_at_the_end_is_ongoing():
    """As a run cut at its newest steps: blocked through step 80, then one step
    just above the threshold. The streak has not ended; before, the finding
    read "steps ..-80" and the layer showed as ok at the newest step."""

    def blocked(mean):
        return [f for f in diagnose(FakeRun(mean)) if f.kind == "blocked"]

    mean = healthy(10)
    mean[3:9, 1] *= 1e-6
    (finding,) = blocked(mean[:9])
    assert summary([finding]) == [("blocked", "l1", 30, 80, 6)]
    assert finding.ongoing and finding.holds_at(80)
    (finding,) = blocked(mean)  # one healthy step after it is not `patience`
    assert summary([finding]) == [("blocked", "l1", 30, 80, 6)]
    assert finding.ongoing and finding.holds_at(90)
    mean = healthy(12)
    mean[3:9, 1] *= 1e-6  # three healthy steps after it: ended
    (ended,) = blocked(mean)
    assert not ended.ongoing and not ended.holds_at(90) and ended.holds_at(80)


@pytest.mark.parametrize(
    "pattern, want",
    [
        ("BBhBB", True),  # a one-step gap is bridged: 4 hits, one streak
        ("BBhhBB", True),
        ("BBhhhBB", False),  # three healthy steps end it: two streaks of two
        ("hBhBhB", True),
    ],
)
def test_online_alerts_bridge_gaps_as_the_batch_rule_does(pattern, want):
    mean = healthy(len(pattern) + 2)
    for t, c in enumerate(pattern, start=2):
        if c == "B":
            mean[t, 0] = 0.0
    run = FakeRun(mean)
    batch = [f for f in diagnose(run) if f.kind == "blocked"]
    online = [f for f in feed_online(run) if f.kind == "blocked"]
    assert bool(batch) is want and bool(online) is want
    if want:
        assert online[0].first_step == batch[0].first_step
        assert online[0].steps == 3  # fires when the streak reaches patience


# -- all_zero: one finding for the model -------------------------------------------


def test_every_layer_exactly_zero_is_one_model_finding():
    mean = healthy(10, 4)
    mean[5:] = 0.0  # the whole network from step 50
    mean[2:, 3] = mean[2:, 3] * 1e-7  # l3 was blocked (near zero) before that
    found = diagnose(FakeRun(mean))
    assert summary(found) == [
        ("blocked", "l3", 20, 40, 3),
        ("all_zero", None, 50, 90, 5),
    ]
    assert "near zero" in found[0].message
    assert found[1].message.startswith(
        "every layer's gradient is exactly zero from step 50: the loss does not "
        "depend on the parameters"
    )
    online = [f for f in feed_online(FakeRun(mean)) if f.kind == "all_zero"]
    assert [(f.layer, f.first_step, f.last_step) for f in online] == [(None, 50, 70)]


def test_exactly_zero_and_near_zero_are_said_as_they_are():
    mean = healthy(8, 4)
    mean[2:, 0] = 0.0
    mean[2:, 1] *= 1e-7
    by_layer = {f.layer: f.message for f in diagnose(FakeRun(mean))}
    assert by_layer["l0"].startswith("gradient exactly zero")
    assert by_layer["l1"].startswith("gradient near zero")


def test_a_layer_without_gradient_does_not_prevent_all_zero():
    mean = healthy(6, 3)
    mean[:, 2] = np.nan
    nonfinite = np.zeros((6, 3))
    nonfinite[:, 2] = np.nan
    mean[2:, :2] = 0.0
    kinds = {(f.kind, f.layer) for f in diagnose(FakeRun(mean, nonfinite=nonfinite))}
    assert kinds == {("no_gradient", "l2"), ("all_zero", None)}


# -- the update findings: update_too_large, not_updating ------------------------


class UpdateRun(FakeRun):
    """A FakeRun that also logged update_ratio, ``(T, L)``."""

    def __init__(self, update_ratio, **kwargs):
        t, n = update_ratio.shape
        super().__init__(kwargs.pop("abs_mean", healthy(t, n)), **kwargs)
        self.update_ratio = update_ratio
        self.stats = [*metadata.STATS, "update_ratio"]
        self.not_logged = []

    def values(self, stat):
        return self.update_ratio if stat == "update_ratio" else super().values(stat)


def update_findings(run, **thresholds):
    kinds = ("update_too_large", "not_updating")
    return summary(
        [f for f in diagnose(run, Thresholds(**thresholds)) if f.kind in kinds]
    )


def test_a_step_too_large_for_its_weights_is_flagged():
    ratio = np.full((8, 4), 1e-3)
    ratio[3:7, 1] = 0.5  # lr 100x+ too high for layer 1
    assert update_findings(UpdateRun(ratio)) == [("update_too_large", "l1", 30, 60, 4)]
    assert update_findings(UpdateRun(ratio), max_update_ratio=0.9) == []


def test_a_layer_that_does_not_move_while_the_others_do_is_flagged():
    ratio = np.full((8, 4), 1e-3)
    ratio[:, 2] = 0.0  # a frozen group
    ratio[:, 3] = 1e-9  # weight decay cancelling the step
    assert update_findings(UpdateRun(ratio)) == [
        ("not_updating", "l2", 0, 70, 8),
        ("not_updating", "l3", 0, 70, 8),
    ]


def test_a_model_wide_low_ratio_is_one_model_finding():
    ratio = np.full((10, 5), 1e-3)
    ratio[:4] = 0.0  # warm-up from lr 0: nothing moves
    ratio[:4, 0] = 1e-3  # (one layer with its own schedule: still "most layers")
    assert update_findings(UpdateRun(ratio)) == [("not_updating", None, 0, 30, 4)]


def test_no_false_alarm_from_zero_weights_sparse_rows_skips_or_no_gradient():
    ratio = np.full((8, 5), 1e-3)
    ratio[:, 0] = np.inf  # LoRA's B starts at zero: ratio inf, it does not count
    ratio[:, 1] = 5e-9  # a sparse embedding: only 1e-6 of its rows got a gradient
    rows = np.ones((8, 5))
    rows[:, 1] = 1e-6
    ratio[2:6, 2] = 0.0  # on skipped steps only
    skipped = np.zeros(8, bool)
    skipped[2:6] = True
    ratio[:, 3] = 0.0  # a layer without gradient: no_gradient says it
    mean = healthy(8, 5)
    nonfinite = np.zeros((8, 5))
    mean[:, 3] = nonfinite[:, 3] = np.nan
    run = UpdateRun(
        ratio,
        abs_mean=mean,
        nonfinite=nonfinite,
        rows=rows,
        skipped=skipped,
        sparse=[False, True, False, False, False],
    )
    assert update_findings(run) == []
    ratio[2:6, 2] = 1e-3
    dense = UpdateRun(ratio, abs_mean=mean, nonfinite=nonfinite, rows=rows)
    assert update_findings(dense) == [("not_updating", "l1", 0, 70, 8)]


@pytest.mark.parametrize("seed", range(8))
def test_online_update_alerts_fire_where_the_batch_streaks_reach_patience(seed):
    """Too-large steps, a frozen layer and a model-wide warm-up, at random
    places with skipped steps: each online alert is the batch rule's streak,
    fired at the streak's patience-th counted step."""
    rng = np.random.default_rng(seed)
    t, n = 40, 6
    ratio = 10 ** rng.uniform(-3.5, -2.5, (t, n))
    ratio[rng.integers(0, 30) :, rng.integers(n)] = 0.5  # lr too high
    ratio[:, rng.integers(n)] *= 1e-6  # frozen: below 1e-7
    start = rng.integers(0, 30)
    ratio[start : start + 6] = 0.0  # lr 0 for every layer at once
    skipped = rng.random(t) < 0.1
    run = UpdateRun(ratio, skipped=skipped)
    kinds = ("update_too_large", "not_updating")
    batch = [f for f in diagnose(run) if f.kind in kinds]
    online = [f for f in feed_online(run) if f.kind in kinds]
    assert online  # the purpose-built run fires
    first = {}
    for f in batch:
        first.setdefault((f.kind, f.layer), f)
    assert {(f.kind, f.layer) for f in online} == set(first)
    live = run.steps[~run.skipped]
    for f in online:
        streak = first[(f.kind, f.layer)]
        mine = live[(live >= streak.first_step) & (live <= streak.last_step)]
        assert f.last_step == mine[2] and f.first_step == streak.first_step
        assert f.message == streak.message and f.ongoing


def test_update_thresholds_are_checked():
    with pytest.raises(ValueError, match="0 < min_update_ratio < max_update_ratio"):
        Thresholds(min_update_ratio=0.5, max_update_ratio=0.1)


# -- float32 runs, and the work done a part of the run at a time -----------------


@pytest.mark.parametrize("seed", range(20))
def test_blocked_mask_of_float32_values_equals_a_loop_in_float64(seed, monkeypatch):
    from tb_gradflow.blocked_rule import blocked_mask

    rng = np.random.default_rng(seed)
    module = importlib.import_module("tb_gradflow.blocked_rule")
    monkeypatch.setattr(module, "_ROWS", int(rng.choice([1, 3, 1024])))
    t, n = rng.integers(1, 25), rng.integers(1, 12)
    judged = random_cells(rng, t, n, np.float32)
    th = Thresholds(
        min_ratio_to_others=float(rng.choice([1e-2, 0.5])),
        min_ratio_to_own_peak=float(rng.choice([1e-2, 0.5])),
        floor_ratio_to_others=float(rng.choice([1e-6, 0.3])),
    )
    got = blocked_mask(judged, np.isfinite(judged), th)
    np.testing.assert_array_equal(got, blocked_by_a_loop(judged.astype(float), th))


def update_masks_by_a_loop(ratio, rows, sparse, valid, th):
    """``update_masks`` cell by cell in float64, with np.median: the reference."""
    r = np.array(ratio, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r[:, sparse] = np.where(
            rows[:, sparse] > 0, r[:, sparse] / rows[:, sparse] ** 0.5, 0
        )
    usable = valid & np.isfinite(r)
    too_large = usable & (r > th.max_update_ratio)
    low = usable & (r < th.min_update_ratio)
    t, n = r.shape
    model_low = np.array(
        [
            usable[i].any() and np.median(r[i][usable[i]]) < th.min_update_ratio
            for i in range(t)
        ]
    )
    not_updating = np.zeros((t, n), dtype=bool)
    for i in range(t):
        for j in range(n):
            rest = np.delete(r[i], j)[np.delete(usable[i], j)]
            not_updating[i, j] = (
                low[i, j]
                and not model_low[i]
                and rest.size > 0
                and np.median(rest) >= th.min_update_ratio
            )
    return too_large, not_updating, model_low


@pytest.mark.parametrize("seed", range(30))
def test_update_masks_equal_a_loop(seed, monkeypatch):
    from tb_gradflow.update_rule import update_masks

    rng = np.random.default_rng(seed)
    module = importlib.import_module("tb_gradflow.blocked_rule")
    monkeypatch.setattr(module, "_ROWS", int(rng.choice([1, 2, 1024])))
    t, n = rng.integers(1, 20), rng.integers(1, 9)
    th = Thresholds()
    # at, around and far from both bounds; ties; half the layers low at once
    choices = [0.0, 1e-9, 1e-7, 2e-7, 1e-3, 0.1, 0.5, np.inf, np.nan]
    ratio = rng.choice(choices, size=(t, n)).astype(rng.choice([np.float32, float]))
    rows = rng.choice([0.0, 1e-6, 0.5, 1.0], size=(t, n))
    sparse = rng.random(n) < 0.3
    valid = rng.random((t, n)) < 0.8
    got = update_masks(ratio, rows, sparse, valid, th)
    want = update_masks_by_a_loop(ratio, rows, sparse, valid, th)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


class Float64Run:
    """A run's statistics in float64: what diagnose() made of float32 ones
    before it read them as they are."""

    def __init__(self, run):
        self.run = run
        for name in ("steps", "layers", "sparse", "skipped", "absent", "stats"):
            setattr(self, name, getattr(run, name))
        self.not_logged = run.not_logged

    def values(self, stat):
        return self.run.values(stat).astype(np.float64)


def float32_run(seed, t=300, n=9):
    """A GradFlowRun (float32) with what every rule looks for: spikes, a
    vanishing and a sparse layer, zeros, layers without gradient, NaN/Inf,
    skipped steps, frozen layers and a model-wide low update_ratio, and a
    second layer set that lacks a layer."""
    from tb_gradflow import layer_sets, stats

    rng = np.random.default_rng(seed)
    names = stats.names()
    sparse = (False, False, *(bool(s) for s in rng.random(n - 2) < 0.3))
    layout = metadata.Layout(
        layers=tuple(f"l{j}" for j in range(n)), sparse=sparse, stats=names
    )
    mean = np.exp(rng.normal(np.log(1e-3), 2.0, n) + rng.normal(0, 0.5, (t, n)))
    mean[rng.random((t, n)) < 0.01] *= 300
    mean[t // 2 :, 0] *= 1e-4  # vanishing (dense: sparse ones are from 2 on)
    mean[rng.random((t, n)) < 0.01] = 0.0
    nonfinite = np.where(rng.random((t, n)) < 0.005, 2.0, 0.0)
    nonfinite[rng.random((t, n)) < 0.02] = np.nan
    nonfinite[:, n - 2] = np.nan  # never a gradient
    ratio = np.exp(rng.normal(np.log(1e-3), 1.0, (t, n)))
    ratio[:, 1] = 0.0  # frozen
    ratio[t // 3 : t // 3 + 10] = 1e-9
    values = {"abs_mean": mean, "abs_max": 5 * mean, "norm": 30 * mean}
    values |= {"nonfinite": nonfinite, "rows": rng.uniform(0.1, 1, (t, n))}
    values |= {"update_ratio": ratio, "weight_norm": np.ones((t, n))}
    k = len(names)
    flat = np.zeros((t, layout.size), dtype=np.float32)
    cells = flat[:, : k * n].reshape(t, k, n)  # (T, K, L)
    for i, name in enumerate(names):
        cells[:, i] = np.where(
            np.isnan(nonfinite) & (name != "nonfinite"), np.nan, values[name]
        )
    flat[:, k * n] = rng.random(t) < 0.03  # skipped
    half = t // 2  # from here on, a layer set without the last layer
    fewer = dataclasses.replace(layout, layers=layout.layers[:-1], sparse=sparse[:-1])
    late = np.concatenate(
        [cells[half:, :, :-1].reshape(t - half, -1), flat[half:, k * n :]], axis=1
    )
    return layer_sets.merge_records(
        "run",
        [layout, fewer],
        range(t),
        [*flat[:half], *late],
        [0] * half + [1] * (t - half),
    )


@pytest.mark.parametrize("seed", range(4))
def test_float32_runs_are_diagnosed_as_in_float64_in_any_parts(seed, monkeypatch):
    run = float32_run(seed)
    th = Thresholds(spike_window=12, explode_window=int([5, 40][seed % 2]))
    want = diagnose(Float64Run(run), th)
    kinds = {f.kind for f in want}
    assert {"spike", "blocked", "no_gradient", "nonfinite", "not_updating"} <= kinds
    assert diagnose(run, th) == want
    for name, attr, small in [
        ("diagnosis", "_ROWS", 7),
        ("blocked_rule", "_ROWS", 5),
        ("spike_rule", "_BLOCK_CELLS", 1),
        ("exploding_rule", "_BLOCK_CELLS", 1),
        ("validity", "_ROWS", 3),
    ]:
        monkeypatch.setattr(importlib.import_module(f"tb_gradflow.{name}"), attr, small)
    assert diagnose(run, th) == want
    assert diagnose(float32_run(seed), th) == want
