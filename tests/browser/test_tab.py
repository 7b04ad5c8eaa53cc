"""The Gradient Flow tab in headless Chromium, against a real ``tensorboard``.

The logdir holds the demo's two runs (``healthy`` and ``unnormalised_inputs``,
where the alerts flag the first LSTM as blocked), an ``edge_<b>cases`` run whose
layers are exactly zero, without gradient, non-finite, and named
``<img src=x onerror=alert(1)>``, ``a_skipped_steps``, first by name, whose
only finding is steps the AMP scaler skipped, ``sequential``, an
``nn.Sequential`` watched by ``tb_gradflow.watch`` whose step 5 record is
damaged, ``ongoing``, whose blocked streak has not ended at its newest step,
``resumed``, whose second writer session logged one layer fewer, and
``old_format``, written before each layer set had its own tag, with a layer
set that changed (the tab cannot show it and says why), ``custom_stat``,
watched while a test-only statistic was registered in this process (the
tab's TensorBoard does not know it: it reads it from the files by name), and
``lacking_rows``, written without the ``rows`` statistic, and ``lines_50`` and
``lines_500``, healthy runs of 50 and 500 layers with ``update_ratio`` (the
lines view). A logdir of its own, served by a second ``tensorboard``, holds
``spikes_50`` and ``spikes_500``: 50 and 500 layers, one of which spikes 10x
at one step, with a traced non-finite origin (the most severe finding: in
the first logdir it would change the run the tab opens on). A third logdir
holds ``llama_70b``: the 723 layers of Hugging Face's LlamaForCausalLM (80
blocks), for the bar plot, the heatmap and the lines per block and per role.
Screenshots go to ``test-output/browser/``.

Needs Debian's ``chromium`` and ``pip install playwright`` (never
``playwright install``); without them these tests fail and say so.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import math
import os
import struct
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import torch
from model_names import llama_layers
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow
from tb_gradflow import metadata
from tb_gradflow import stats as tb_stats
from tb_gradflow.demo import DemoConfig, run_demo
from tb_gradflow.metadata import NonfiniteOrigin
from tb_gradflow.summary import gradflow_pb, origin_pb

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("GRADFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUT = Path(__file__).resolve().parents[2] / "test-output" / "browser"
DEMO_STEPS = 100  # the alerts flag lstm1.* from step ~80 on
LSTM = [
    "lstm1.weight_ih_l0",
    "lstm1.weight_hh_l0",
    "lstm2.weight_ih_l0",
    "lstm2.weight_hh_l0",
    "head",
]
XSS = "<img src=x onerror=alert(1)>"
EDGE_RUN = "edge_<b>cases"
EDGE_LAYERS = ("embed", "frozen", "<img src=x onerror=alert(1)>", "exploded")
SKIPPED_RUN = "a_skipped_steps"  # first by name; its only finding: skipped steps
SEQ_RUN = "sequential"
SEQ_STEPS = 12
SEQ_DAMAGED = 5  # the step whose record's bytes are damaged
# nn.Sequential names its layers by index; watch records each one's module type
SEQ_LABELS = ["0 \u00b7 Conv2d", "1 \u00b7 BatchNorm2d", "4 \u00b7 Linear"]
ONGOING_RUN = "ongoing"
RESUMED_RUN = "resumed"
OLD_RUN = "old_format"
CUSTOM_RUN = "custom_stat"
CUSTOM_STAT = "mean_square"  # registered in this process only, while training
CUSTOM_STEPS = 6
LACKING_RUN = "lacking_rows"
LINES_RUN = "lines_50"  # 50 layers, update_ratio
LINES_STEPS = 200
WIDE_RUN = "lines_500"  # 500 layers, update_ratio
WIDE_STEPS = 60
SPIKE_RUNS = {"spikes_50": 50, "spikes_500": 500}  # run: layers
SPIKE_STEPS = 120
SPIKE = (20, 80)  # (layer, step): 10x its gradient
ORIGIN = (33, 100)  # (layer, step): where the traced NaN/Inf began
LLAMA_RUN = "llama_70b"
LLAMA_BLOCKS = 80
LLAMA_STEPS = 4
_LOAD_TIMEOUT = 60.0  # s until every run is listed
_UI_TIMEOUT = 20_000  # ms for one UI expectation
_REFRESH_TIMEOUT = 25_000  # ms: reload interval 1 s + the tab's 5 s poll


def _require_browser():
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(
            f"Chromium at {CHROMIUM} (apt-get install -y --no-install-recommends "
            "chromium chromium-driver, or set GRADFLOW_CHROMIUM)"
        )
    if missing:
        pytest.fail(
            "browser tests need " + " and ".join(missing) + "; ./run test installs "
            "both. Deselect them with -m 'not browser'.",
            pytrace=False,
        )


def _stats(mean, *, scale=(3, 10), nonfinite=0.0, order=None) -> np.ndarray:
    """(K, L) statistics built by name (``tb_gradflow.stats.record``): abs_mean
    ``mean``, abs_max and norm ``scale`` times it, rows 1; ``order``: the
    statistics a layout holds (default: the registered ones)."""
    mean = np.asarray(mean, dtype=np.float64)
    values = {"abs_mean": mean, "abs_max": scale[0] * mean, "norm": scale[1] * mean}
    values |= {"nonfinite": nonfinite, "rows": 1.0}
    if order is not None:
        values = {name: values[name] for name in order}
    return tb_stats.record(values, len(mean), order=order)


def _edge_stats(i: int, n_layers: int) -> np.ndarray:
    """(K, L) statistics: embed healthy, frozen exactly zero, the HTML-named layer
    without gradient at even steps, exploded non-finite (7 elements)."""
    mean = np.array([1e-3, 0.0, 2e-4, math.inf])
    stats = _stats(mean, scale=(10, 30), nonfinite=np.array([0, 0, 0, 7.0]))
    if i % 2 == 0:
        stats[:, 2] = math.nan  # no gradient: NaN in every statistic
    return stats[:, :n_layers]


def _write_edge_run(logdir: Path, steps: range) -> None:
    layout = metadata.Layout(layers=EDGE_LAYERS)
    writer = EventFileWriter(str(logdir / EDGE_RUN))
    for i, step in enumerate(steps):
        summary = gradflow_pb(
            layout,
            _edge_stats(step, len(EDGE_LAYERS)),
            np.array([0.0, math.nan]),
            with_metadata=i == 0,
        )
        event = event_pb2.Event(step=step, wall_time=1000.0 + step, summary=summary)
        writer.add_event(event)
    writer.close()


def _write_skipped_run(logdir: Path) -> None:
    """Healthy layers; the AMP scaler skipped steps 3-5 (step field 1.0)."""
    layout = metadata.Layout(layers=("enc", "dec"))
    writer = EventFileWriter(str(logdir / SKIPPED_RUN))
    stats = _stats([1e-3, 2e-3], scale=(10, 30))
    for step in range(10):
        fields = np.array([float(3 <= step <= 5), 1024.0])
        summary = gradflow_pb(layout, stats, fields, with_metadata=step == 0)
        event = event_pb2.Event(step=step, wall_time=time.time(), summary=summary)
        writer.add_event(event)
    writer.close()


def _write_sequential_run(logdir: Path) -> None:
    """An ``nn.Sequential`` CNN watched for SEQ_STEPS steps; in the record of
    step SEQ_DAMAGED the sign bit of the first layer's abs_mean is flipped, so
    its checksum no longer matches (the Rust data server reads it anyway, and
    the plugin leaves it out: a negative abs_mean is impossible)."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 3),
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with SummaryWriter(logdir / SEQ_RUN) as writer:
        with tb_gradflow.watch(model, writer, optimizer=opt):
            for _ in range(SEQ_STEPS):
                opt.zero_grad()
                x = torch.randn(8, 1, 8, 8)
                torch.nn.functional.cross_entropy(
                    model(x), x.new_zeros(8).long()
                ).backward()
                opt.step()
    (path,) = (logdir / SEQ_RUN).glob("events.*")
    data = bytearray(path.read_bytes())
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        record = bytes(data[offset + 12 : offset + 12 + length])
        event = event_pb2.Event.FromString(record)
        values = [v for v in event.summary.value if v.tag.startswith("gradflow")]
        if event.step == SEQ_DAMAGED and values:
            at = offset + 12 + record.index(values[0].tensor.tensor_content)
            data[at + 3] ^= 0x80  # float32 little-endian: the sign bit
            break
        offset += length + 16
    else:
        raise AssertionError("no record of the damaged step")
    path.write_bytes(bytes(data))


def _write_layout_run(logdir: Path, run: str, layout, steps, stats_at, legacy=False):
    """One writer session of ``layout``; ``legacy``: under the watcher's base
    tag, as files written before each layer set had its own tag."""
    writer = EventFileWriter(str(logdir / run))
    for i, step in enumerate(steps):
        summary = gradflow_pb(
            layout, stats_at(i), np.array([0.0, math.nan]), with_metadata=i == 0
        )
        if legacy:
            summary.value[0].tag = metadata.tag_for(layout.name)
        event = event_pb2.Event(step=step, wall_time=time.time(), summary=summary)
        writer.add_event(event)
    writer.close()
    time.sleep(1.1)  # the next session's file name sorts after this one's


def _write_ongoing_run(logdir: Path) -> None:
    """enc blocked at steps 3-7, then one healthy step, the newest: fewer than
    `patience` healthy steps, so the streak is ongoing at step 8 too."""
    means = [[1e-3, 2e-3]] * 3 + [[5e-6, 2e-3]] * 5 + [[3e-5, 2e-3]]
    layout = metadata.Layout(layers=("enc", "head"), types=("Linear", "Linear"))
    _write_layout_run(logdir, ONGOING_RUN, layout, range(9), lambda i: _stats(means[i]))


def _write_resumed_run(logdir: Path) -> None:
    """Session 1 logs a and b (b without gradient at step 4), session 2 (steps
    5-9) only a: b is absent there, not without gradient."""

    def first(i):
        stats = _stats([1e-3, 2e-3])
        if i == 4:
            stats[:, 1] = math.nan
        return stats

    _write_layout_run(
        logdir, RESUMED_RUN, metadata.Layout(layers=("a", "b")), range(5), first
    )
    _write_layout_run(
        logdir,
        RESUMED_RUN,
        metadata.Layout(layers=("a",)),
        range(5, 10),
        lambda i: _stats([1e-3]),
    )


def _write_old_format_run(logdir: Path) -> None:
    """Two sessions under one tag with layer sets of other sizes: TensorBoard
    keeps only the tag's first layout, so the plugin cannot show it."""
    two = metadata.Layout(layers=("a", "b"))
    three = metadata.Layout(layers=("a", "b", "c"))
    _write_layout_run(
        logdir, OLD_RUN, two, range(3), lambda i: _stats([1e-3] * 2), legacy=True
    )
    _write_layout_run(
        logdir, OLD_RUN, three, range(3, 6), lambda i: _stats([1e-3] * 3), legacy=True
    )


def _write_custom_stat_run(logdir: Path) -> None:
    """A model watched by ``tb_gradflow.watch`` while CUSTOM_STAT, a test-only
    statistic, is registered in this process: the files hold it by name."""
    statistic = tb_stats.Statistic(
        name=CUSTOM_STAT,
        meaning="mean of g^2 over all elements",
        partials=("sq_sum",),
        finish=lambda p, numel: p["sq_sum"] / np.maximum(numel, 1),
        bad="high",
    )
    tb_stats.register(statistic)
    try:
        model = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with SummaryWriter(logdir / CUSTOM_RUN) as writer:
            with tb_gradflow.watch(model, writer, optimizer=opt):
                for _ in range(CUSTOM_STEPS):
                    opt.zero_grad()
                    model(torch.randn(16, 4)).pow(2).mean().backward()
                    opt.step()
    finally:
        tb_stats.unregister(CUSTOM_STAT)  # the other runs are written without it


def _write_lacking_run(logdir: Path) -> None:
    """Healthy layers, written by a version that did not log ``rows``."""
    older = ("abs_mean", "abs_max", "norm", "nonfinite")  # no rows
    layout = metadata.Layout(layers=("enc", "dec"), stats=older)
    _write_layout_run(
        logdir,
        LACKING_RUN,
        layout,
        range(6),
        lambda i: _stats([1e-3, 2e-3], order=layout.stats),
    )


def _write_lines_run(logdir: Path, run: str, n_layers: int, steps: int) -> None:
    """Healthy layers with ``update_ratio`` and ``weight_norm``: layer i's
    update ratio about 10^(-4 + 2 i / (L - 1)), waving slowly over the steps
    (deeper layers higher: the lines view spreads them across its log axis
    and across update_ratio's band around 1e-3)."""
    order = (*tb_stats.names("gradient"), "update_ratio", "weight_norm")
    names = tuple(f"blocks.{i}.weight" for i in range(n_layers))
    layout = metadata.Layout(layers=names, stats=order)
    depth = np.arange(n_layers) / (n_layers - 1)
    grad = 1e-3 * (1 + depth)  # (L,)

    def stats_at(i: int) -> np.ndarray:
        wave = 1 + 0.2 * np.sin(i / 10 + 3 * depth)  # (L,)
        values = {"abs_mean": grad, "abs_max": 3 * grad, "norm": 10 * grad}
        values |= {"nonfinite": 0.0, "rows": 1.0, "weight_norm": 5.0}
        values["update_ratio"] = 10 ** (-4 + 2 * depth) * wave
        return tb_stats.record(values, n_layers, order=order)

    _write_layout_run(logdir, run, layout, range(steps), stats_at)


def _write_spike_run(logdir: Path, run: str, n_layers: int) -> None:
    """Healthy layers (abs_mean about 1e-3, 5% noise), layer ``SPIKE[0]``'s
    gradient 10x at step ``SPIKE[1]``, and a traced non-finite origin in the
    module of layer ``ORIGIN[0]`` at step ``ORIGIN[1]``, written beside the
    statistics as ``watch(..., trace_nonfinite=True)`` writes it."""
    names = tuple(f"blocks.{i}.weight" for i in range(n_layers))
    layout = metadata.Layout(layers=names, types=("Linear",) * n_layers)
    rng = np.random.default_rng(n_layers)
    base = 1e-3 * (1 + np.arange(n_layers) / n_layers)  # (L,)

    def stats_at(i: int) -> np.ndarray:
        mean = base * np.exp(0.05 * rng.standard_normal(n_layers))
        if i == SPIKE[1]:
            mean[SPIKE[0]] *= 10
        return _stats(mean)

    _write_layout_run(logdir, run, layout, range(SPIKE_STEPS), stats_at)
    layer, step = ORIGIN
    origin = NonfiniteOrigin(
        step=step,
        since_step=step,
        phase="forward",
        module=f"blocks.{layer}",
        module_type="Linear",
        where="output",
        posinf=3,
        largest_input=3.1e38,
        dtype="float32",
        layers=(names[layer],),
    )
    with SummaryWriter(str(logdir / run)) as writer:
        summary = origin_pb(origin, None, with_metadata=True)
        writer._get_file_writer().add_summary(summary, step)


@pytest.fixture(scope="module")
def spike_tensorboard(tmp_path_factory, tensorboard_process):
    _require_browser()
    d = tmp_path_factory.mktemp("spikes")
    for run, layers in SPIKE_RUNS.items():
        _write_spike_run(d, run, layers)
    tb = tensorboard_process(d, "--reload_interval=1")
    try:
        wait_for_runs(tb, {run: SPIKE_STEPS - 1 for run in SPIKE_RUNS})
        yield tb
    finally:
        tb.close()


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    _require_browser()
    d = tmp_path_factory.mktemp("browser")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: more threads only add contention
    try:
        run_demo(str(d), DemoConfig(steps=DEMO_STEPS), progress=False)
        _write_sequential_run(d)
        _write_custom_stat_run(d)
    finally:
        torch.set_num_threads(threads)
    _write_edge_run(d, range(10))
    _write_skipped_run(d)
    _write_ongoing_run(d)
    _write_resumed_run(d)
    _write_old_format_run(d)
    _write_lacking_run(d)
    _write_lines_run(d, LINES_RUN, 50, LINES_STEPS)
    _write_lines_run(d, WIDE_RUN, 500, WIDE_STEPS)
    return d


def served_runs(tb) -> dict[str, dict]:
    """The plugin's ``runs`` answer, by run name."""
    return {r["run"]: r for r in tb.get_json("/data/plugin/gradflow/runs")["runs"]}


def wait_for_runs(tb, expected: dict[str, int]) -> None:
    """Until each run lists the expected last step."""
    deadline = time.monotonic() + _LOAD_TIMEOUT
    runs: dict[str, dict] = {}
    while time.monotonic() < deadline:
        runs = served_runs(tb)
        if all(runs.get(r, {}).get("last_step") == n for r, n in expected.items()):
            return
        time.sleep(0.5)
    raise AssertionError(f"runs never complete: {runs}")


@pytest.fixture(scope="module")
def tensorboard(logdir, tensorboard_process):
    tb = tensorboard_process(logdir, "--reload_interval=1")
    try:
        wait_for_runs(
            tb,
            {
                "healthy": DEMO_STEPS - 1,
                "unnormalised_inputs": DEMO_STEPS - 1,
                EDGE_RUN: 9,
                SKIPPED_RUN: 9,
                SEQ_RUN: SEQ_STEPS - 1,
                ONGOING_RUN: 8,
                RESUMED_RUN: 9,
                OLD_RUN: 5,
                CUSTOM_RUN: CUSTOM_STEPS - 1,
                LACKING_RUN: 5,
                LINES_RUN: LINES_STEPS - 1,
                WIDE_RUN: WIDE_STEPS - 1,
            },
        )
        yield tb
    finally:
        tb.close()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory, tensorboard):
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 1180},
            color_scheme="light",
            accept_downloads=True,
        )
        context.set_default_timeout(_UI_TIMEOUT)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def allowed_failures() -> list[str]:
    """Parts of URLs whose error answers a test expects (a run the tab cannot
    show answers 404); the ``page`` fixture fails on any other."""
    return []


@pytest.fixture
def page(browser_context, allowed_failures):
    """A fresh page; fails the test if any dialog (alert(1)) opens, a script
    throws, or a request of the tab answers an error (but those of
    ``allowed_failures``)."""
    page = browser_context.new_page()
    dialogs: list[str] = []
    errors: list[str] = []
    bad: list[str] = []

    def on_dialog(dialog):
        dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def on_response(response):
        if "/data/plugin/gradflow/" in response.url and response.status >= 400:
            if not any(part in response.url for part in allowed_failures):
                bad.append(f"{response.status} {response.url}")

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("response", on_response)
    try:
        yield page
    finally:
        page.close()
    assert not dialogs, f"a dialog opened: {dialogs}"
    assert not errors, f"uncaught errors: {errors}"
    assert not bad, f"failed requests: {bad}"


def open_tab(page, tensorboard):
    """Opens TensorBoard, clicks the "Gradient Flow" tab (in the tab bar, or in
    the "Inactive" dropdown) and returns the tab's frame."""
    page.goto(tensorboard.url)
    return click_tab(page)


def click_tab(page):
    """Clicks the "Gradient Flow" tab of the TensorBoard page open in ``page``
    and returns the tab's frame once it shows a step."""
    tab = page.get_by_role("tab", name="Gradient Flow")
    try:
        tab.wait_for(state="visible", timeout=10_000)
        tab.click()
    except Exception:  # the tab is not in the bar: TensorBoard lists it as inactive
        page.locator("mat-select").filter(has_text="Inactive").click()
        page.get_by_role("option", name="Gradient Flow").click()
    frame = page.frame_locator("iframe")
    frame.locator("[data-testid=bar-table] tr[data-layer-index]").first.wait_for(
        state="attached"
    )
    return frame


def select_run(frame, run: str):
    frame.locator("[data-testid=run]").select_option(label=run)
    frame.locator(f'[data-testid=bar-table][data-run="{run}"]').wait_for(
        state="attached"
    )


def layer_rows(frame):
    """What the bar plot draws, per layer: its name (the key), the label shown
    (the name with its module type), status and blocked flag."""
    rows = frame.locator("[data-testid=bar-table] tr[data-layer-index]")
    return [
        {
            "name": r.get_attribute("data-layer"),
            "label": r.locator("th").text_content(),
            "status": r.get_attribute("data-status"),
            "blocked": r.get_attribute("data-blocked") == "true",
        }
        for r in rows.all()
    ]


def test_bars_show_each_layer_and_highlight_the_blocked_lstm(page, tensorboard):
    frame = open_tab(page, tensorboard)
    select_run(frame, "unnormalised_inputs")
    rows = layer_rows(frame)
    assert [r["name"] for r in rows] == LSTM
    types = ["LSTM"] * 4 + ["Linear"]  # the demo's modules
    assert [r["label"] for r in rows] == [
        f"{n} \u00b7 {t}" for n, t in zip(LSTM, types)
    ]
    blocked = [r["name"] for r in rows if r["blocked"]]
    assert blocked == ["lstm1.weight_ih_l0", "lstm1.weight_hh_l0"]
    assert {r["status"] for r in rows} == {"ok"}

    alerts = frame.locator("[data-testid=alerts] button[data-kind=blocked]")
    assert sorted(a.get_attribute("data-layer") for a in alerts.all()) == sorted(
        blocked
    )
    # the alert list names the layers with their types; the streaks go on
    # through the newest step
    for a in alerts.all():
        layer = a.get_attribute("data-layer")
        assert a.locator(".gf-alert-layer").text_content() == f"{layer} \u00b7 LSTM"
        steps = a.locator(".gf-alert-steps").text_content()
        assert f"\u2013{DEMO_STEPS - 1}, ongoing (" in steps, steps
    kept = frame.locator("[data-testid=kept]").text_content()
    assert f"all {DEMO_STEPS} logged steps" in kept
    # the canvas is sized for its labels and drawn at the device pixel ratio
    box = frame.locator("[data-testid=bars]").bounding_box()
    assert box["width"] > 600 and box["height"] > 260
    page.screenshot(path=str(OUT / "light_unnormalised_inputs.png"))

    # clicking an alert selects its layer and its first step
    first = alerts.first
    first_step = first.get_attribute("data-first-step")
    first.click()
    expect_step(frame, first_step)


def expect_step(frame, step):
    frame.locator(f'[data-testid=step][data-step="{step}"]').wait_for(state="attached")
    frame.locator(f'[data-testid=bar-table][data-step="{step}"]').wait_for(
        state="attached"
    )


def test_slider_play_and_heatmap_walk_the_logged_steps(page, tensorboard):
    frame = open_tab(page, tensorboard)
    select_run(frame, "healthy")
    expect_step(frame, DEMO_STEPS - 1)
    slider = frame.locator("[data-testid=slider]")
    assert slider.get_attribute("max") == str(DEMO_STEPS - 1)
    slider.focus()
    slider.press("Home")
    expect_step(frame, 0)
    slider.press("ArrowRight")
    expect_step(frame, 1)

    heat = frame.locator("[data-testid=heatmap]")
    assert heat.count() == 1
    assert heat.get_attribute("data-rows") == str(len(LSTM))
    assert heat.get_attribute("data-cols") == str(DEMO_STEPS)
    # clicking a cell selects that cell's step
    x, y, w, h = (float(v) for v in heat.get_attribute("data-plot").split(","))
    col, row = 42, 4
    heat.click(
        position={
            "x": x + (col + 0.5) * w / DEMO_STEPS,
            "y": y + (row + 0.5) * h / len(LSTM),
        }
    )
    expect_step(frame, col)
    tooltip = frame.locator(".gf-tooltip")
    assert LSTM[row] in tooltip.text_content()
    assert "step 42" in tooltip.text_content()

    play = frame.locator("[data-testid=play]")
    play.click()
    next_frame(frame)  # the tab draws what a click changed in the next frame
    assert play.get_attribute("aria-pressed") == "true"
    assert wait_until(lambda: current_step(frame) > col), "play did not advance"
    play.click()
    next_frame(frame)  # the pause and the step it stopped at are drawn now
    assert play.get_attribute("aria-pressed") == "false"
    paused = current_step(frame)
    time.sleep(0.6)  # two play ticks
    assert current_step(frame) == paused
    assert play.get_attribute("aria-pressed") == "false"


def next_frame(frame) -> None:
    """Returns once the tab's next animation frame has run. The tab draws what an
    action changed in one requestAnimationFrame, asked for while handling the
    action, and callbacks run in the order asked: a plain read right after a
    click can precede that frame, a read after this one sees what it drew."""
    frame.locator("body").evaluate(
        "() => new Promise((done) => requestAnimationFrame(() => done()))"
    )


def current_step(frame) -> int:
    return int(frame.locator("[data-testid=step]").get_attribute("data-step"))


def wait_until(condition, timeout: float = _UI_TIMEOUT / 1000) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_names_are_text_never_html(page, tensorboard):
    frame = open_tab(page, tensorboard)
    select_run(frame, EDGE_RUN)
    rows = layer_rows(frame)
    assert [r["name"] for r in rows] == list(EDGE_LAYERS)
    # the latest step (9) is odd: the HTML-named layer has a gradient there
    assert [r["status"] for r in rows] == ["ok", "zero", "ok", "nonfinite"]
    assert frame.locator("img").count() == 0
    run_option = frame.locator("[data-testid=run] option", has_text="edge_")
    assert run_option.text_content() == EDGE_RUN
    frame.locator("[data-testid=slider]").press("ArrowLeft")  # step 8
    expect_step(frame, 8)
    rows = layer_rows(frame)
    assert rows[2] == {"name": XSS, "label": XSS, "status": "no_grad", "blocked": False}
    # the alerts list names it as text too (it has no gradient at even steps)
    alert = frame.locator("[data-testid=alerts] button[data-kind=no_gradient]")
    assert alert.get_attribute("data-layer") == XSS
    assert alert.locator(".gf-alert-layer").text_content() == XSS
    # and so does the heatmap's tooltip
    heat = frame.locator("[data-testid=heatmap]")
    x, y, w, h = (float(v) for v in heat.get_attribute("data-plot").split(","))
    heat.hover(position={"x": x + w / 20, "y": y + 2.5 * h / len(EDGE_LAYERS)})
    tooltip = frame.locator(".gf-tooltip")
    assert tooltip.locator(".gf-tip-title").text_content() == XSS
    assert "no gradient" in tooltip.text_content()
    assert frame.locator("img").count() == 0
    page.screenshot(path=str(OUT / "light_edge_cases.png"))


def test_compare_dark_mode_png_and_refresh(page, tensorboard, logdir):
    frame = open_tab(page, tensorboard)
    select_run(frame, "unnormalised_inputs")
    frame.locator("[data-testid=compare]").select_option(label="healthy")
    header = frame.locator("[data-testid=bar-table] tr").first
    header.filter(has_text="healthy").wait_for(state="attached")
    rows = layer_rows(frame)
    assert [r["name"] for r in rows] == LSTM
    assert frame.locator("[data-testid=heatmap]").count() == 2
    table = frame.locator("[data-testid=bar-table]")
    assert table.get_attribute("data-scale") == "log"  # on by default
    frame.locator("[data-testid=log]").uncheck()
    frame.locator("[data-testid=bar-table][data-scale=linear]").wait_for(
        state="attached"
    )
    frame.locator("[data-testid=log]").check()

    # TensorBoard's dark mode is a class on the parent page's body
    page.evaluate("document.body.classList.add('dark-mode')")
    frame.locator("html.gf-dark").wait_for(state="attached")
    page.screenshot(path=str(OUT / "dark_compare.png"))
    page.evaluate("document.body.classList.remove('dark-mode')")
    frame.locator("html:not(.gf-dark)").wait_for(state="attached")

    with page.expect_download() as download:
        frame.locator("[data-testid=png]").click()
    path = download.value.path()
    assert download.value.suggested_filename.endswith(".png")
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # training writes more steps: the tab notices without a reload
    select_run(frame, EDGE_RUN)
    expect_step(frame, 9)
    _write_edge_run(logdir, range(10, 15))
    frame.locator('[data-testid=step][data-step="14"]').wait_for(
        state="attached", timeout=_REFRESH_TIMEOUT
    )
    assert frame.locator("[data-testid=slider]").get_attribute("max") == "14"


def test_the_tab_opens_on_the_most_severe_run_and_keeps_the_users_choice(
    page, tensorboard
):
    # by name the first run is a_skipped_steps; the non-finite run ranks first
    frame = open_tab(page, tensorboard)
    frame.locator(f'[data-testid=bar-table][data-run="{EDGE_RUN}"]').wait_for(
        state="attached"
    )
    run_menu = frame.locator("[data-testid=run]")
    assert run_menu.locator("option:checked").text_content() == EDGE_RUN
    assert [o.text_content() for o in run_menu.locator("option").all()][0] == (
        SKIPPED_RUN
    )
    # the user's choice stays through the tab's next poll of `runs` (every 5 s)
    select_run(frame, "healthy")
    with page.expect_response(
        lambda r: r.url.endswith("/data/plugin/gradflow/runs"), timeout=10_000
    ):
        pass
    next_frame(frame)
    assert run_menu.locator("option:checked").text_content() == "healthy"
    assert frame.locator("[data-testid=bar-table]").get_attribute("data-run") == (
        "healthy"
    )


def hash_view(page) -> list[tuple[str, str]]:
    """The parts of the TensorBoard page's URL hash: ``("__tab__", tab)`` then
    the decoded ``key=value`` pairs, in order. (From the page itself: Playwright's
    ``page.url`` can lag a ``history.replaceState`` made by the iframe.)"""
    url = page.evaluate("location.href")
    parts = urllib.parse.urlsplit(url).fragment.split("&")
    return [
        ("__tab__", p)
        if "=" not in p
        else tuple(map(urllib.parse.unquote, p.split("=")))
        for p in parts
        if p
    ]


def test_the_view_is_kept_in_tensorboards_url_and_survives_a_reload(
    page, tensorboard, browser_context
):
    frame = open_tab(page, tensorboard)
    select_run(frame, "unnormalised_inputs")
    frame.locator("[data-testid=compare]").select_option(label="healthy")
    frame.locator("[data-testid=stat]").select_option("abs_max")
    frame.locator("[data-testid=log]").uncheck()
    frame.locator("[data-testid=slider]").evaluate(
        "(el) => { el.value = '42'; el.dispatchEvent(new Event('input')); }"
    )
    expect_step(frame, 42)
    expected = [
        ("__tab__", "gradflow"),
        ("p.gradflow.run", "unnormalised_inputs"),
        ("p.gradflow.compare", "healthy"),
        ("p.gradflow.stat", "abs_max"),
        ("p.gradflow.scale", "linear"),
        ("p.gradflow.step", "42"),
    ]
    assert wait_until(lambda: hash_view(page) == expected), hash_view(page)
    shared = page.evaluate("location.href")

    def assert_view(frame):
        expect_step(frame, 42)
        table = frame.locator("[data-testid=bar-table]")
        table.locator("tr").first.filter(has_text="healthy").wait_for(state="attached")
        assert table.get_attribute("data-run") == "unnormalised_inputs"
        assert table.get_attribute("data-scale") == "linear"
        checked = "option:checked"
        assert frame.locator(f"[data-testid=run] {checked}").text_content() == (
            "unnormalised_inputs"
        )
        compare = frame.locator(f"[data-testid=compare] {checked}")
        assert compare.text_content() == "healthy"
        assert frame.locator("[data-testid=stat]").input_value() == "abs_max"
        assert not frame.locator("[data-testid=log]").is_checked()

    # the outer page reloads: TensorBoard opens the tab, the tab its view
    page.reload()
    assert_view(page.frame_locator("iframe"))
    assert hash_view(page) == expected
    # TensorBoard keeps the keys when another tab is shown
    page.get_by_role("tab", name="Scalars").click()
    assert wait_until(lambda: hash_view(page)[0] == ("__tab__", "scalars"))
    assert hash_view(page)[1:] == expected[1:]
    # and the URL, shared, opens the same view in another page
    other = browser_context.new_page()
    try:
        other.goto(shared)
        assert_view(other.frame_locator("iframe"))
    finally:
        other.close()


def test_nonfinite_counts_are_drawn_on_a_count_axis(page, tensorboard):
    frame = open_tab(page, tensorboard)
    select_run(frame, EDGE_RUN)
    frame.locator("[data-testid=stat]").select_option("nonfinite")
    table = frame.locator("[data-testid=bar-table][data-scale=count]")
    table.wait_for(state="attached")
    ticks = table.get_attribute("data-ticks").split()
    assert ticks == [str(n) for n in range(8)]  # whole numbers up to the 7 counted
    # the count is drawn as a bar (not the hatched non-finite column); zero
    # counts as the zero mark
    rows = [r["status"] for r in layer_rows(frame)]
    assert rows[:2] == ["zero", "zero"] and rows[3] == "ok", rows
    log = frame.locator("[data-testid=log]")
    assert log.is_disabled() and not log.is_checked()
    page.screenshot(path=str(OUT / "light_nonfinite_count.png"))
    # back to a gradient statistic: the log scale the user had
    frame.locator("[data-testid=stat]").select_option("abs_mean")
    frame.locator("[data-testid=bar-table][data-scale=log]").wait_for(state="attached")
    assert log.is_enabled() and log.is_checked()


# The tallest run of pixels of the first series' colour in any column of a
# canvas, in CSS px, and the canvas's device pixel ratio.
_TALLEST_BAR = """(canvas, rgb) => {
  const { width, height } = canvas;
  const d = canvas.getContext("2d").getImageData(0, 0, width, height).data;
  let best = 0;
  for (let x = 0; x < width; x++) {
    let run = 0;
    for (let y = 0; y < height; y++) {
      const i = 4 * (y * width + x);
      const hit = d[i] === rgb[0] && d[i + 1] === rgb[1] && d[i + 2] === rgb[2];
      run = hit ? run + 1 : 0;
      if (run > best) best = run;
    }
  }
  return best / devicePixelRatio;
}"""
SERIES_0 = [26, 115, 232]  # PALETTES.light.series[0]


def test_the_linear_scale_fits_the_chosen_statistic(page, tensorboard):
    frame = open_tab(page, tensorboard)
    select_run(frame, "healthy")
    frame.locator("[data-testid=log]").uncheck()
    frame.locator("[data-testid=bar-table][data-scale=linear]").wait_for(
        state="attached"
    )
    next_frame(frame)
    tallest = frame.locator("[data-testid=bars]").evaluate(_TALLEST_BAR, SERIES_0)
    # the plot is 260 px high: the largest abs_mean bar takes most of it (it
    # took a few px when abs_max, ~10-100x larger, set the range)
    assert tallest > 0.5 * 260, tallest
    page.screenshot(path=str(OUT / "light_linear_abs_mean.png"))


def _colours_near(image, targets, box):
    """Which of ``targets`` (name -> RGB) occur within 12 of a pixel in ``box``."""
    found = set()
    pixels = np.asarray(image.convert("RGB").crop(box), dtype=np.int16)
    for name, rgb in targets.items():
        if (np.abs(pixels - np.array(rgb)).max(axis=-1) <= 12).any():
            found.add(name)
    return found


def test_download_png_has_a_heading_and_the_legend(page, tensorboard):
    from PIL import Image

    frame = open_tab(page, tensorboard)
    select_run(frame, "healthy")
    bars = frame.locator("[data-testid=bars]")
    shown = bars.evaluate(
        "(c) => ({w: c.width, h: c.height, png: c.toDataURL('image/png'),"
        " dpr: devicePixelRatio})"
    )
    with page.expect_download() as download:
        frame.locator("[data-testid=png]").click()
    path = Path(download.value.path())
    saved = Image.open(path)
    saved.load()
    dpr = shown["dpr"]
    assert saved.width == shown["w"]
    assert saved.height >= shown["h"] + 2 * 16 * dpr  # a heading and a legend line
    marks = {"non-finite": (161, 66, 244), "exactly zero": (24, 128, 56)}
    # the healthy run has neither mark on screen; only a legend draws them
    on_screen = Image.open(io.BytesIO(base64.b64decode(shown["png"].split(",")[1])))
    assert _colours_near(on_screen, marks, (0, 0, *on_screen.size)) == set()
    legend = (0, saved.height - 3 * 22 * dpr, saved.width, saved.height)
    assert _colours_near(saved, marks, legend) == set(marks)
    heading = np.asarray(saved.convert("L").crop((0, 0, saved.width, 26 * dpr)))
    assert (heading < 100).sum() > 50, "no heading text"
    saved.save(OUT / "downloaded_bars.png")


def test_play_speed_sets_how_fast_the_steps_go_by(page, tensorboard):
    frame = open_tab(page, tensorboard)
    select_run(frame, "healthy")
    speed = frame.locator("[data-testid=speed]")
    labels = [o.text_content() for o in speed.locator("option").all()]
    assert labels == [f"{v} steps/s" for v in (1, 4, 10, 25, 100, 500)]
    assert speed.input_value() == "4"
    speed.select_option("100")
    slider = frame.locator("[data-testid=slider]")
    slider.focus()
    slider.press("Home")
    expect_step(frame, 0)
    start = time.monotonic()
    frame.locator("[data-testid=play]").click()
    # 4 steps a second (the only speed before) would take 12 s to get there
    assert wait_until(lambda: current_step(frame) >= 50, timeout=6), current_step(frame)
    assert time.monotonic() - start < 6
    frame.locator("[data-testid=play]").click()


def hover_cell(frame, row: int, col: int):
    """Hovers the middle of a cell of the (first) heatmap; returns the tooltip."""
    heat = frame.locator("[data-testid=heatmap]").first
    rows, cols = (
        int(heat.get_attribute("data-rows")),
        int(heat.get_attribute("data-cols")),
    )
    x, y, w, h = (float(v) for v in heat.get_attribute("data-plot").split(","))
    heat.hover(
        position={"x": x + (col + 0.5) * w / cols, "y": y + (row + 0.5) * h / rows}
    )
    return frame.locator(".gf-tooltip")


def test_a_sequential_models_layers_show_their_module_types(page, tensorboard):
    frame = open_tab(page, tensorboard)
    select_run(frame, SEQ_RUN)
    rows = layer_rows(frame)
    assert [r["name"] for r in rows] == ["0", "1", "4"]  # the keys stay the names
    assert [r["label"] for r in rows] == SEQ_LABELS
    # the heatmap's rows, in its tooltip, and a click selects the layer by name
    tooltip = hover_cell(frame, 1, 0)
    assert tooltip.locator(".gf-tip-title").text_content() == SEQ_LABELS[1]
    # the compare view matches layers by name and keeps each run's types
    frame.locator("[data-testid=compare]").select_option(label="unnormalised_inputs")
    header = frame.locator("[data-testid=bar-table] tr").first
    header.filter(has_text="unnormalised_inputs").wait_for(state="attached")
    labels = [r["label"] for r in layer_rows(frame)]
    assert labels[:3] == SEQ_LABELS
    assert labels[3:] == [f"{n} \u00b7 LSTM" for n in LSTM[:4]] + ["head \u00b7 Linear"]
    page.screenshot(path=str(OUT / "light_sequential_compare.png"))


def test_records_left_out_are_named_under_the_kept_steps_line(page, tensorboard):
    frame = open_tab(page, tensorboard)
    select_run(frame, SEQ_RUN)
    expect_step(frame, SEQ_STEPS - 1)
    kept = frame.locator("[data-testid=kept]")
    # the watcher's overview record still holds the step left out: the
    # heatmap and lines are drawn from every logged step
    assert kept.text_content() == (
        f"{SEQ_RUN}: {SEQ_STEPS - 1} of {SEQ_STEPS} logged steps shown "
        f"(the heatmap and lines: every one of the {SEQ_STEPS})"
    )
    details = frame.locator(f'[data-testid=left-out] details[data-run="{SEQ_RUN}"]')
    summary = details.locator("summary")
    assert summary.text_content() == (
        f"{SEQ_RUN}: 1 step left out (damaged record): {SEQ_DAMAGED}"
    )
    reason = f"step {SEQ_DAMAGED}: abs_mean is negative (layer '0')"
    assert summary.get_attribute("title") == reason  # the tooltip
    summary.click()
    item = details.locator("li")
    item.wait_for(state="visible")
    assert item.text_content() == reason
    # the slider skips the step left out
    slider = frame.locator("[data-testid=slider]")
    slider.focus()
    slider.press("Home")
    expect_step(frame, 0)
    for _ in range(SEQ_DAMAGED):
        slider.press("ArrowRight")
    expect_step(frame, SEQ_DAMAGED + 1)
    page.screenshot(path=str(OUT / "light_sequential_damaged.png"))


def test_the_python_loader_stopping_at_a_damaged_record_is_said_as_it_is(
    page, logdir, tmp_path, tensorboard_process
):
    import shutil

    shutil.copytree(logdir / SEQ_RUN, tmp_path / SEQ_RUN)
    tb = tensorboard_process(tmp_path, "--load_fast=false", "--reload_interval=1")
    try:
        wait_for_runs(tb, {SEQ_RUN: SEQ_DAMAGED - 1})  # it stops at the damage
        frame = open_tab(page, tb)
        expect_step(frame, SEQ_DAMAGED - 1)
        assert frame.locator("[data-testid=kept]").text_content() == (
            f"{SEQ_RUN}: {SEQ_DAMAGED} logged steps shown"
        )
        note = frame.locator("[data-testid=left-out] p.gf-left-out-note")
        text = note.text_content()
        assert text.startswith(f"{SEQ_RUN}: TensorBoard stopped reading events.")
        assert (
            f"steps after {SEQ_DAMAGED - 1} up to {SEQ_STEPS - 1} are in the file but "
            "not shown" in text
        )
        assert frame.locator("[data-testid=left-out] details").count() == 0
        page.screenshot(path=str(OUT / "light_python_loader_stopped.png"))
    finally:
        tb.close()


def test_an_ongoing_alert_stays_active_after_its_last_step(page, tensorboard):
    frame = open_tab(page, tensorboard)
    select_run(frame, ONGOING_RUN)
    alert = frame.locator("[data-testid=alerts] button[data-kind=blocked]")
    assert alert.get_attribute("data-layer") == "enc"
    assert alert.get_attribute("data-ongoing") == "true"
    assert alert.locator(".gf-alert-layer").text_content() == "enc \u00b7 Linear"
    assert alert.locator(".gf-alert-steps").text_content() == (
        "steps 3\u20137, ongoing (5 logged)"
    )
    alert.click()
    expect_step(frame, 3)
    frame.locator("[data-testid=alerts] button.gf-active").wait_for(state="attached")
    # step 8 is past the streak's last step, but the streak has not ended
    slider = frame.locator("[data-testid=slider]")
    slider.focus()
    slider.press("End")
    expect_step(frame, 8)
    next_frame(frame)
    assert "gf-active" in alert.get_attribute("class").split()
    assert layer_rows(frame)[0]["blocked"] is True


# Colours of the light palette's heatmap marks (palette.js PALETTES.light).
HEAT_NAN = (218, 220, 224)  # no gradient
HEAT_ABSENT = (154, 160, 166)  # the hatching of "no such layer"
BACKGROUND = (255, 255, 255)
_CELL_COLOURS = """(canvas, [row, col]) => {
  const [x, y, w, h] = canvas.dataset.plot.split(",").map(Number);
  const rows = Number(canvas.dataset.rows), cols = Number(canvas.dataset.cols);
  const r = devicePixelRatio, cw = w / cols, ch = h / rows;
  // the cell less a 2 px border, in device pixels
  const x0 = Math.ceil((x + col * cw + 2) * r);
  const x1 = Math.floor((x + (col + 1) * cw - 2) * r);
  const y0 = Math.ceil((y + row * ch + 2) * r);
  const y1 = Math.floor((y + (row + 1) * ch - 2) * r);
  const d = canvas.getContext("2d").getImageData(x0, y0, x1 - x0, y1 - y0).data;
  const seen = new Set();
  for (let i = 0; i < d.length; i += 4) seen.add(`${d[i]},${d[i + 1]},${d[i + 2]}`);
  return [...seen];
}"""


def test_a_layer_absent_from_the_layer_set_is_drawn_and_said_apart_from_no_gradient(
    page, tensorboard
):
    frame = open_tab(page, tensorboard)
    select_run(frame, RESUMED_RUN)
    heat = frame.locator("[data-testid=heatmap]")
    assert (heat.get_attribute("data-rows"), heat.get_attribute("data-cols")) == (
        "2",
        "10",
    )
    # b: no gradient at step 4, not in the second session's layer set (5-9)
    assert hover_cell(frame, 1, 4).locator("div").nth(2).text_content() == (
        "abs_mean no gradient"
    )
    assert hover_cell(frame, 1, 7).locator("div").nth(2).text_content() == (
        "abs_mean no such layer (not in this step's layer set)"
    )
    colours = {
        tuple(map(int, c.split(","))) for c in heat.evaluate(_CELL_COLOURS, [1, 7])
    }
    assert BACKGROUND in colours and HEAT_ABSENT in colours
    assert HEAT_NAN not in colours
    no_grad = {
        tuple(map(int, c.split(","))) for c in heat.evaluate(_CELL_COLOURS, [1, 4])
    }
    assert no_grad == {HEAT_NAN}
    # the bar plot says the same, and its legend names the mark
    rows = layer_rows(frame)
    assert (rows[1]["name"], rows[1]["status"]) == ("b", "missing")
    assert "no such layer" in frame.locator(".gf-legend").text_content()
    page.screenshot(path=str(OUT / "light_resumed_absent.png"))


def test_a_run_that_cannot_be_shown_says_why_and_the_others_stay(
    page, tensorboard, allowed_failures
):
    allowed_failures.append(f"run={OLD_RUN}")  # its routes answer 404, saying why
    frame = open_tab(page, tensorboard)
    run_menu = frame.locator("[data-testid=run]")
    run_menu.select_option(label=OLD_RUN)
    empty = frame.locator("[data-testid=empty]")
    empty.locator(".gf-empty-title").filter(has_text=OLD_RUN).wait_for(state="visible")
    assert (
        empty.locator(".gf-empty-title").text_content() == f"{OLD_RUN} cannot be shown"
    )
    reason = empty.locator(".gf-empty-hint").text_content()
    assert reason.startswith(  # the plugin's 404, as TensorBoard words it
        f"Not found: Run '{OLD_RUN}', tag 'gradflow': the layer set changed "
        "between writer sessions: 3 of 6 steps"
    )
    assert "tb_gradflow.load_run()" in reason
    assert frame.locator(".gf-main").is_hidden()  # nothing of another run
    listed = [o.text_content() for o in run_menu.locator("option").all()]
    assert {"healthy", SEQ_RUN, EDGE_RUN, OLD_RUN} <= set(listed)
    page.screenshot(path=str(OUT / "light_cannot_be_shown.png"))
    select_run(frame, "healthy")
    assert empty.is_hidden()


def bar_values(frame) -> list[float]:
    """The values the bar plot draws (its table's value column), per layer."""
    cells = frame.locator("[data-testid=bar-table] tr[data-layer-index] td")
    return [float(c.text_content()) for c in cells.all()[::2]]  # value, status


def test_a_statistic_registered_in_the_training_process_is_listed_and_drawn(
    page, tensorboard, logdir
):
    # the tab's TensorBoard has only the built-in registry: the statistic
    # reaches it through the files, by name
    answer = tensorboard.get_json("/data/plugin/gradflow/runs")
    (entry,) = (r for r in answer["runs"] if r["run"] == CUSTOM_RUN)
    assert CUSTOM_STAT in entry["stats"] and CUSTOM_STAT not in entry["not_logged"]
    assert answer["stats"][CUSTOM_STAT] is None  # carried through by name
    frame = open_tab(page, tensorboard)
    select_run(frame, CUSTOM_RUN)
    menu = frame.locator("[data-testid=stat]")
    option = menu.locator(f'option[value="{CUSTOM_STAT}"]')
    assert option.text_content() == CUSTOM_STAT and option.is_enabled()
    assert "does not know it" in option.get_attribute("title")
    known = menu.locator('option[value="abs_mean"]').get_attribute("title")
    assert known == tb_stats.get("abs_mean").meaning
    menu.select_option(CUSTOM_STAT)
    table = frame.locator(f"[data-testid=bar-table][data-stat={CUSTOM_STAT}]")
    table.wait_for(state="attached")
    assert table.get_attribute("data-scale") == "log"  # drawn as a value
    assert table.get_attribute("data-message") == ""
    run = tb_gradflow.load_run(logdir / CUSTOM_RUN)  # carried through by name
    want = run.values(CUSTOM_STAT)[-1]
    assert [r["status"] for r in layer_rows(frame)] == ["ok"] * len(want)
    np.testing.assert_allclose(bar_values(frame), want, rtol=2e-3)
    heat = frame.locator(f'[data-testid=heatmap][aria-label*="{CUSTOM_STAT}"]')
    heat.wait_for(state="attached")
    assert heat.get_attribute("data-logged") == "true"
    assert heat.get_attribute("data-cols") == str(CUSTOM_STEPS)
    tip = hover_cell(frame, 0, CUSTOM_STEPS - 1).locator("div").nth(2).text_content()
    assert tip.startswith(f"{CUSTOM_STAT} ") and "no gradient" not in tip
    assert menu.get_attribute("title").startswith(f"{CUSTOM_STAT}: ")
    assert wait_until(lambda: ("p.gradflow.stat", CUSTOM_STAT) in hash_view(page))
    page.screenshot(path=str(OUT / "light_test_only_statistic.png"))
    # compared with a run without it: named as not logged there, asked of no route
    frame.locator("[data-testid=compare]").select_option(label="healthy")
    frame.locator("[data-testid=heatmap][data-logged=false]").wait_for(state="attached")
    assert option.text_content() == f"{CUSTOM_STAT} (not logged in healthy)"
    # layers matched by name: healthy's own ones are not logged, not "no gradient"
    healthy = [r["status"].split()[1] for r in layer_rows(frame)]
    assert healthy == ["missing"] * 2 + ["not_logged"] * len(LSTM), healthy
    page.screenshot(path=str(OUT / "light_test_only_statistic_compare.png"))


def test_a_statistic_a_runs_files_lack_is_said_to_be_not_logged(page, tensorboard):
    entry = served_runs(tensorboard)[LACKING_RUN]
    assert entry["not_logged"] == ["rows"] and "rows" in entry["stats"]
    # chosen through the URL: the menu cannot offer it, the charts say why
    view = f"#gradflow&p.gradflow.run={LACKING_RUN}&p.gradflow.stat=rows"
    page.goto(tensorboard.url + view)
    frame = page.frame_locator("iframe")
    table = frame.locator(
        f'[data-testid=bar-table][data-run="{LACKING_RUN}"][data-stat=rows]'
    )
    table.wait_for(state="attached")
    assert table.get_attribute("data-message") == f"rows is not logged in {LACKING_RUN}"
    assert [r["status"] for r in layer_rows(frame)] == ["not_logged"] * 2
    menu = frame.locator("[data-testid=stat]")
    assert menu.input_value() == "rows"
    option = menu.locator('option[value="rows"]')
    assert option.text_content() == "rows (not logged)" and option.is_disabled()
    heat = frame.locator("[data-testid=heatmap][data-logged=false]")
    heat.wait_for(state="attached")
    assert "rows is not logged" in heat.get_attribute("aria-label")
    tip = hover_cell(frame, 1, 3).locator("div").nth(2).text_content()
    assert tip == "rows not logged"  # not "no gradient"
    assert "no gradient" not in frame.locator(".gf-tooltip").text_content()
    page.screenshot(path=str(OUT / "light_not_logged.png"))
    # the statistics it logged draw as before
    menu.select_option("norm")
    frame.locator("[data-testid=bar-table][data-stat=norm]").wait_for(state="attached")
    assert [r["status"] for r in layer_rows(frame)] == ["ok", "ok"]


def lines_view(frame, run: str, rows: int, cols: int):
    """The lines canvas once it draws ``update_ratio`` of ``run``."""
    canvas = frame.locator(
        f'[data-testid=lines][data-run="{run}"][data-stat="update_ratio"]'
        f'[data-rows="{rows}"][data-cols="{cols}"]'
    )
    canvas.wait_for(state="attached")
    return canvas


def line_point(canvas, step: float, value: float, steps: int) -> dict[str, float]:
    """Where the lines view draws ``value`` at ``step`` (one step per column,
    steps 0 .. steps - 1; log axis), in the canvas's CSS px."""
    x, y, w, h = (float(v) for v in canvas.get_attribute("data-plot").split(","))
    lo, hi = (float(v) for v in canvas.get_attribute("data-domain").split(","))
    t = (math.log10(hi) - math.log10(value)) / (math.log10(hi) - math.log10(lo))
    return {"x": x + w * step / (steps - 1), "y": y + h * t}


def wave_ratio(layer: int, layers: int, step: int) -> float:
    """update_ratio of ``layer`` at ``step`` as _write_lines_run writes it."""
    depth = layer / (layers - 1)
    return 10 ** (-4 + 2 * depth) * (1 + 0.2 * math.sin(step / 10 + 3 * depth))


def test_the_lines_view_names_the_hovered_layer_and_a_click_selects_its_step(
    page, tensorboard
):
    frame = open_tab(page, tensorboard)
    select_run(frame, LINES_RUN)
    frame.locator("[data-testid=stat]").select_option("update_ratio")
    canvas = lines_view(frame, LINES_RUN, 50, LINES_STEPS)
    assert canvas.get_attribute("data-scale") == "log"
    assert canvas.get_attribute("data-reference")  # the 1e-3 rule of thumb
    lo, hi = (float(v) for v in canvas.get_attribute("data-domain").split(","))
    assert lo <= 1e-4 and hi >= 1e-2  # every layer's line is on the axis
    assert "update_ratio" in canvas.get_attribute("aria-label")
    # the bar plot draws the same rule of thumb, and its legend names it
    table = frame.locator("[data-testid=bar-table]")
    assert table.get_attribute("data-reference") == "0.001"
    legend = frame.locator(".gf-legend").first.text_content()
    assert "about 1e-3 is healthy" in legend, legend

    layer, step = 30, 120
    canvas.hover(position=line_point(canvas, step, wave_ratio(layer, 50, step), 200))
    tooltip = frame.locator(".gf-tooltip")
    assert tooltip.is_visible()
    text = tooltip.text_content()
    assert f"blocks.{layer}.weight" in text and f"step {step}" in text, text
    next_frame(frame)
    assert canvas.get_attribute("data-highlight") == f"blocks.{layer}.weight"
    canvas.screenshot(path=str(OUT / "light_lines_50_layers.png"))

    # a click selects that step in the bar plot (and the layer under it)
    canvas.click(position=line_point(canvas, 57, wave_ratio(10, 50, 57), 200))
    expect_step(frame, 57)
    page.mouse.move(0, 0)  # off the canvas: what stays highlighted is the selection
    next_frame(frame)
    assert canvas.get_attribute("data-highlight") == "blocks.10.weight"

    # 500 layers: still one line per layer, and hover still names one
    select_run(frame, WIDE_RUN)
    wide = lines_view(frame, WIDE_RUN, 500, WIDE_STEPS)
    layer, step = 250, 30
    wide.hover(position=line_point(wide, step, wave_ratio(layer, 500, step), 60))
    text = frame.locator(".gf-tooltip").text_content()
    named = int(text.split("blocks.", 1)[1].split(".", 1)[0])
    assert abs(named - layer) <= 3, text  # lines a fraction of a pixel apart
    assert f"step {step}" in text
    next_frame(frame)
    assert wide.get_attribute("data-highlight") == f"blocks.{named}.weight"
    wide.screenshot(path=str(OUT / "light_lines_500_layers.png"))


_PIXEL = """(canvas, [x, y]) => {
  const r = devicePixelRatio;
  const ctx = canvas.getContext("2d");
  const d = ctx.getImageData(Math.round(x * r), Math.round(y * r), 1, 1).data;
  return [d[0], d[1], d[2]];
}"""


def is_spike_fill(colour) -> bool:
    """Whether a pixel is the spike mark's fill (antialiased: near white)."""
    return min(colour) >= 225


STRIP_BAR = (95, 99, 104)  # the light palette's muted grey


def pixel(canvas, x: float, y: float) -> tuple[int, ...]:
    """The colour of a canvas at CSS px ``(x, y)``."""
    return tuple(canvas.evaluate(_PIXEL, [x, y]))


def heat_cell_centre(heat, row: int, col: int) -> tuple[float, float]:
    x, y, w, h = (float(v) for v in heat.get_attribute("data-plot").split(","))
    rows, cols = (
        int(heat.get_attribute("data-rows")),
        int(heat.get_attribute("data-cols")),
    )
    return x + (col + 0.5) * w / cols, y + (row + 0.5) * h / rows


def test_spikes_are_marked_the_strip_shows_them_and_the_nan_origin_is_listed(
    page, spike_tensorboard
):
    layer, step = SPIKE
    name = f"blocks.{layer}.weight"
    frame = open_tab(page, spike_tensorboard)
    select_run(frame, "spikes_50")
    # the spike is found, listed and marked at its cell of the heatmap
    alert = frame.locator(
        f'[data-testid=alerts] button[data-kind=spike][data-layer="{name}"]'
    )
    assert alert.get_attribute("data-first-step") == str(step)
    heat = frame.locator('[data-testid=heatmap][data-run="spikes_50"]')
    heat.wait_for(state="attached")
    assert heat.get_attribute("data-cols") == str(SPIKE_STEPS)
    assert f"{layer}:{step}" in heat.get_attribute("data-spikes").split()
    x, y = heat_cell_centre(heat, layer, step)
    assert is_spike_fill(pixel(heat, x, y - 6))  # inside the triangle over the cell
    assert not is_spike_fill(pixel(heat, x, y + 6))  # the cell below: not covered
    # the lines view marks it too
    lines = frame.locator('[data-testid=lines][data-run="spikes_50"]')
    assert f"{layer}:{step}" in lines.get_attribute("data-spikes").split()

    # the total-norm strip: its tallest bar is at the spike's column
    sx, sy, sw, sh = (float(v) for v in heat.get_attribute("data-strip").split(","))
    col_x = lambda c: sx + (c + 0.5) * sw / SPIKE_STEPS  # noqa: E731
    assert pixel(heat, col_x(step), sy + 2) == STRIP_BAR
    assert pixel(heat, col_x(step - 10), sy + 2) != STRIP_BAR
    heat.hover(position={"x": col_x(step), "y": sy + sh / 2})
    tip = frame.locator(".gf-tooltip").text_content()
    assert "total norm" in tip and f"step {step}" in tip, tip
    heat.screenshot(path=str(OUT / "light_spikes_50_layers.png"))
    # clicking the strip selects that column's step
    heat.click(position={"x": col_x(60), "y": sy + sh - 2})
    expect_step(frame, 60)

    # where NaN/Inf began: listed with the module's message; a click focuses
    # its layer and step
    origin_layer, origin_step = ORIGIN
    origin = frame.locator("[data-testid=alerts] button[data-kind=nonfinite_origin]")
    text = origin.text_content()
    assert "where NaN/Inf began" in text
    assert f"output of 'blocks.{origin_layer}' (Linear)" in text, text
    origin.click()
    expect_step(frame, origin_step)
    page.mouse.move(0, 0)
    next_frame(frame)
    assert lines.get_attribute("data-highlight") == f"blocks.{origin_layer}.weight"
    assert "gf-active" in origin.get_attribute("class")
    page.screenshot(path=str(OUT / "light_spikes_50_tab.png"), full_page=True)

    # 500 layers: the mark is still drawn at its cell
    select_run(frame, "spikes_500")
    wide = frame.locator(
        '[data-testid=heatmap][data-run="spikes_500"][data-rows="500"]'
    )
    wide.wait_for(state="attached")
    assert f"{layer}:{step}" in wide.get_attribute("data-spikes").split()
    x, y = heat_cell_centre(wide, layer, step)
    assert is_spike_fill(pixel(wide, x, y - 6))
    wide.screenshot(path=str(OUT / "light_spikes_500_layers.png"))


@pytest.fixture(scope="module")
def llama_tensorboard(tmp_path_factory, tensorboard_process):
    _require_browser()
    d = tmp_path_factory.mktemp("llama")
    names = tuple(llama_layers(LLAMA_BLOCKS))
    assert len(names) == 723
    types = tuple(
        "Embedding"
        if n.endswith("embed_tokens")
        else "LlamaRMSNorm"
        if "norm" in n
        else "Linear"
        for n in names
    )
    layout = metadata.Layout(layers=names, types=types)
    base = 1e-3 * (1 + np.arange(len(names)) / len(names))  # (L,)
    _write_layout_run(
        d, LLAMA_RUN, layout, range(LLAMA_STEPS), lambda i: _stats(base * (1 + i))
    )
    tb = tensorboard_process(d, "--reload_interval=1")
    try:
        wait_for_runs(tb, {LLAMA_RUN: LLAMA_STEPS - 1})
        yield tb
    finally:
        tb.close()


def bar_centre(frame, i: int) -> dict[str, float]:
    """The middle of bar ``i`` of the bar plot, in the canvas's CSS px."""
    bars = frame.locator("[data-testid=bars]")
    x, y, _, h = (float(v) for v in bars.get_attribute("data-plot").split(","))
    band = float(bars.get_attribute("data-band"))
    return {"x": x + (i + 0.5) * band, "y": y + h / 2}


def test_a_llama_sized_model_is_drawn_per_block_and_per_role(page, llama_tensorboard):
    served = served_runs(llama_tensorboard)[LLAMA_RUN]
    assert served["layers"] == 723
    assert served["groups"] == {"block": LLAMA_BLOCKS + 3, "role": 12}
    frame = open_tab(page, llama_tensorboard)
    rows = frame.locator("[data-testid=bar-table] tr[data-layer-index]")
    assert rows.count() == 723  # per layer by default
    menu = frame.locator("[data-testid=group]")
    assert menu.is_visible()
    labels = [o.text_content() for o in menu.locator("option").all()]
    assert labels == ["per layer (723)", "per block (83)", "per role (12)"]

    # per block: the 80 blocks between the 3 layers in no block
    menu.select_option("block")
    frame.locator("[data-testid=bars][data-group=block]").wait_for(state="attached")
    blocks = [f"model.layers.{b}" for b in range(LLAMA_BLOCKS)]
    expected = ["model.embed_tokens", *blocks, "model.norm", "lm_head"]
    assert [r["name"] for r in layer_rows(frame)] == expected
    assert all(r["status"] == "ok" for r in layer_rows(frame))
    heading = frame.locator("[data-testid=bar-heading]")
    assert heading.text_content() == "Gradient per block"
    # the table screen readers read says so too
    table = frame.locator("[data-testid=bar-table]")
    assert table.locator("caption").text_content().startswith("Gradient per block, ")
    assert table.locator("th").first.text_content() == "block"
    # a bar's tooltip names its block and how many layers it holds
    bars = frame.locator("[data-testid=bars]")
    bars.hover(position=bar_centre(frame, 18))
    tip = frame.locator(".gf-tooltip")
    assert tip.locator(".gf-tip-title").text_content().startswith("model.layers.17")
    assert "group of 9 layers" in tip.text_content()
    # the heatmap's rows and the lines are the blocks too
    heat = frame.locator('[data-testid=heatmap][data-group=block][data-rows="83"]')
    heat.wait_for(state="attached")
    lines = frame.locator('[data-testid=lines][data-group=block][data-rows="83"]')
    lines.wait_for(state="attached")
    assert "per block" in heat.get_attribute("aria-label")
    # a click selects the block: its bar, its heatmap row and its line
    bars.click(position=bar_centre(frame, 18))
    page.mouse.move(0, 0)
    next_frame(frame)
    assert heat.get_attribute("data-selected") == "model.layers.17"
    assert lines.get_attribute("data-highlight") == "model.layers.17"
    frame.locator("[data-testid=bar-table]").scroll_into_view_if_needed()
    frame.locator(".gf-bars").screenshot(path=str(OUT / "light_llama_per_block.png"))
    # a heatmap row is its block: the tooltip says so; a click selects it
    heat.scroll_into_view_if_needed()
    x, y = heat_cell_centre(heat, 41, 1)
    heat.hover(position={"x": x, "y": y})
    tip = frame.locator(".gf-tooltip").text_content()
    assert "model.layers.40" in tip and "group of 9 layers" in tip, tip
    heat.click(position={"x": x, "y": y})
    page.mouse.move(0, 0)
    next_frame(frame)
    assert heat.get_attribute("data-selected") == "model.layers.40"
    assert lines.get_attribute("data-highlight") == "model.layers.40"
    heat.screenshot(path=str(OUT / "light_llama_heatmap_per_block.png"))
    lines.screenshot(path=str(OUT / "light_llama_lines_per_block.png"))
    # a click on a block's name shows its 9 layers under it; another hides them
    px, py, _, _ = (float(v) for v in heat.get_attribute("data-plot").split(","))
    _, row_y = heat_cell_centre(heat, 18, 0)  # model.layers.17's row is named
    heat.click(position={"x": px - 20, "y": row_y})
    opened = frame.locator('[data-testid=heatmap][data-group=block][data-rows="92"]')
    opened.wait_for(state="attached")
    assert opened.get_attribute("data-expanded") == "model.layers.17"
    x, y = heat_cell_centre(opened, 19, 1)  # the block's first layer
    opened.hover(position={"x": x, "y": y})
    tip = frame.locator(".gf-tooltip").text_content()
    assert "model.layers.17.self_attn.q_proj" in tip and "group of" not in tip, tip
    page.mouse.move(0, 0)
    opened.screenshot(path=str(OUT / "light_llama_heatmap_block_expanded.png"))
    _, row_y = heat_cell_centre(opened, 18, 0)
    opened.click(position={"x": px - 20, "y": row_y})
    heat.wait_for(state="attached")
    # kept in the URL: a reload shows the blocks again
    wait_until(lambda: ("p.gradflow.layers", "block") in hash_view(page))
    assert ("p.gradflow.layers", "block") in hash_view(page)
    page.reload()
    frame = click_tab(page)
    frame.locator("[data-testid=bars][data-group=block]").wait_for(state="attached")
    assert frame.locator("[data-testid=group]").input_value() == "block"
    assert frame.locator("[data-testid=bar-table] tr[data-layer-index]").count() == 83

    # per role: the 9 roles of a block, each holding 80 layers
    frame.locator("[data-testid=group]").select_option("role")
    frame.locator("[data-testid=bars][data-group=role]").wait_for(state="attached")
    names = [r["name"] for r in layer_rows(frame)]
    assert len(names) == 12
    assert "model.layers.*.self_attn.q_proj" in names
    i = names.index("model.layers.*.mlp.down_proj")
    frame.locator("[data-testid=bars]").hover(position=bar_centre(frame, i))
    assert "group of 80 layers" in frame.locator(".gf-tooltip").text_content()
    frame.locator(".gf-bars").screenshot(path=str(OUT / "light_llama_per_role.png"))
    heat = frame.locator('[data-testid=heatmap][data-group=role][data-rows="12"]')
    heat.wait_for(state="attached")
    frame.locator('[data-testid=lines][data-group=role][data-rows="12"]').wait_for(
        state="attached"
    )
    heat.screenshot(path=str(OUT / "light_llama_heatmap_per_role.png"))
