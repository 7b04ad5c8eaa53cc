import assert from "node:assert/strict";
import { test } from "node:test";

import { referenceOf } from "../../frontend/canvas.js";
import { lineAt, linesLayout, linesTooltip, stepAt } from "../../frontend/lines.js";

const measure = (s, bold) => s.length * (bold ? 7.5 : 7); // a monospace stand-in

/**
 * A `lines` answer: `max` and `min` given per layer (rows of `cols` columns);
 * columns of 10 steps each from step 0 unless `binned` is false (one step each).
 */
function linesOf(max, min, { binned = true, stat = "update_ratio", layers, logged = true } = {}) {
  const rows = max.length;
  const cols = max[0].length;
  const first = Array.from({ length: cols }, (_, c) => (binned ? 10 * c : c));
  return {
    run: "r", tag: "gradflow", stat, layers: layers ?? Array.from({ length: rows }, (_, i) => `layer${i}`),
    types: Array.from({ length: rows }, () => "Linear"), steps: first, first_steps: first,
    last_steps: first.map((s) => (binned ? s + 9 : s)), downsampled: binned, logged,
    max: Float32Array.from(max.flat()), min: Float32Array.from(min.flat()),
  };
}

/** The layout the tab computes for one lines view on `axis`. */
function layoutOf(lines, axis = "log", width = 800) {
  const reference = axis === "log" || axis === "linear" ? referenceOf(lines.stat) : null;
  return linesLayout({ lines, axis, title: "r · update_ratio", values: [lines.max, lines.min], reference }, { width, measure });
}

// three layers a decade apart, the second with a spike up to 1e-1 in column 2
const MAX = [[1e-4, 1e-4, 1e-4, 1e-4], [1e-3, 1e-3, 1e-1, 1e-3], [1e-2, 1e-2, 1e-2, 1e-2]];
const MIN = [[1e-4, 1e-4, 1e-4, 1e-4], [1e-3, 1e-3, 1e-3, 1e-3], [1e-2, 1e-2, 1e-2, 1e-2]];

test("linesLayout puts each column at the middle of its steps and the steps on a linear x axis", () => {
  const lines = linesOf(MAX, MIN);
  const layout = layoutOf(lines);
  assert.equal(layout.rows, 3);
  assert.equal(layout.cols, 4);
  for (let c = 0; c < 4; c++) assert.equal(layout.colX[c], layout.x.map(10 * c + 4.5));
  assert.equal(layout.x.map(0), layout.plot.x);
  assert.equal(layout.x.map(39), layout.plot.x + layout.plot.w);
  assert.ok(layout.xTicks.length >= 2 && layout.xTicks.every((t) => Number.isInteger(t.step) && t.step >= 0 && t.step <= 39));
  assert.ok(layout.plot.x >= Math.max(...layout.yTicks.map((t) => measure(t.text)))); // tick labels fit left of the plot
  assert.ok(layout.legendX > layout.plot.x); // the depth ramp is right of the title
});

test("linesLayout draws update_ratio's rule of thumb at 1e-3 inside its band, on a log or linear axis only", () => {
  const lines = linesOf(MAX, MIN);
  const log = layoutOf(lines, "log");
  const r = log.reference;
  assert.ok(r);
  assert.equal(r.y, log.y.map(1e-3));
  assert.ok(r.band[0] < r.y && r.y < r.band[1]); // band: [top (3e-3), bottom (3e-4)]
  assert.equal(r.band[0], log.y.map(3e-3));
  assert.equal(r.text, "0.001");
  assert.ok(layoutOf(lines, "linear").reference);
  assert.equal(layoutOf(lines, "count").reference, null);
  assert.equal(layoutOf(linesOf(MAX, MIN, { stat: "abs_mean" }), "log").reference, null);
  // the band is always on the axis, even when every value lies far above it
  const high = layoutOf(linesOf([[1, 2]], [[1, 2]]), "log");
  assert.ok(high.y.domain[0] <= 3e-4);
});

test("lineAt picks the layer whose line passes nearest the pointer, within a few pixels", () => {
  const lines = linesOf(MAX, MIN);
  const layout = layoutOf(lines);
  const x = layout.colX[1];
  assert.deepEqual(lineAt(layout, lines, x, layout.y.map(1e-3)), { row: 1, col: 1 });
  assert.deepEqual(lineAt(layout, lines, x + 3, layout.y.map(1e-2) + 4), { row: 2, col: 1 });
  assert.equal(lineAt(layout, lines, x, (layout.y.map(1e-3) + layout.y.map(1e-2)) / 2), null); // between lines
  assert.equal(lineAt(layout, lines, layout.plot.x - 1, layout.y.map(1e-3)), null); // left of the plot
  assert.equal(lineAt(layout, lines, x, layout.plot.y + layout.plot.h + 20), null); // below it
});

test("lineAt finds a spike anywhere along the bin's stroke from its smallest to its largest value", () => {
  const lines = linesOf(MAX, MIN);
  const layout = layoutOf(lines);
  const x = layout.colX[2];
  assert.deepEqual(lineAt(layout, lines, x, layout.y.map(3e-2)), { row: 1, col: 2 }); // between 1e-3 and 1e-1
  assert.deepEqual(lineAt(layout, lines, x, layout.y.map(1e-1)), { row: 1, col: 2 });
  assert.equal(lineAt(layout, lines, layout.colX[1], layout.y.map(3e-2)), null); // no spike there
});

test("lineAt skips what is not a value: no gradient, non-finite, not in the layer set", () => {
  const max = [[NaN, Infinity, -Infinity, 1e-3]];
  const lines = linesOf(max, [[NaN, NaN, NaN, 1e-3]]);
  const layout = layoutOf(lines);
  for (let c = 0; c < 3; c++) {
    for (let y = layout.plot.y; y <= layout.plot.y + layout.plot.h; y += 5) {
      assert.equal(lineAt(layout, lines, layout.colX[c], y), null);
    }
  }
  assert.deepEqual(lineAt(layout, lines, layout.colX[3], layout.y.map(1e-3)), { row: 0, col: 3 });
});

test("lineAt tells 500 layers apart where their lines are apart, and a later layer wins a tie", () => {
  const rows = 500;
  const max = Array.from({ length: rows }, (_, i) => [10 ** (-6 + (5 * i) / rows), 10 ** (-6 + (5 * i) / rows)]);
  const lines = linesOf(max, max);
  const layout = layoutOf(lines, "log");
  assert.equal(layout.rows, 500);
  const x = layout.colX[0];
  const hit = lineAt(layout, lines, x, layout.y.map(max[250][0]));
  assert.ok(hit && Math.abs(hit.row - 250) <= 1, JSON.stringify(hit)); // lines a fraction of a pixel apart
  const same = linesOf([[1e-3, 1e-3], [1e-3, 1e-3]], [[1e-3, 1e-3], [1e-3, 1e-3]]);
  const l2 = layoutOf(same);
  assert.deepEqual(lineAt(l2, same, l2.colX[0], l2.y.map(1e-3)), { row: 1, col: 0 }); // drawn on top
});

test("stepAt gives the step under the pointer within the nearest column's steps, null outside the plot", () => {
  const lines = linesOf(MAX, MIN);
  const layout = layoutOf(lines);
  assert.equal(stepAt(layout, lines, layout.x.map(23)), 23);
  assert.equal(stepAt(layout, lines, layout.plot.x), 0);
  assert.equal(stepAt(layout, lines, layout.plot.x + layout.plot.w), 39);
  assert.equal(stepAt(layout, lines, layout.plot.x - 2), null);
  assert.equal(stepAt(layout, lines, layout.plot.x + layout.plot.w + 2), null);
  // one step per column: the step of the nearest column, never one not logged
  const every = linesOf([[1, 2, 3]], [[1, 2, 3]], { binned: false });
  every.first_steps = every.last_steps = every.steps = [0, 100, 110];
  const l = layoutOf(every);
  assert.equal(stepAt(l, every, l.x.map(60)), 100);
  assert.equal(stepAt(l, every, l.x.map(40)), 0);
});

test("linesTooltip names the layer, the run and the steps, and the bin's smallest and largest value", () => {
  const lines = linesOf(MAX, MIN);
  assert.deepEqual(linesTooltip(lines, { row: 1, col: 2 }), [
    "layer1 · Linear", "r, steps 20\u201329", "update_ratio 0.001 to 0.1 (smallest to largest in the bin)",
  ]);
  assert.deepEqual(linesTooltip(lines, { row: 0, col: 0 }).slice(1), ["r, steps 0\u20139", "update_ratio 1e-4"]);
  const one = linesOf([[2e-3]], [[2e-3]], { binned: false });
  assert.deepEqual(linesTooltip(one, { row: 0, col: 0 }).slice(1), ["r, step 0", "update_ratio 0.002"]);
});

test("linesTooltip says what is not a value as the heatmap does", () => {
  const lines = linesOf([[NaN, Infinity, -Infinity]], [[NaN, 1e-3, NaN]]);
  const text = (col) => linesTooltip(lines, { row: 0, col })[2];
  assert.match(text(0), /no gradient/);
  assert.match(text(1), /non-finite/);
  assert.match(text(2), /not in these steps' layer sets/);
  const step = linesOf([[-Infinity]], [[NaN]], { binned: false });
  assert.match(linesTooltip(step, { row: 0, col: 0 })[2], /not in this step's layer set/);
  const old = linesOf([[NaN]], [[NaN]], { logged: false });
  assert.match(linesTooltip(old, { row: 0, col: 0 })[2], /not logged/);
});

test("an exactly-zero layer's line lies on the floor of a log axis, not at its top", () => {
  const lines = linesOf([[0, 0], [1e-3, 1e-2]], [[0, 0], [1e-3, 1e-2]]);
  const layout = layoutOf(lines);
  const floor = layout.plot.y + layout.plot.h;
  assert.deepEqual(lineAt(layout, lines, layout.colX[0], floor), { row: 0, col: 0 });
  assert.equal(lineAt(layout, lines, layout.colX[0], layout.plot.y), null);
});
