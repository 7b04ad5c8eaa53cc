// What the Gradient Flow tab's charts share: fonts and line height, the words for a
// value that is not a value, the rule of thumb drawn with a statistic, text
// fitted to a width, a canvas sized in device pixels, and a message written in
// a plot. Nothing here reads `document`.

/** Font of every chart text (CSS px). */
export const FONT = "12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
/** Bold variant, for blocked layers' names. */
export const FONT_BOLD = `bold ${FONT}`;
/** Height of one text line (CSS px). */
export const LINE = 16;

/** How the tab says what a bar or heatmap cell that is not a value is. */
export const STATUS_TEXT = {
  no_grad: "no gradient", nonfinite: "non-finite", missing: "no such layer", not_logged: "not logged",
};
/** Why a layer the run has is missing at a step. */
export const ABSENT_TEXT = "not in this step's layer set";
/** What a bound of a group's value is (a grouped column drawn from overview records). */
export const BOUND_TEXT = "bounds: the overview records hold each layer's extremes, not the group's";

/**
 * A statistic's rule of thumb, drawn as a line at `value` in a band: for
 * `update_ratio` about 1e-3 (CS231n; Karpathy plots log10 of it per layer with
 * a line at -3), the band 3e-4..3e-3 that `GradFlowRun.plot` shades too.
 * @typedef {{value: number, band: [number, number], label: string}} Reference
 */

/** @type {Object<string, Reference>} */
const REFERENCES = {
  update_ratio: { value: 1e-3, band: [3e-4, 3e-3], label: "about 1e-3 is healthy (band 3e-4 to 3e-3)" },
};

/**
 * The rule of thumb drawn with `stat`; null for a statistic without one.
 * @param {string} stat
 * @returns {Reference|null}
 */
export function referenceOf(stat) {
  return Object.hasOwn(REFERENCES, stat) ? REFERENCES[stat] : null;
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
 * A line of text in the middle of a plot (a statistic not logged).
 * @param {CanvasRenderingContext2D} ctx
 * @param {string} text
 * @param {{x: number, y: number, w: number, h: number}} plot
 * @param {import("./palette.js").Palette} palette
 */
export function drawMessage(ctx, text, plot, palette) {
  ctx.save();
  ctx.font = FONT;
  ctx.fillStyle = palette.muted;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.fillText(text, plot.x + plot.w / 2, plot.y + plot.h / 2, plot.w - 8);
  ctx.restore();
}

/**
 * Horizontal grid lines at the y ticks across the plot, each tick's text left
 * of it (right-aligned 8 px from the plot).
 * @param {CanvasRenderingContext2D} ctx
 * @param {{x: number, w: number}} plot
 * @param {{y: number, text: string}[]} yTicks
 * @param {import("./palette.js").Palette} palette
 */
export function drawYGrid(ctx, plot, yTicks, palette) {
  ctx.save();
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  ctx.lineWidth = 1;
  for (const t of yTicks) {
    const y = Math.round(t.y) + 0.5;
    ctx.strokeStyle = palette.grid;
    ctx.beginPath();
    ctx.moveTo(plot.x, y);
    ctx.lineTo(plot.x + plot.w, y);
    ctx.stroke();
    ctx.fillStyle = palette.muted;
    ctx.fillText(t.text, plot.x - 8, t.y);
  }
  ctx.restore();
}

/**
 * A statistic's rule of thumb across the plot: its band (`band`: top and
 * bottom y), or the dashed line at `y` in it.
 * @param {CanvasRenderingContext2D} ctx
 * @param {{x: number, w: number}} plot
 * @param {{y: number, band: [number, number]}} r
 * @param {import("./palette.js").Palette} palette
 * @param {"band"|"line"} part
 */
export function drawReference(ctx, plot, r, palette, part) {
  ctx.save();
  if (part === "band") {
    ctx.fillStyle = palette.referenceBand;
    ctx.fillRect(plot.x, r.band[0], plot.w, Math.max(1, r.band[1] - r.band[0]));
  } else {
    ctx.strokeStyle = palette.reference;
    ctx.lineWidth = 1.5;
    ctx.setLineDash([6, 4]);
    ctx.beginPath();
    ctx.moveTo(plot.x, Math.round(r.y) + 0.5);
    ctx.lineTo(plot.x + plot.w, Math.round(r.y) + 0.5);
    ctx.stroke();
  }
  ctx.restore();
}

/**
 * Clears a chart to the background and writes its title at `(x, y)`, leaving
 * the context in the chart's font, left-aligned, baseline middle.
 * @param {CanvasRenderingContext2D} ctx
 * @param {{width: number, height: number}} size
 * @param {string} title
 * @param {number} x
 * @param {number} y
 * @param {import("./palette.js").Palette} palette
 */
export function drawTitled(ctx, size, title, x, y, palette) {
  ctx.fillStyle = palette.bg;
  ctx.fillRect(0, 0, size.width, size.height);
  ctx.font = FONT;
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  ctx.fillStyle = palette.fg;
  ctx.fillText(title, x, y);
}
