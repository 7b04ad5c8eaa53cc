// The lines-over-steps view (Karpathy's plot of each layer's update ratio): one
// line per layer of the chosen statistic over the logged steps, coloured by
// depth, on a log axis by default, with the statistic's rule of thumb as a line.
// The `lines` route bins the steps and keeps each bin's smallest and largest
// value, drawn as a vertical stroke, so a spike survives however many steps a
// pixel holds. The layout, hit testing and tooltips are pure (`node --test`
// checks them); the draw functions only paint.

import {
  ABSENT_TEXT, BOUND_TEXT, FONT_BOLD, LINE, STATUS_TEXT, drawMessage, drawReference, drawTitled, drawYGrid, ellipsize,
} from "./canvas.js";
import { boundAt } from "./grouping.js";
import { layerCount, layerLabel } from "./model.js";
import { depthColor } from "./palette.js";
import { formatValue, nearestIndex, scaleLinear, ticks, valueAxis } from "./scale.js";

/** @typedef {import("./palette.js").Palette} Palette */
/** @typedef {import("./binary.js").Lines} Lines */
/** @typedef {import("./canvas.js").Reference} Reference */

/** Height of the plot area (CSS px). */
const PLOT_HEIGHT = 260;
/** How far from a line the pointer still picks it (CSS px). */
const PICK_PX = 6;
/** Width of the depth ramp in the title line (CSS px), and its end labels. */
const RAMP_W = 72;
const RAMP_FIRST = "colour by depth: first layer";
const RAMP_LAST = "last layer";

/**
 * The layout of one lines view, everything in CSS px. Pure.
 *
 * x: the steps, linearly, each column (a bin of steps) at the middle of its
 * step range. y: the value axis of `axis` ({@link valueAxis}), shared by the
 * views shown side by side (`values`: every shown run's smallest and largest
 * values, and the reference band, so that it is always on the axis).
 * @param {{lines: Lines, axis: ("log"|"linear"|"count"|"fraction"), title: string,
 *   values: ArrayLike<number>[], reference?: (Reference|null)}} data
 * @param {{width: number, measure: (text: string, bold?: boolean) => number}} opts
 * @returns {{width: number, height: number, plot: {x: number, y: number, w: number, h: number},
 *   axis: string, y: import("./scale.js").Scale, yTicks: {value: number, text: string, y: number}[],
 *   x: import("./scale.js").Scale, xTicks: {step: number, x: number, text: string}[],
 *   colX: Float64Array, rows: number, cols: number, title: string, titleY: number,
 *   legendX: number, reference: ({y: number, band: [number, number], text: string}|null)}}
 *   `legendX`: where the depth ramp's legend starts in the title line
 */
export function linesLayout(data, opts) {
  const width = Math.max(200, opts.width);
  const { lines } = data;
  const rows = lines.layers.length;
  const cols = lines.steps.length;
  const titleY = LINE / 2 + 2;
  const top = LINE + 14;
  const y0 = top;
  const y1 = top + PLOT_HEIGHT;
  const values = [...data.values];
  if (data.reference) values.push(data.reference.band);
  const { scale: y, ticks: yTicks } = valueAxis(data.axis, values, [y1, y0]);
  const left = Math.ceil(Math.max(0, ...yTicks.map((t) => opts.measure(t.text)))) + 14;
  const right = 14;
  const plot = { x: left, y: y0, w: Math.max(10, width - left - right), h: PLOT_HEIGHT };
  const first = cols ? lines.first_steps[0] : 0;
  const last = cols ? lines.last_steps[cols - 1] : 1;
  const x = scaleLinear([first, last === first ? first + 1 : last], [plot.x, plot.x + plot.w]);
  const colX = new Float64Array(cols);
  for (let c = 0; c < cols; c++) colX[c] = x.map((lines.first_steps[c] + lines.last_steps[c]) / 2);
  const xTicks = [];
  if (cols) {
    for (const step of ticks(first, last, Math.max(2, Math.floor(plot.w / 90)))) {
      if (Number.isInteger(step)) xTicks.push({ step, x: x.map(step), text: String(step) });
    }
  }
  let reference = null;
  if (data.reference && data.axis !== "count" && data.axis !== "fraction") {
    const [lo, hi] = data.reference.band;
    reference = {
      y: clampY(y.map(data.reference.value), plot),
      band: [clampY(y.map(hi), plot), clampY(y.map(lo), plot)],
      text: formatValue(data.reference.value),
    };
  }
  const height = Math.ceil(plot.y + plot.h + LINE + 12);
  const legendW = opts.measure(RAMP_FIRST) + RAMP_W + opts.measure(RAMP_LAST) + 12;
  return {
    width, height, plot, axis: data.axis, y, yTicks, x, xTicks, colX, rows, cols,
    title: data.title, titleY, legendX: width - right - legendW, reference,
  };
}

/**
 * A y position clamped into the plot (values at or below the floor of a log
 * axis, zero among them, sit on the floor).
 * @param {number} y
 * @param {{y: number, h: number}} plot
 * @returns {number}
 */
function clampY(y, plot) {
  if (Number.isNaN(y) || y === Infinity) return plot.y + plot.h;
  if (y === -Infinity) return plot.y;
  return Math.min(plot.y + plot.h, Math.max(plot.y, y));
}

/**
 * The vertical extent of layer `row` in column `col`: the y of its largest and
 * smallest value (top, bottom); null where the column holds no finite value
 * of it (no gradient, no such layer, or only non-finite values).
 * @param {ReturnType<typeof linesLayout>} layout
 * @param {Lines} lines
 * @param {number} row
 * @param {number} col
 * @returns {[number, number]|null}
 */
function extentAt(layout, lines, row, col) {
  const i = row * layout.cols + col;
  const hi = lines.max[i];
  if (!Number.isFinite(hi)) return null;
  const lo = Number.isFinite(lines.min[i]) ? lines.min[i] : hi;
  return [clampY(layout.y.map(hi), layout.plot), clampY(layout.y.map(lo), layout.plot)];
}

/**
 * The line under a point: the column nearest to `x`, and of the layers with a
 * value there the one whose stroke passes closest to `y`, if within a few
 * pixels; null otherwise (and outside the plot).
 * @param {ReturnType<typeof linesLayout>} layout
 * @param {Lines} lines
 * @param {number} x
 * @param {number} y
 * @returns {{row: number, col: number}|null}
 */
export function lineAt(layout, lines, x, y) {
  const { plot } = layout;
  if (!layout.rows || !layout.cols) return null;
  if (x < plot.x || x > plot.x + plot.w || y < plot.y - PICK_PX || y > plot.y + plot.h + PICK_PX) return null;
  const col = nearestIndex(layout.colX, x);
  let best = null;
  let bestD = PICK_PX;
  for (let row = 0; row < layout.rows; row++) {
    const e = extentAt(layout, lines, row, col);
    if (!e) continue;
    const d = y < e[0] ? e[0] - y : y > e[1] ? y - e[1] : 0;
    if (d <= bestD) {
      best = { row, col };
      bestD = d;
    }
  }
  return best;
}

/**
 * The logged step a point of the plot stands for: the step under `x`, within
 * the range of the column nearest to it; null without columns or outside the
 * plot.
 * @param {ReturnType<typeof linesLayout>} layout
 * @param {Lines} lines
 * @param {number} x
 * @returns {number|null}
 */
export function stepAt(layout, lines, x) {
  const { plot } = layout;
  if (!layout.cols || x < plot.x || x > plot.x + plot.w) return null;
  const col = nearestIndex(layout.colX, x);
  const step = Math.round(layout.x.invert(x));
  return Math.min(lines.last_steps[col], Math.max(lines.first_steps[col], step));
}

/**
 * The tooltip lines of one layer in one column: its name with its module type
 * (a group: how many layers it holds), the run and the step (or the bin's
 * steps), and the value (the bin's smallest and largest), said as the heatmap
 * says what is not a value; "at least", "at most" and why where a group's
 * values are bounds ({@link boundAt}).
 * @param {Lines} lines
 * @param {{row: number, col: number}} cell
 * @returns {string[]}
 */
export function linesTooltip(lines, cell) {
  const n = lines.steps.length;
  const i = cell.row * n + cell.col;
  const hi = lines.max[i];
  const lo = lines.min[i];
  const a = lines.first_steps[cell.col];
  const z = lines.last_steps[cell.col];
  const stepText = a === z ? `step ${a}` : `steps ${a}\u2013${z}`;
  const value = lines.logged !== false && Number.isFinite(hi);
  const bound = value ? boundAt(lines, cell.row, cell.col) : { max: false, min: false };
  const high = `${bound.max ? "at most " : ""}${formatValue(hi)}`;
  let valueText;
  if (lines.logged === false) valueText = STATUS_TEXT.not_logged;
  else if (hi === Infinity) valueText = STATUS_TEXT.nonfinite;
  else if (hi === -Infinity) valueText = `${STATUS_TEXT.missing} (${a === z ? ABSENT_TEXT : "not in these steps' layer sets"})`;
  else if (Number.isNaN(hi)) valueText = STATUS_TEXT.no_grad;
  else if ((lo === hi && !bound.min) || !Number.isFinite(lo)) valueText = high;
  else valueText = `${bound.min ? "at least " : ""}${formatValue(lo)} to ${high} (smallest to largest in the bin)`;
  const name = lines.layers[cell.row];
  const members = lines.members && lines.members[cell.row];
  return [
    layerLabel(name, lines.types[cell.row]),
    ...(members ? [`group of ${layerCount(members.length)}`] : []),
    `${lines.run}, ${stepText}`,
    `${lines.stat} ${valueText}`,
    ...(bound.max || bound.min ? [BOUND_TEXT] : []),
  ];
}

/**
 * Paints what stays while the pointer moves: background, title, depth ramp,
 * grid and ticks, the reference band and line, every layer's line (first
 * layer first: deeper layers on top), non-finite marks and the axes.
 * @param {CanvasRenderingContext2D} ctx scaled to CSS px
 * @param {ReturnType<typeof linesLayout>} layout
 * @param {Lines} lines
 * @param {Palette} palette
 * @param {{message?: string}} [opts] `message`: written in place of the lines
 */
export function drawLinesBase(ctx, layout, lines, palette, opts = {}) {
  const { plot } = layout;
  ctx.save();
  drawTitled(ctx, layout, layout.title, plot.x, layout.titleY, palette);
  if (layout.rows > 1) drawDepthRamp(ctx, layout, palette);

  drawYGrid(ctx, plot, layout.yTicks, palette);
  ctx.fillStyle = palette.muted;
  ctx.textAlign = "center";
  for (const t of layout.xTicks) ctx.fillText(t.text, t.x, plot.y + plot.h + LINE / 2 + 4);

  if (layout.reference) drawReference(ctx, plot, layout.reference, palette, "band");
  if (opts.message) drawMessage(ctx, opts.message, plot, palette);
  else {
    ctx.save();
    ctx.beginPath();
    ctx.rect(plot.x, plot.y - 2, plot.w, plot.h + 4);
    ctx.clip();
    ctx.globalAlpha = lineAlpha(layout.rows);
    ctx.lineWidth = layout.rows > 50 ? 1 : 1.5;
    ctx.lineJoin = "round";
    for (let row = 0; row < layout.rows; row++) {
      ctx.strokeStyle = depthColor(row, layout.rows, palette);
      strokeLine(ctx, layout, lines, row);
    }
    ctx.restore();
    drawNonfinite(ctx, layout, lines, palette);
  }
  if (layout.reference) {
    const r = layout.reference;
    drawReference(ctx, plot, r, palette, "line");
    // the band's edges over the lines: many lines hide the band itself
    ctx.save();
    ctx.strokeStyle = palette.reference;
    ctx.globalAlpha = 0.6;
    ctx.lineWidth = 1;
    ctx.setLineDash([2, 3]);
    ctx.beginPath();
    for (const y of r.band) {
      ctx.moveTo(plot.x, Math.round(y) + 0.5);
      ctx.lineTo(plot.x + plot.w, Math.round(y) + 0.5);
    }
    ctx.stroke();
    ctx.restore();
    // the value on a background of its own, readable over the lines
    const w = ctx.measureText(r.text).width;
    ctx.fillStyle = palette.bg;
    ctx.fillRect(plot.x + plot.w - 8 - w, r.y - 2 - LINE, w + 6, LINE);
    ctx.fillStyle = palette.reference;
    ctx.textAlign = "right";
    ctx.textBaseline = "bottom";
    ctx.fillText(r.text, plot.x + plot.w - 4, r.y - 2);
    ctx.textBaseline = "middle";
  }

  ctx.strokeStyle = palette.axis;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  ctx.moveTo(plot.x + 0.5, plot.y);
  ctx.lineTo(plot.x + 0.5, plot.y + plot.h + 0.5);
  ctx.lineTo(plot.x + plot.w, plot.y + plot.h + 0.5);
  ctx.stroke();
  ctx.restore();
}

/**
 * The opacity of one line among `rows`: opaque for a few, fainter for many, so
 * that where most layers run shows and one layer apart from them stands out.
 * @param {number} rows
 * @returns {number}
 */
function lineAlpha(rows) {
  return rows <= 50 ? 0.9 : Math.max(0.25, 0.9 * Math.sqrt(50 / rows));
}

/**
 * Strokes one layer's line: through every column where it has a finite value,
 * a vertical stroke from the bin's largest to its smallest value, broken where
 * it has none.
 * @param {CanvasRenderingContext2D} ctx
 * @param {ReturnType<typeof linesLayout>} layout
 * @param {Lines} lines
 * @param {number} row
 */
function strokeLine(ctx, layout, lines, row) {
  ctx.beginPath();
  let pen = false;
  let prev = 0;
  for (let c = 0; c < layout.cols; c++) {
    const e = extentAt(layout, lines, row, c);
    if (!e) {
      pen = false;
      continue;
    }
    const x = layout.colX[c];
    // enter the stroke at the end nearer the previous point: no zigzag
    const [a, b] = pen && Math.abs(prev - e[1]) < Math.abs(prev - e[0]) ? [e[1], e[0]] : e;
    if (pen) ctx.lineTo(x, a);
    else ctx.moveTo(x, a);
    if (b !== a) ctx.lineTo(x, b);
    else if (!pen) ctx.lineTo(x + 0.5, a); // a lone point still shows
    prev = b;
    pen = true;
  }
  ctx.stroke();
}

/** Marks at the top of the plot where a bin holds a non-finite value. */
function drawNonfinite(ctx, layout, lines, palette) {
  const { plot } = layout;
  ctx.fillStyle = palette.nonfinite;
  for (let c = 0; c < layout.cols; c++) {
    for (let row = 0; row < layout.rows; row++) {
      if (lines.max[row * layout.cols + c] === Infinity) {
        ctx.fillRect(layout.colX[c] - 1.5, plot.y, 3, 6);
        break;
      }
    }
  }
}

/** The depth ramp at the right of the title line: first layer ... last layer. */
function drawDepthRamp(ctx, layout, palette) {
  const y = layout.titleY;
  let x = layout.width - 14;
  ctx.save();
  ctx.textAlign = "right";
  ctx.fillStyle = palette.muted;
  ctx.fillText(RAMP_LAST, x, y);
  x -= ctx.measureText(RAMP_LAST).width + 6;
  for (let i = 0; i < RAMP_W; i++) {
    ctx.fillStyle = depthColor(i, RAMP_W, palette);
    ctx.fillRect(x - RAMP_W + i, y - 4, 1.5, 8);
  }
  x -= RAMP_W + 6;
  ctx.fillStyle = palette.muted;
  ctx.fillText(RAMP_FIRST, x, y);
  ctx.restore();
}

/**
 * Paints what follows the pointer and the step over a copy of the base: the
 * selected step's column and the highlighted layer's line (with its name in the
 * title line).
 * @param {CanvasRenderingContext2D} ctx scaled to CSS px
 * @param {ReturnType<typeof linesLayout>} layout
 * @param {Lines} lines
 * @param {Palette} palette
 * @param {{base: CanvasImageSource, selectedStep: (number|null), row: number,
 *   measure: (text: string, bold?: boolean) => number}} opts `row`: the
 *   highlighted layer (-1: none); `base`: what {@link drawLinesBase} drew
 */
export function drawLines(ctx, layout, lines, palette, opts) {
  const { plot } = layout;
  ctx.save();
  ctx.drawImage(opts.base, 0, 0, layout.width, layout.height);
  if (opts.selectedStep !== null && layout.cols) {
    const x = Math.round(layout.x.map(opts.selectedStep)) + 0.5;
    ctx.strokeStyle = palette.selected;
    ctx.lineWidth = 1;
    ctx.setLineDash([3, 3]);
    ctx.beginPath();
    ctx.moveTo(x, plot.y - 4);
    ctx.lineTo(x, plot.y + plot.h);
    ctx.stroke();
    ctx.setLineDash([]);
  }
  if (opts.row >= 0 && opts.row < layout.rows) {
    const color = depthColor(opts.row, layout.rows, palette);
    ctx.save();
    ctx.beginPath();
    ctx.rect(plot.x, plot.y - 2, plot.w, plot.h + 4);
    ctx.clip();
    ctx.lineJoin = "round";
    ctx.strokeStyle = palette.bg; // a halo keeps it apart from the lines behind
    ctx.lineWidth = 5;
    strokeLine(ctx, layout, lines, opts.row);
    ctx.strokeStyle = color;
    ctx.lineWidth = 2.5;
    strokeLine(ctx, layout, lines, opts.row);
    ctx.restore();
    const label = layerLabel(lines.layers[opts.row], lines.types[opts.row]);
    const tx = plot.x + opts.measure(layout.title) + 16;
    const room = (layout.rows > 1 ? layout.legendX : layout.width - 14) - tx - 12;
    ctx.font = FONT_BOLD;
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    ctx.fillStyle = palette.bg;
    ctx.fillRect(tx - 4, 0, Math.max(0, room) + 8, LINE + 4);
    ctx.fillStyle = color;
    ctx.fillText(ellipsize(label, Math.max(40, room), (t) => opts.measure(t, true)), tx, layout.titleY);
  }
  ctx.restore();
}
