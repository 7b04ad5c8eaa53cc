// The total-norm strip above the heatmap: the model's total gradient norm (the
// `heatmap` answer's `total_norm`, the largest per column) as one bar per
// heatmap column on a small log axis of its own, so a spike shows at a glance
// in the column it happened. Axis, layout, bars, hit testing and tooltip are pure
// (`node --test` checks them); `drawStrip` only paints.

import { FONT, STATUS_TEXT } from "./canvas.js";
import { formatValue, positiveExtent, scaleLog } from "./scale.js";

/** @typedef {import("./palette.js").Palette} Palette */
/**
 * The strip's log axis: its domain, and the values written at its bottom and top.
 * @typedef {{domain: [number, number], ends: {value: number, text: string}[]}} StripAxis
 */

/** Height of the strip (CSS px). */
export const STRIP_HEIGHT = 44;
/** What the strip shows, beside it and in its tooltip. */
export const STRIP_LABEL = "total norm";

/**
 * The strip's log axis, shared by the heatmaps shown side by side: from a
 * little below the smallest positive finite total (its bar stays visible) to
 * the largest, at least a factor of 1.5; null when no heatmap has totals (an
 * answer of a server without `total_norm`, or a run without `norm`).
 * @param {((number[]|null|undefined))[]} totals each heatmap's `total_norm`
 * @returns {StripAxis|null}
 */
export function stripAxis(totals) {
  const present = totals.filter((t) => Array.isArray(t) && t.length);
  if (!present.length) return null;
  const extent = positiveExtent(present);
  let [lo, hi] = extent || [1e-3, 1];
  lo /= 1.2; // close under the smallest: a change of a few percent still shows
  if (hi < 1.5 * lo) hi = 1.5 * lo;
  return { domain: [lo, hi], ends: [lo, hi].map((value) => ({ value, text: formatValue(value) })) };
}

/**
 * The strip's rectangle and the texts left of it, over the heatmap's columns
 * (`x`, `w`: the heatmap plot's) at `y`: the axis' ends at the bottom and the
 * top (5 px inside), the strip's name between them.
 * @param {StripAxis} axis
 * @param {{x: number, w: number}} columns the heatmap plot's x and width
 * @param {number} y top of the strip
 * @returns {{x: number, y: number, w: number, h: number, domain: [number, number],
 *   ticks: {y: number, text: string}[], label: {y: number, text: string}}}
 */
export function stripRect(axis, columns, y) {
  const h = STRIP_HEIGHT;
  const [bottom, top] = axis.ends;
  const ticks = [
    { y: y + h - 5, text: bottom.text },
    { y: y + 5, text: top.text },
  ];
  return { x: columns.x, y, w: columns.w, h, domain: axis.domain, ticks, label: { y: y + h / 2, text: STRIP_LABEL } };
}

/**
 * The width the texts left of the strip need (CSS px).
 * @param {StripAxis} axis
 * @param {(text: string) => number} measure
 * @returns {number}
 */
export function stripLabelWidth(axis, measure) {
  return Math.ceil(Math.max(measure(STRIP_LABEL), ...axis.ends.map((e) => measure(e.text))));
}

/**
 * One bar per column with a total: from the strip's floor up to the total's
 * height on the log axis (clamped into the strip), full height and marked
 * `nonfinite` where a norm was NaN/Inf; none where the total is 0 or missing.
 * @param {ReturnType<typeof stripRect>} strip
 * @param {number[]} totals `total_norm`, one per column
 * @returns {{col: number, x: number, w: number, y: number, h: number, nonfinite: boolean}[]}
 */
export function stripBars(strip, totals) {
  const cols = totals.length;
  if (!cols) return [];
  const scale = scaleLog(strip.domain, [strip.y + strip.h, strip.y]);
  const colW = strip.w / cols;
  const bottom = strip.y + strip.h;
  const out = [];
  for (let col = 0; col < cols; col++) {
    const v = totals[col];
    const nonfinite = v === Infinity || Number.isNaN(v);
    if (!nonfinite && !(v > 0)) continue;
    const top = nonfinite ? strip.y : Math.min(bottom - 1, Math.max(strip.y, scale.map(v)));
    out.push({ col, x: strip.x + col * colW, w: colW, y: top, h: bottom - top, nonfinite });
  }
  return out;
}

/**
 * The column under a point of the strip; -1 outside it.
 * @param {ReturnType<typeof stripRect>|null} strip
 * @param {number} cols the heatmap's columns
 * @param {number} x
 * @param {number} y
 * @returns {number}
 */
export function stripColumnAt(strip, cols, x, y) {
  if (!strip || !cols) return -1;
  if (x < strip.x || x >= strip.x + strip.w || y < strip.y || y >= strip.y + strip.h) return -1;
  return Math.min(cols - 1, Math.floor(((x - strip.x) / strip.w) * cols));
}

/**
 * The tooltip lines of one strip column: what it is, run and step range, value.
 * @param {{run: string, first_steps: number[], last_steps: number[],
 *   total_norm: number[]}} heat
 * @param {number} col
 * @returns {string[]}
 */
export function stripTooltip(heat, col) {
  const a = heat.first_steps[col];
  const z = heat.last_steps[col];
  const steps = a === z ? `step ${a}` : `steps ${a}\u2013${z} (largest in the bin)`;
  const v = heat.total_norm[col];
  const value = v === Infinity || Number.isNaN(v) ? STATUS_TEXT.nonfinite : formatValue(v);
  return [`${STRIP_LABEL} of the gradient`, `${heat.run}, ${steps}`, `sqrt(sum of norm\u00b2) ${value}`];
}

/**
 * Paints the strip: a frame, the bars (non-finite ones in the heatmap's
 * non-finite colour), the axis' tick labels and its name left of it.
 * @param {CanvasRenderingContext2D} ctx scaled to CSS px
 * @param {ReturnType<typeof stripRect>} strip
 * @param {ReturnType<typeof stripBars>} bars
 * @param {Palette} palette
 */
export function drawStrip(ctx, strip, bars, palette) {
  ctx.save();
  ctx.strokeStyle = palette.grid;
  ctx.lineWidth = 1;
  ctx.strokeRect(strip.x + 0.5, strip.y + 0.5, strip.w - 1, strip.h - 1);
  ctx.fillStyle = palette.muted;
  for (const b of bars) if (!b.nonfinite) ctx.fillRect(b.x, b.y, Math.max(1, b.w), b.h);
  ctx.fillStyle = `rgb(${palette.heatInf.join(",")})`;
  for (const b of bars) if (b.nonfinite) ctx.fillRect(b.x, b.y, Math.max(1, b.w), b.h);
  ctx.font = FONT;
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  ctx.fillStyle = palette.muted;
  for (const t of strip.ticks) ctx.fillText(t.text, strip.x - 6, t.y);
  ctx.fillStyle = palette.fg;
  ctx.fillText(strip.label.text, strip.x - 6, strip.label.y);
  ctx.restore();
}
