// The binary `heatmap` and `lines` answers (frontend/binary.js): the header,
// the float32 matrices, what a truncated body says, and the stand-ins for a
// statistic a run lacks. Grouped answers: group_views.test.mjs.

import assert from "node:assert/strict";
import { test } from "node:test";

import { decodeHeatmap, decodeLines, encodeHeatmap, notLoggedHeatmap, notLoggedLines } from "../../frontend/binary.js";
import { HEAD } from "./fixtures.mjs";

test("decodeHeatmap and notLoggedHeatmap keep which statistics the run's files lack", () => {
  assert.equal(decodeHeatmap(encodeHeatmap(HEAD, [1, 2, 3, 4, 5, 6])).logged, true);
  assert.equal(decodeHeatmap(encodeHeatmap({ ...HEAD, logged: false }, [1, 2, 3, 4, 5, 6])).logged, false);
  const stub = notLoggedHeatmap({ run: "plain", tag: "gradflow" }, "mean_square");
  assert.deepEqual({ ...stub, values: [...stub.values] }, {
    run: "plain", tag: "gradflow", stat: "mean_square", layers: [], types: [], steps: [], first_steps: [], last_steps: [],
    downsampled: false, logged: false, total_norm: null, group: "layer", members: null, bounds: null, values: [],
  });
});

test("a heatmap or lines answer drawn from the overview records says so, with the logged steps", () => {
  const plain = decodeHeatmap(encodeHeatmap(HEAD, [1, 2, 3, 4, 5, 6]));
  assert.equal(plain.overview, false);
  assert.equal(plain.logged_steps, null);
  const every = decodeLines(encodeHeatmap({ ...HEAD, from: "overview", logged_steps: 300000 }, [1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5]));
  assert.equal(every.overview, true);
  assert.equal(every.logged_steps, 300000);
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

test("decodeLines reads the header, then the max matrix, then the min one", () => {
  const l = decodeLines(encodeHeatmap(HEAD, [1, 2, 3, 4, Infinity, -Infinity], [0.5, 1, NaN, 4, 3, NaN]));
  assert.deepEqual([l.run, l.stat, l.layers, l.steps, l.last_steps], ["healthy", "abs_mean", ["a", "bb"], [0, 150, 299], [149, 298, 299]]);
  assert.equal(l.downsampled, true);
  assert.ok(l.max instanceof Float32Array && l.min instanceof Float32Array);
  assert.deepEqual(Array.from(l.max), [1, 2, 3, 4, Infinity, -Infinity]);
  assert.deepEqual(Array.from(l.min), [0.5, 1, NaN, 4, 3, NaN]);
  assert.equal("values" in l, false);
});

test("decodeLines rejects a body holding one matrix only", () => {
  const one = encodeHeatmap(HEAD, [1, 2, 3, 4, 5, 6]); // a heatmap's body
  assert.throws(() => decodeLines(one), /fewer than 2 x 2 x 3/);
});

test("notLoggedLines is empty and says so, as notLoggedHeatmap", () => {
  const l = notLoggedLines({ run: "old", tag: "gradflow" }, "rows");
  const h = notLoggedHeatmap({ run: "old", tag: "gradflow" }, "rows");
  assert.deepEqual([l.run, l.stat, l.logged, l.layers, l.steps], ["old", "rows", false, [], []]);
  assert.deepEqual([l.max.length, l.min.length], [0, 0]);
  const { max, min, ...head } = l;
  const { values, ...heatHead } = h;
  assert.deepEqual(head, heatHead);
});

test("decodeHeatmap keeps the layers' module types and tells absent cells (-Infinity) apart", () => {
  const h = decodeHeatmap(encodeHeatmap({ ...HEAD, types: ["Conv2d", ""] }, [1, -Infinity, NaN, Infinity, 0, 2]));
  assert.deepEqual(h.types, ["Conv2d", ""]);
  assert.equal(h.values[1], -Infinity);
  assert.ok(Number.isNaN(h.values[2]));
  assert.deepEqual(decodeHeatmap(encodeHeatmap(HEAD, [1, 2, 3, 4, 5, 6])).types, ["", ""]);
});
