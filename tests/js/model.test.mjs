import assert from "node:assert/strict";
import { test } from "node:test";

import {
  LEFT_OUT_NAMED, alertHolds, alertSpan, changedRuns, keptStepsText, keptStepsWarn, layerLabel, leftOutText, matchLayers,
  reviveAlert, reviveFlow, reviveSteps, runSignatures, toNumber, toNumbers,
} from "../../frontend/model.js";
import { FLOW } from "./fixtures.mjs";

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

test("reviveFlow keeps which statistics the run's files lack", () => {
  assert.deepEqual(reviveFlow(FLOW).not_logged, []);
  assert.deepEqual(reviveFlow({ ...FLOW, not_logged: ["rows"] }).not_logged, ["rows"]);
});

test("reviveFlow fills missing no_grad and sparse lists with false", () => {
  const f = reviveFlow({ ...FLOW, no_grad: undefined, sparse: undefined });
  assert.deepEqual(f.no_grad, [false, false, false]);
  assert.deepEqual(f.sparse, [false, false, false]);
});

test("matchLayers keeps the first run's order and appends the second run's extras", () => {
  const m = matchLayers(["a", "b", "c"], ["c", "x", "a"]);
  assert.deepEqual(m.names, ["a", "b", "c", "x"]);
  assert.deepEqual(m.a, [0, 1, 2, -1]);
  assert.deepEqual(m.b, [2, -1, 0, 1]);
});

test("runSignatures and changedRuns report new, grown, rewritten and removed runs only", () => {
  const r = (run, last, wall) => ({ run, tag: "gradflow", last_step: last, last_wall_time: wall, layers: 5 });
  const before = runSignatures([r("a", 9, 100), r("b", 9, 100), r("c", 9, 100), r("gone", 0, 1)]);
  // b grew; c's last step was written again (a resumed run): only its wall time says so
  const after = runSignatures([r("a", 9, 100), r("b", 11, 102), r("c", 9, 150), r("new", 0, 1)]);
  assert.deepEqual(
    [...changedRuns(before, after)].sort(), ["b", "c", "gone", "new"].map((x) => `${x}\u0000gradflow`).sort(),
  );
  assert.equal(changedRuns(after, after).size, 0);
  // the listing no longer says how many steps were kept: a run read meanwhile is no change
  assert.equal(changedRuns(runSignatures([r("a", 9, 100)]), runSignatures([{ ...r("a", 9, 100), steps: 10 }])).size, 0);
});

test("keptStepsText says when TensorBoard sampled the logged steps", () => {
  const steps = (n) => Array.from({ length: n }, (_, i) => i);
  assert.equal(keptStepsText({ steps: steps(300), expected_steps: 300 }), "all 300 logged steps shown");
  assert.match(keptStepsText({ steps: steps(100), expected_steps: 10000 }), /kept 100 of 10,000 logged steps/);
  assert.equal(keptStepsWarn({ steps: steps(100), expected_steps: 10000, left_out: [] }), true);
  assert.equal(keptStepsWarn({ steps: steps(300), expected_steps: 300, left_out: [] }), false);
});

test("keptStepsText does not blame TensorBoard's sampling for records left out", () => {
  // step 5 of 0..11 left out (damaged): not a sampled run
  const kept = [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11];
  const info = { steps: kept, expected_steps: 12, left_out: [{ step: 5, reason: "abs_mean is negative (layer '0')" }] };
  assert.equal(keptStepsText(info), "11 of 12 logged steps shown");
  assert.equal(keptStepsWarn(info), true);
  // sampled and damaged: the sampling is still said
  assert.match(keptStepsText({ ...info, steps: [0, 11], expected_steps: 12 }), /^TensorBoard kept 2 of 12 logged steps/);
  // TensorBoard stopped reading the file: not "all"
  const stopped = { steps: [0, 1, 2, 3, 4], expected_steps: 5, left_out: [{ step: null, reason: "stopped" }] };
  assert.equal(keptStepsText(stopped), "5 logged steps shown");
  assert.equal(keptStepsWarn(stopped), true);
});

test("reviveSteps reads the steps answer: kept steps, the logged count and the records left out", () => {
  const info = reviveSteps({
    run: "r", tag: "gradflow", steps: [0, 10], first_step: 0, last_step: 10, every: 10, expected_steps: 2,
    left_out: [{ step: 5, reason: "abs_max is below abs_mean (layer 'a')" }, { step: null, reason: "stopped" }],
  });
  assert.deepEqual(info.steps, [0, 10]);
  assert.equal(info.expected_steps, 2);
  assert.deepEqual(info.left_out, [{ step: 5, reason: "abs_max is below abs_mean (layer 'a')" }, { step: null, reason: "stopped" }]);
  assert.deepEqual(reviveSteps({ run: "r", tag: "gradflow", steps: [1] }).left_out, []); // older servers send none
});

test("leftOutText counts and names the steps left out and keeps each reason", () => {
  const one = leftOutText([{ step: 135, reason: "abs_mean is negative (layer 'head')" }]);
  assert.deepEqual(one, {
    summary: "1 step left out (damaged record): 135",
    reasons: ["step 135: abs_mean is negative (layer 'head')"],
    notes: [],
  });
  const many = leftOutText(Array.from({ length: LEFT_OUT_NAMED + 2 }, (_, i) => ({ step: 100 - i, reason: "r" })));
  assert.equal(many.summary, "12 steps left out (damaged records): 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, \u2026 (2 more)");
  assert.equal(many.reasons.length, 12);
  // TensorBoard stopped reading a file: no step, the reason as it is
  const stopped = "TensorBoard stopped reading events.x before its end (at a damaged record): steps after 24 up to 39 ...";
  assert.deepEqual(leftOutText([{ step: null, reason: stopped }]), { summary: "", reasons: [], notes: [stopped] });
  assert.deepEqual(leftOutText([]), { summary: "", reasons: [], notes: [] });
});

test("layerLabel shows the module type beside the name, as GradFlowRun.label does", () => {
  assert.equal(layerLabel("0", "Conv2d"), "0 \u00b7 Conv2d");
  assert.equal(layerLabel("features.3", "BatchNorm2d"), "features.3 \u00b7 BatchNorm2d");
  assert.equal(layerLabel("head", ""), "head");
  assert.equal(layerLabel("head"), "head");
});

test("reviveFlow keeps each layer's module type and the records left out", () => {
  const f = reviveFlow(FLOW);
  assert.deepEqual(f.types, ["LSTM", "LSTM", "Linear"]);
  assert.deepEqual(f.left_out, [{ step: 135, reason: "abs_mean is negative (layer 'head')" }]);
  assert.deepEqual(reviveFlow({ ...FLOW, types: undefined }).types, ["", "", ""]); // files without types
});

test("an ongoing finding holds at every step from its first, a closed one only up to its last", () => {
  const closed = reviveAlert({ kind: "blocked", layer: "a", first_step: 80, last_step: 120, steps: 41, message: "" });
  const ongoing = reviveAlert({ ...closed, last_step: 299, ongoing: true });
  assert.equal(closed.ongoing, false);
  assert.deepEqual([79, 80, 120, 121].map((s) => alertHolds(closed, s)), [false, true, true, false]);
  assert.deepEqual([79, 80, 299, 300, 10000].map((s) => alertHolds(ongoing, s)), [false, true, true, true, true]);
  assert.equal(alertSpan(closed), "steps 80\u2013120");
  assert.equal(alertSpan(ongoing), "steps 80\u2013299, ongoing");
  assert.equal(alertSpan({ ...ongoing, first_step: 299 }), "step 299, ongoing");
});
