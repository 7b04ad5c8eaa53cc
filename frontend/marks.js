// Spike marks: where the diagnosis found a layer's gradient norm spiking, as
// cells of the heatmap and points of the lines view. The diagnosis names each
// `spike` finding's layer and steps; the binned answers give each column's
// step range, so a finding marks every column its steps fall in. Placement is
// pure (`node --test` checks it); `drawSpikeMarks` only paints.

import { rowOfLayer } from "./grouping.js";

/** @typedef {import("./model.js").Alert} Alert */
/** @typedef {import("./palette.js").Palette} Palette */

/** Half the width and the height of a spike mark (CSS px). */
const MARK_HALF_W = 5;
const MARK_H = 9;

/**
 * The (layer, column) cells the per-layer `spike` findings of `alerts` fall in:
 * layer `row` of `binned.layers` (in a grouped answer, the row of the group
 * whose `members` hold the layer), and each column whose step range
 * (`first_steps[c]..last_steps[c]`) meets the finding's `first_step..last_step`.
 * Findings of the whole model (layer null), of other kinds and of layers the
 * answer does not have are left out; each cell comes once, by row then column.
 * @param {{layers: string[], members?: (string[][]|null), first_steps: number[],
 *   last_steps: number[]}} binned a heatmap or lines answer
 * @param {Alert[]} alerts
 * @returns {{row: number, col: number}[]}
 */
export function spikeCells(binned, alerts) {
  const rows = rowOfLayer(binned);
  const n = binned.first_steps.length;
  const seen = new Set();
  const out = [];
  for (const a of alerts) {
    if (a.kind !== "spike" || a.layer === null || !rows.has(a.layer)) continue;
    const row = rows.get(a.layer);
    // the first column that ends at or after the finding's first step
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (binned.last_steps[mid] < a.first_step) lo = mid + 1;
      else hi = mid;
    }
    for (let col = lo; col < n && binned.first_steps[col] <= a.last_step; col++) {
      const key = row * n + col;
      if (seen.has(key)) continue;
      seen.add(key);
      out.push({ row, col });
    }
  }
  return out.sort((p, q) => p.row - q.row || p.col - q.col);
}

/**
 * Where a heatmap draws the marks of `cells`: each cell's middle, one mark per
 * whole pixel (cells a fraction of a pixel apart share one).
 * @param {{plot: {x: number, y: number}, cellW: number, cellH: number}} layout
 *   a heatmap layout
 * @param {{row: number, col: number}[]} cells
 * @returns {{x: number, y: number}[]}
 */
export function heatMarkPoints(layout, cells) {
  return uniquePoints(
    cells.map((c) => ({
      x: layout.plot.x + (c.col + 0.5) * layout.cellW,
      y: layout.plot.y + (c.row + 0.5) * layout.cellH,
    })),
  );
}

/**
 * Where a lines view draws the marks of `cells`: at the column's x and the
 * y of the layer's largest value there (the spike's top), one mark per whole
 * pixel; none where that value is not finite (the view draws no line there).
 * @param {{colX: ArrayLike<number>, y: {map: (v: number) => number},
 *   plot: {y: number, h: number}, cols: number}} layout a lines layout
 * @param {{max: ArrayLike<number>}} lines
 * @param {{row: number, col: number}[]} cells
 * @returns {{x: number, y: number}[]}
 */
export function lineMarkPoints(layout, lines, cells) {
  const points = [];
  for (const c of cells) {
    const v = lines.max[c.row * layout.cols + c.col];
    if (!Number.isFinite(v)) continue;
    const y = layout.y.map(v);
    if (!Number.isFinite(y)) continue;
    points.push({ x: layout.colX[c.col], y: Math.min(layout.plot.y + layout.plot.h, Math.max(layout.plot.y, y)) });
  }
  return uniquePoints(points);
}

/**
 * @param {{x: number, y: number}[]} points
 * @returns {{x: number, y: number}[]} the first point of each whole pixel
 */
function uniquePoints(points) {
  const seen = new Set();
  return points.filter((p) => {
    const key = `${Math.round(p.x)},${Math.round(p.y)}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/**
 * Paints a spike mark at each point: a small triangle pointing down, its tip
 * on the point, filled light and outlined dark so that it shows on every
 * colour of the heatmap and over the lines.
 * @param {CanvasRenderingContext2D} ctx scaled to CSS px
 * @param {{x: number, y: number}[]} points
 * @param {Palette} palette
 */
export function drawSpikeMarks(ctx, points, palette) {
  if (!points.length) return;
  ctx.save();
  ctx.beginPath();
  for (const p of points) spikePath(ctx, p.x, p.y);
  ctx.fillStyle = palette.spikeFill;
  ctx.fill();
  ctx.lineWidth = 1.25;
  ctx.lineJoin = "round";
  ctx.strokeStyle = palette.spikeStroke;
  ctx.stroke();
  ctx.restore();
}

/**
 * Adds the triangle of one mark to the current path: the tip at `(x, y)`.
 * @param {CanvasRenderingContext2D} ctx
 * @param {number} x
 * @param {number} y
 */
export function spikePath(ctx, x, y) {
  ctx.moveTo(x, y);
  ctx.lineTo(x - MARK_HALF_W, y - MARK_H);
  ctx.lineTo(x + MARK_HALF_W, y - MARK_H);
  ctx.closePath();
}
