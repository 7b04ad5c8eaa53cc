// Canvas charts of the Gradient Flow tab: the classic gradient-flow bar plot (one bar per layer)
// and the layers-by-steps heatmap. The layout functions are pure (text widths come
// from a `measure` callback), so `node --test` checks them; the draw functions take
// (ctx, layout, data/palette) and only paint.

import {
  countTicks, decadeDomain, finiteMax, formatPow10, formatValue, logTicks, logUnit, niceLinear,
  positiveExtent, ramp, scaleLinear, scaleLog, ticks,
} from "./scale.js";
import { layerLabel, matchLayers } from "./model.js";

/** Font of every chart text (CSS px). */
export const FONT = "12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
/** Bold variant, for blocked layers' names. */
export const FONT_BOLD = `bold ${FONT}`;
/** Height of one text line (CSS px). */
export const LINE = 16;

/**
 * Colours of one scheme.
 * @typedef {{bg: string, fg: string, muted: string, grid: string, axis: string,
 *   series: string[], back: string[], blockedBand: string, blocked: string,
 *   noGrad: string, nonfinite: string, zero: string, selected: string,
 *   heatNaN: [number, number, number], heatInf: [number, number, number],
 *   heatZero: [number, number, number], heatAbsent: [number, number, number]}} Palette
 * `heatAbsent`: the hatching of heatmap cells of a layer not in the step's
 * layer set (drawn over the background: nothing was logged there).
 */

/** @type {{light: Palette, dark: Palette}} */
export const PALETTES = {
  light: {
    bg: "#ffffff", fg: "#202124", muted: "#5f6368", grid: "#e8eaed", axis: "#3c4043",
    series: ["#1a73e8", "#e8710a"], back: ["rgba(26,115,232,0.22)", "rgba(232,113,10,0.22)"],
    blockedBand: "rgba(217,48,37,0.10)", blocked: "#c5221f", noGrad: "#80868b",
    nonfinite: "#a142f4", zero: "#188038", selected: "#202124",
    heatNaN: [218, 220, 224], heatInf: [255, 0, 160], heatZero: [0, 0, 0], heatAbsent: [154, 160, 166],
  },
  dark: {
    bg: "#1f1f1f", fg: "#e8eaed", muted: "#9aa0a6", grid: "#3c4043", axis: "#bdc1c6",
    series: ["#8ab4f8", "#fcad70"], back: ["rgba(138,180,248,0.28)", "rgba(252,173,112,0.28)"],
    blockedBand: "rgba(242,139,130,0.16)", blocked: "#f28b82", noGrad: "#9aa0a6",
    nonfinite: "#d7aefb", zero: "#81c995", selected: "#ffffff",
    heatNaN: [72, 74, 78], heatInf: [255, 64, 190], heatZero: [0, 0, 0], heatAbsent: [128, 134, 139],
  },
};

/**
 * The bar plot's y axis for a statistic of `unit` (the registry's, as the
 * `runs` route lists it): a count on a `count` axis (from 0, whole-number
 * ticks) and a fraction on a `fraction` axis (0 to 1), whatever the log toggle
 * says; a value (or a statistic of unknown unit) on a `log` or `linear` one.
 * @param {string|null} unit "value", "count" or "fraction"
 * @param {boolean} log the log-scale toggle
 * @returns {"log"|"linear"|"count"|"fraction"}
 */
export function axisKind(unit, log) {
  if (unit === "count" || unit === "fraction") return unit;
  return log ? "log" : "linear";
}

/** The statuses a bar can have, in legend order. */
export const STATUSES = ["ok", "zero", "no_grad", "nonfinite", "missing", "not_logged"];

/**
 * The status of one layer's bar.
 * @param {number} value the statistic (NaN without a gradient)
 * @param {{noGrad?: boolean, nonfinite?: number, missing?: boolean, notLogged?: boolean}} flags
 *   `nonfinite`: count of non-finite gradient elements; `missing`: the run has no
 *   such layer (runs compared by name), or not at this step (absent from the
 *   layer set its session logged); `notLogged`: the run's files lack the
 *   statistic (its NaN says nothing about the gradient).
 * @returns {"ok"|"zero"|"no_grad"|"nonfinite"|"missing"|"not_logged"}
 */
export function barStatus(value, flags = {}) {
  if (flags.missing) return "missing";
  if (flags.notLogged) return "not_logged";
  if (flags.noGrad) return "no_grad";
  if (flags.nonfinite > 0 || value === Infinity || value === -Infinity) return "nonfinite";
  if (Number.isNaN(value)) return "no_grad";
  if (value === 0) return "zero";
  return "ok";
}

/**
 * What the bar plot shows for one or two runs at one step: layers matched by
 * name (`layers`, the keys) and shown with their module types (`labels`: the
 * first run's type, else the second's; both when they differ), each run's
 * statistic (plus `abs_max` behind `abs_mean`), bar statuses and blocked
 * flags (from the flow's alerts, which hold at the step). On a count axis a
 * count is a bar like any value (not the hatched non-finite column: the count
 * is what is shown). A run whose files lack the statistic (or that does not
 * have it) has only `not_logged` bars, the title says so, and `message` says
 * it in the plot when no shown run logged it.
 * @param {import("./model.js").Flow[]} flows one or two
 * @param {string} stat
 * @param {{log: boolean, unit?: (string|null), selectedLayer?: (string|null)}} opts
 *   `unit`: the statistic's (see {@link axisKind}; default "value")
 * @returns {{layers: string[], labels: string[], series: BarSeries[], log: boolean,
 *   axis: ("log"|"linear"|"count"|"fraction"), selected: number,
 *   title: {text: string, series: number}[], message: string}}
 */
export function barData(flows, stat, opts) {
  const axis = axisKind(opts.unit ?? "value", opts.log);
  const first = flows[0];
  const second = flows[1] || null;
  const match = second ? matchLayers(first.layers, second.layers) : {
    names: first.layers.slice(), a: first.layers.map((_, i) => i), b: [],
  };
  const series = flows.map((flow, si) => {
    const idx = si === 0 ? match.a : match.b;
    const notLogged = !(stat in flow.stats) || (flow.not_logged || []).includes(stat);
    const values = notLogged ? [] : flow.stats[stat];
    const back = stat === "abs_mean" && flow.stats.abs_max && !notLogged ? flow.stats.abs_max : null;
    const nonfinite = flow.stats.nonfinite || [];
    const blocked = new Set(flow.alerts.filter((a) => a.kind === "blocked").map((a) => a.layer));
    return {
      label: flow.run,
      values: idx.map((j) => (j < 0 ? NaN : values[j] ?? NaN)),
      back: back ? idx.map((j) => (j < 0 ? NaN : back[j] ?? NaN)) : null,
      status: idx.map((j) => barStatus(j < 0 ? NaN : values[j] ?? NaN, {
        missing: j < 0 || flow.absent[j], notLogged, noGrad: j >= 0 && flow.no_grad[j],
        nonfinite: j < 0 || axis === "count" ? 0 : nonfinite[j],
      })),
      blocked: idx.map((j) => j >= 0 && blocked.has(flow.layers[j])),
      absent: idx.map((j) => j >= 0 && flow.absent[j]),
      notLogged,
    };
  });
  const typeIn = (flow, j) => (flow && j >= 0 && flow.types ? flow.types[j] || "" : "");
  const labels = match.names.map((name, i) => {
    const ta = typeIn(first, match.a[i]);
    const tb = second ? typeIn(second, match.b[i]) : "";
    return layerLabel(name, ta && tb && ta !== tb ? `${ta} / ${tb}` : ta || tb);
  });
  const title = [];
  flows.forEach((flow, si) => {
    if (si > 0) title.push({ text: "  vs  ", series: -1 });
    title.push({ text: `${flow.run} @ step ${flow.step}`, series: flows.length > 1 ? si : -1 });
  });
  const unlogged = flows.filter((_, si) => series[si].notLogged).map((f) => f.run);
  const none = unlogged.length === flows.length;
  const note = none ? "" : { log: " (log scale)", linear: "", count: " (count)", fraction: " (fraction)" }[axis];
  const where = unlogged.length && flows.length > 1 && !none ? ` in ${unlogged.join(", ")}` : "";
  title.push({ text: `  \u00b7  ${stat}${note}${unlogged.length ? ` (not logged${where})` : ""}`, series: -1 });
  const message = none ? `${stat} is not logged in ${unlogged.join(" or ")}` : "";
  const selected = opts.selectedLayer == null ? -1 : match.names.indexOf(opts.selectedLayer);
  return { layers: match.names, labels, series, log: axis === "log", axis, selected, title, message };
}

/**
 * Bounding box of a right-aligned, vertically centred text of width `w` and
 * height `h` whose end sits at (0, 0), rotated by `-angle` (reading upwards).
 * @param {number} w
 * @param {number} h
 * @param {number} angle radians, 0..PI/2
 * @returns {{x0: number, y0: number, x1: number, y1: number}}
 */
export function rotatedTextBox(w, h, angle) {
  const c = Math.cos(angle);
  const s = Math.sin(angle);
  const xs = [];
  const ys = [];
  for (const x of [-w, 0]) {
    for (const y of [-h / 2, h / 2]) {
      xs.push(x * c + y * s);
      ys.push(-x * s + y * c);
    }
  }
  return { x0: Math.min(...xs), y0: Math.min(...ys), x1: Math.max(...xs), y1: Math.max(...ys) };
}

/**
 * One series of bars: a run's statistic for every (matched) layer. `absent`:
 * the run has the layer, but not in the layer set of this step. `notLogged`:
 * the run's files lack the statistic.
 * @typedef {{label: string, values: number[], back: (number[]|null),
 *   status: string[], blocked: boolean[], absent?: boolean[],
 *   notLogged?: boolean}} BarSeries
 */

/**
 * The layout of the bar plot, everything in CSS px. Pure.
 *
 * Layer names go under the axis at 45 degrees (90 when the bars are narrow or a
 * first name is long), ending at their bar; the left and bottom margins are
 * measured so that no name is cut off, and the canvas grows downwards to fit
 * them. When even vertical names would overlap, every k-th is drawn.
 *
 * The y range: on a log axis, whole decades around the statistic and `abs_max`
 * behind it; on a linear axis, 0 to the statistic's largest value, so that the
 * chosen statistic fills the plot (an `abs_max` bar above it is cut at the top
 * and marked `clipped`); on a count axis, 0 to the largest count, whole numbers;
 * on a fraction axis, 0 to 1. `message`, when given, is written in the plot.
 *
 * @param {{layers: string[], labels?: string[], series: BarSeries[], log: boolean,
 *   axis?: ("log"|"linear"|"count"|"fraction"), title?: {text: string, series: number}[],
 *   selected?: number, message?: string}} data (without `axis`: `log` or
 *   `linear` from `log`); `labels`: the names drawn (default: `layers`)
 * @param {{width: number, plotHeight?: number, measure: (text: string, bold?: boolean) => number}} opts
 * @returns {object} the layout (see the fields set below)
 */
export function barLayout(data, opts) {
  const width = Math.max(120, opts.width);
  const plotHeight = opts.plotHeight || 260;
  const measure = opts.measure;
  const n = data.layers.length;
  const right = 14;
  const top = LINE + 14; // title line

  // y scale
  const axis = data.axis || (data.log ? "log" : "linear");
  const values = data.series.map((s) => s.values);
  let scale;
  let yTicks;
  const y0 = top;
  const y1 = top + plotHeight;
  if (axis === "log") {
    const backs = data.series.filter((s) => s.back).map((s) => s.back);
    const [lo, hi] = decadeDomain(positiveExtent([...values, ...backs]));
    scale = scaleLog([lo, hi], [y1, y0]);
    yTicks = logTicks(lo, hi, Math.max(2, Math.floor(plotHeight / 28))).map((t) => ({
      value: t.value, text: formatPow10(t.exponent), y: scale.map(t.value),
    }));
  } else if (axis === "count") {
    const steps = countTicks(finiteMax(values), Math.max(2, Math.floor(plotHeight / 40)));
    scale = scaleLinear([0, steps[steps.length - 1]], [y1, y0]);
    yTicks = steps.map((v) => ({ value: v, text: String(v), y: scale.map(v) }));
  } else if (axis === "fraction") {
    scale = scaleLinear([0, 1], [y1, y0]);
    yTicks = ticks(0, 1, Math.max(2, Math.floor(plotHeight / 40))).map((v) => ({
      value: v, text: formatValue(v), y: scale.map(v),
    }));
  } else {
    const max = finiteMax(values); // the statistic's own range: abs_max is cut at the top
    const count = Math.max(2, Math.floor(plotHeight / 40));
    const hi = max > 0 ? niceLinear(0, max, count)[1] : 1;
    scale = scaleLinear([0, hi], [y1, y0]);
    yTicks = ticks(0, hi, count).map((v) => ({ value: v, text: formatValue(v), y: scale.map(v) }));
  }
  const axisW = Math.ceil(Math.max(0, ...yTicks.map((t) => measure(t.text)))) + 14;

  // label geometry: choose the angle, then the left margin that keeps names inside
  const texts = data.labels || data.layers;
  const widths = texts.map((text, i) => measure(text, anyBlocked(data.series, i)));
  const bandFor = (left) => Math.max(0.5, (width - left - right) / Math.max(1, n));
  const needLeft = (left, angle, every) => {
    const band = bandFor(left);
    let need = axisW;
    for (let i = 0; i < n; i += every) {
      const box = rotatedTextBox(widths[i], LINE, angle);
      need = Math.max(need, -box.x0 - (i + 0.5) * band + 2);
    }
    return Math.ceil(need);
  };
  let angle = Math.PI / 4;
  let band = bandFor(axisW);
  if (band * Math.sin(angle) < LINE) angle = Math.PI / 2;
  let every = 1;
  if (angle === Math.PI / 2 && band < LINE) every = Math.ceil(LINE / band);
  let left = axisW;
  for (let k = 0; k < 6; k++) left = Math.max(axisW, needLeft(left, angle, every));
  if (angle !== Math.PI / 2 && left > axisW + 0.25 * width) {
    angle = Math.PI / 2;
    left = axisW;
    for (let k = 0; k < 6; k++) left = Math.max(axisW, needLeft(left, angle, every));
  }
  band = bandFor(left);
  if (angle === Math.PI / 2) every = band < LINE ? Math.ceil(LINE / band) : 1;
  const plot = { x: left, y: y0, w: width - left - right, h: plotHeight };
  const floorY = y1;

  const labels = [];
  let bottom = 0;
  for (let i = 0; i < n; i++) {
    const cx = plot.x + (i + 0.5) * band;
    const ay = floorY + 8;
    const box = rotatedTextBox(widths[i], LINE, angle);
    const shown = i % every === 0;
    if (shown) bottom = Math.max(bottom, ay + box.y1);
    labels.push({
      index: i, text: texts[i], x: cx, y: ay, angle, shown,
      blocked: anyBlocked(data.series, i),
      box: { x0: cx + box.x0, y0: ay + box.y0, x1: cx + box.x1, y1: ay + box.y1 },
    });
  }
  const height = Math.ceil(Math.max(floorY + 24, bottom + 6));

  // bars
  const S = Math.max(1, data.series.length);
  const groupW = Math.min(band * (band > 6 ? 0.78 : 1), 44 * S); // wide bands: slim bars
  const barW = groupW / S;
  const stub = 4; // height of the zero mark
  const bars = [];
  data.series.forEach((s, si) => {
    for (let i = 0; i < n; i++) {
      const x = plot.x + i * band + (band - groupW) / 2 + si * barW;
      const value = s.values[i];
      const status = s.status[i];
      const bar = { index: i, series: si, x, w: barW, value, status, blocked: !!s.blocked[i] };
      if (status === "ok") {
        const y = clampY(scale.map(value), plot);
        bar.y = y;
        bar.h = Math.max(1, floorY - y);
      } else if (status === "zero") {
        bar.y = floorY - stub;
        bar.h = stub;
      } else if (status === "nonfinite") {
        bar.y = plot.y;
        bar.h = plot.h;
      } else {
        bar.y = floorY;
        bar.h = 0;
      }
      const bv = s.back ? s.back[i] : NaN;
      if (status === "ok" && bv > 0 && Number.isFinite(bv)) {
        const by = clampY(scale.map(bv), plot);
        bar.back = { y: by, h: Math.max(0, floorY - by), clipped: bv > scale.domain[1] };
      }
      bars.push(bar);
    }
  });

  return {
    width, height, plot, band, floorY, scale, yTicks, labels, every, angle, bars,
    log: axis === "log", axis, title: data.title || [], selected: data.selected ?? -1, series: data.series,
    layers: data.layers, message: data.message || "",
  };
}

function anyBlocked(series, i) {
  return series.some((s) => s.blocked && s.blocked[i]);
}

function clampY(y, plot) {
  if (!Number.isFinite(y)) return plot.y + plot.h;
  return Math.min(plot.y + plot.h, Math.max(plot.y, y));
}

/**
 * The layer under a point of the bar plot (its column, including the name area
 * below it); -1 outside.
 * @param {{plot: {x: number, y: number, w: number, h: number}, band: number,
 *   layers: string[], height: number}} layout
 * @param {number} x
 * @param {number} y
 * @returns {number}
 */
export function barIndexAt(layout, x, y) {
  const { plot, band } = layout;
  if (x < plot.x || x >= plot.x + plot.w || y < plot.y || y > layout.height) return -1;
  const i = Math.floor((x - plot.x) / band);
  return i >= 0 && i < layout.layers.length ? i : -1;
}

/**
 * The tooltip lines of one layer of the bar plot: its name and module type (as
 * drawn under the axis), then each run's value (or what is special about it).
 * @param {{layers: string[], labels: {text: string}[], series: BarSeries[]}} layout
 * @param {number} i layer index
 * @param {string} stat
 * @returns {string[]}
 */
export function barTooltip(layout, i, stat) {
  const lines = [layout.labels[i].text];
  for (const s of layout.series) {
    const status = s.status[i];
    let what = status === "ok" || status === "zero" ? formatValue(s.values[i]) : STATUS_TEXT[status];
    if (status === "missing" && s.absent && s.absent[i]) what += ` (${ABSENT_TEXT})`;
    const back = s.back && status === "ok" ? ` (abs_max ${formatValue(s.back[i])})` : "";
    lines.push(`${s.label}: ${stat} ${what}${back}${s.blocked[i] ? " \u2014 blocked" : ""}`);
  }
  return lines;
}

/** How the tab says what a bar or heatmap cell that is not a value is. */
const STATUS_TEXT = {
  no_grad: "no gradient", nonfinite: "non-finite", missing: "no such layer", not_logged: "not logged",
};
/** Why a layer the run has is missing at a step. */
const ABSENT_TEXT = "not in this step's layer set";

/**
 * The tooltip lines of one heatmap cell: layer (with its module type), run and
 * step (or the bin's step range), value, said as the bar plot says it: "no
 * gradient" (NaN), "non-finite" (+Infinity), "no such layer" (-Infinity: not
 * in the step's layer set); "not logged" for every cell of a statistic the
 * run's files lack.
 * @param {{run: string, stat: string, layers: string[], types?: string[], steps: number[],
 *   first_steps: number[], last_steps: number[], values: Float32Array,
 *   logged?: boolean}} heat
 * @param {{row: number, col: number}} cell
 * @returns {string[]}
 */
export function heatTooltip(heat, cell) {
  const v = heat.values[cell.row * heat.steps.length + cell.col];
  const a = heat.first_steps[cell.col];
  const z = heat.last_steps[cell.col];
  const stepText = a === z ? `step ${a}` : `steps ${a}\u2013${z} (largest in the bin)`;
  let valueText;
  if (heat.logged === false) valueText = STATUS_TEXT.not_logged;
  else if (Number.isNaN(v)) valueText = STATUS_TEXT.no_grad;
  else if (v === Infinity) valueText = STATUS_TEXT.nonfinite;
  else if (v === -Infinity) valueText = `${STATUS_TEXT.missing} (${a === z ? ABSENT_TEXT : "not in these steps' layer sets"})`;
  else valueText = formatValue(v);
  const name = heat.layers[cell.row];
  return [layerLabel(name, heat.types ? heat.types[cell.row] : ""), `${heat.run}, ${stepText}`, `${heat.stat} ${valueText}`];
}

/**
 * The longest prefix of `text` (plus an ellipsis) no wider than `maxW`.
 * @param {string} text
 * @param {number} maxW
 * @param {(s: string) => number} measure
 * @returns {string}
 */
export function ellipsize(text, maxW, measure) {
  if (measure(text) <= maxW) return text;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (measure(text.slice(0, mid) + "\u2026") <= maxW) lo = mid;
    else hi = mid - 1;
  }
  return text.slice(0, lo) + "\u2026";
}

/**
 * The layout of one heatmap (rows = layers, columns = kept steps or bins). Pure.
 * Row names (`labels`: names with module types; default `layers`) longer than
 * a third of the width are ellipsized (the bar plot and the tooltip show them
 * whole); the colour legend moves under the title when both do not fit on one
 * line.
 * @param {{layers: string[], labels?: string[], steps: number[], title?: string,
 *   domain?: ([number, number]|null)}} data
 * @param {{width: number, measure: (text: string, bold?: boolean) => number}} opts
 * @returns {object} the layout: plot rect, cell size, row labels, column ticks, legend
 */
export function heatmapLayout(data, opts) {
  const width = Math.max(160, opts.width);
  const rows = data.layers.length;
  const cols = data.steps.length;
  const measure = opts.measure;
  const maxLabelW = Math.max(40, Math.floor(width * 0.35));
  // measured bold: blocked layers' names are drawn bold
  const texts = (data.labels || data.layers).map((name) => ellipsize(name, maxLabelW, (t) => measure(t, true)));
  const labelW = Math.ceil(Math.max(0, ...texts.map((t) => measure(t, true))));
  const right = 14;
  const x = labelW + 10;
  const title = data.title || "";
  const legend = legendItems(data.domain || null);
  const legendW = legend.reduce((w, it) => w + (it.kind === "ramp" ? 96 + 12 : 28) + measure(it.text), 0);
  const oneLine = x + measure(title) + 24 + legendW <= width - right;
  const titleY = LINE / 2 + 2;
  const legendY = oneLine ? titleY : titleY + LINE + 2;
  const plot = { x, y: legendY + LINE / 2 + 12, w: Math.max(10, width - x - right), h: 0 };
  const total = Math.min(480, Math.max(48, rows * 18));
  const cellH = rows ? total / rows : 0;
  plot.h = rows ? rows * cellH : total; // no rows (a statistic not logged): room for the message
  const cellW = cols ? plot.w / cols : 0;
  const every = cellH >= LINE - 2 ? 1 : Math.ceil((LINE - 2) / Math.max(cellH, 1e-9));
  const rowLabels = [];
  for (let i = 0; i < rows; i += every) rowLabels.push({ index: i, text: texts[i], y: plot.y + (i + 0.5) * cellH });
  const xTicks = [];
  if (cols > 0) {
    const count = Math.max(2, Math.floor(plot.w / 90));
    for (const c of ticks(0, cols - 1, count)) {
      if (!Number.isInteger(c)) continue;
      xTicks.push({ col: c, x: plot.x + (c + 0.5) * cellW, text: String(data.steps[c]) });
    }
  }
  const height = Math.ceil(plot.y + plot.h + LINE + 12);
  return { width, height, plot, rows, cols, cellW, cellH, rowLabels, every, xTicks, title, titleY, legendY, legend };
}

/**
 * The heatmap legend's entries, right to left: the special colours, then the
 * ramp with its end values.
 * @param {[number, number] | null} domain
 * @returns {{kind: string, text: string}[]}
 */
function legendItems(domain) {
  const items = [
    { kind: "heatInf", text: STATUS_TEXT.nonfinite },
    { kind: "heatAbsent", text: STATUS_TEXT.missing },
    { kind: "heatNaN", text: STATUS_TEXT.no_grad },
    { kind: "heatZero", text: "zero" },
  ];
  if (domain) items.push({ kind: "ramp", text: `${formatValue(domain[0])}  ${formatValue(domain[1])}` });
  return items;
}

/**
 * The cell under a point of a heatmap; null outside the matrix.
 * @param {{plot: {x: number, y: number, w: number, h: number}, rows: number,
 *   cols: number, cellW: number, cellH: number}} layout
 * @param {number} x
 * @param {number} y
 * @returns {{row: number, col: number} | null}
 */
export function heatmapCellAt(layout, x, y) {
  const { plot, rows, cols } = layout;
  if (!rows || !cols) return null;
  if (x < plot.x || x >= plot.x + plot.w || y < plot.y || y >= plot.y + plot.h) return null;
  const col = Math.min(cols - 1, Math.floor((x - plot.x) / layout.cellW));
  const row = Math.min(rows - 1, Math.floor((y - plot.y) / layout.cellH));
  return { row, col };
}

/**
 * The column of a heatmap that holds `step` (its first..last step range), else
 * the nearest column; -1 without columns.
 * @param {{steps: number[], first_steps: number[], last_steps: number[]}} heat
 * @param {number} step
 * @returns {number}
 */
export function columnOfStep(heat, step) {
  const n = heat.steps.length;
  if (!n) return -1;
  let best = 0;
  let bestD = Infinity;
  for (let c = 0; c < n; c++) {
    const a = heat.first_steps[c];
    const b = heat.last_steps[c];
    if (step >= a && step <= b) return c;
    const d = step < a ? a - step : step - b;
    if (d < bestD) {
      bestD = d;
      best = c;
    }
  }
  return best;
}

/**
 * The colour of one heatmap cell: the log ramp over [lo, hi], with distinct
 * colours for no gradient (NaN), non-finite (+Infinity), no such layer
 * (-Infinity; {@link heatPixels} leaves those cells transparent over the
 * hatching) and exactly zero.
 * @param {number} v
 * @param {[number, number] | null} domain positive [lo, hi]
 * @param {Palette} palette
 * @returns {[number, number, number]}
 */
export function heatColor(v, domain, palette) {
  if (Number.isNaN(v)) return palette.heatNaN;
  if (v === -Infinity) return palette.heatAbsent;
  if (v === Infinity) return palette.heatInf;
  if (v <= 0 || !domain) return palette.heatZero;
  return ramp(logUnit(v, domain[0], domain[1]));
}

/**
 * The log colour domain shared by some heatmaps (positive finite values).
 * @param {{values: Float32Array}[]} heats
 * @returns {[number, number] | null}
 */
export function heatDomain(heats) {
  return positiveExtent(heats.map((h) => h.values));
}

/**
 * Sizes a canvas for `cssW` x `cssH` CSS px in device pixels and scales its
 * context so that drawing code works in CSS px. Setting `width` resets the
 * transform, so the scale is applied again on every call.
 * @param {HTMLCanvasElement} canvas
 * @param {number} cssW
 * @param {number} cssH
 * @param {number} dpr devicePixelRatio
 * @returns {CanvasRenderingContext2D}
 */
export function sizeCanvas(canvas, cssW, cssH, dpr) {
  const w = Math.round(cssW * dpr);
  const h = Math.round(cssH * dpr);
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  canvas.style.width = `${cssW}px`;
  canvas.style.height = `${cssH}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.scale(dpr, dpr);
  return ctx;
}

/**
 * Paints the bar plot.
 * @param {CanvasRenderingContext2D} ctx scaled to CSS px
 * @param {ReturnType<typeof barLayout>} layout
 * @param {Palette} palette
 */
export function drawBars(ctx, layout, palette) {
  const { plot, floorY } = layout;
  ctx.save();
  ctx.fillStyle = palette.bg;
  ctx.fillRect(0, 0, layout.width, layout.height);
  ctx.font = FONT;

  // title, with a colour square before each compared run
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  let tx = plot.x;
  const ty = LINE / 2 + 4;
  for (const part of layout.title) {
    if (part.series >= 0) {
      ctx.fillStyle = palette.series[part.series % palette.series.length];
      ctx.fillRect(tx, ty - 5, 10, 10);
      tx += 14;
    }
    ctx.fillStyle = palette.fg;
    ctx.fillText(part.text, tx, ty);
    tx += ctx.measureText(part.text).width;
  }

  // blocked columns, selected column
  for (const lab of layout.labels) {
    if (lab.blocked) {
      ctx.fillStyle = palette.blockedBand;
      ctx.fillRect(plot.x + lab.index * layout.band, plot.y, layout.band, plot.h);
    }
  }
  if (layout.selected >= 0) {
    ctx.strokeStyle = palette.selected;
    ctx.setLineDash([3, 3]);
    ctx.lineWidth = 1;
    ctx.strokeRect(plot.x + layout.selected * layout.band + 0.5, plot.y + 0.5, layout.band - 1, plot.h - 1);
    ctx.setLineDash([]);
  }

  // grid and y ticks
  ctx.textAlign = "right";
  ctx.lineWidth = 1;
  for (const t of layout.yTicks) {
    const y = Math.round(t.y) + 0.5;
    ctx.strokeStyle = palette.grid;
    ctx.beginPath();
    ctx.moveTo(plot.x, y);
    ctx.lineTo(plot.x + plot.w, y);
    ctx.stroke();
    ctx.fillStyle = palette.muted;
    ctx.fillText(t.text, plot.x - 8, t.y);
  }

  // bars: abs_max lightly behind (a mark above the plot where it is cut off),
  // then the statistic
  for (const b of layout.bars) {
    if (b.back) {
      ctx.fillStyle = palette.back[b.series % palette.back.length];
      ctx.fillRect(b.x, b.back.y, b.w, b.back.h);
      if (b.back.clipped) drawClipMark(ctx, b, plot.y, palette.series[b.series % palette.series.length]);
    }
  }
  for (const b of layout.bars) drawBar(ctx, b, layout, palette);
  if (layout.message) drawMessage(ctx, layout.message, plot, palette);

  // zero line (the axis floor in log scale) and the y axis
  ctx.strokeStyle = palette.axis;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  ctx.moveTo(plot.x, floorY + 0.5);
  ctx.lineTo(plot.x + plot.w, floorY + 0.5);
  ctx.moveTo(plot.x + 0.5, plot.y);
  ctx.lineTo(plot.x + 0.5, floorY);
  ctx.stroke();

  // layer names, rotated
  for (const lab of layout.labels) {
    if (!lab.shown) continue;
    ctx.save();
    ctx.translate(lab.x, lab.y);
    ctx.rotate(-lab.angle);
    ctx.font = lab.blocked ? FONT_BOLD : FONT;
    ctx.fillStyle = lab.blocked ? palette.blocked : palette.fg;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ctx.fillText(lab.text, 0, 0);
    ctx.restore();
  }
  ctx.restore();
}

/**
 * A line of text in the middle of a plot (a statistic not logged).
 * @param {CanvasRenderingContext2D} ctx
 * @param {string} text
 * @param {{x: number, y: number, w: number, h: number}} plot
 * @param {Palette} palette
 */
function drawMessage(ctx, text, plot, palette) {
  ctx.save();
  ctx.font = FONT;
  ctx.fillStyle = palette.muted;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.fillText(text, plot.x + plot.w / 2, plot.y + plot.h / 2, plot.w - 8);
  ctx.restore();
}

/** An upward triangle just above the plot: this bar's `abs_max` is higher. */
function drawClipMark(ctx, b, y, color) {
  const cx = b.x + b.w / 2;
  const r = Math.max(2.5, Math.min(5, b.w / 2));
  ctx.fillStyle = color;
  ctx.beginPath();
  ctx.moveTo(cx - r, y - 1);
  ctx.lineTo(cx + r, y - 1);
  ctx.lineTo(cx, y - 1 - 1.4 * r);
  ctx.closePath();
  ctx.fill();
}

function drawBar(ctx, b, layout, palette) {
  const color = palette.series[b.series % palette.series.length];
  const cx = b.x + b.w / 2;
  const floorY = layout.floorY;
  const r = Math.max(2.5, Math.min(5, b.w / 2 - 1));
  switch (b.status) {
    case "ok":
      ctx.fillStyle = color;
      ctx.fillRect(b.x, b.y, b.w, b.h);
      break;
    case "zero": // a hollow stub at the floor: present, exactly zero
      ctx.strokeStyle = palette.zero;
      ctx.fillStyle = palette.bg;
      ctx.lineWidth = 1.5;
      ctx.fillRect(b.x, floorY - 7, b.w, 7);
      ctx.strokeRect(b.x + 0.75, floorY - 7, Math.max(0.5, b.w - 1.5), 7);
      break;
    case "nonfinite": // hatched column over the whole height: off every scale
      ctx.save();
      ctx.beginPath();
      ctx.rect(b.x, b.y, b.w, b.h);
      ctx.clip();
      ctx.strokeStyle = palette.nonfinite;
      ctx.lineWidth = 2;
      for (let y = b.y - b.w; y < b.y + b.h + b.w; y += 6) {
        ctx.beginPath();
        ctx.moveTo(b.x, y + b.w);
        ctx.lineTo(b.x + b.w, y);
        ctx.stroke();
      }
      ctx.restore();
      ctx.strokeStyle = palette.nonfinite;
      ctx.lineWidth = 1;
      ctx.strokeRect(b.x + 0.5, b.y + 0.5, Math.max(0.5, b.w - 1), b.h - 1);
      break;
    case "no_grad": // a cross at the floor
      ctx.strokeStyle = palette.noGrad;
      ctx.lineWidth = 1.75;
      ctx.beginPath();
      ctx.moveTo(cx - r, floorY - 2 - 2 * r);
      ctx.lineTo(cx + r, floorY - 2);
      ctx.moveTo(cx + r, floorY - 2 - 2 * r);
      ctx.lineTo(cx - r, floorY - 2);
      ctx.stroke();
      break;
    case "not_logged": // nothing to draw: the title and the tooltip say why
      break;
    default: // missing in this run: a short dash
      ctx.strokeStyle = palette.muted;
      ctx.lineWidth = 1;
      ctx.setLineDash([2, 2]);
      ctx.beginPath();
      ctx.moveTo(b.x, floorY - 3);
      ctx.lineTo(b.x + b.w, floorY - 3);
      ctx.stroke();
      ctx.setLineDash([]);
  }
}

/**
 * The layout of the bar plot as a PNG of its own: a heading, the plot (with its
 * title line: runs, step, statistic, scale) and the legend under it, wrapped
 * to the plot's width. Pure; everything in CSS px.
 * @param {ReturnType<typeof barLayout>} bars
 * @param {{kind: string, label: string, color: string}[]} items the legend
 * @param {{heading: string, measure: (text: string, bold?: boolean) => number}} opts
 * @returns {{width: number, height: number, heading: string, headingY: number,
 *   chartY: number, legend: {kind: string, label: string, color: string,
 *   x: number, y: number}[]}} `y`: the middle of an entry's line
 */
export function exportLayout(bars, items, opts) {
  const pad = 12;
  const swatch = 12;
  const width = bars.width;
  const headingY = pad + LINE / 2;
  const chartY = pad + LINE + 4;
  const rowH = LINE + 6;
  const top = chartY + bars.height + 4;
  const legend = [];
  let x = pad;
  let row = 0;
  for (const it of items) {
    const w = swatch + 6 + opts.measure(it.label) + 18;
    if (x > pad && x + w > width - pad) {
      row += 1;
      x = pad;
    }
    legend.push({ ...it, x, y: top + row * rowH + rowH / 2 });
    x += w;
  }
  const height = Math.ceil(top + (items.length ? row + 1 : 0) * rowH + pad);
  return { width, height, heading: opts.heading, headingY, chartY, legend };
}

/**
 * Paints the bar plot's PNG: background, heading, the plot, the legend (each
 * entry's swatch drawn like the mark it stands for).
 * @param {CanvasRenderingContext2D} ctx scaled to CSS px
 * @param {ReturnType<typeof exportLayout>} layout
 * @param {ReturnType<typeof barLayout>} bars
 * @param {Palette} palette
 */
export function drawExport(ctx, layout, bars, palette) {
  ctx.save();
  ctx.fillStyle = palette.bg;
  ctx.fillRect(0, 0, layout.width, layout.height);
  ctx.font = FONT_BOLD;
  ctx.fillStyle = palette.fg;
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  ctx.fillText(layout.heading, 12, layout.headingY);
  ctx.save();
  ctx.translate(0, layout.chartY);
  drawBars(ctx, bars, palette);
  ctx.restore();
  ctx.font = FONT;
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  for (const it of layout.legend) {
    drawSwatch(ctx, it, palette);
    ctx.fillStyle = palette.fg;
    ctx.fillText(it.label, it.x + 18, it.y);
  }
  ctx.restore();
}

/** A 12 px legend swatch at (it.x, it.y - 6), as the DOM legend draws it. */
function drawSwatch(ctx, it, palette) {
  const x = it.x;
  const y = Math.round(it.y - 6);
  const s = 12;
  ctx.save();
  switch (it.kind) {
    case "zero":
      ctx.strokeStyle = it.color;
      ctx.lineWidth = 1.5;
      ctx.strokeRect(x + 0.75, y + s - 7 + 0.75, s - 1.5, 5.5);
      break;
    case "no_grad":
      ctx.strokeStyle = it.color;
      ctx.lineWidth = 1.75;
      ctx.beginPath();
      ctx.moveTo(x + 1, y + 1);
      ctx.lineTo(x + s - 1, y + s - 1);
      ctx.moveTo(x + s - 1, y + 1);
      ctx.lineTo(x + 1, y + s - 1);
      ctx.stroke();
      break;
    case "nonfinite":
      ctx.beginPath();
      ctx.rect(x, y, s, s);
      ctx.clip();
      ctx.strokeStyle = it.color;
      ctx.lineWidth = 2;
      for (let k = -s; k < s; k += 5) {
        ctx.beginPath();
        ctx.moveTo(x + k, y + s);
        ctx.lineTo(x + k + s, y);
        ctx.stroke();
      }
      ctx.lineWidth = 1;
      ctx.strokeRect(x + 0.5, y + 0.5, s - 1, s - 1);
      break;
    case "missing": // a short dash at the floor, as the bar plot draws it
      ctx.strokeStyle = it.color;
      ctx.lineWidth = 1;
      ctx.setLineDash([2, 2]);
      ctx.beginPath();
      ctx.moveTo(x, y + s - 3);
      ctx.lineTo(x + s, y + s - 3);
      ctx.stroke();
      ctx.setLineDash([]);
      break;
    case "blocked":
      ctx.fillStyle = palette.blockedBand;
      ctx.fillRect(x, y, s, s);
      ctx.fillStyle = it.color;
      ctx.fillRect(x, y + s - 3, s, 3);
      break;
    default: // "bar", "back": a filled square
      ctx.fillStyle = it.color;
      ctx.fillRect(x, y, s, s);
  }
  ctx.restore();
}

/**
 * Paints one heatmap: the matrix (one image pixel per cell, scaled without
 * smoothing), row names, step ticks, the colour legend and the selection.
 * @param {CanvasRenderingContext2D} ctx scaled to CSS px
 * @param {ReturnType<typeof heatmapLayout>} layout
 * @param {{domain: ([number, number]|null), selectedCol: number, selectedRow: number,
 *   blockedRows: Set<number>, image: (CanvasImageSource|null), message?: string}} data
 *   `image`: the `cols x rows` pixels of {@link heatPixels} on a canvas;
 *   `message`: written over the plot instead (a statistic not logged).
 * @param {Palette} palette
 */
export function drawHeatmap(ctx, layout, data, palette) {
  const { plot } = layout;
  ctx.save();
  ctx.fillStyle = palette.bg;
  ctx.fillRect(0, 0, layout.width, layout.height);
  ctx.font = FONT;
  ctx.textBaseline = "middle";

  ctx.fillStyle = palette.fg;
  ctx.textAlign = "left";
  ctx.fillText(layout.title, plot.x, layout.titleY);
  drawLegend(ctx, layout, data.domain, palette);

  if (data.message) {
    ctx.strokeStyle = palette.grid;
    ctx.strokeRect(plot.x + 0.5, plot.y + 0.5, plot.w - 1, plot.h - 1);
    drawMessage(ctx, data.message, plot, palette);
  } else if (data.image && layout.rows && layout.cols) {
    hatch(ctx, plot.x, plot.y, plot.w, plot.h, palette); // shows where a layer is absent
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(data.image, plot.x, plot.y, plot.w, plot.h);
  }

  ctx.fillStyle = palette.fg;
  ctx.textAlign = "right";
  for (const lab of layout.rowLabels) {
    const blocked = data.blockedRows && data.blockedRows.has(lab.index);
    ctx.font = blocked ? FONT_BOLD : FONT;
    ctx.fillStyle = blocked ? palette.blocked : palette.fg;
    ctx.fillText(lab.text, plot.x - 6, lab.y);
  }
  ctx.font = FONT;
  ctx.fillStyle = palette.muted;
  ctx.textAlign = "center";
  for (const t of layout.xTicks) ctx.fillText(t.text, t.x, plot.y + plot.h + LINE / 2 + 4);

  ctx.strokeStyle = palette.selected;
  ctx.lineWidth = 1.5;
  if (data.selectedCol >= 0) {
    const x = plot.x + (data.selectedCol + 0.5) * layout.cellW;
    ctx.beginPath();
    ctx.moveTo(x, plot.y - 4);
    ctx.lineTo(x, plot.y + plot.h + 2);
    ctx.stroke();
  }
  if (data.selectedRow >= 0) {
    ctx.strokeRect(plot.x - 0.5, plot.y + data.selectedRow * layout.cellH - 0.5, plot.w + 1, layout.cellH + 1);
  }
  ctx.restore();
}

function drawLegend(ctx, layout, domain, palette) {
  const y = layout.legendY;
  let x = layout.width - 14;
  ctx.textAlign = "left";
  for (const it of layout.legend) {
    if (it.kind === "ramp") break;
    const rgb = palette[it.kind];
    x -= ctx.measureText(it.text).width;
    ctx.fillStyle = palette.muted;
    ctx.fillText(it.text, x, y);
    x -= 14;
    if (it.kind === "heatAbsent") hatch(ctx, x, y - 5, 10, 10, palette);
    else {
      ctx.fillStyle = `rgb(${rgb.join(",")})`;
      ctx.fillRect(x, y - 5, 10, 10);
    }
    ctx.strokeStyle = palette.grid;
    ctx.strokeRect(x + 0.5, y - 4.5, 9, 9);
    x -= 14;
  }
  if (!domain) return;
  const hiText = formatValue(domain[1]);
  const loText = formatValue(domain[0]);
  ctx.fillStyle = palette.muted;
  ctx.textAlign = "right";
  ctx.fillText(hiText, x, y);
  x -= ctx.measureText(hiText).width + 6;
  const w = 96;
  for (let i = 0; i < w; i++) {
    ctx.fillStyle = `rgb(${ramp(i / (w - 1)).join(",")})`;
    ctx.fillRect(x - w + i, y - 5, 1.5, 10);
  }
  x -= w + 6;
  ctx.fillStyle = palette.muted;
  ctx.fillText(loText, x, y);
}

/**
 * Fills a rectangle with the background and thin diagonal lines in
 * `palette.heatAbsent`: the heatmap's mark for "no such layer".
 * @param {CanvasRenderingContext2D} ctx
 * @param {number} x
 * @param {number} y
 * @param {number} w
 * @param {number} h
 * @param {Palette} palette
 */
function hatch(ctx, x, y, w, h, palette) {
  ctx.save();
  ctx.beginPath();
  ctx.rect(x, y, w, h);
  ctx.clip();
  ctx.fillStyle = palette.bg;
  ctx.fillRect(x, y, w, h);
  ctx.strokeStyle = `rgb(${palette.heatAbsent.join(",")})`;
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let k = -h; k < w; k += 4) {
    ctx.moveTo(x + k, y + h);
    ctx.lineTo(x + k + h, y);
  }
  ctx.stroke();
  ctx.restore();
}

/**
 * Narrows a `[row][col]` matrix to `outCols` columns by the server's rule, so
 * that drawing it into fewer pixels than columns keeps spikes: a pixel column's
 * value is +Infinity if any of its columns is (non-finite), else the largest
 * finite value, else NaN if any is NaN (no gradient), else -Infinity (no such
 * layer in any of them).
 * @param {Float32Array} values `[row][col]`
 * @param {number} rows
 * @param {number} cols
 * @param {number} outCols
 * @returns {{values: Float32Array, cols: number}}
 */
export function poolColumns(values, rows, cols, outCols) {
  outCols = Math.max(1, Math.floor(outCols));
  if (outCols >= cols) return { values, cols };
  const out = new Float32Array(rows * outCols);
  for (let o = 0; o < outCols; o++) {
    const c0 = Math.floor((o * cols) / outCols);
    const c1 = Math.max(c0 + 1, Math.floor(((o + 1) * cols) / outCols));
    for (let r = 0; r < rows; r++) {
      let best = -Infinity;
      let inf = false;
      let any = false;
      let noGrad = false;
      for (let c = c0; c < c1; c++) {
        const v = values[r * cols + c];
        if (v === Infinity) inf = true;
        else if (Number.isNaN(v)) noGrad = true;
        else if (v !== -Infinity) {
          any = true;
          if (v > best) best = v;
        }
      }
      out[r * outCols + o] = inf ? Infinity : any ? best : noGrad ? NaN : -Infinity;
    }
  }
  return { values: out, cols: outCols };
}

/**
 * RGBA pixels of a heatmap, one per cell (`cols` wide, `rows` high); cells of
 * a layer not in the step's layer set (-Infinity) are transparent, so the
 * hatching {@link drawHeatmap} puts under the image shows there.
 * @param {Float32Array} values `[row][col]`
 * @param {number} rows
 * @param {number} cols
 * @param {[number, number] | null} domain
 * @param {Palette} palette
 * @returns {Uint8ClampedArray}
 */
export function heatPixels(values, rows, cols, domain, palette) {
  const out = new Uint8ClampedArray(rows * cols * 4);
  const lut = Array.from({ length: 256 }, (_, k) => ramp(k / 255));
  for (let i = 0; i < rows * cols; i++) {
    const v = values[i];
    let rgb;
    if (v > 0 && v !== Infinity && domain) rgb = lut[Math.round(logUnit(v, domain[0], domain[1]) * 255)];
    else rgb = heatColor(v, domain, palette);
    out[4 * i] = rgb[0];
    out[4 * i + 1] = rgb[1];
    out[4 * i + 2] = rgb[2];
    out[4 * i + 3] = v === -Infinity ? 0 : 255;
  }
  return out;
}
