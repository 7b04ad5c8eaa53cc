import assert from "node:assert/strict";
import { test } from "node:test";

import {
  decadeDomain, finiteMax, formatPow10, formatValue, logTicks, logUnit, nearestIndex,
  countTicks, niceLinear, positiveExtent, pow10, ramp, scaleLinear, scaleLog, tickIncrement, ticks,
} from "../../frontend/scale.js";

test("ticks(0, 1, 5) returns exact decimal steps", () => {
  assert.deepEqual(ticks(0, 1, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(ticks(0, 0.3, 3), [0, 0.1, 0.2, 0.3]);
});

test("ticks of tiny gradients come out as exact decimals", () => {
  assert.deepEqual(ticks(0, 3e-7, 3), [0, 1e-7, 2e-7, 3e-7]);
});

test("ticks(start, stop) with start > stop returns them descending", () => {
  assert.deepEqual(ticks(1, 0, 2), [1, 0.5, 0]);
});

test("ticks returns [start] when start === stop and [] for non-finite bounds", () => {
  assert.deepEqual(ticks(2, 2, 5), [2]);
  assert.deepEqual(ticks(0, NaN, 5), []);
  assert.deepEqual(ticks(0, 1, 0), []);
});

test("tickIncrement is an integer: the step, or minus its reciprocal", () => {
  assert.equal(tickIncrement(0, 100, 10), 10);
  assert.equal(tickIncrement(0, 1, 10), -10);
  assert.equal(tickIncrement(0, 1, 4), -5);
});

test("niceLinear extends a domain to multiples of the tick step", () => {
  assert.deepEqual(niceLinear(0, 0.00937, 5), [0, 0.01]);
  assert.deepEqual(niceLinear(0, 97, 5), [0, 100]);
});

test("scaleLinear maps and inverts; a zero-width domain maps to range[0]", () => {
  const s = scaleLinear([0, 10], [100, 0]);
  assert.equal(s.map(5), 50);
  assert.equal(s.invert(25), 7.5);
  assert.equal(scaleLinear([3, 3], [0, 10]).map(3), 0);
});

test("scaleLog maps decades evenly and zero past the low end of its range", () => {
  const s = scaleLog([1e-6, 1], [60, 0]); // a vertical axis: low values at the bottom
  assert.equal(s.map(1), 0);
  assert.ok(Math.abs(s.map(1e-3) - 30) < 1e-9);
  assert.equal(s.map(0), Infinity); // below the floor, not above the top
  assert.equal(s.map(-1), Infinity);
  assert.equal(scaleLog([1e-6, 1], [0, 60]).map(0), -Infinity); // left of a horizontal one
  assert.ok(Math.abs(s.invert(30) - 1e-3) < 1e-15);
  assert.throws(() => scaleLog([0, 1], [0, 1]), RangeError);
});

test("positiveExtent ignores zero, negatives, NaN and Infinity", () => {
  assert.deepEqual(positiveExtent([[0, 3e-9, NaN, Infinity], new Float32Array([2, -1])]), [3e-9, 2]);
  assert.equal(positiveExtent([[0, NaN]]), null);
});

test("finiteMax skips non-finite values and is 0 when nothing is positive", () => {
  assert.equal(finiteMax([[1, Infinity, NaN, 4]]), 4);
  assert.equal(finiteMax([[NaN, 0]]), 0);
});

test("decadeDomain covers the values with whole decades, the smallest bar visible", () => {
  assert.deepEqual(decadeDomain([3.7e-11, 0.0092]), [1e-11, 0.01]);
  assert.deepEqual(decadeDomain([0.001, 0.001]), [0.0001, 0.001]);
  assert.deepEqual(decadeDomain([0.0012, 0.05]), [0.0001, 0.1]);
  assert.deepEqual(decadeDomain(null), [1e-8, 1]);
});

test("pow10 is exact for negative exponents", () => {
  assert.equal(pow10(-3), 0.001);
  assert.equal(pow10(-7), 1e-7);
});

test("logTicks thins out decades to at most maxTicks", () => {
  assert.deepEqual(logTicks(1e-3, 1, 10).map((t) => t.exponent), [-3, -2, -1, 0]);
  const thin = logTicks(1e-12, 1, 4);
  assert.ok(thin.length <= 4 + 1);
  assert.ok(thin.every((t) => t.exponent % 4 === 0));
});

test("formatPow10 writes superscript exponents", () => {
  assert.equal(formatPow10(-6), "10\u207b\u2076");
  assert.equal(formatPow10(0), "1");
  assert.equal(formatPow10(12), "10\u00b9\u00b2");
});

test("formatValue keeps 4 significant digits and names non-finite values", () => {
  assert.equal(formatValue(0.012345), "0.01235");
  assert.equal(formatValue(3.1e-10), "3.1e-10");
  assert.equal(formatValue(123456), "1.23e5");
  assert.equal(formatValue(0), "0");
  assert.equal(formatValue(NaN), "NaN");
  assert.equal(formatValue(Infinity), "inf");
});

test("nearestIndex finds the nearest kept step, ties going lower", () => {
  const steps = [0, 10, 20, 35];
  assert.equal(nearestIndex(steps, 12), 1);
  assert.equal(nearestIndex(steps, 15), 1);
  assert.equal(nearestIndex(steps, 16), 2);
  assert.equal(nearestIndex(steps, -5), 0);
  assert.equal(nearestIndex(steps, 1000), 3);
  assert.equal(nearestIndex([], 3), -1);
});

test("ramp runs from viridis purple to yellow and clamps", () => {
  assert.deepEqual(ramp(0), [68, 1, 84]);
  assert.deepEqual(ramp(1), [253, 231, 37]);
  assert.deepEqual(ramp(2), ramp(1));
  assert.deepEqual(ramp(NaN), ramp(0));
});

test("logUnit places values on a log colour scale and rejects non-positive ones", () => {
  assert.equal(logUnit(1e-3, 1e-6, 1), 0.5);
  assert.equal(logUnit(1e-9, 1e-6, 1), 0);
  assert.ok(Number.isNaN(logUnit(0, 1e-6, 1)));
  assert.ok(Number.isNaN(logUnit(Infinity, 1e-6, 1)));
});

test("countTicks counts in whole numbers from 0 to at least the largest count", () => {
  assert.deepEqual(countTicks(7, 6), [0, 1, 2, 3, 4, 5, 6, 7]);
  assert.deepEqual(countTicks(9, 6), [0, 2, 4, 6, 8, 10]);
  assert.deepEqual(countTicks(1234, 6), [0, 200, 400, 600, 800, 1000, 1200, 1400]);
  assert.deepEqual(countTicks(3, 6), [0, 1, 2, 3]); // never 0.5
  for (const none of [0, NaN, -Infinity]) assert.deepEqual(countTicks(none, 6), [0, 1]);
});
