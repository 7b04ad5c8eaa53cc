// The classic gradient-flow bar plot: one bar per layer at one step, for one run or
// two compared by layer name (its PNG export: export.js).
// `barData` and `barLayout` are pure (text widths come from a `measure`
// callback), so `node --test` checks them; the draw functions take (ctx, layout,
// palette) and only paint.

import {
  ABSENT_TEXT, FONT, FONT_BOLD, LINE, STATUS_TEXT, drawMessage, drawReference, drawYGrid, referenceOf,
} from "./canvas.js";
import { groupOfLayer } from "./grouping.js";
import { layerCount, layerLabel, matchLayers } from "./model.js";
import { formatValue, valueAxis } from "./scale.js";

/** @typedef {import("./palette.js").Palette} Palette */

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
 * it in the plot when no shown run logged it. `reference`: the statistic's
 * rule of thumb (`update_ratio`: about 1e-3), drawn on a log or linear axis.
 * @param {import("./model.js").Flow[]} flows one or two
 * @param {string} stat
 * @param {{log: boolean, unit?: (string|null), selectedLayer?: (string|null)}} opts
 *   `unit`: the statistic's (see {@link axisKind}; default "value")
 * @returns {{layers: string[], labels: string[], series: BarSeries[], log: boolean,
 *   axis: ("log"|"linear"|"count"|"fraction"), selected: number,
 *   title: {text: string, series: number}[], message: string,
 *   reference: (import("./canvas.js").Reference|null)}}
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
    // alerts name layers: a grouped answer's bar is the group holding the layer
    const blocked = new Set(flow.alerts.filter((a) => a.kind === "blocked").map((a) => groupOfLayer(flow, a.layer)));
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
      sizes: flow.members ? idx.map((j) => (j >= 0 && flow.members[j] ? flow.members[j].length : 0)) : null,
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
  const per = first.group === "block" || first.group === "role" ? `  \u00b7  per ${first.group}` : "";
  title.push({ text: `  \u00b7  ${stat}${note}${unlogged.length ? ` (not logged${where})` : ""}${per}`, series: -1 });
  const message = none ? `${stat} is not logged in ${unlogged.join(" or ")}` : "";
  const selected = opts.selectedLayer == null ? -1 : match.names.indexOf(opts.selectedLayer);
  const reference = axis === "log" || axis === "linear" ? referenceOf(stat) : null;
  return { layers: match.names, labels, series, log: axis === "log", axis, selected, title, message, reference };
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
 * the run's files lack the statistic. `sizes`: in a grouped answer (per block
 * or role), how many layers each bar's group holds in that run (0: none).
 * @typedef {{label: string, values: number[], back: (number[]|null),
 *   status: string[], blocked: boolean[], absent?: boolean[],
 *   sizes?: (number[]|null), notLogged?: boolean}} BarSeries
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
 * A `reference` (a statistic's rule of thumb) is drawn as a band with a line
 * in it, and the axis always holds its band.
 *
 * @param {{layers: string[], labels?: string[], series: BarSeries[], log: boolean,
 *   axis?: ("log"|"linear"|"count"|"fraction"), title?: {text: string, series: number}[],
 *   selected?: number, message?: string,
 *   reference?: (import("./canvas.js").Reference|null)}} data (without `axis`: `log` or
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

  // y scale: on a log axis abs_max behind sets the range too; on a linear one
  // the statistic alone (a taller abs_max is cut at the top)
  const axis = data.axis || (data.log ? "log" : "linear");
  const values = data.series.map((s) => s.values);
  const backs = axis === "log" ? data.series.filter((s) => s.back).map((s) => s.back) : [];
  const y0 = top;
  const y1 = top + plotHeight;
  const ruleOfThumb = data.reference ? [data.reference.band] : [];
  const { scale, ticks: yTicks } = valueAxis(axis, [...values, ...backs, ...ruleOfThumb], [y1, y0]);
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

  const reference = data.reference
    ? {
      y: clampY(scale.map(data.reference.value), plot),
      band: [clampY(scale.map(data.reference.band[1]), plot), clampY(scale.map(data.reference.band[0]), plot)],
    }
    : null;
  return {
    width, height, plot, band, floorY, scale, yTicks, labels, every, angle, bars, reference,
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
 * How many layers bar `i` of a grouped bar plot holds: "12 layers" (one
 * run, or runs that agree), else each run's count; "" per layer.
 * @param {BarSeries[]} series
 * @param {number} i
 * @returns {string}
 */
export function groupSizeText(series, i) {
  const grouped = series.filter((s) => s.sizes);
  if (!grouped.length) return "";
  const counts = grouped.map((s) => s.sizes[i]);
  if (counts.every((n) => n === counts[0])) return `group of ${layerCount(counts[0])}`;
  return `group of ${grouped.map((s, k) => `${layerCount(counts[k])} in ${s.label}`).join(", ")}`;
}

/**
 * The tooltip lines of one layer (or group) of the bar plot: its name and
 * module type (as drawn under the axis), how many layers a group holds, then
 * each run's value (or what is special about it).
 * @param {{layers: string[], labels: {text: string}[], series: BarSeries[]}} layout
 * @param {number} i layer index
 * @param {string} stat
 * @returns {string[]}
 */
export function barTooltip(layout, i, stat) {
  const lines = [layout.labels[i].text];
  const held = groupSizeText(layout.series, i);
  if (held) lines.push(held);
  for (const s of layout.series) {
    const status = s.status[i];
    let what = status === "ok" || status === "zero" ? formatValue(s.values[i]) : STATUS_TEXT[status];
    if (status === "missing" && s.absent && s.absent[i]) what += ` (${ABSENT_TEXT})`;
    const back = s.back && status === "ok" ? ` (abs_max ${formatValue(s.back[i])})` : "";
    lines.push(`${s.label}: ${stat} ${what}${back}${s.blocked[i] ? " \u2014 blocked" : ""}`);
  }
  return lines;
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

  drawYGrid(ctx, plot, layout.yTicks, palette);

  // the statistic's rule of thumb: a band with a dashed line in it
  if (layout.reference) {
    drawReference(ctx, plot, layout.reference, palette, "band");
    drawReference(ctx, plot, layout.reference, palette, "line");
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
