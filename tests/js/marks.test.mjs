import assert from "node:assert/strict";
import { test } from "node:test";

import { heatmapLayout } from "../../frontend/heatmap.js";
import { linesLayout } from "../../frontend/lines.js";
import { heatMarkPoints, lineMarkPoints, spikeCells } from "../../frontend/marks.js";

const measure = (s, bold) => s.length * (bold ? 7.5 : 7); // a monospace stand-in
const spike = (layer, first, last) => ({
  kind: "spike", layer, first_step: first, last_step: last, steps: 1, message: "", ongoing: false,
});

/** 3 layers, columns of 10 steps each: 0-9, 10-19, ..., 90-99. */
const BINNED = {
  layers: ["a", "b", "c"],
  steps: [0, 10, 20, 30, 40, 50, 60, 70, 80, 90],
  first_steps: [0, 10, 20, 30, 40, 50, 60, 70, 80, 90],
  last_steps: [9, 19, 29, 39, 49, 59, 69, 79, 89, 99],
};

test("spikeCells puts a spike finding in the column whose step range holds its step", () => {
  assert.deepEqual(spikeCells(BINNED, [spike("b", 37, 37)]), [{ row: 1, col: 3 }]);
  assert.deepEqual(spikeCells(BINNED, [spike("c", 0, 0)]), [{ row: 2, col: 0 }]);
  assert.deepEqual(spikeCells(BINNED, [spike("a", 99, 99)]), [{ row: 0, col: 9 }]);
});

test("spikeCells marks every column a streak meets, each cell once", () => {
  const cells = spikeCells(BINNED, [spike("a", 18, 31), spike("a", 25, 26)]);
  assert.deepEqual(cells, [{ row: 0, col: 1 }, { row: 0, col: 2 }, { row: 0, col: 3 }]);
});

test("spikeCells leaves out model-level findings, other kinds and layers the answer lacks", () => {
  const alerts = [
    spike(null, 40, 40),
    { ...spike("a", 40, 40), kind: "exploding" },
    spike("gone", 40, 40),
    { ...spike("b", 52, 52), kind: "nonfinite_origin" },
  ];
  assert.deepEqual(spikeCells(BINNED, alerts), []);
});

test("spikeCells with one step per column maps steps to their own columns", () => {
  const steps = [0, 2, 4, 6];
  const one = { layers: ["x"], steps, first_steps: steps, last_steps: steps };
  assert.deepEqual(spikeCells(one, [spike("x", 4, 4)]), [{ row: 0, col: 2 }]);
  assert.deepEqual(spikeCells(one, [spike("x", 3, 3)]), []); // not a kept step
});

test("heatMarkPoints puts a mark at the middle of each cell, one per pixel at 500 layers", () => {
  const layout = heatmapLayout({ layers: BINNED.layers, steps: BINNED.steps }, { width: 800, measure });
  const [p] = heatMarkPoints(layout, [{ row: 1, col: 3 }]);
  assert.equal(p.x, layout.plot.x + 3.5 * layout.cellW);
  assert.equal(p.y, layout.plot.y + 1.5 * layout.cellH);
  const layers = Array.from({ length: 500 }, (_, i) => `l${i}`);
  const wide = heatmapLayout({ layers, steps: BINNED.steps }, { width: 800, measure });
  assert.ok(wide.cellH < 1); // rows a fraction of a pixel high
  const all = heatMarkPoints(wide, layers.map((_, row) => ({ row, col: 2 })));
  assert.ok(all.length <= Math.ceil(wide.plot.h) + 1); // one mark per pixel row, not 500
  const [p100, p300] = heatMarkPoints(wide, [{ row: 100, col: 2 }, { row: 300, col: 2 }]);
  assert.ok(Math.abs(p300.y - p100.y - 200 * wide.cellH) < 1e-9);
});

test("lineMarkPoints puts a mark on the top of the layer's stroke in the column", () => {
  const lines = {
    ...BINNED, run: "r", stat: "norm", types: ["", "", ""], downsampled: true, logged: true,
    max: new Float32Array(30).fill(1e-3), min: new Float32Array(30).fill(1e-4),
  };
  lines.max[1 * 10 + 3] = 1e-1;
  lines.max[2 * 10 + 5] = Infinity;
  const layout = linesLayout({ lines, axis: "log", title: "t", values: [lines.max, lines.min] }, { width: 800, measure });
  const points = lineMarkPoints(layout, lines, [{ row: 1, col: 3 }, { row: 2, col: 5 }]);
  assert.equal(points.length, 1); // none where the value is not finite
  assert.equal(points[0].x, layout.colX[3]);
  assert.ok(Math.abs(points[0].y - layout.y.map(1e-1)) < 1e-6);
});
