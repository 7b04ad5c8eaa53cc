// The bar plot as a PNG of its own: a heading, the plot and the legend under it,
// each legend entry's swatch drawn like the mark it stands for. `exportLayout`
// is pure (`node --test` checks it); `drawExport` only paints.

import { drawBars } from "./bars.js";
import { FONT, FONT_BOLD, LINE } from "./canvas.js";

/** @typedef {import("./palette.js").Palette} Palette */
/** @typedef {ReturnType<typeof import("./bars.js").barLayout>} BarLayout */

/**
 * The layout of the bar plot as a PNG of its own: a heading, the plot (with its
 * title line: runs, step, statistic, scale) and the legend under it, wrapped
 * to the plot's width. Pure; everything in CSS px.
 * @param {BarLayout} bars
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
 * @param {BarLayout} bars
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
    case "reference": // the band with its line, as the plot draws them
      ctx.fillStyle = palette.referenceBand;
      ctx.fillRect(x, y, s, s);
      ctx.fillStyle = it.color;
      ctx.fillRect(x, y + s / 2 - 1, s, 2);
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
