import assert from "node:assert/strict";
import { test } from "node:test";

import {
  changedRuns, decodeHeatmap, encodeHeatmap, keptStepsText, matchLayers, reviveFlow, runSignatures, toNumber,
  toNumbers,
} from "../../frontend/model.js";
import { FLOW, HEAD } from "./fixtures.mjs";

test("toNumber turns TensorBoard's NaN and Infinity strings back into numbers", () => {
  assert.ok(Number.isNaN(toNumber("NaN")));
  assert.equal(toNumber("Infinity"), Infinity);
  assert.equal(toNumber("-Infinity"), -Infinity);
  assert.equal(toNumber(1.5e-9), 1.5e-9);
  assert.ok(Number.isNaN(toNumber(null)));
  assert.ok(Number.isNaN(toNumber("")));
  assert.deepEqual(toNumbers([1, "Infinity"]), [1, Infinity]);
});

test("reviveFlow converts every statistic and keeps the layer order", () => {
  const f = reviveFlow(FLOW);
  assert.deepEqual(f.layers, FLOW.layers);
  assert.equal(f.stats.abs_mean[0], 3.1e-10);
  assert.ok(Number.isNaN(f.stats.abs_mean[1]));
  assert.equal(f.stats.abs_max[2], Infinity);
  assert.ok(Number.isNaN(f.loss_scale));
  assert.deepEqual(f.no_grad, [false, true, false]);
  assert.equal(f.alerts[0].layer, "lstm1.weight_ih_l0");
  assert.equal(f.alerts[0].first_step, 80);
});

test("reviveFlow fills missing no_grad and sparse lists with false", () => {
  const f = reviveFlow({ ...FLOW, no_grad: undefined, sparse: undefined });
  assert.deepEqual(f.no_grad, [false, false, false]);
  assert.deepEqual(f.sparse, [false, false, false]);
});

test("decodeHeatmap reads the header, skips the padding and reads float32 LE values", () => {
  for (const extra of ["", "x", "xy", "xyz"]) { // every padding length
    const head = { ...HEAD, run: "healthy" + extra };
    const values = [1, NaN, Infinity, 0, 2.5e-10, -0];
    const h = decodeHeatmap(encodeHeatmap(head, values));
    assert.equal(h.run, head.run);
    assert.deepEqual(h.layers, ["a", "bb"]);
    assert.deepEqual(h.steps, [0, 150, 299]);
    assert.deepEqual(h.last_steps, [149, 298, 299]);
    assert.equal(h.values.length, 6);
    assert.equal(h.values[0], 1);
    assert.ok(Number.isNaN(h.values[1]));
    assert.equal(h.values[2], Infinity);
    assert.equal(h.values[4], Math.fround(2.5e-10));
  }
});

test("decodeHeatmap defaults first/last steps to the steps without downsampling", () => {
  const { first_steps, last_steps, ...head } = HEAD;
  const h = decodeHeatmap(encodeHeatmap(head, [1, 2, 3, 4, 5, 6]));
  assert.deepEqual(h.first_steps, [0, 150, 299]);
  assert.deepEqual(h.last_steps, [0, 150, 299]);
});

test("decodeHeatmap rejects a truncated body", () => {
  const buf = encodeHeatmap(HEAD, [1, 2, 3, 4, 5, 6]);
  assert.throws(() => decodeHeatmap(buf.slice(0, buf.byteLength - 4)), /fewer than 2 x 3/);
  assert.throws(() => decodeHeatmap(buf.slice(0, 10)), /truncated/);
  assert.throws(() => decodeHeatmap(new ArrayBuffer(2)), /shorter/);
});

test("matchLayers keeps the first run's order and appends the second run's extras", () => {
  const m = matchLayers(["a", "b", "c"], ["c", "x", "a"]);
  assert.deepEqual(m.names, ["a", "b", "c", "x"]);
  assert.deepEqual(m.a, [0, 1, 2, -1]);
  assert.deepEqual(m.b, [2, -1, 0, 1]);
});

test("runSignatures and changedRuns report new, grown and removed runs only", () => {
  const r = (run, steps, last) => ({ run, tag: "gradflow", steps, first_step: 0, last_step: last, layers: 5 });
  const before = runSignatures([r("a", 10, 9), r("b", 10, 9), r("gone", 1, 0)]);
  const after = runSignatures([r("a", 10, 9), r("b", 12, 11), r("new", 1, 0)]);
  assert.deepEqual([...changedRuns(before, after)].sort(), ["b", "gone", "new"].map((x) => `${x}\u0000gradflow`).sort());
  assert.equal(changedRuns(after, after).size, 0);
});

test("keptStepsText says when TensorBoard sampled the logged steps", () => {
  assert.equal(keptStepsText({ steps: 300, expected_steps: 300 }), "all 300 logged steps shown");
  assert.match(keptStepsText({ steps: 100, expected_steps: 10000 }), /kept 100 of 10,000 logged steps/);
});
