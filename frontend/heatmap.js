// The layers-by-steps heatmap: one row per layer, one column per kept step or bin
// of steps, a log colour scale with colours of their own for no gradient,
// non-finite values, no such layer and zero, and room above it for the
// total-norm strip (strip.js). The layout, the pixels and the tooltips are
// pure (`node --test` checks them); `drawHeatmap` only paints.

import { ABSENT_TEXT, BOUND_TEXT, FONT, FONT_BOLD, LINE, STATUS_TEXT, drawMessage, drawTitled, ellipsize } from "./canvas.js";
import { boundAt } from "./grouping.js";
import { spikePath } from "./marks.js";
import { layerCount, layerLabel } from "./model.js";
import { formatValue, logUnit, positiveExtent, ramp, ticks } from "./scale.js";
import { STRIP_HEIGHT, stripLabelWidth, stripRect } from "./strip.js";

/** @typedef {import("./palette.js").Palette} Palette */

/**
 * The tooltip lines of one heatmap cell: layer (with its module type; a
 * group: how many layers it holds), run and step (or the bin's step range),
 * value, said as the bar plot says it: "no gradient" (NaN), "non-finite"
 * (+Infinity), "no such layer" (-Infinity: not in the step's layer set);
 * "not logged" for every cell of a statistic the run's files lack; "at most"
 * and why where a group's value is an upper bound ({@link boundAt}).
 * @param {{run: string, stat: string, layers: string[], types?: string[], steps: number[],
 *   first_steps: number[], last_steps: number[], values: Float32Array,
 *   logged?: boolean, members?: (string[][]|null), bounds?: (import("./grouping.js").Bounds|null)}} heat
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
  const bound = Number.isFinite(v) && heat.logged !== false && boundAt(heat, cell.row, cell.col).max;
  const name = heat.layers[cell.row];
  const members = heat.members && heat.members[cell.row];
  return [
    layerLabel(name, heat.types ? heat.types[cell.row] : ""),
    ...(members ? [`group of ${layerCount(members.length)}`] : []),
    `${heat.run}, ${stepText}`,
    `${heat.stat} ${bound ? `at most ${valueText}` : valueText}`,
    ...(bound ? [BOUND_TEXT] : []),
  ];
}

/**
 * The layout of one heatmap (rows = layers, columns = kept steps or bins). Pure.
 * Row names (`labels`: names with module types; default `layers`) longer than
 * a third of the width are ellipsized (the bar plot and the tooltip show them
 * whole); the colour legend moves under the title when both do not fit on one
 * line. With `strip` (the total-norm strip's axis, {@link stripAxis}), the
 * strip sits between the legend and the matrix, over the same columns
 * (`layout.strip`, else null); `spikes`: the legend names the spike mark.
 * Where rows are too thin for every name, every few rows are named, and the
 * rows of `named` (a group whose layers are shown under it), then the
 * `selected` row (-1: none), are named in place of the names they would
 * overlap (the selected row's label has `selected: true`).
 * @param {{layers: string[], labels?: string[], steps: number[], title?: string,
 *   domain?: ([number, number]|null), strip?: (import("./strip.js").StripAxis|null),
 *   spikes?: boolean, selected?: number, named?: number[]}} data
 * @param {{width: number, measure: (text: string, bold?: boolean) => number}} opts
 * @returns {object} the layout: plot rect, cell size, row labels, column ticks,
 *   legend, strip
 */
export function heatmapLayout(data, opts) {
  const width = Math.max(160, opts.width);
  const rows = data.layers.length;
  const cols = data.steps.length;
  const measure = opts.measure;
  const maxLabelW = Math.max(40, Math.floor(width * 0.35));
  // measured bold: blocked layers' names are drawn bold
  const texts = (data.labels || data.layers).map((name) => ellipsize(name, maxLabelW, (t) => measure(t, true)));
  const stripW = data.strip ? stripLabelWidth(data.strip, measure) : 0;
  const labelW = Math.ceil(Math.max(stripW, ...texts.map((t) => measure(t, true))));
  const right = 14;
  const x = labelW + 10;
  const title = data.title || "";
  const legend = legendItems(data.domain || null, Boolean(data.spikes));
  const legendW = legend.reduce((w, it) => w + (it.kind === "ramp" ? 96 + 12 : 28) + measure(it.text), 0);
  const oneLine = x + measure(title) + 24 + legendW <= width - right;
  const titleY = LINE / 2 + 2;
  const legendY = oneLine ? titleY : titleY + LINE + 2;
  const plot = { x, y: legendY + LINE / 2 + 12, w: Math.max(10, width - x - right), h: 0 };
  const strip = data.strip ? stripRect(data.strip, plot, plot.y) : null;
  if (strip) plot.y += STRIP_HEIGHT + 8;
  const total = Math.min(480, Math.max(48, rows * 18));
  const cellH = rows ? total / rows : 0;
  plot.h = rows ? rows * cellH : total; // no rows (a statistic not logged): room for the message
  const cellW = cols ? plot.w / cols : 0;
  const every = cellH >= LINE - 2 ? 1 : Math.ceil((LINE - 2) / Math.max(cellH, 1e-9));
  let rowLabels = [];
  const label = (i) => ({ index: i, text: texts[i], y: plot.y + (i + 0.5) * cellH, selected: i === data.selected });
  for (let i = 0; i < rows; i += every) rowLabels.push(label(i));
  for (const i of [...(data.named || []), data.selected ?? -1]) {
    if (i < 0 || i >= rows || rowLabels.some((lab) => lab.index === i)) continue;
    const y = plot.y + (i + 0.5) * cellH;
    rowLabels = rowLabels.filter((lab) => Math.abs(lab.y - y) >= LINE - 2);
    rowLabels.push(label(i));
    rowLabels.sort((p, q) => p.index - q.index);
  }
  const xTicks = [];
  if (cols > 0) {
    const count = Math.max(2, Math.floor(plot.w / 90));
    for (const c of ticks(0, cols - 1, count)) {
      if (!Number.isInteger(c)) continue;
      xTicks.push({ col: c, x: plot.x + (c + 0.5) * cellW, text: String(data.steps[c]) });
    }
  }
  const height = Math.ceil(plot.y + plot.h + LINE + 12);
  return { width, height, plot, rows, cols, cellW, cellH, rowLabels, every, xTicks, title, titleY, legendY, legend, strip };
}

/**
 * The heatmap legend's entries, right to left: the spike mark (with
 * `spikes`), the special colours, then the ramp with its end values.
 * @param {[number, number] | null} domain
 * @param {boolean} spikes
 * @returns {{kind: string, text: string}[]}
 */
function legendItems(domain, spikes) {
  const items = [
    ...(spikes ? [{ kind: "spike", text: "spike" }] : []),
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
 * The row at a point of the names' column, left of the matrix (where rows
 * are too thin for every name, also a row whose name is not drawn); -1
 * elsewhere.
 * @param {{plot: {x: number, y: number, h: number}, rows: number, cellH: number}} layout
 * @param {number} x
 * @param {number} y
 * @returns {number}
 */
export function heatmapRowLabelAt(layout, x, y) {
  const { plot } = layout;
  if (!layout.rows || x < 0 || x >= plot.x || y < plot.y || y >= plot.y + plot.h) return -1;
  return Math.min(layout.rows - 1, Math.floor((y - plot.y) / layout.cellH));
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
 * Paints one heatmap: the matrix (one image pixel per cell, scaled without
 * smoothing), row names, step ticks, the colour legend and the selection.
 * @param {CanvasRenderingContext2D} ctx scaled to CSS px
 * @param {ReturnType<typeof heatmapLayout>} layout
 * @param {{domain: ([number, number]|null), selectedCol: number, selectedRow: number,
 *   blockedRows: Set<number>, memberRows?: Set<number>, image: (CanvasImageSource|null),
 *   message?: string}} data
 *   `image`: the `cols x rows` pixels of {@link heatPixels} on a canvas;
 *   `message`: written over the plot instead (a statistic not logged);
 *   `memberRows`: layers shown under their group, named in a muted colour.
 * @param {Palette} palette
 */
export function drawHeatmap(ctx, layout, data, palette) {
  const { plot } = layout;
  ctx.save();
  drawTitled(ctx, layout, layout.title, plot.x, layout.titleY, palette);
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
    ctx.font = blocked || lab.selected ? FONT_BOLD : FONT;
    const member = data.memberRows && data.memberRows.has(lab.index);
    ctx.fillStyle = blocked ? palette.blocked : member ? palette.muted : palette.fg;
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
    ctx.moveTo(x, layout.strip ? layout.strip.y : plot.y - 4);
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
    if (it.kind === "spike") {
      ctx.beginPath();
      spikePath(ctx, x + 5, y + 4);
      ctx.fillStyle = palette.spikeFill;
      ctx.fill();
      ctx.strokeStyle = palette.spikeStroke;
      ctx.stroke();
      x -= 14;
      continue;
    }
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

