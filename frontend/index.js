// The Gradient Flow tab. TensorBoard loads this module in an iframe
// (`data/plugin_entry.html?name=gradflow`, `<base href="plugin/gradflow/">`) and
// calls `render()`. This file only wires things together: data from model.js,
// maths from scale.js, drawing from chart.js, DOM from views.js. Every state change
// marks what is dirty; one requestAnimationFrame redraws it.

import * as chart from "./chart.js";
import { Client, HttpError, StaleGuard, changedRuns, keptStepsText, runKey, runSignatures } from "./model.js";
import { nearestIndex } from "./scale.js";
import * as views from "./views.js";

const POLL_MS = 5000; // the iframe gets no reload calls, so it polls `runs`
const PLAY_MS = 250; // per step while playing
const HEAT_COLUMNS = 1000; // max_steps of the heatmap
const STAT_ORDER = ["abs_mean", "abs_max", "norm", "nonfinite", "rows"];

/**
 * Builds the tab inside the iframe's body and starts it.
 * @returns {Promise<void>}
 */
export async function render() {
  views.loadStylesheet(document, "./style.css");
  const shell = views.buildShell(document, document.body);
  await start(window, shell, new Client());
}

/**
 * @param {Window} win
 * @param {views.Shell} shell
 * @param {Client} client
 */
async function start(win, shell, client) {
  const doc = win.document;
  const guard = new StaleGuard();
  const state = {
    runs: [], sigs: new Map(), a: null, b: null, stat: "abs_mean", log: true,
    steps: [], index: -1, follow: true, flows: [], heats: [], alerts: [[], []],
    layer: null, playing: false, dark: false, flowPending: false, loaded: false,
  };
  const dirty = { bars: false, heat: false, dom: false };
  let raf = 0;
  let barLayout = null;
  const images = new Map(); // heat -> {key, canvas}
  const measureCtx = doc.createElement("canvas").getContext("2d");
  const measure = (text, bold) => {
    measureCtx.font = bold ? chart.FONT_BOLD : chart.FONT;
    return measureCtx.measureText(text).width;
  };
  const palette = () => (state.dark ? chart.PALETTES.dark : chart.PALETTES.light);

  const mark = (...what) => {
    for (const w of what) dirty[w] = true;
    if (!raf) raf = win.requestAnimationFrame(frame);
  };
  const fail = (err) => views.setStatus(shell, err instanceof HttpError ? err.message : String(err), true);

  // ---- loading -------------------------------------------------------------

  async function poll() {
    let runs;
    try {
      runs = await client.runs();
    } catch (err) {
      fail(err);
      return;
    }
    const sigs = runSignatures(runs);
    const changed = changedRuns(state.sigs, sigs);
    const first = !state.loaded;
    state.loaded = true;
    state.sigs = sigs;
    if (!changed.size && !first) return; // nothing new: no re-render
    state.runs = runs;
    for (const k of changed) {
      const [run, tag] = k.split("\u0000");
      client.invalidate(run, tag);
    }
    const find = (key) => runs.find((r) => runKey(r) === key) || null;
    const a = state.a && find(runKey(state.a));
    state.a = a || runs[0] || null;
    state.b = state.b && find(runKey(state.b));
    if (state.b && runKey(state.b) === runKey(state.a)) state.b = null;
    if (!state.a) {
      views.showEmpty(shell, "No gradient-flow data found in this logdir yet.");
      return;
    }
    views.showEmpty(shell, null);
    views.setStatus(shell, "");
    mark("dom");
    const touched = changed.has(runKey(state.a)) || (state.b && changed.has(runKey(state.b)));
    if (first || touched || !a) await loadRuns();
  }

  async function loadRuns() {
    const t = guard.next("runs");
    const { a, b } = state;
    try {
      const [steps, alertsA, alertsB] = await Promise.all([
        client.steps(a), client.alerts(a), b ? client.alerts(b) : Promise.resolve([]),
      ]);
      if (!guard.isCurrent("runs", t)) return;
      const step = state.steps[state.index];
      state.steps = steps;
      state.alerts = [alertsA, alertsB];
      state.index = state.follow || step === undefined ? steps.length - 1 : nearestIndex(steps, step);
      mark("dom");
      await Promise.all([loadHeat(), loadFlows()]);
    } catch (err) {
      if (guard.isCurrent("runs", t)) fail(err);
    }
  }

  async function loadHeat() {
    const t = guard.next("heat");
    const { a, b, stat } = state;
    try {
      const heats = await Promise.all([a, b].filter(Boolean).map((r) => client.heatmap(r, stat, HEAT_COLUMNS)));
      if (!guard.isCurrent("heat", t)) return;
      state.heats = heats;
      mark("heat");
    } catch (err) {
      if (guard.isCurrent("heat", t)) fail(err);
    }
  }

  async function loadFlows() {
    if (state.index < 0) return;
    const t = guard.next("flow");
    const step = state.steps[state.index];
    const { a, b } = state;
    state.flowPending = true;
    try {
      const flows = await Promise.all([a, b].filter(Boolean).map((r) => client.flow(r, step)));
      if (!guard.isCurrent("flow", t)) return;
      state.flows = flows;
      state.flowPending = false;
      const stats = Object.keys(flows[0].stats).sort((x, y) => statRank(x) - statRank(y));
      views.setOptions(shell.stat, stats.map((s) => ({ value: s, label: s })), state.stat);
      if (!stats.includes(state.stat) && stats.length) {
        state.stat = stats[0];
        shell.stat.value = state.stat;
        loadHeat();
      }
      mark("bars", "heat", "dom");
      if (state.playing && state.index + 1 < state.steps.length) {
        client.flow(a, state.steps[state.index + 1]).catch(() => {}); // warm the cache
      }
    } catch (err) {
      if (guard.isCurrent("flow", t)) {
        state.flowPending = false;
        fail(err);
      }
    }
  }

  function statRank(s) {
    const i = STAT_ORDER.indexOf(s);
    return i < 0 ? STAT_ORDER.length : i;
  }

  // ---- actions --------------------------------------------------------------

  function selectIndex(i) {
    if (!state.steps.length) return;
    i = Math.max(0, Math.min(state.steps.length - 1, i));
    state.index = i;
    state.follow = i === state.steps.length - 1;
    mark("dom");
    loadFlows();
  }

  function selectStep(step) {
    selectIndex(nearestIndex(state.steps, step));
  }

  function setPlaying(on) {
    state.playing = on;
    if (on && state.index >= state.steps.length - 1) selectIndex(0);
    mark("dom");
  }

  win.setInterval(() => {
    if (!state.playing || state.flowPending) return;
    if (state.index >= state.steps.length - 1) setPlaying(false);
    else selectIndex(state.index + 1);
  }, PLAY_MS);

  shell.run.addEventListener("change", () => {
    state.a = state.runs.find((r) => runKey(r) === shell.run.value) || state.a;
    if (state.b && runKey(state.b) === runKey(state.a)) state.b = null;
    state.layer = null;
    mark("dom");
    loadRuns();
  });
  shell.compare.addEventListener("change", () => {
    state.b = state.runs.find((r) => runKey(r) === shell.compare.value) || null;
    mark("dom");
    loadRuns();
  });
  shell.stat.addEventListener("change", () => {
    state.stat = shell.stat.value;
    mark("bars", "dom");
    loadHeat();
  });
  shell.log.addEventListener("change", () => {
    state.log = shell.log.checked;
    mark("bars");
  });
  shell.slider.addEventListener("input", () => {
    if (state.playing) setPlaying(false);
    selectIndex(Number(shell.slider.value));
  });
  shell.play.addEventListener("click", () => setPlaying(!state.playing));
  shell.png.addEventListener("click", () => {
    const flow = state.flows[0];
    const name = views.safeFileName(["gradflow", ...state.flows.map((f) => f.run), `step${flow ? flow.step : ""}`, state.stat]);
    views.downloadCanvas(shell.bars, `${name}.png`).catch(fail);
  });

  // bar plot: hover shows the layer's values, click selects the layer
  shell.bars.addEventListener("mousemove", (ev) => {
    if (!barLayout) return;
    const i = chart.barIndexAt(barLayout, ev.offsetX, ev.offsetY);
    if (i < 0) {
      views.hideTooltip(shell.tooltip);
      return;
    }
    const lines = chart.barTooltip(barLayout, i, state.stat);
    views.showTooltip(shell.tooltip, lines, ev.pageX, ev.pageY);
  });
  shell.bars.addEventListener("mouseleave", () => views.hideTooltip(shell.tooltip));
  shell.bars.addEventListener("click", (ev) => {
    if (!barLayout) return;
    const i = chart.barIndexAt(barLayout, ev.offsetX, ev.offsetY);
    state.layer = i < 0 || state.layer === barLayout.layers[i] ? null : barLayout.layers[i];
    mark("bars", "heat");
  });

  function onHeatMove(view, ev) {
    const cell = chart.heatmapCellAt(view.layout, ev.offsetX, ev.offsetY);
    if (!cell) {
      views.hideTooltip(shell.tooltip);
      return;
    }
    views.showTooltip(shell.tooltip, chart.heatTooltip(view.heat, cell), ev.pageX, ev.pageY);
  }

  function onHeatClick(view, ev) {
    const cell = chart.heatmapCellAt(view.layout, ev.offsetX, ev.offsetY);
    if (!cell) return;
    state.layer = view.heat.layers[cell.row];
    selectStep(view.heat.steps[cell.col]);
    mark("bars", "heat");
  }

  function onAlert(alert) {
    state.layer = alert.layer;
    selectStep(alert.first_step);
    mark("bars", "heat");
  }

  // ---- drawing ----------------------------------------------------------------

  function frame() {
    raf = 0;
    const width = Math.floor(shell.barWrap.clientWidth);
    if (dirty.dom) drawDom();
    if (dirty.bars && width > 0) drawBarPlot(width);
    if (dirty.heat) drawHeatmaps();
    dirty.bars = dirty.heat = dirty.dom = false;
  }

  function drawDom() {
    const label = (r) => (r.name === null && r.tag === "gradflow" ? r.run : `${r.run} (${r.name ?? r.tag})`);
    const options = state.runs.map((r) => ({ value: runKey(r), label: label(r) }));
    if (state.a) views.setOptions(shell.run, options, runKey(state.a));
    views.setOptions(
      shell.compare,
      [{ value: "", label: "\u2014 none \u2014" }, ...options.filter((o) => !state.a || o.value !== runKey(state.a))],
      state.b ? runKey(state.b) : "",
    );
    const kept = [state.a, state.b].filter(Boolean).map((r) => `${r.run}: ${keptStepsText(r)}`);
    shell.kept.textContent = kept.join(" \u00b7 ");
    shell.kept.classList.toggle("gf-warn", [state.a, state.b].some((r) => r && r.steps < r.expected_steps));

    const n = state.steps.length;
    shell.slider.max = String(Math.max(0, n - 1));
    shell.slider.value = String(Math.max(0, state.index));
    shell.slider.disabled = n < 2;
    shell.play.disabled = n < 2;
    const step = state.steps[state.index];
    shell.stepLabel.textContent = step === undefined ? "" : `step ${step}  (${state.index + 1} of ${n})`;
    shell.stepLabel.dataset.step = step === undefined ? "" : String(step);
    shell.slider.setAttribute("aria-valuetext", step === undefined ? "" : `step ${step}`);
    shell.play.textContent = state.playing ? "\u23f8 Pause" : "\u25b6 Play";
    shell.play.setAttribute("aria-pressed", String(state.playing));

    const p = palette();
    const items = state.flows.map((f, i) => ({ kind: "bar", label: f.run, color: p.series[i] }));
    if (state.stat === "abs_mean") items.push({ kind: "back", label: "abs_max (behind)", color: p.back[0] });
    items.push(
      { kind: "zero", label: "exactly zero", color: p.zero },
      { kind: "no_grad", label: "no gradient", color: p.noGrad },
      { kind: "nonfinite", label: "non-finite", color: p.nonfinite },
      { kind: "blocked", label: "blocked", color: p.blocked },
    );
    views.renderLegend(shell.legend, items);

    const groups = [state.a, state.b]
      .map((r, i) => (r ? { run: r.run, series: i, alerts: state.alerts[i] || [] } : null))
      .filter(Boolean);
    views.renderAlerts(shell.alerts, groups, onAlert, { layer: state.layer, step: step ?? -1 });
  }

  function drawBarPlot(width) {
    if (!state.flows.length) return;
    const data = chart.barData(state.flows, state.stat, { log: state.log, selectedLayer: state.layer });
    barLayout = chart.barLayout(data, { width, measure });
    const ctx = chart.sizeCanvas(shell.bars, barLayout.width, barLayout.height, win.devicePixelRatio || 1);
    chart.drawBars(ctx, barLayout, palette());
    views.renderBarTable(shell.barTable, data, { step: state.flows[0].step, run: state.flows[0].run });
    shell.barTable.dataset.scale = state.log ? "log" : "linear";
    shell.bars.setAttribute(
      "aria-label",
      `Bar plot of ${state.stat} per layer for ${state.flows.map((f) => `${f.run} at step ${f.step}`).join(" and ")}`,
    );
  }

  function heatImage(heat, domain, pixelCols) {
    const rows = heat.layers.length;
    const pooled = chart.poolColumns(heat.values, rows, heat.steps.length, pixelCols);
    const key = `${domain}|${state.dark}|${pooled.cols}`;
    const hit = images.get(heat);
    if (hit && hit.key === key) return hit.canvas;
    const canvas = doc.createElement("canvas");
    canvas.width = Math.max(1, pooled.cols);
    canvas.height = Math.max(1, rows);
    if (rows && pooled.cols) {
      const pixels = chart.heatPixels(pooled.values, rows, pooled.cols, domain, palette());
      canvas.getContext("2d").putImageData(new ImageData(pixels, pooled.cols, rows), 0, 0);
    }
    images.set(heat, { key, canvas });
    return canvas;
  }

  function drawHeatmaps() {
    const heats = state.heats;
    while (shell.heatWrap.children.length > heats.length) shell.heatWrap.lastChild.remove();
    while (shell.heatWrap.children.length < heats.length) {
      const canvas = doc.createElement("canvas");
      canvas.className = "gf-canvas gf-heatmap";
      canvas.dataset.testid = "heatmap";
      canvas.setAttribute("role", "img");
      const view = { canvas, layout: null, heat: null };
      canvas.addEventListener("mousemove", (ev) => view.layout && onHeatMove(view, ev));
      canvas.addEventListener("mouseleave", () => views.hideTooltip(shell.tooltip));
      canvas.addEventListener("click", (ev) => view.layout && onHeatClick(view, ev));
      canvas._view = view;
      shell.heatWrap.appendChild(canvas);
    }
    for (const k of images.keys()) if (!heats.includes(k)) images.delete(k);
    const width = Math.floor(shell.heatWrap.clientWidth);
    if (width <= 0) return;
    const domain = chart.heatDomain(heats);
    const step = state.steps[state.index];
    heats.forEach((heat, i) => {
      const canvas = shell.heatWrap.children[i];
      const view = canvas._view;
      const title = `${heat.run} \u00b7 ${heat.stat}${heat.downsampled ? " (max per bin)" : ""}`;
      view.layout = chart.heatmapLayout({ layers: heat.layers, steps: heat.steps, title, domain }, { width, measure });
      view.heat = heat;
      const flow = state.flows[i];
      const blocked = new Set();
      if (flow) {
        for (const al of flow.alerts) if (al.kind === "blocked") blocked.add(heat.layers.indexOf(al.layer));
      }
      const ctx = chart.sizeCanvas(canvas, view.layout.width, view.layout.height, win.devicePixelRatio || 1);
      chart.drawHeatmap(ctx, view.layout, {
        domain,
        image: heatImage(heat, domain, Math.round(view.layout.plot.w * (win.devicePixelRatio || 1))),
        selectedCol: step === undefined ? -1 : chart.columnOfStep(heat, flow ? flow.step : step),
        selectedRow: state.layer === null ? -1 : heat.layers.indexOf(state.layer),
        blockedRows: blocked,
      }, palette());
      const { plot } = view.layout;
      canvas.dataset.run = heat.run;
      canvas.dataset.rows = String(view.layout.rows);
      canvas.dataset.cols = String(view.layout.cols);
      canvas.dataset.plot = [plot.x, plot.y, plot.w, plot.h].map((v) => v.toFixed(1)).join(",");
      canvas.setAttribute("aria-label", `Heatmap of ${heat.stat} for ${heat.run}: ${view.layout.rows} layers by ${view.layout.cols} steps`);
    });
  }

  // ---- start --------------------------------------------------------------------

  views.watchColorScheme(win, (dark) => {
    state.dark = dark;
    doc.documentElement.classList.toggle("gf-dark", dark);
    mark("bars", "heat", "dom");
  });
  let lastWidth = 0;
  new win.ResizeObserver(() => {
    const w = shell.barWrap.clientWidth;
    if (w !== lastWidth) {
      lastWidth = w;
      mark("bars", "heat");
    }
  }).observe(shell.root);
  await poll();
  win.setInterval(() => {
    if (!doc.hidden) poll();
  }, POLL_MS);
}
