// Paints a state into the tab's shell: menus, labels, legend and alerts (text
// only), the bar plot, the lines views and the heatmaps (canvases sized by
// devicePixelRatio). It keeps the layouts it drew to answer the pointer:
// hovering shows a tooltip (and, over a line, highlights its layer), clicking
// goes out as an action. It never changes the state itself.

import * as barChart from "./bars.js";
import { drawExport, exportLayout } from "./export.js";
import { FONT, FONT_BOLD, referenceOf, sizeCanvas } from "./canvas.js";
import { rowOfLayer } from "./grouping.js";
import * as heatChart from "./heatmap.js";
import * as linesChart from "./lines.js";
import { drawSpikeMarks, heatMarkPoints, lineMarkPoints, spikeCells } from "./marks.js";
import { runKey } from "./model.js";
import * as present from "./present.js";
import { currentStep, shownRuns, statUnit } from "./state.js";
import { drawStrip, stripAxis, stripBars, stripColumnAt, stripTooltip } from "./strip.js";
import * as views from "./views.js";

/**
 * @typedef {import("./state.js").State} State
 * @typedef {(action: import("./state.js").Action) => unknown} Dispatch
 * @typedef {{canvas: HTMLCanvasElement, layout: (ReturnType<typeof heatChart.heatmapLayout>|null),
 *   heat: (import("./binary.js").Heatmap|null)}} HeatView
 * @typedef {{canvas: HTMLCanvasElement, layout: (ReturnType<typeof linesChart.linesLayout>|null),
 *   lines: (import("./binary.js").Lines|null)}} LinesView
 */

/**
 * Creates the painter of one shell and wires the pointer on its canvases.
 * @param {Window} win
 * @param {views.Shell} shell
 * @param {() => State} getState the state now (the tooltip's statistic)
 * @param {Dispatch} dispatch
 * @returns {{draw: (state: State, dirty: Set<"dom"|"bars"|"heat"|"lines">) => void,
 *   exportCanvas: (state: State) => (HTMLCanvasElement|null)}}
 */
export function createPainter(win, shell, getState, dispatch) {
  const doc = win.document;
  let barLayout = null;
  let empty = null; // the empty view's message and hint now shown
  /** @type {HeatView[]} one per heatmap canvas, in order */
  const heatViews = [];
  const images = new Map(); // heat -> {key, canvas}
  /** @type {LinesView[]} one per lines canvas, in order */
  const lineViews = [];
  const bases = new Map(); // lines -> {key, canvas}: every line, drawn once per size and scheme
  const measureCtx = doc.createElement("canvas").getContext("2d");
  const measure = (text, bold) => {
    measureCtx.font = bold ? FONT_BOLD : FONT;
    return measureCtx.measureText(text).width;
  };
  const dpr = () => win.devicePixelRatio || 1;
  const hideTooltip = () => views.hideTooltip(shell.tooltip);

  // bar plot: hover shows the layer's values, click selects the layer
  shell.bars.addEventListener("mousemove", (ev) => {
    if (!barLayout) return;
    const i = barChart.barIndexAt(barLayout, ev.offsetX, ev.offsetY);
    if (i < 0) hideTooltip();
    else views.showTooltip(shell.tooltip, barChart.barTooltip(barLayout, i, getState().stat), ev.pageX, ev.pageY);
  });
  shell.bars.addEventListener("mouseleave", hideTooltip);
  shell.bars.addEventListener("click", (ev) => {
    if (!barLayout) return;
    const i = barChart.barIndexAt(barLayout, ev.offsetX, ev.offsetY);
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
    const groups = present.groupMenu(state);
    views.setOptions(shell.group, groups.options, groups.value);
    shell.group.parentElement.hidden = groups.hidden;
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
      // per block or role, an alert selects the group holding its layer
      (alert) => dispatch({ type: "focus", layer: present.barOfLayer(getState(), alert.layer), step: alert.first_step }),
      { layer: state.layer, step: step ?? -1, barOf: (layer) => present.barOfLayer(state, layer) },
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
    const data = barChart.barData(state.flows, state.stat, present.barOptions(state));
    barLayout = barChart.barLayout(data, { width, measure });
    const ctx = sizeCanvas(shell.bars, barLayout.width, barLayout.height, dpr());
    barChart.drawBars(ctx, barLayout, present.palette(state));
    views.renderBarTable(shell.barTable, data, {
      step: state.flows[0].step,
      run: state.flows[0].run,
      heading: present.barHeading(state),
      unit: present.rowUnit(state.flows[0]),
    });
    // what was drawn: the axis and its tick labels
    shell.barTable.dataset.stat = state.stat;
    shell.barTable.dataset.message = barLayout.message;
    shell.barTable.dataset.scale = barLayout.axis;
    shell.barTable.dataset.ticks = barLayout.yTicks.map((t) => t.text).join(" ");
    shell.barTable.dataset.reference = data.reference ? String(data.reference.value) : "";
    shell.bars.setAttribute("aria-label", present.barLabel(state));
    shell.barHeading.textContent = present.barHeading(state);
    const { plot } = barLayout;
    shell.bars.dataset.plot = [plot.x, plot.y, plot.w, plot.h].map((v) => v.toFixed(1)).join(",");
    shell.bars.dataset.band = barLayout.band.toFixed(3);
    shell.bars.dataset.group = state.flows[0].group || "layer";
  }

  /**
   * The heatmap's pixels, one per layer and pooled column (cached per heatmap).
   * @param {State} state
   * @param {import("./binary.js").Heatmap} heat
   * @param {[number, number]} domain
   * @param {number} pixelCols
   * @returns {HTMLCanvasElement}
   */
  function heatImage(state, heat, domain, pixelCols) {
    const rows = heat.layers.length;
    const pooled = heatChart.poolColumns(heat.values, rows, heat.steps.length, pixelCols);
    const key = `${domain}|${state.dark}|${pooled.cols}`;
    const hit = images.get(heat);
    if (hit && hit.key === key) return hit.canvas;
    const canvas = doc.createElement("canvas");
    canvas.width = Math.max(1, pooled.cols);
    canvas.height = Math.max(1, rows);
    if (rows && pooled.cols) {
      const pixels = heatChart.heatPixels(pooled.values, rows, pooled.cols, domain, present.palette(state));
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
    const cellAt = (ev) => (view.layout ? heatChart.heatmapCellAt(view.layout, ev.offsetX, ev.offsetY) : null);
    const stripAt = (ev) => (view.layout ? stripColumnAt(view.layout.strip, view.layout.cols, ev.offsetX, ev.offsetY) : -1);
    // the name of a group of several layers: a click shows (hides) its layers
    const nameAt = (ev) => (view.layout ? heatChart.heatmapRowLabelAt(view.layout, ev.offsetX, ev.offsetY) : -1);
    const groupAt = (ev) => {
      const row = nameAt(ev);
      const members = row >= 0 && view.heat.members ? view.heat.members[row] : null;
      return members && members.length > 1 ? view.heat.layers[row] : null;
    };
    canvas.addEventListener("mousemove", (ev) => {
      if (!view.layout) return;
      const group = groupAt(ev);
      canvas.style.cursor = group === null ? "" : "pointer";
      const cell = cellAt(ev);
      const col = stripAt(ev);
      const expanded = getState().expanded;
      if (cell) views.showTooltip(shell.tooltip, heatChart.heatTooltip(view.heat, cell), ev.pageX, ev.pageY);
      else if (col >= 0) views.showTooltip(shell.tooltip, stripTooltip(view.heat, col), ev.pageX, ev.pageY);
      else if (group !== null) views.showTooltip(shell.tooltip, present.groupRowTooltip(view.heat, nameAt(ev), expanded), ev.pageX, ev.pageY);
      else hideTooltip();
    });
    canvas.addEventListener("mouseleave", hideTooltip);
    canvas.addEventListener("click", (ev) => {
      const cell = cellAt(ev);
      const col = stripAt(ev);
      const group = groupAt(ev);
      if (cell) dispatch({ type: "focus", layer: view.heat.layers[cell.row], step: view.heat.steps[cell.col] });
      else if (col >= 0) dispatch({ type: "focus", layer: getState().layer, step: view.heat.steps[col] });
      else if (group !== null) dispatch({ type: "toggleExpand", group });
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
    const domain = heatChart.heatDomain(heats);
    const strip = stripAxis(heats.map((h) => h.total_norm));
    const step = currentStep(state);
    const palette = present.palette(state);
    heats.forEach((heat, i) => {
      const view = heatViews[i];
      const { canvas } = view;
      const { title, message } = present.heatText(heat);
      const labels = present.heatRowLabels(heat, state.expanded);
      const spikes = message ? [] : spikeCells(heat, shownAlerts(state, heat, i));
      const selectedRow = state.layer === null ? -1 : heat.layers.indexOf(state.layer);
      const named = heat.layers.flatMap((name, j) => (state.expanded.includes(name) ? [j] : []));
      const data = { layers: heat.layers, labels, steps: heat.steps, title, domain, spikes: spikes.length > 0, selected: selectedRow, named };
      view.layout = heatChart.heatmapLayout({ ...data, strip: heat.total_norm ? strip : null }, { width, measure });
      view.heat = heat;
      const flow = state.flows[i];
      // alerts name layers: a grouped heatmap marks the row of the group holding one
      const rowOf = rowOfLayer(heat);
      const blocked = new Set();
      if (flow) {
        for (const al of flow.alerts) if (al.kind === "blocked" && rowOf.has(al.layer)) blocked.add(rowOf.get(al.layer));
      }
      const ctx = sizeCanvas(canvas, view.layout.width, view.layout.height, dpr());
      heatChart.drawHeatmap(ctx, view.layout, {
        domain,
        message,
        image: message ? null : heatImage(state, heat, domain, Math.round(view.layout.plot.w * dpr())),
        selectedCol: step === undefined ? -1 : heatChart.columnOfStep(heat, flow ? flow.step : step),
        selectedRow,
        blockedRows: blocked,
        memberRows: new Set((heat.depth || []).flatMap((d, j) => (d > 0 ? [j] : []))),
      }, palette);
      const { plot } = view.layout;
      const stripRect = view.layout.strip;
      if (stripRect) drawStrip(ctx, stripRect, stripBars(stripRect, heat.total_norm), palette);
      drawSpikeMarks(ctx, heatMarkPoints(view.layout, spikes), palette);
      canvas.dataset.spikes = spikes.map((c) => `${c.row}:${c.col}`).join(" ");
      canvas.dataset.strip = stripRect ? [stripRect.x, stripRect.y, stripRect.w, stripRect.h].map((v) => v.toFixed(1)).join(",") : "";
      canvas.dataset.run = heat.run;
      const unit = present.rowUnit(heat);
      canvas.dataset.group = unit;
      canvas.dataset.blocked = [...blocked].sort((p, q) => p - q).join(" ");
      canvas.dataset.selected = selectedRow >= 0 ? heat.layers[selectedRow] : "";
      canvas.dataset.expanded = (heat.depth || []).some((d) => d > 0) ? state.expanded.join(" ") : "";
      canvas.dataset.rows = String(view.layout.rows);
      canvas.dataset.cols = String(view.layout.cols);
      canvas.dataset.plot = [plot.x, plot.y, plot.w, plot.h].map((v) => v.toFixed(1)).join(",");
      canvas.dataset.logged = String(heat.logged !== false);
      const size = message ? ` (${message})` : `: ${view.layout.rows} ${unit}s by ${view.layout.cols} steps`;
      canvas.setAttribute("aria-label", `Heatmap of ${heat.stat} per ${unit} for ${heat.run}${size}`);
    });
  }

  /** @returns {LinesView} a new lines canvas, wired to the pointer */
  function addLinesCanvas() {
    const canvas = doc.createElement("canvas");
    canvas.className = "gf-canvas gf-lines-chart";
    canvas.dataset.testid = "lines";
    canvas.setAttribute("role", "img");
    const view = { canvas, layout: null, lines: null };
    const hit = (ev) => (view.layout ? linesChart.lineAt(view.layout, view.lines, ev.offsetX, ev.offsetY) : null);
    const hover = (layer) => {
      if (getState().hover !== layer) dispatch({ type: "hoverLayer", layer });
    };
    canvas.addEventListener("mousemove", (ev) => {
      if (!view.layout) return;
      const cell = hit(ev);
      hover(cell ? view.lines.layers[cell.row] : null);
      if (!cell) hideTooltip();
      else views.showTooltip(shell.tooltip, linesChart.linesTooltip(view.lines, cell), ev.pageX, ev.pageY);
    });
    canvas.addEventListener("mouseleave", () => {
      hideTooltip();
      hover(null);
    });
    canvas.addEventListener("click", (ev) => {
      const step = view.layout ? linesChart.stepAt(view.layout, view.lines, ev.offsetX) : null;
      if (step === null) return;
      const cell = hit(ev);
      dispatch({ type: "focus", layer: cell ? view.lines.layers[cell.row] : getState().layer, step });
    });
    shell.linesWrap.appendChild(canvas);
    return view;
  }

  /**
   * What stays of a lines view while the pointer moves (every line), drawn
   * once per size, scale and scheme on a canvas of its own.
   * @param {LinesView} view
   * @param {import("./palette.js").Palette} palette
   * @param {string} message
   * @param {string} key what the drawing depends on besides the data
   * @returns {HTMLCanvasElement}
   */
  function linesBase(view, palette, message, key) {
    const hit = bases.get(view.lines);
    if (hit && hit.key === key) return hit.canvas;
    const canvas = doc.createElement("canvas");
    const ctx = sizeCanvas(canvas, view.layout.width, view.layout.height, dpr());
    linesChart.drawLinesBase(ctx, view.layout, view.lines, palette, { message });
    bases.set(view.lines, { key, canvas });
    return canvas;
  }

  /** @param {State} state */
  function drawLines(state) {
    const all = state.lines;
    while (lineViews.length > all.length) lineViews.pop().canvas.remove();
    while (lineViews.length < all.length) lineViews.push(addLinesCanvas());
    for (const k of bases.keys()) if (!all.includes(k)) bases.delete(k);
    const width = Math.floor(shell.linesWrap.clientWidth);
    if (width <= 0) return;
    const axis = barChart.axisKind(statUnit(state), state.log);
    const values = all.flatMap((l) => [l.max, l.min]); // one y axis for the runs side by side
    const palette = present.palette(state);
    const layer = state.hover ?? state.layer;
    const step = currentStep(state);
    all.forEach((lines, i) => {
      const view = lineViews[i];
      const { canvas } = view;
      const { title, message } = present.linesText(lines, axis);
      const reference = axis === "log" || axis === "linear" ? referenceOf(lines.stat) : null;
      view.layout = linesChart.linesLayout({ lines, axis, title, values, reference }, { width, measure });
      view.lines = lines;
      const { layout } = view;
      const key = [layout.width, layout.height, dpr(), state.dark, axis, layout.y.domain, title].join("|");
      const base = linesBase(view, palette, message, key);
      const flow = state.flows[i];
      const row = layer === null ? -1 : lines.layers.indexOf(layer);
      const ctx = sizeCanvas(canvas, layout.width, layout.height, dpr());
      linesChart.drawLines(ctx, layout, lines, palette, {
        base, row, measure, selectedStep: flow ? flow.step : step ?? null,
      });
      const spikes = message ? [] : spikeCells(lines, shownAlerts(state, lines, i));
      drawSpikeMarks(ctx, lineMarkPoints(layout, lines, spikes), palette);
      canvas.dataset.spikes = spikes.map((c) => `${c.row}:${c.col}`).join(" ");
      const { plot } = layout;
      canvas.dataset.run = lines.run;
      canvas.dataset.stat = lines.stat;
      canvas.dataset.rows = String(layout.rows);
      canvas.dataset.cols = String(layout.cols);
      canvas.dataset.scale = axis;
      canvas.dataset.plot = [plot.x, plot.y, plot.w, plot.h].map((v) => v.toFixed(1)).join(",");
      canvas.dataset.domain = layout.y.domain.join(","); // the y axis, bottom to top
      canvas.dataset.reference = layout.reference ? layout.reference.y.toFixed(1) : "";
      canvas.dataset.highlight = row >= 0 ? lines.layers[row] : "";
      canvas.dataset.logged = String(lines.logged !== false);
      const unit = present.rowUnit(lines);
      canvas.dataset.group = unit;
      const size = message ? ` (${message})` : `: ${layout.rows} ${unit}s over ${layout.cols} step columns`;
      canvas.setAttribute("aria-label", `Lines of ${lines.stat} per ${unit} for ${lines.run}${size}`);
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
    const data = barChart.barData(state.flows, state.stat, present.barOptions(state));
    const bars = barChart.barLayout(data, { width: Math.max(320, Math.floor(shell.barWrap.clientWidth)), measure });
    const layout = exportLayout(bars, present.legendItems(state), { heading: present.barHeading(state), measure });
    const canvas = doc.createElement("canvas");
    const ctx = sizeCanvas(canvas, layout.width, layout.height, dpr());
    drawExport(ctx, layout, bars, present.palette(state));
    return canvas;
  }

  /**
   * The alerts of the shown run `i` when `binned` (a heatmap or lines answer)
   * is that run's; none while another run's answer is still on screen.
   * @param {State} state
   * @param {{run: string, tag: string}} binned
   * @param {number} i
   * @returns {import("./model.js").Alert[]}
   */
  function shownAlerts(state, binned, i) {
    const r = shownRuns(state)[i];
    return r && runKey(r) === runKey(binned) ? state.alerts[i] || [] : [];
  }

  return {
    exportCanvas,
    draw(state, dirty) {
      if (dirty.has("dom")) drawDom(state);
      const width = Math.floor(shell.barWrap.clientWidth); // after the DOM: the empty view may have gone
      if (dirty.has("bars") && width > 0) drawBarPlot(state, width);
      if (dirty.has("lines")) drawLines(state);
      if (dirty.has("heat")) drawHeatmaps(state);
    },
  };
}
