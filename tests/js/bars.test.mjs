import assert from "node:assert/strict";
import { test } from "node:test";

import { axisKind, barData, barIndexAt, barLayout, barStatus, barTooltip, rotatedTextBox } from "../../frontend/bars.js";
import { exportLayout } from "../../frontend/export.js";
import { LINE } from "../../frontend/canvas.js";
import { reviveFlow } from "../../frontend/model.js";

const measure = (s, bold) => s.length * (bold ? 7.5 : 7); // a monospace stand-in

function flow(run, layers, absMean, extra = {}) {
  return reviveFlow({
    run, tag: "gradflow", step: 119, layers,
    stats: { abs_mean: absMean, abs_max: absMean.map((v) => (typeof v === "number" ? v * 10 : v)), nonfinite: layers.map(() => 0), ...extra.stats },
    no_grad: extra.no_grad || layers.map(() => false),
    absent: extra.absent || layers.map(() => false),
    alerts: extra.alerts || [],
  });
}

const LSTM = ["lstm1.weight_ih_l0", "lstm1.weight_hh_l0", "lstm2.weight_ih_l0", "lstm2.weight_hh_l0", "head"];
const BLOCKED = [
  { kind: "blocked", layer: "lstm1.weight_hh_l0", first_step: 77, last_step: 119, steps: 43, message: "" },
  { kind: "blocked", layer: "lstm1.weight_ih_l0", first_step: 80, last_step: 119, steps: 40, message: "" },
];

test("barStatus tells zero, no gradient, non-finite and missing apart", () => {
  assert.equal(barStatus(0.1), "ok");
  assert.equal(barStatus(0), "zero");
  assert.equal(barStatus(NaN, { noGrad: true }), "no_grad");
  assert.equal(barStatus(NaN), "no_grad");
  assert.equal(barStatus(Infinity), "nonfinite");
  assert.equal(barStatus(0.1, { nonfinite: 3 }), "nonfinite");
  assert.equal(barStatus(NaN, { missing: true }), "missing");
});

test("rotatedTextBox: vertical text is as tall as it is long", () => {
  const b = rotatedTextBox(100, 16, Math.PI / 2);
  assert.ok(Math.abs(b.y1 - 100) < 1e-9);
  assert.ok(Math.abs(b.x0 + 8) < 1e-9 && Math.abs(b.x1 - 8) < 1e-9);
});

test("barData: one bar per layer in model order, blocked layers from the step's alerts", () => {
  const d = barData([flow("unnormalised_inputs", LSTM, [3e-9, 1e-11, 3e-5, 2e-6, 1e-3], { alerts: BLOCKED })], "abs_mean", { log: true });
  assert.deepEqual(d.layers, LSTM);
  assert.equal(d.series.length, 1);
  assert.deepEqual(d.series[0].blocked, [true, true, false, false, false]);
  assert.deepEqual(d.series[0].back, [3e-8, 1e-10, 3e-4, 2e-5, 1e-2].map((v, i) => d.series[0].back[i]));
  assert.equal(d.selected, -1);
});

test("barData shows a layer absent from the step's layer set as missing, not as without gradient", () => {
  const f = flow("resumed", ["a", "b", "c"], [1, NaN, NaN], { no_grad: [false, false, true], absent: [false, true, false] });
  assert.deepEqual(barData([f], "abs_mean", { log: false }).series[0].status, ["ok", "missing", "no_grad"]);
  assert.deepEqual(reviveFlow({ layers: ["a"], stats: {} }).absent, [false]); // older servers send none
});

test("barData matches two runs' layers by name", () => {
  const a = flow("healthy", ["a", "b", "c"], [1, 2, 3]);
  const b = flow("broken", ["c", "a", "z"], [30, 10, 5]);
  const d = barData([a, b], "abs_mean", { log: false, selectedLayer: "c" });
  assert.deepEqual(d.layers, ["a", "b", "c", "z"]);
  assert.deepEqual(d.series[0].values.slice(0, 3), [1, 2, 3]);
  assert.ok(Number.isNaN(d.series[0].values[3]));
  assert.deepEqual(d.series[1].status, ["ok", "missing", "ok", "ok"]);
  assert.deepEqual([d.series[1].values[0], d.series[1].values[2], d.series[1].values[3]], [10, 30, 5]);
  assert.equal(d.selected, 2);
});

test("barData only draws abs_max behind abs_mean", () => {
  const f = flow("r", ["a"], [1], { stats: { norm: [2] } });
  assert.ok(barData([f], "abs_mean", { log: true }).series[0].back);
  assert.equal(barData([f], "norm", { log: true }).series[0].back, null);
});

function allLabelsInside(layout) {
  for (const lab of layout.labels) {
    if (!lab.shown) continue;
    assert.ok(lab.box.x0 >= 0, `${lab.text} starts left of the canvas: ${lab.box.x0}`);
    assert.ok(lab.box.x1 <= layout.width, `${lab.text} ends right of the canvas`);
    assert.ok(lab.box.y1 <= layout.height, `${lab.text} is cut at the bottom: ${lab.box.y1} > ${layout.height}`);
    assert.ok(lab.box.y0 >= layout.floorY, `${lab.text} overlaps the plot`);
  }
}

test("barLayout never cuts a layer name off, whatever the names and the width", () => {
  const long = "encoder.layers.11.attention.self.query_key_value_projection";
  const cases = [
    [LSTM, 900], [LSTM, 300], [[long, "b", "c"], 600], [["x", long], 400],
    [Array.from({ length: 60 }, (_, i) => `block${i}.mlp.fc`), 800], [[long], 150],
  ];
  for (const [names, width] of cases) {
    const d = barData([flow("r", names, names.map(() => 1e-3))], "abs_mean", { log: true });
    const layout = barLayout(d, { width, measure });
    assert.equal(layout.width, width);
    allLabelsInside(layout);
    if (names.length <= 5) assert.ok(layout.labels.every((l) => l.shown), "a few layers: every name is drawn");
  }
});

test("barLayout draws every name at 45 degrees when there is room, vertically when crowded", () => {
  const few = barLayout(barData([flow("r", LSTM, [1, 1, 1, 1, 1])], "abs_mean", { log: true }), { width: 900, measure });
  assert.equal(few.angle, Math.PI / 4);
  const names = Array.from({ length: 80 }, (_, i) => `l${i}`);
  const many = barLayout(barData([flow("r", names, names.map(() => 1))], "abs_mean", { log: true }), { width: 900, measure });
  assert.equal(many.angle, Math.PI / 2);
});

test("barLayout thins out names that would overlap and keeps one bar per layer", () => {
  const names = Array.from({ length: 500 }, (_, i) => `layer.${i}`);
  const layout = barLayout(barData([flow("r", names, names.map(() => 1e-3))], "abs_mean", { log: true }), { width: 1000, measure });
  assert.equal(layout.bars.length, 500);
  assert.ok(layout.every > 1);
  const shown = layout.labels.filter((l) => l.shown);
  for (let k = 1; k < shown.length; k++) assert.ok(shown[k].x - shown[k - 1].x >= LINE - 1e-9);
  allLabelsInside(layout);
});

test("barLayout on a log scale: zero bars sit at the floor as a stub, non-finite fill the height", () => {
  const f = flow("r", ["ok", "zero", "nograd", "inf"], [1e-3, 0, "NaN", "Infinity"], {
    no_grad: [false, false, true, false],
  });
  const layout = barLayout(barData([f], "abs_mean", { log: true }), { width: 600, measure });
  const [ok, zero, nograd, inf] = layout.bars;
  assert.deepEqual(layout.bars.map((b) => b.status), ["ok", "zero", "no_grad", "nonfinite"]);
  const close = (a, b) => Math.abs(a - b) < 1e-9;
  assert.ok(ok.h > 10 && close(ok.y + ok.h, layout.floorY));
  assert.ok(zero.h > 0 && close(zero.y + zero.h, layout.floorY), "a zero bar stays visible");
  assert.equal(nograd.h, 0);
  assert.equal(inf.y, layout.plot.y);
  assert.equal(inf.h, layout.plot.h);
  assert.ok(ok.back && ok.back.y < ok.y, "abs_max is drawn taller, behind");
  assert.deepEqual(layout.scale.domain, [1e-4, 1e-2]);
});

test("barLayout on a linear scale starts at zero with round ticks", () => {
  const layout = barLayout(barData([flow("r", ["a", "b"], [0.3, 0.7])], "norm", { log: false }), { width: 500, measure });
  assert.equal(layout.scale.domain[0], 0);
  assert.equal(layout.yTicks[0].value, 0);
  assert.equal(layout.yTicks[0].y, layout.floorY);
  assert.ok(layout.yTicks.every((t) => String(t.value).length <= 4), layout.yTicks.map((t) => t.value).join());
});

test("barLayout puts two compared runs side by side within each layer's band", () => {
  const d = barData([flow("a", ["x", "y"], [1, 2]), flow("b", ["x", "y"], [3, 4])], "abs_mean", { log: true });
  const layout = barLayout(d, { width: 400, measure });
  assert.equal(layout.bars.length, 4);
  const [a0, a1, b0, b1] = layout.bars;
  assert.equal(a0.x + a0.w, b0.x);
  assert.ok(b0.x + b0.w <= a1.x);
  assert.equal(b1.series, 1);
});

test("barIndexAt finds the layer column under the pointer, including its name", () => {
  const layout = barLayout(barData([flow("r", LSTM, [1, 1, 1, 1, 1])], "abs_mean", { log: true }), { width: 700, measure });
  const x = layout.plot.x + 2.5 * layout.band;
  assert.equal(barIndexAt(layout, x, layout.plot.y + 10), 2);
  assert.equal(barIndexAt(layout, x, layout.floorY + 20), 2);
  assert.equal(barIndexAt(layout, layout.plot.x - 5, layout.plot.y + 10), -1);
});

test("barTooltip names the layer and each run's value or status", () => {
  const f = flow("broken", ["a", "b"], [0.25, "NaN"], { no_grad: [false, true], alerts: [{ kind: "blocked", layer: "a", first_step: 0, last_step: 9, steps: 10 }] });
  const layout = barLayout(barData([f], "abs_mean", { log: true }), { width: 400, measure });
  assert.deepEqual(barTooltip(layout, 0, "abs_mean"), ["a", "broken: abs_mean 0.25 (abs_max 2.5) \u2014 blocked"]);
  assert.deepEqual(barTooltip(layout, 1, "abs_mean"), ["b", "broken: abs_mean no gradient"]);
});

test("axisKind puts counts on a count axis and fractions on 0..1 whatever the log toggle says", () => {
  assert.equal(axisKind("count", true), "count");
  assert.equal(axisKind("count", false), "count");
  assert.equal(axisKind("fraction", true), "fraction");
  assert.equal(axisKind("fraction", false), "fraction");
  assert.equal(axisKind("value", true), "log");
  assert.equal(axisKind("value", false), "linear");
  // a statistic the server does not know (unit null) is drawn as a value
  assert.equal(axisKind(null, true), "log");
});

test("barLayout draws a fraction on a linear axis from 0 to 1, whatever its values", () => {
  const f = flow("r", ["dense", "sparse", "none"], [1e-3, 2e-3, "NaN"], {
    stats: { rows: [1, 0.25, "NaN"] }, no_grad: [false, false, true],
  });
  const d = barData([f], "rows", { log: true, unit: "fraction" });
  assert.equal(d.axis, "fraction");
  assert.equal(d.title.at(-1).text, "  \u00b7  rows (fraction)");
  const layout = barLayout(d, { width: 500, measure });
  assert.deepEqual(layout.scale.domain, [0, 1]);
  assert.deepEqual(layout.yTicks.map((t) => t.text), ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
  assert.equal(layout.bars[0].y, layout.plot.y); // 1: the full height
  assert.ok(Math.abs(layout.bars[1].h - layout.plot.h / 4) < 1);
  assert.deepEqual(d.series[0].status, ["ok", "ok", "no_grad"]);
});

test("a statistic a run's files lack is drawn as not logged, never as no gradient", () => {
  const old = reviveFlow({
    run: "old", tag: "gradflow", step: 3, layers: ["a", "b"], not_logged: ["rows"],
    stats: { abs_mean: [1, 2], nonfinite: [0, 0], rows: ["NaN", "NaN"] },
  });
  const d = barData([old], "rows", { log: true, unit: "fraction" });
  assert.deepEqual(d.series[0].status, ["not_logged", "not_logged"]);
  assert.equal(d.title.at(-1).text, "  \u00b7  rows (not logged)");
  assert.equal(d.message, "rows is not logged in old");
  const layout = barLayout(d, { width: 400, measure });
  assert.equal(layout.message, "rows is not logged in old");
  assert.ok(layout.bars.every((b) => b.h === 0));
  assert.deepEqual(barTooltip(layout, 1, "rows"), ["b", "old: rows not logged"]);
  // compared with a run that logged it: that run's bars, and the title names the other
  const fresh = reviveFlow({ run: "new", tag: "gradflow", step: 3, layers: ["a", "b"], stats: { rows: [1, 0.5], nonfinite: [0, 0] } });
  const both = barData([fresh, old], "rows", { log: true, unit: "fraction" });
  assert.deepEqual(both.series.map((s) => s.status), [["ok", "ok"], ["not_logged", "not_logged"]]);
  assert.equal(both.title.at(-1).text, "  \u00b7  rows (fraction) (not logged in old)");
  assert.equal(both.message, "");
  // a run that does not have the statistic at all (a name only the other run's files hold)
  const mine = reviveFlow({ run: "mine", tag: "gradflow", step: 3, layers: ["a"], stats: { mean_square: [4e-6], nonfinite: [0] } });
  const plain = reviveFlow({ run: "plain", tag: "gradflow", step: 3, layers: ["a"], stats: { abs_mean: [1], nonfinite: [0] } });
  const mixed = barData([mine, plain], "mean_square", { log: true, unit: null });
  assert.deepEqual(mixed.series.map((s) => s.status), [["ok"], ["not_logged"]]);
  assert.equal(mixed.axis, "log");
  assert.equal(mixed.title.at(-1).text, "  \u00b7  mean_square (log scale) (not logged in plain)");
});

test("barLayout draws non-finite counts as bars on a 0-based whole-number axis, not on a log axis", () => {
  const f = flow("r", ["ok", "bad", "none"], [1e-3, "Infinity", "NaN"], {
    stats: { nonfinite: [0, 7, "NaN"] }, no_grad: [false, false, true],
  });
  const d = barData([f], "nonfinite", { log: true, unit: "count" });
  assert.equal(d.axis, "count");
  assert.equal(d.log, false);
  assert.deepEqual(d.series[0].status, ["zero", "ok", "no_grad"]); // the count, not the hatched column
  assert.equal(d.title.at(-1).text, "  \u00b7  nonfinite (count)");
  const layout = barLayout(d, { width: 500, measure });
  assert.equal(layout.axis, "count");
  assert.deepEqual(layout.scale.domain, [0, 7]);
  assert.deepEqual(layout.yTicks.map((t) => t.text), ["0", "1", "2", "3", "4", "5", "6", "7"]);
  const bad = layout.bars[1];
  assert.equal(bad.y, layout.plot.y); // 7 of 7: the full height
  assert.equal(bad.back, undefined);
  // no counts at all: 0..1, never 1e-8..1
  const none = barLayout(barData([flow("r", ["a"], [1], { stats: { nonfinite: [0] } })], "nonfinite", { log: true, unit: "count" }), { width: 300, measure });
  assert.deepEqual(none.scale.domain, [0, 1]);
});

test("barLayout on a linear scale fits abs_mean and cuts a taller abs_max at the top", () => {
  // abs_max 100x abs_mean: scaled to abs_max, the abs_mean bars would be 2.6 px
  const f = flow("r", ["a", "b"], [0.5e-3, 1e-3], { stats: { abs_max: [0.1, 0.05] } });
  const layout = barLayout(barData([f], "abs_mean", { log: false }), { width: 500, measure });
  const [a, b] = layout.bars;
  assert.ok(b.h >= 0.8 * layout.plot.h, `the largest bar is ${b.h} of ${layout.plot.h} px`);
  assert.ok(Math.abs(a.h - b.h / 2) < 1);
  assert.deepEqual([a.back.y, a.back.clipped, b.back.clipped], [layout.plot.y, true, true]);
  assert.equal(a.back.h, layout.plot.h);
  // an abs_max within the range is drawn at its value
  const g = flow("r", ["a"], [1e-3], { stats: { abs_max: [0.9e-3] } });
  const inRange = barLayout(barData([g], "abs_mean", { log: false }), { width: 500, measure }).bars[0].back;
  assert.equal(inRange.clipped, false);
  assert.ok(inRange.y > layout.plot.y);
  // on a log scale abs_max still sets the top decade: nothing cut
  const log = barLayout(barData([f], "abs_mean", { log: true }), { width: 500, measure });
  assert.ok(log.bars.every((bar) => !bar.back.clipped));
  assert.equal(log.scale.domain[1], 0.1); // abs_max 0.1: the top decade
});

test("exportLayout puts a heading above the plot and wraps the legend under it", () => {
  const bars = barLayout(barData([flow("r", LSTM, [1, 2, 3, 4, 5])], "abs_mean", { log: true }), { width: 400, measure });
  const items = ["healthy", "abs_max (behind)", "exactly zero", "no gradient", "non-finite", "blocked"].map((label, i) => ({
    kind: ["bar", "back", "zero", "no_grad", "nonfinite", "blocked"][i], label, color: "#000",
  }));
  const ex = exportLayout(bars, items, { heading: "Gradient per layer", measure });
  assert.equal(ex.width, bars.width);
  assert.ok(ex.headingY < ex.chartY);
  const chartEnd = ex.chartY + bars.height;
  assert.ok(ex.legend.every((it) => it.y > chartEnd), "the legend is under the plot");
  assert.ok(ex.legend.every((it) => it.x + 18 + measure(it.label) <= ex.width), "no entry runs off the right edge");
  const rows = new Set(ex.legend.map((it) => it.y));
  assert.ok(rows.size >= 2, "400 px hold the six entries on two lines or more");
  assert.ok(ex.height >= Math.max(...rows) + LINE / 2);
  assert.deepEqual(ex.legend.map((it) => it.kind), items.map((it) => it.kind));
  const wide = exportLayout(barLayout(barData([flow("r", ["a"], [1])], "abs_mean", { log: true }), { width: 1200, measure }), items, {
    heading: "h", measure,
  });
  assert.equal(new Set(wide.legend.map((it) => it.y)).size, 1);
});

const typed = (run, layers, types, absent) =>
  reviveFlow({ run, tag: "gradflow", step: 5, layers, types, absent, stats: { abs_mean: layers.map(() => 1e-3) } });

test("barData labels each layer with its module type and keeps the names as keys", () => {
  const seq = typed("seq", ["0", "1", "features.3"], ["Conv2d", "", "BatchNorm2d"]);
  const d = barData([seq], "abs_mean", { log: true, selectedLayer: "features.3" });
  assert.deepEqual(d.layers, ["0", "1", "features.3"]);
  assert.deepEqual(d.labels, ["0 \u00b7 Conv2d", "1", "features.3 \u00b7 BatchNorm2d"]);
  assert.equal(d.selected, 2); // selected by name
  const layout = barLayout(d, { width: 600, measure });
  assert.deepEqual(layout.labels.map((l) => l.text), d.labels);
  assert.deepEqual(layout.layers, d.layers); // what a click selects
  assert.equal(barTooltip(layout, 0, "abs_mean")[0], "0 \u00b7 Conv2d");
});

test("barData in the compare view takes a layer's type from either run, both when they differ", () => {
  const a = typed("a", ["0", "1"], ["Conv2d", ""]);
  const b = typed("b", ["1", "0", "2"], ["Linear", "Linear", "ReLU"]);
  assert.deepEqual(barData([a, b], "abs_mean", { log: true }).labels, [
    "0 \u00b7 Conv2d / Linear", "1 \u00b7 Linear", "2 \u00b7 ReLU",
  ]);
});

test("barTooltip says no such layer, and why when the run lacks it at this step only", () => {
  const a = typed("a", ["x", "y"], ["", ""], [false, true]);
  const b = typed("b", ["x"], [""], [false]);
  const layout = barLayout(barData([a, b], "abs_mean", { log: true }), { width: 400, measure });
  assert.deepEqual(barTooltip(layout, 1, "abs_mean").slice(1), [
    "a: abs_mean no such layer (not in this step's layer set)",
    "b: abs_mean no such layer",
  ]);
});
