import assert from "node:assert/strict";
import { test } from "node:test";

import { heatmapLayout } from "../../frontend/heatmap.js";
import { STRIP_HEIGHT, stripAxis, stripBars, stripColumnAt, stripTooltip } from "../../frontend/strip.js";

const measure = (s, bold) => s.length * (bold ? 7.5 : 7); // a monospace stand-in
const LAYERS = ["a", "b", "c"];
const near = (a, b) => assert.ok(Math.abs(a - b) < 1e-9, `${a} != ${b}`);
const STEPS = [0, 10, 20, 30];

test("stripAxis spans the totals of every heatmap shown, and is null without any", () => {
  const axis = stripAxis([[1, 2, Infinity, 0], [4, NaN]]);
  assert.deepEqual(axis.domain, [1 / 1.2, 4]);
  assert.deepEqual(axis.ends.map((e) => e.text), ["0.8333", "4"]);
  assert.equal(stripAxis([null, undefined]), null); // a server without total_norm
  assert.equal(stripAxis([[]]), null);
  assert.deepEqual(stripAxis([[3, 3]]).domain, [2.5, 3.75]); // at least a factor of 1.5
});

test("the strip sits between the legend and the matrix, over the heatmap's columns", () => {
  const axis = stripAxis([[1, 2, 3, 4]]);
  const without = heatmapLayout({ layers: LAYERS, steps: STEPS }, { width: 800, measure });
  const layout = heatmapLayout({ layers: LAYERS, steps: STEPS, strip: axis }, { width: 800, measure });
  assert.equal(without.strip, null);
  const { strip, plot } = layout;
  assert.deepEqual([strip.x, strip.w, strip.h], [plot.x, plot.w, STRIP_HEIGHT]);
  assert.ok(strip.y > layout.legendY && strip.y + strip.h < plot.y);
  assert.equal(plot.y - without.plot.y, STRIP_HEIGHT + 8);
  assert.ok(plot.x >= measure("total norm") + 6); // the strip's name fits left of it
});

test("stripBars: one bar per column, taller for a larger total, full height for a non-finite one", () => {
  const totals = [1, 10, Infinity, 0, NaN];
  const axis = stripAxis([totals]);
  const layout = heatmapLayout({ layers: LAYERS, steps: [0, 1, 2, 3, 4], strip: axis }, { width: 800, measure });
  const bars = stripBars(layout.strip, totals);
  assert.deepEqual(bars.map((b) => b.col), [0, 1, 2, 4]); // no bar for a total of 0
  const { strip } = layout;
  for (const b of bars) {
    near(b.y + b.h, strip.y + strip.h); // from the floor
    near(b.x, strip.x + (b.col * strip.w) / 5);
  }
  assert.ok(bars[1].h > bars[0].h);
  near(bars[1].y, strip.y); // the largest reaches the top
  assert.ok(bars[0].h >= 1); // the smallest stays visible
  assert.deepEqual([bars[2].nonfinite, bars[2].h], [true, strip.h]);
  assert.equal(bars[3].nonfinite, true);
});

test("a one-column spike stands out of the strip at 1000 columns", () => {
  const totals = Array.from({ length: 1000 }, () => 1);
  totals[617] = 1.73; // a 10x spike of one of 50 equal layers
  const layout = heatmapLayout({ layers: LAYERS, steps: totals.map((_, i) => i), strip: stripAxis([totals]) }, { width: 1000, measure });
  const bars = stripBars(layout.strip, totals);
  near(bars[617].y, layout.strip.y);
  assert.ok(bars[617].h - bars[616].h > layout.strip.h / 3);
});

test("stripColumnAt inverts the bars' x and is -1 outside the strip", () => {
  const axis = stripAxis([[1, 2, 3, 4]]);
  const layout = heatmapLayout({ layers: LAYERS, steps: STEPS, strip: axis }, { width: 800, measure });
  const { strip } = layout;
  const mid = strip.y + strip.h / 2;
  assert.equal(stripColumnAt(strip, 4, strip.x + (2.5 * strip.w) / 4, mid), 2);
  assert.equal(stripColumnAt(strip, 4, strip.x + strip.w - 0.01, mid), 3);
  assert.equal(stripColumnAt(strip, 4, strip.x - 1, mid), -1);
  assert.equal(stripColumnAt(strip, 4, strip.x + 5, layout.plot.y + 1), -1); // the matrix
  assert.equal(stripColumnAt(null, 4, strip.x + 5, mid), -1);
});

test("stripTooltip says the run, the step range and the total, or non-finite", () => {
  const heat = { run: "r", first_steps: [0, 10], last_steps: [0, 19], total_norm: [0.25, Infinity] };
  assert.deepEqual(stripTooltip(heat, 0), ["total norm of the gradient", "r, step 0", "sqrt(sum of norm\u00b2) 0.25"]);
  assert.deepEqual(stripTooltip(heat, 1).slice(1), ["r, steps 10\u201319 (largest in the bin)", "sqrt(sum of norm\u00b2) non-finite"]);
});
