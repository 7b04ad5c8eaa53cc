import assert from "node:assert/strict";
import { test } from "node:test";

import { columnOfStep, heatColor, heatDomain, heatPixels, heatTooltip, heatmapCellAt, heatmapLayout, poolColumns } from "../../frontend/heatmap.js";
import { PALETTES } from "../../frontend/palette.js";

const measure = (s, bold) => s.length * (bold ? 7.5 : 7); // a monospace stand-in
const LSTM = ["lstm1.weight_ih_l0", "lstm1.weight_hh_l0", "lstm2.weight_ih_l0", "lstm2.weight_hh_l0", "head"];

test("heatmapLayout has one row per layer and one column per kept step; heatmapCellAt inverts it", () => {
  const steps = Array.from({ length: 120 }, (_, i) => i);
  const layout = heatmapLayout({ layers: LSTM, steps }, { width: 800, measure });
  assert.equal(layout.rows, 5);
  assert.equal(layout.cols, 120);
  assert.ok(layout.plot.x >= measure(LSTM[0]));
  const x = layout.plot.x + (37 + 0.5) * layout.cellW;
  const y = layout.plot.y + (3 + 0.5) * layout.cellH;
  assert.deepEqual(heatmapCellAt(layout, x, y), { row: 3, col: 37 });
  assert.equal(heatmapCellAt(layout, layout.plot.x - 1, y), null);
  assert.equal(heatmapCellAt(layout, x, layout.plot.y + layout.plot.h + 1), null);
  assert.ok(layout.xTicks.every((t) => Number.isInteger(Number(t.text))));
});

test("columnOfStep finds the bin that holds a step, else the nearest one", () => {
  const heat = { steps: [0, 10, 20], first_steps: [0, 10, 20], last_steps: [9, 19, 25] };
  assert.equal(columnOfStep(heat, 14), 1);
  assert.equal(columnOfStep(heat, 99), 2);
  assert.equal(columnOfStep({ steps: [], first_steps: [], last_steps: [] }, 3), -1);
});

test("heatColor uses distinct colours for no gradient, non-finite and zero", () => {
  const p = PALETTES.light;
  const domain = [1e-6, 1];
  assert.deepEqual(heatColor(NaN, domain, p), p.heatNaN);
  assert.deepEqual(heatColor(Infinity, domain, p), p.heatInf);
  assert.deepEqual(heatColor(0, domain, p), p.heatZero);
  assert.notDeepEqual(heatColor(1e-6, domain, p), heatColor(1, domain, p));
  const px = heatPixels(new Float32Array([1e-6, 1, NaN, 0]), 2, 2, domain, p);
  assert.equal(px.length, 16);
  assert.deepEqual(Array.from(px.slice(8, 11)), p.heatNaN);
  assert.equal(px[15], 255);
});

test("heatDomain spans the positive finite values of every heatmap shown", () => {
  const d = heatDomain([{ values: new Float32Array([0, 1e-3, NaN]) }, { values: new Float32Array([Infinity, 2]) }]);
  assert.equal(d[0], Math.fround(1e-3));
  assert.equal(d[1], 2);
});

test("heatmapLayout puts the colour legend under the title when both do not fit", () => {
  const steps = [0, 1, 2];
  const wide = heatmapLayout({ layers: ["a"], steps, title: "run · abs_mean", domain: [1e-9, 1] }, { width: 1000, measure });
  assert.equal(wide.legendY, wide.titleY);
  const narrow = heatmapLayout({ layers: ["a"], steps, title: "a_rather_long_run_name · abs_mean", domain: [1e-9, 1] }, { width: 420, measure });
  assert.ok(narrow.legendY > narrow.titleY);
  assert.ok(narrow.plot.y > wide.plot.y);
});

test("heatmapLayout leaves room for bold (blocked) row names", () => {
  const layout = heatmapLayout({ layers: ["lstm1.weight_ih_l0"], steps: [0] }, { width: 800, measure });
  assert.ok(layout.plot.x >= measure("lstm1.weight_ih_l0", true) + 6);
});

test("poolColumns keeps spikes: the largest finite value, infinity wins, all-NaN stays NaN", () => {
  // 2 rows x 6 columns into 3 pixel columns
  const v = new Float32Array([
    1, 9, 2, 2, NaN, NaN,
    1, Infinity, NaN, 3, 0, 0,
  ]);
  const p = poolColumns(v, 2, 6, 3);
  assert.equal(p.cols, 3);
  assert.deepEqual(Array.from(p.values.slice(0, 2)), [9, 2]);
  assert.ok(Number.isNaN(p.values[2]));
  assert.deepEqual(Array.from(p.values.slice(3)), [Infinity, 3, 0]);
  assert.equal(poolColumns(v, 2, 6, 10).values, v);
});

test("heatTooltip gives the layer, the step or the bin's range, and the value", () => {
  const heat = {
    run: "r", stat: "abs_mean", layers: ["x", "<img src=x>"], steps: [0, 10],
    first_steps: [0, 10], last_steps: [0, 19], values: new Float32Array([0.5, NaN, Infinity, 2]),
  };
  assert.deepEqual(heatTooltip(heat, { row: 0, col: 0 }), ["x", "r, step 0", "abs_mean 0.5"]);
  assert.deepEqual(heatTooltip(heat, { row: 0, col: 1 }), ["x", "r, steps 10\u201319 (largest in the bin)", "abs_mean no gradient"]);
  assert.deepEqual(heatTooltip(heat, { row: 1, col: 0 })[2], "abs_mean non-finite");
  // every cell of a statistic the run's files lack: not logged, not "no gradient"
  assert.equal(heatTooltip({ ...heat, logged: false }, { row: 0, col: 1 })[2], "abs_mean not logged");
});

test("heatTooltip says no such layer for a cell absent from its layer set, as the bar plot does", () => {
  const heat = {
    run: "r", stat: "abs_mean", layers: ["0", "1"], types: ["Conv2d", ""], steps: [0, 10],
    first_steps: [0, 10], last_steps: [0, 19], values: new Float32Array([-Infinity, -Infinity, NaN, 2]),
  };
  assert.deepEqual(heatTooltip(heat, { row: 0, col: 0 }), ["0 \u00b7 Conv2d", "r, step 0", "abs_mean no such layer (not in this step's layer set)"]);
  assert.equal(heatTooltip(heat, { row: 0, col: 1 })[2], "abs_mean no such layer (not in these steps' layer sets)");
  assert.deepEqual(heatTooltip(heat, { row: 1, col: 0 }), ["1", "r, step 0", "abs_mean no gradient"]);
});

test("heat cells of a layer not in the layer set are drawn apart from no-gradient ones: transparent over the hatching", () => {
  const p = PALETTES.light;
  assert.deepEqual(heatColor(-Infinity, [1e-6, 1], p), p.heatAbsent);
  assert.notDeepEqual(p.heatAbsent, p.heatNaN);
  const px = heatPixels(new Float32Array([-Infinity, NaN]), 1, 2, [1e-6, 1], p);
  assert.equal(px[3], 0); // transparent
  assert.deepEqual(Array.from(px.slice(4, 8)), [...p.heatNaN, 255]);
  const layout = heatmapLayout({ layers: ["a"], steps: [0], domain: [1e-6, 1] }, { width: 900, measure });
  assert.deepEqual(layout.legend.map((i) => i.text).slice(0, 4), ["non-finite", "no such layer", "no gradient", "zero"]);
});

test("poolColumns keeps absent (-Infinity) only where every pooled column is absent", () => {
  const v = new Float32Array([
    -Infinity, -Infinity, -Infinity, 2, -Infinity, NaN,
  ]);
  const p = poolColumns(v, 1, 6, 3);
  assert.equal(p.values[0], -Infinity);
  assert.equal(p.values[1], 2);
  assert.ok(Number.isNaN(p.values[2])); // no gradient where the layer was there
});

test("heatmapLayout draws the row labels it is given, sized for them", () => {
  const labels = ["0 \u00b7 Conv2d", "features.3 \u00b7 BatchNorm2d"];
  const layout = heatmapLayout({ layers: ["0", "features.3"], labels, steps: [0, 1] }, { width: 900, measure });
  assert.deepEqual(layout.rowLabels.map((l) => l.text), labels);
  assert.ok(layout.plot.x >= measure(labels[1], true));
});

test("heatmapLayout names the selected row where rows are too thin for every name, in place of the names it would overlap", () => {
  const layers = Array.from({ length: 83 }, (_, i) => `model.layers.${i}`);
  const plain = heatmapLayout({ layers, steps: [0, 1] }, { width: 800, measure });
  assert.ok(plain.every > 1);
  assert.ok(!plain.rowLabels.some((lab) => lab.index === 41)); // not a named row
  const layout = heatmapLayout({ layers, steps: [0, 1], selected: 41 }, { width: 800, measure });
  const named = layout.rowLabels.find((lab) => lab.index === 41);
  assert.equal(named.text, "model.layers.41");
  assert.equal(named.selected, true);
  const ys = layout.rowLabels.map((lab) => lab.y);
  assert.ok(ys.every((y, k) => k === 0 || y - ys[k - 1] >= 12)); // no two names overlap
  assert.deepEqual(layout.rowLabels.map((lab) => lab.index), [...layout.rowLabels.map((lab) => lab.index)].sort((p, q) => p - q));
  // every row named: the selected one is marked
  const few = heatmapLayout({ layers: LSTM, steps: [0], selected: 2 }, { width: 800, measure });
  assert.deepEqual(few.rowLabels.filter((lab) => lab.selected).map((lab) => lab.index), [2]);
});
