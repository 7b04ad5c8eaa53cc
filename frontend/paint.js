// Paints a state into the tab's shell: menus, labels, legend and alerts (text
// only), the bar plot and the heatmaps (canvases sized by devicePixelRatio). It
// keeps the layouts it drew to answer the pointer: hovering shows a tooltip,
// clicking goes out as an action. It never changes the state itself.

import * as chart from "./chart.js";
import { layerLabel } from "./model.js";
import * as present from "./present.js";
import { currentStep } from "./state.js";
import * as views from "./views.js";

/**
 * @typedef {import("./state.js").State} State
 * @typedef {(action: import("./state.js").Action) => unknown} Dispatch
 * @typedef {{canvas: HTMLCanvasElement, layout: (ReturnType<typeof chart.heatmapLayout>|null),
 *   heat: (import("./model.js").Heatmap|null)}} HeatView
 */

/**
 * Creates the painter of one shell and wires the pointer on its canvases.
 * @param {Window} win
 * @param {views.Shell} shell
 * @param {() => State} getState the state now (the tooltip's statistic)
 * @param {Dispatch} dispatch
 * @returns {{draw: (state: State, dirty: Set<"dom"|"bars"|"heat">) => void,
 *   exportCanvas: (state: State) => (HTMLCanvasElement|null)}}
 */
export function createPainter(win, shell, getState, dispatch) {
  const doc = win.document;
  let barLayout = null;
  let empty = null; // the empty view's message and hint now shown
  /** @type {HeatView[]} one per heatmap canvas, in order */
  const heatViews = [];
  const images = new Map(); // heat -> {key, canvas}
  const measureCtx = doc.createElement("canvas").getContext("2d");
  const measure = (text, bold) => {
    measureCtx.font = bold ? chart.FONT_BOLD : chart.FONT;
    return measureCtx.measureText(text).width;
  };
  const dpr = () => win.devicePixelRatio || 1;
  const hideTooltip = () => views.hideTooltip(shell.tooltip);

  // bar plot: hover shows the layer's values, click selects the layer
  shell.bars.addEventListener("mousemove", (ev) => {
    if (!barLayout) return;
    const i = chart.barIndexAt(barLayout, ev.offsetX, ev.offsetY);
    if (i < 0) hideTooltip();
    else views.showTooltip(shell.tooltip, chart.barTooltip(barLayout, i, getState().stat), ev.pageX, ev.pageY);
  });
  shell.bars.addEventListener("mouseleave", hideTooltip);
  shell.bars.addEventListener("click", (ev) => {
    if (!barLayout) return;
    const i = chart.barIndexAt(barLayout, ev.offsetX, ev.offsetY);
    dispatch({ type: "toggleLayer", layer: i < 0 ? null : barLayout.layers[i] });
  });

  /** @param {State} state */
  function drawDom(state) {
    doc.documentElement.classList.toggle("gf-dark", state.dark);
    // a selected run that cannot be shown says why in place of the charts
    const problem = present.runProblem(state);
    const message = problem ? problem.title : present.emptyMessage(state);
    const hint = problem ? problem.hint : present.EMPTY_HINT;
    const shown = message === null ? null : [message, ...hint.map((h) => h.text)].join("\n");
    if (shown !== empty) {
      empty = shown;
      views.showEmpty(shell, message, hint);
    }
    if (shell.status.textContent !== state.error) views.setStatus(shell, state.error, state.error !== "");

    const menus = present.runMenus(state);
    if (state.a) views.setOptions(shell.run, menus.run, menus.runValue);
    views.setOptions(shell.compare, menus.compare, menus.compareValue);
    views.setOptions(shell.stat, present.statOptions(state), state.stat);
    shell.stat.title = present.statTitle(state);
    const log = present.logControl(state);
    shell.log.checked = log.checked;
    shell.log.disabled = log.disabled;
    shell.log.parentElement.title = log.title;
    const speed = present.speedMenu(state);
    views.setOptions(shell.speed, speed.options, speed.value);
    const kept = present.keptLine(state);
    shell.kept.textContent = kept.text;
    shell.kept.classList.toggle("gf-warn", kept.warn);
    views.renderLeftOut(shell.leftOut, present.leftOutGroups(state));

    const c = present.stepControls(state);
    shell.slider.max = c.max;
    shell.slider.value = c.value;
    shell.slider.disabled = c.disabled;
    shell.play.disabled = c.disabled;
    shell.stepLabel.textContent = c.label;
    shell.stepLabel.dataset.step = c.step;
    shell.slider.setAttribute("aria-valuetext", c.valueText);
    shell.play.textContent = c.play;
    shell.play.setAttribute("aria-pressed", c.pressed);

    const step = currentStep(state);
    views.renderAlerts(
      shell.alerts,
      present.alertGroups(state),
      (alert) => dispatch({ type: "focus", layer: alert.layer, step: alert.first_step }),
      { layer: state.layer, step: step ?? -1 },
    );
  }

  /**
   * @param {State} state
   * @param {number} width CSS px
   */
  function drawBarPlot(state, width) {
    // the legend goes with the plot: it names what the axis and scale show
    views.renderLegend(shell.legend, present.legendItems(state));
    if (!state.flows.length) return;
    const data = chart.barData(state.flows, state.stat, present.barOptions(state));
    barLayout = chart.barLayout(data, { width, measure });
    const ctx = chart.sizeCanvas(shell.bars, barLayout.width, barLayout.height, dpr());
    chart.drawBars(ctx, barLayout, present.palette(state));
    views.renderBarTable(shell.barTable, data, { step: state.flows[0].step, run: state.flows[0].run });
    // what was drawn: the axis and its tick labels
    shell.barTable.dataset.stat = state.stat;
    shell.barTable.dataset.message = barLayout.message;
    shell.barTable.dataset.scale = barLayout.axis;
    shell.barTable.dataset.ticks = barLayout.yTicks.map((t) => t.text).join(" ");
    shell.bars.setAttribute("aria-label", present.barLabel(state));
  }

  /**
   * The heatmap's pixels, one per layer and pooled column (cached per heatmap).
   * @param {State} state
   * @param {import("./model.js").Heatmap} heat
   * @param {[number, number]} domain
   * @param {number} pixelCols
   * @returns {HTMLCanvasElement}
   */
  function heatImage(state, heat, domain, pixelCols) {
    const rows = heat.layers.length;
    const pooled = chart.poolColumns(heat.values, rows, heat.steps.length, pixelCols);
    const key = `${domain}|${state.dark}|${pooled.cols}`;
    const hit = images.get(heat);
    if (hit && hit.key === key) return hit.canvas;
    const canvas = doc.createElement("canvas");
    canvas.width = Math.max(1, pooled.cols);
    canvas.height = Math.max(1, rows);
    if (rows && pooled.cols) {
      const pixels = chart.heatPixels(pooled.values, rows, pooled.cols, domain, present.palette(state));
      canvas.getContext("2d").putImageData(new ImageData(pixels, pooled.cols, rows), 0, 0);
    }
    images.set(heat, { key, canvas });
    return canvas;
  }

  /** @returns {HeatView} a new heatmap canvas, wired to the pointer */
  function addHeatCanvas() {
    const canvas = doc.createElement("canvas");
    canvas.className = "gf-canvas gf-heatmap";
    canvas.dataset.testid = "heatmap";
    canvas.setAttribute("role", "img");
    const view = { canvas, layout: null, heat: null };
    const cellAt = (ev) => (view.layout ? chart.heatmapCellAt(view.layout, ev.offsetX, ev.offsetY) : null);
    canvas.addEventListener("mousemove", (ev) => {
      if (!view.layout) return;
      const cell = cellAt(ev);
      if (!cell) hideTooltip();
      else views.showTooltip(shell.tooltip, chart.heatTooltip(view.heat, cell), ev.pageX, ev.pageY);
    });
    canvas.addEventListener("mouseleave", hideTooltip);
    canvas.addEventListener("click", (ev) => {
      const cell = cellAt(ev);
      if (cell) dispatch({ type: "focus", layer: view.heat.layers[cell.row], step: view.heat.steps[cell.col] });
    });
    shell.heatWrap.appendChild(canvas);
    return view;
  }

  /** @param {State} state */
  function drawHeatmaps(state) {
    const heats = state.heats;
    while (heatViews.length > heats.length) heatViews.pop().canvas.remove();
    while (heatViews.length < heats.length) heatViews.push(addHeatCanvas());
    for (const k of images.keys()) if (!heats.includes(k)) images.delete(k);
    const width = Math.floor(shell.heatWrap.clientWidth);
    if (width <= 0) return;
    const domain = chart.heatDomain(heats);
    const step = currentStep(state);
    heats.forEach((heat, i) => {
      const view = heatViews[i];
      const { canvas } = view;
      const { title, message } = present.heatText(heat);
      const labels = heat.layers.map((name, j) => layerLabel(name, heat.types ? heat.types[j] : ""));
      view.layout = chart.heatmapLayout({ layers: heat.layers, labels, steps: heat.steps, title, domain }, { width, measure });
      view.heat = heat;
      const flow = state.flows[i];
      const blocked = new Set();
      if (flow) {
        for (const al of flow.alerts) if (al.kind === "blocked") blocked.add(heat.layers.indexOf(al.layer));
      }
      const ctx = chart.sizeCanvas(canvas, view.layout.width, view.layout.height, dpr());
      chart.drawHeatmap(ctx, view.layout, {
        domain,
        message,
        image: message ? null : heatImage(state, heat, domain, Math.round(view.layout.plot.w * dpr())),
        selectedCol: step === undefined ? -1 : chart.columnOfStep(heat, flow ? flow.step : step),
        selectedRow: state.layer === null ? -1 : heat.layers.indexOf(state.layer),
        blockedRows: blocked,
      }, present.palette(state));
      const { plot } = view.layout;
      canvas.dataset.run = heat.run;
      canvas.dataset.rows = String(view.layout.rows);
      canvas.dataset.cols = String(view.layout.cols);
      canvas.dataset.plot = [plot.x, plot.y, plot.w, plot.h].map((v) => v.toFixed(1)).join(",");
      canvas.dataset.logged = String(heat.logged !== false);
      const size = message ? ` (${message})` : `: ${view.layout.rows} layers by ${view.layout.cols} steps`;
      canvas.setAttribute("aria-label", `Heatmap of ${heat.stat} for ${heat.run}${size}`);
    });
  }

  /**
   * The bar plot as a PNG of its own (heading, plot, legend), drawn at the
   * plot's width on screen and the device pixel ratio; null without a step.
   * @param {State} state
   * @returns {HTMLCanvasElement|null}
   */
  function exportCanvas(state) {
    if (!state.flows.length) return null;
    const data = chart.barData(state.flows, state.stat, present.barOptions(state));
    const bars = chart.barLayout(data, { width: Math.max(320, Math.floor(shell.barWrap.clientWidth)), measure });
    const layout = chart.exportLayout(bars, present.legendItems(state), { heading: present.PNG_HEADING, measure });
    const canvas = doc.createElement("canvas");
    const ctx = chart.sizeCanvas(canvas, layout.width, layout.height, dpr());
    chart.drawExport(ctx, layout, bars, present.palette(state));
    return canvas;
  }

  return {
    exportCanvas,
    draw(state, dirty) {
      if (dirty.has("dom")) drawDom(state);
      const width = Math.floor(shell.barWrap.clientWidth); // after the DOM: the empty view may have gone
      if (dirty.has("bars") && width > 0) drawBarPlot(state, width);
      if (dirty.has("heat")) drawHeatmaps(state);
    },
  };
}
