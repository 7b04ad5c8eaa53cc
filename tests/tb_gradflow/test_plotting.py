"""GradFlowRun.plot: the classic gradient-flow bar plot of one step, drawn as the
Gradient Flow tab draws it. Each test inspects the artists matplotlib drew."""

import subprocess
import sys

import numpy as np
import pytest

import tb_gradflow
from tb_gradflow import metadata
from tb_gradflow import stats as tb_stats
from tb_gradflow.reader import from_records

matplotlib = pytest.importorskip("matplotlib")  # the optional `plot` extra
matplotlib.use("Agg")
mcolors = pytest.importorskip("matplotlib.colors")
plt = pytest.importorskip("matplotlib.pyplot")

NAN = np.nan
# abs_mean of 8 layers at 6 steps: c exactly zero (blocked), f without a gradient
# (no_gradient), h the tallest bar, at the right edge where a legend would go
REALISTIC = np.tile([1.4e-3, 4.5e-4, 0.0, 4.9e-4, 3.0e-4, NAN, 2.9e-4, 3.0e-2], (6, 1))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def make_run(mean, *, peak=None, nonfinite=None, skipped=None):
    """A run of layers ``a, b, ...`` at steps ``0..T-1`` from ``(T, L)`` abs_mean
    (NaN: no gradient); abs_max defaults to 20x abs_mean, the norm is 2x abs_max,
    nonfinite defaults to 0 (NaN without a gradient)."""
    mean = np.asarray(mean, dtype=np.float64)
    t, n = mean.shape
    peak = 20 * mean if peak is None else np.asarray(peak, dtype=np.float64)
    if nonfinite is None:
        nonfinite = np.where(np.isnan(mean), NAN, 0.0)
    rows = np.where(np.isnan(mean), NAN, 1.0)
    stats = np.stack(
        [
            tb_stats.record(
                {
                    "abs_mean": mean[i],
                    "abs_max": peak[i],
                    "norm": 2 * peak[i],
                    "nonfinite": nonfinite[i],
                    "rows": rows[i],
                },
                n,
            )
            for i in range(t)
        ]
    )  # (T, K, L)
    fields = np.stack([np.zeros(t) if skipped is None else skipped, np.full(t, NAN)])
    flat = np.concatenate([stats.reshape(t, -1), fields.T], axis=1)  # (T, K*L + F)
    layers = tuple(chr(ord("a") + j) for j in range(n))
    layout = metadata.Layout(layers=layers, sparse=(False,) * n)
    return from_records("test", layout, range(t), list(flat))


def containers(ax):
    return {c.get_label(): c for c in ax.containers}


def marks_by_label(ax):
    return {ln.get_label(): ln for ln in ax.lines if not ln.get_label().startswith("_")}


def centres(bars):
    return [round(r.get_x() + r.get_width() / 2, 6) for r in bars]


def data_bars(ax):
    """The rectangles drawn in data coordinates: the value bars."""
    return [p for p in ax.patches if p.get_data_transform() is ax.transData]


@pytest.mark.parametrize("log", [True, False])
def test_an_all_zero_step_draws_a_visible_stub_per_layer_and_says_so(log):
    run = make_run(np.zeros((4, 3)))
    ax = run.plot(log=log)
    ax.figure.canvas.draw()
    stubs = containers(ax)["exactly zero"]
    assert centres(stubs) == [0, 1, 2]
    box = ax.get_window_extent()
    for r in stubs:
        ext = r.get_window_extent()
        assert ext.height >= 5  # px, on either y scale
        assert box.y0 - 1 <= ext.y0 and ext.y1 <= box.y0 + 0.1 * box.height
        assert mcolors.same_color(r.get_edgecolor(), "#188038")
        assert mcolors.same_color(r.get_facecolor(), "white")
    assert ax.get_yscale() == ("log" if log else "linear")
    assert "every layer's gradient is exactly zero" in ax.get_title()


@pytest.mark.parametrize("log", [True, False])
def test_every_bar_is_drawn_whole_with_abs_max_lighter_behind_abs_mean(log):
    run = make_run(REALISTIC)
    ax = run.plot(log=log)
    mean, peak = run.values("abs_mean")[-1], run.values("abs_max")[-1]
    ok = np.isfinite(mean) & (mean > 0)
    want = sorted([*mean[ok], *peak[ok]])
    low, high = ax.get_ylim()
    if log:
        assert high >= 10**0.25 * max(want)
        assert low <= min(want) / 10**0.25
    else:
        assert high >= 1.1 * max(want)
        assert low == 0
    tops = sorted(p.get_y() + p.get_height() for p in data_bars(ax))
    np.testing.assert_allclose(tops, want, rtol=1e-6)
    front, back = containers(ax)["abs_mean"], containers(ax)["abs_max (behind)"]
    assert centres(front) == centres(back) == [0, 1, 3, 4, 6, 7]
    for f, b in zip(front, back):
        assert b.get_zorder() < f.get_zorder()
        assert mcolors.to_rgba(b.get_facecolor())[3] < 0.5
        assert mcolors.same_color(f.get_facecolor(), "#1a73e8")


def test_the_legend_covers_no_bar_and_stays_inside_the_figure():
    ax = make_run(REALISTIC).plot()
    fig = ax.figure
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    for p in ax.patches:
        ext = p.get_window_extent()
        assert (
            legend.x1 <= ext.x0
            or ext.x1 <= legend.x0
            or legend.y1 <= ext.y0
            or (ext.y1 <= legend.y0)
        ), p
    assert fig.bbox.contains(legend.x0, legend.y0)
    assert fig.bbox.contains(legend.x1, legend.y1)


def test_blocked_layers_are_highlighted_exactly_where_the_diagnosis_holds():
    mean = np.tile([1e-2, 2e-2, 3e-2, 1e-2], (8, 1))
    mean[3:, 1] = 0.0  # b: exactly zero from step 3
    mean[3:, 3] = 1e-12  # d: near zero from step 3
    run = make_run(mean)
    blocked = {
        f.layer
        for f in tb_gradflow.diagnose(run)
        if f.kind == "blocked" and f.holds_at(7)
    }
    assert blocked == {"b", "d"}
    ax = run.plot(step=7)
    band = containers(ax)["blocked"]
    assert centres(band) == [1, 3]
    assert all(r.get_height() == 1.0 for r in band)  # the whole axes height
    for label in ax.get_xticklabels():
        flagged = label.get_text() in blocked
        assert mcolors.same_color(label.get_color(), "#c5221f") == flagged
        assert (label.get_fontweight() == "bold") == flagged
    assert "blocked" not in containers(run.plot(step=0))


def test_no_gradient_layers_get_an_x_at_the_floor_and_the_diagnosis_column():
    run = make_run(REALISTIC)
    ax = run.plot()
    ax.figure.canvas.draw()
    mark = marks_by_label(ax)["no gradient"]
    assert list(mark.get_xdata()) == [5]
    assert mark.get_marker() == "x"
    box = ax.get_window_extent()
    ((_, y),) = mark.get_transform().transform(mark.get_xydata())
    assert box.y0 < y < box.y0 + 0.1 * box.height  # on the floor, not below it
    assert centres(containers(ax)["no gradient (diagnosis)"]) == [5]
    assert centres(containers(ax)["blocked"]) == [2]


@pytest.mark.parametrize("log", [True, False])
def test_non_finite_layers_are_hatched_full_height_columns(log):
    nonfinite = np.where(np.isnan(REALISTIC), NAN, 0.0)
    nonfinite[-1, 4] = 3
    ax = make_run(REALISTIC, nonfinite=nonfinite).plot(log=log)
    ax.figure.canvas.draw()
    (column,) = containers(ax)["non-finite"]
    assert centres([column]) == [4]
    assert column.get_hatch() and mcolors.same_color(column.get_edgecolor(), "#a142f4")
    ext, box = column.get_window_extent(), ax.get_window_extent()
    assert ext.y0 == pytest.approx(box.y0) and ext.y1 == pytest.approx(box.y1)


def test_a_skipped_step_is_noted_in_the_title():
    ax = make_run(REALISTIC, skipped=np.array([0, 0, 0, 0, 0, 1.0])).plot()
    assert "skipped by the AMP grad scaler" in ax.get_title()


def test_plot_draws_on_the_given_axes_and_leaves_its_figure_layout_alone():
    fig, (left, right) = plt.subplots(1, 2, layout="constrained")
    ax = make_run(REALISTIC).plot(ax=right)
    assert ax is right
    assert not left.patches and right.patches
    assert fig.get_layout_engine().__class__.__name__ == "ConstrainedLayoutEngine"


def test_plot_without_matplotlib_names_the_plot_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install matplotlib .*\[plot\] extra"):
        make_run(REALISTIC).plot()


def test_importing_the_reader_and_the_plotting_module_does_not_import_matplotlib():
    code = (
        "import tb_gradflow.reader, tb_gradflow.plotting, sys; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_update_ratio_bars_with_the_reference_band_and_the_flagged_layer(tmp_path):
    """A real run: the head's learning rate 100x too high."""
    import torch
    from torch import nn
    from torch.utils.tensorboard import SummaryWriter

    import tb_gradflow

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.Adam(
        [
            {"params": model[0].parameters()},
            {"params": model[2].parameters(), "lr": 1.0},
        ],
        lr=1e-3,
    )
    with SummaryWriter(tmp_path) as writer:
        with tb_gradflow.watch(model, writer, optimizer=opt, stats=["update_ratio"]):
            for _ in range(4):
                opt.zero_grad()
                model(torch.randn(16, 4)).pow(2).mean().backward()
                opt.step()
    run = tb_gradflow.load_run(tmp_path)
    ax = run.plot(stat="update_ratio")
    ratio = run.values("update_ratio")[-1]
    heights = sorted(r.get_height() for r in containers(ax)["update_ratio"])
    np.testing.assert_allclose(heights, sorted(ratio), rtol=1e-6)
    bands = [p for p in ax.patches if p not in containers(ax)["update_ratio"]]
    low, high = ax.get_ylim()
    assert low <= 3e-4 and high >= ratio.max()  # the band and every bar shown
    assert "update_too_large / not_updating" in containers(ax)
    flagged = containers(ax)["update_too_large / not_updating"]
    assert [round(r.get_x() + r.get_width() / 2) for r in flagged] == [1]  # "2"
    assert any(
        getattr(p, "get_xy", None) and p not in flagged for p in bands
    )  # the 3e-4..3e-3 band
    assert ax.get_ylabel() == "update_ratio (log scale)"
