import assert from "node:assert/strict";
import { test } from "node:test";

import { reviveFlow, runKey } from "../../frontend/model.js";
import { stepControls } from "../../frontend/present.js";
import {
  currentStep, effects, initialState, nextStep, reduce, shownRuns, statList, statUnit,
} from "../../frontend/state.js";
import { STATS, runInfo } from "./fixtures.mjs";

/** Applies actions in turn; returns the last state and the last transition's effects. */
function apply(state, ...actions) {
  let fx = null;
  for (const action of actions) {
    const before = state;
    deepFreeze(before); // reduce must not change the state it is given
    state = reduce(before, action);
    fx = effects(before, action, state);
  }
  return { state, fx };
}

function deepFreeze(x) {
  if (x && typeof x === "object" && !Object.isFrozen(x) && !(x instanceof Map)) {
    Object.freeze(x);
    for (const v of Object.values(x)) deepFreeze(v);
  }
  return x;
}

const fx = (redraw, load = [], invalidate = []) => ({ redraw, load, invalidate });
const key = (run) => runKey({ run, tag: "gradflow" });
const range = (n, from = 0) => Array.from({ length: n }, (_, i) => from + i);
const flow = (run, step, stats = { abs_mean: [1], abs_max: [2], norm: [3] }) =>
  reviveFlow({ run, tag: "gradflow", step, layers: ["l0"], stats });

const RUNS = [runInfo("healthy"), runInfo("unnormalised_inputs"), runInfo("edge_<b>cases", 10)];

/** A loaded tab: `runs` listed, `run` selected, its 100 steps loaded, newest shown. */
function loaded(run = "healthy") {
  let { state } = apply(initialState(), { type: "listed", runs: RUNS });
  if (run !== "healthy") state = apply(state, { type: "selectRun", key: key(run) }).state;
  return apply(state, { type: "stepsLoaded", steps: range(100), alerts: [[], []] }).state;
}

test("the initial state shows nothing and follows the newest step", () => {
  const s = initialState();
  assert.equal(s.loaded, false);
  assert.equal(s.a, null);
  assert.equal(s.index, -1);
  assert.equal(s.follow, true);
  assert.equal(s.stat, "abs_mean");
  assert.equal(s.log, true);
  assert.equal(currentStep(s), undefined);
  assert.deepEqual(shownRuns(s), []);
  assert.notEqual(initialState().sigs, s.sigs); // a fresh one each time
});

test("the first listing selects the first run and asks for its steps", () => {
  const { state, fx: f } = apply(initialState(), { type: "listed", runs: RUNS });
  assert.equal(state.loaded, true);
  assert.equal(state.a.run, "healthy");
  assert.equal(state.b, null);
  assert.deepEqual(f, fx(["dom"], ["runs"], RUNS.map((r) => [r.run, "gradflow"])));
});

test("an unchanged listing changes nothing and asks for nothing", () => {
  const s = loaded();
  const { state, fx: f } = apply(s, { type: "listed", runs: RUNS.map((r) => ({ ...r })) });
  assert.equal(state, s);
  assert.deepEqual(f, fx([]));
});

test("an empty logdir shows the empty view and keeps the error line", () => {
  const s = apply(initialState(), { type: "failed", message: "./runs: 500 boom" }).state;
  const { state, fx: f } = apply(s, { type: "listed", runs: [] });
  assert.equal(state.loaded, true);
  assert.equal(state.a, null);
  assert.equal(state.error, "./runs: 500 boom");
  assert.deepEqual(f, fx(["dom"]));
  // and an empty listing again is no change
  assert.deepEqual(apply(state, { type: "listed", runs: [] }).fx, fx([]));
});

test("a listing with runs clears the error line", () => {
  const s = apply(loaded(), { type: "failed", message: "./flow?run=healthy: 404 gone" }).state;
  const grown = RUNS.map((r) => (r.run === "edge_<b>cases" ? runInfo(r.run, 15) : r));
  assert.equal(apply(s, { type: "listed", runs: grown }).state.error, "");
});

test("polling: new data of another run drops its cache and keeps the view", () => {
  let s = loaded("unnormalised_inputs");
  s = apply(s, { type: "compareRun", key: key("healthy") }, { type: "slide", index: 42 }).state;
  s = apply(s, { type: "toggleLayer", layer: "lstm1.weight_ih_l0" }).state;
  const runs = [...RUNS.slice(0, 2), runInfo("edge_<b>cases", 15), runInfo("new run")];
  const { state, fx: f } = apply(s, { type: "listed", runs });
  assert.deepEqual(f, fx(["dom"], [], [["edge_<b>cases", "gradflow"], ["new run", "gradflow"]]));
  assert.equal(state.a.run, "unnormalised_inputs");
  assert.equal(state.b.run, "healthy");
  assert.equal(currentStep(state), 42);
  assert.equal(state.layer, "lstm1.weight_ih_l0");
  assert.equal(state.runs.length, 4);
});

test("polling: new steps of a shown run reload it without losing the selected step", () => {
  let s = loaded("unnormalised_inputs");
  s = apply(s, { type: "compareRun", key: key("healthy") }, { type: "slide", index: 42 }).state;
  s = apply(s, { type: "toggleLayer", layer: "head" }, { type: "setStat", stat: "norm" }).state;
  s = apply(s, { type: "setLog", log: false }).state;
  const runs = [RUNS[0], runInfo("unnormalised_inputs", 150), RUNS[2]];
  let { state, fx: f } = apply(s, { type: "listed", runs });
  assert.deepEqual(f, fx(["dom"], ["runs"], [["unnormalised_inputs", "gradflow"]]));
  assert.equal(state.a, runs[1]); // the new entry, with the new step count
  assert.equal(state.b.run, "healthy");
  ({ state, fx: f } = apply(state, { type: "stepsLoaded", steps: range(150), alerts: [[], []] }));
  assert.deepEqual(f, fx(["dom"], ["heat", "lines", "flows"]));
  assert.equal(currentStep(state), 42);
  assert.equal(state.follow, false);
  assert.equal(state.layer, "head");
  assert.equal(state.stat, "norm");
  assert.equal(state.log, false);
});

test("polling: a tab showing the newest step moves on to the new newest step", () => {
  const s = loaded();
  const runs = [runInfo("healthy", 120), ...RUNS.slice(1)];
  const { state } = apply(s, { type: "listed", runs }, { type: "stepsLoaded", steps: range(120), alerts: [[], []] });
  assert.equal(currentStep(state), 119);
  assert.equal(state.follow, true);
});

test("polling: when the selected run is gone the first run is shown, and a gone compared run is dropped", () => {
  let s = loaded("unnormalised_inputs");
  s = apply(s, { type: "compareRun", key: key("edge_<b>cases") }).state;
  let { state, fx: f } = apply(s, { type: "listed", runs: [RUNS[0], RUNS[2]] });
  assert.equal(state.a.run, "healthy");
  assert.equal(state.b.run, "edge_<b>cases");
  assert.deepEqual(f.load, ["runs"]);
  ({ state } = apply(state, { type: "listed", runs: [RUNS[0]] }));
  assert.equal(state.b, null);
  // the first run replacing a gone selection is never also the compared one
  s = apply(loaded("unnormalised_inputs"), { type: "compareRun", key: key("healthy") }).state;
  ({ state } = apply(s, { type: "listed", runs: [RUNS[0], RUNS[2]] }));
  assert.equal(state.a.run, "healthy");
  assert.equal(state.b, null);
});

test("selecting a run clears the selected layer and a comparison with itself", () => {
  let s = apply(loaded(), { type: "compareRun", key: key("unnormalised_inputs") }).state;
  s = apply(s, { type: "toggleLayer", layer: "head" }).state;
  const { state, fx: f } = apply(s, { type: "selectRun", key: key("unnormalised_inputs") });
  assert.equal(state.a.run, "unnormalised_inputs");
  assert.equal(state.b, null);
  assert.equal(state.layer, null);
  assert.deepEqual(f, fx(["dom"], ["runs"]));
  // another run keeps the comparison
  const other = apply(s, { type: "selectRun", key: key("edge_<b>cases") }).state;
  assert.equal(other.b.run, "unnormalised_inputs");
  // an unknown key keeps the selection
  assert.equal(apply(s, { type: "selectRun", key: "nope\u0000gradflow" }).state.a.run, "healthy");
});

test("compare-two-runs: choosing and clearing the compared run reloads both", () => {
  const s = loaded();
  let { state, fx: f } = apply(s, { type: "compareRun", key: key("edge_<b>cases") });
  assert.deepEqual(shownRuns(state).map((r) => r.run), ["healthy", "edge_<b>cases"]);
  assert.deepEqual(f, fx(["dom"], ["runs"]));
  ({ state, fx: f } = apply(state, { type: "compareRun", key: "" }));
  assert.equal(state.b, null);
  assert.deepEqual(shownRuns(state).map((r) => r.run), ["healthy"]);
  assert.deepEqual(f, fx(["dom"], ["runs"]));
});

test("loaded steps select the newest step, and nothing without steps", () => {
  const s = apply(initialState(), { type: "listed", runs: RUNS }).state;
  assert.equal(apply(s, { type: "stepsLoaded", steps: [0, 5, 10], alerts: [[], []] }).state.index, 2);
  const empty = apply(s, { type: "stepsLoaded", steps: [], alerts: [[], []] }).state;
  assert.equal(empty.index, -1);
  assert.equal(currentStep(empty), undefined);
});

test("loaded steps of another run keep the nearest step when not following", () => {
  let s = apply(loaded(), { type: "slide", index: 41 }).state;
  s = apply(s, { type: "selectRun", key: key("edge_<b>cases") }).state;
  const { state } = apply(s, { type: "stepsLoaded", steps: [0, 20, 40, 60], alerts: [[{ kind: "x" }], []] });
  assert.equal(currentStep(state), 40);
  assert.deepEqual(state.alerts, [[{ kind: "x" }], []]);
});

test("the step slider clamps, pauses playing and follows only at the last step", () => {
  const s = apply(loaded(), { type: "togglePlay" }).state; // at the end: restarts from 0
  assert.equal(s.playing, true);
  let { state, fx: f } = apply(s, { type: "slide", index: 10 });
  assert.equal(state.playing, false);
  assert.equal(state.index, 10);
  assert.equal(state.follow, false);
  assert.deepEqual(f, fx(["dom"], ["flows"]));
  assert.equal(apply(state, { type: "slide", index: -5 }).state.index, 0);
  ({ state } = apply(state, { type: "slide", index: 1000 }));
  assert.equal(state.index, 99);
  assert.equal(state.follow, true);
  // without steps the slider changes nothing
  const none = apply(initialState(), { type: "slide", index: 3 });
  assert.equal(none.state.index, -1);
  assert.deepEqual(none.fx, fx([]));
});

test("play restarts from the first step at the end, and pauses", () => {
  let { state, fx: f } = apply(loaded(), { type: "togglePlay" });
  assert.equal(state.playing, true);
  assert.equal(state.index, 0);
  assert.deepEqual(f, fx(["dom"], ["flows"]));
  ({ state, fx: f } = apply(state, { type: "togglePlay" }));
  assert.equal(state.playing, false);
  assert.deepEqual(f, fx(["dom"]));
  ({ state, fx: f } = apply(apply(state, { type: "slide", index: 50 }).state, { type: "togglePlay" }));
  assert.equal(state.playing, true);
  assert.equal(state.index, 50); // mid-way: plays on from here
  assert.deepEqual(f, fx(["dom"]));
});

test("play ticks advance one step once the shown step has loaded, and stop at the end", () => {
  let s = apply(loaded(), { type: "slide", index: 97 }, { type: "togglePlay" }).state;
  let { state, fx: f } = apply(s, { type: "flowRequested" });
  assert.deepEqual(f, fx([]));
  const waiting = apply(state, { type: "tick" }); // the step is still loading
  assert.equal(waiting.state, state);
  assert.deepEqual(waiting.fx, fx([]));
  ({ state, fx: f } = apply(state, { type: "flowsLoaded", flows: [flow("healthy", 97)] }));
  assert.deepEqual(f, fx(["bars", "heat", "lines", "dom"], ["next"])); // warms the cache with step 98
  assert.equal(nextStep(state), 98);
  ({ state, fx: f } = apply(state, { type: "tick" }));
  assert.equal(currentStep(state), 98);
  assert.deepEqual(f, fx(["dom"], ["flows"]));
  ({ state } = apply(state, { type: "tick" }));
  assert.equal(currentStep(state), 99);
  assert.equal(state.follow, true);
  assert.equal(nextStep(state), undefined);
  ({ state, fx: f } = apply(state, { type: "tick" }));
  assert.equal(state.playing, false);
  assert.equal(currentStep(state), 99);
  assert.deepEqual(f, fx(["dom"]));
  // paused: ticks do nothing
  s = apply(state, { type: "tick" });
  assert.equal(s.state, state);
  assert.deepEqual(s.fx, fx([]));
});

test("pause stops playing at once: a late step answer and later ticks neither restart nor advance it", () => {
  // the browser test's sequence: play from step 42, pause while step 43 loads
  let { state } = apply(loaded(), { type: "slide", index: 42 }, { type: "togglePlay" });
  ({ state } = apply(state, { type: "flowRequested" }, { type: "flowsLoaded", flows: [flow("healthy", 42)] }));
  let f;
  ({ state, fx: f } = apply(state, { type: "tick" }, { type: "flowRequested" })); // step 43 in flight
  assert.equal(currentStep(state), 43);
  assert.equal(stepControls(state).pressed, "true");
  ({ state, fx: f } = apply(state, { type: "togglePlay" }));
  assert.equal(state.playing, false);
  assert.deepEqual(f, fx(["dom"])); // the next frame redraws the button
  const c = stepControls(state);
  assert.equal(c.pressed, "false");
  assert.equal(c.play, "\u25b6 Play");
  assert.equal(c.step, "43");
  const paused = state;
  // the answer for step 43 arrives after the pause: shown, but no step ahead is warmed
  ({ state, fx: f } = apply(state, { type: "flowsLoaded", flows: [flow("healthy", 43)] }));
  assert.equal(state.playing, false);
  assert.equal(state.index, paused.index);
  assert.deepEqual(f, fx(["bars", "heat", "lines", "dom"]));
  // the play timer keeps firing: each tick leaves the state as it is and asks for nothing
  for (let i = 0; i < 4; i++) {
    const t = apply(state, { type: "tick" });
    assert.equal(t.state, state);
    assert.deepEqual(t.fx, fx([]));
  }
  assert.equal(stepControls(state).pressed, "false");
  assert.equal(stepControls(state).step, "43");
});

test("play and pause within one frame: the frame draws the last state, paused", () => {
  // index.js merges the redraws of the actions before a frame and draws the state then
  const s = apply(loaded(), { type: "slide", index: 10 }).state;
  const play = apply(s, { type: "togglePlay" });
  const pause = apply(play.state, { type: "togglePlay" });
  const dirty = new Set([...play.fx.redraw, ...pause.fx.redraw]);
  assert.ok(dirty.has("dom"));
  assert.equal(stepControls(pause.state).pressed, "false");
  assert.equal(apply(pause.state, { type: "tick" }).state, pause.state);
});

test("the statistic reloads the heatmaps and lines; the log scale redraws the bars and lines only", () => {
  let { state, fx: f } = apply(loaded(), { type: "setStat", stat: "norm" });
  assert.equal(state.stat, "norm");
  assert.deepEqual(f, fx(["bars", "dom"], ["heat", "lines"]));
  ({ state, fx: f } = apply(state, { type: "setLog", log: false }));
  assert.equal(state.log, false);
  assert.deepEqual(f, fx(["bars", "lines"]));
  ({ state, fx: f } = apply(state, { type: "setLog", log: true }));
  assert.equal(state.log, true);
});

test("clicking a bar selects its layer; clicking it again or beside the bars clears it", () => {
  const s = loaded();
  let { state, fx: f } = apply(s, { type: "toggleLayer", layer: "head" });
  assert.equal(state.layer, "head");
  assert.deepEqual(f, fx(["bars", "heat", "lines"]));
  assert.equal(apply(state, { type: "toggleLayer", layer: "head" }).state.layer, null);
  assert.equal(apply(state, { type: "toggleLayer", layer: "lstm1" }).state.layer, "lstm1");
  assert.equal(apply(state, { type: "toggleLayer", layer: null }).state.layer, null);
});

test("an alert, heatmap cell or lines-view step selects its layer and the nearest kept step", () => {
  const s = apply(initialState(), { type: "listed", runs: RUNS }, { type: "stepsLoaded", steps: [0, 10, 20, 30], alerts: [[], []] }).state;
  const { state, fx: f } = apply(s, { type: "focus", layer: "lstm1.weight_ih_l0", step: 14 });
  assert.equal(state.layer, "lstm1.weight_ih_l0");
  assert.equal(currentStep(state), 10);
  assert.equal(state.follow, false);
  assert.deepEqual(f, fx(["bars", "heat", "lines", "dom"], ["flows"]));
  const none = apply(apply(initialState(), { type: "listed", runs: RUNS }).state, { type: "focus", layer: "x", step: 3 });
  assert.equal(none.state.layer, "x");
  assert.deepEqual(none.fx, fx(["bars", "heat", "lines"]));
});

test("loaded flows keep the chosen statistic, or fall back to the first one listed", () => {
  const s = apply(loaded(), { type: "flowRequested" }).state;
  assert.equal(s.flowPending, true);
  let { state, fx: f } = apply(s, { type: "flowsLoaded", flows: [flow("healthy", 99)] });
  assert.equal(state.flowPending, false);
  assert.equal(state.stat, "abs_mean");
  assert.deepEqual(f, fx(["bars", "heat", "lines", "dom"]));
  // a run whose listing lacks the chosen statistic: the first one it lists
  const only = runInfo("only", 10, { stats: [STATS[4], STATS[2]] }); // rows, norm
  ({ state } = apply(state, { type: "listed", runs: [...RUNS, only] }, { type: "selectRun", key: key("only") }));
  ({ state, fx: f } = apply(state, { type: "flowsLoaded", flows: [flow("only", 9, { rows: [1], norm: [2] })] }));
  assert.equal(state.stat, "rows");
  assert.deepEqual(f, fx(["bars", "heat", "lines", "dom"], ["heat", "lines"]));
  // one it lists as not logged stays chosen (the URL asked for it; the plot says so)
  const old = runInfo("old", 10, { stats: [STATS[0], { ...STATS[4], logged: false }] });
  ({ state } = apply(state, { type: "listed", runs: [...RUNS, only, old] }, { type: "selectRun", key: key("old") }));
  ({ state } = apply(state, { type: "flowsLoaded", flows: [flow("old", 9, { abs_mean: [1], rows: [NaN] })] }));
  assert.equal(state.stat, "rows");
});

test("failures keep their text for the status line and end a pending step", () => {
  const s = apply(loaded(), { type: "flowRequested" }).state;
  let { state, fx: f } = apply(s, { type: "flowFailed", message: "./flow?run=healthy&step=99: 404 Not found" });
  assert.equal(state.flowPending, false);
  assert.equal(state.error, "./flow?run=healthy&step=99: 404 Not found");
  assert.deepEqual(f, fx(["dom"]));
  ({ state, fx: f } = apply(state, { type: "failed", message: "TypeError: Failed to fetch" }));
  assert.equal(state.error, "TypeError: Failed to fetch");
  assert.deepEqual(f, fx(["dom"]));
});

test("a run that cannot be shown clears what was shown; an answer for another run is ignored", () => {
  let s = loaded("unnormalised_inputs");
  s = apply(s, { type: "flowsLoaded", flows: [flow("unnormalised_inputs", 99)] }, { type: "heatsLoaded", heats: [{ run: "x" }] }).state;
  s = apply(s, { type: "linesLoaded", lines: [{ run: "x" }] }, { type: "hoverLayer", layer: "head" }).state;
  s = apply(s, { type: "togglePlay" }).state;
  // a late answer about a run no longer selected changes nothing
  const stale = apply(s, { type: "runFailed", key: key("healthy"), message: "gone" });
  assert.equal(stale.state, s);
  assert.deepEqual(stale.fx, fx([]));
  const { state, fx: f } = apply(s, { type: "runFailed", key: key("unnormalised_inputs"), message: "the layer set changed" });
  assert.deepEqual(state.problem, { key: key("unnormalised_inputs"), message: "the layer set changed" });
  assert.deepEqual([state.steps, state.index, state.flows, state.heats, state.playing], [[], -1, [], [], false]);
  assert.deepEqual([state.lines, state.hover], [[], null]);
  assert.deepEqual(f, fx(["dom", "bars", "heat", "lines"]));
  // its steps load later (new data that can be read): the problem is gone
  const again = apply(state, { type: "stepsLoaded", steps: range(5), alerts: [[], []] }).state;
  assert.equal(again.problem, null);
  // a listing that no longer has it shows another run, without the problem
  const other = apply(state, { type: "listed", runs: [RUNS[0], RUNS[2]] }).state;
  assert.equal(other.a.run, "healthy");
  assert.equal(other.problem, null);
});

test("a compared run that cannot be shown is dropped with the reason on the status line", () => {
  const s = apply(loaded(), { type: "compareRun", key: key("unnormalised_inputs") }).state;
  assert.equal(apply(s, { type: "compareFailed", key: key("edge_<b>cases"), message: "x" }).state, s);
  const { state, fx: f } = apply(s, { type: "compareFailed", key: key("unnormalised_inputs"), message: "./steps?...: 404 gone" });
  assert.equal(state.b, null);
  assert.equal(state.error, "./steps?...: 404 gone");
  assert.equal(state.a.run, "healthy");
  assert.deepEqual(f, fx(["dom"]));
});

test("loaded steps keep the shown runs' steps answers for the kept-steps note", () => {
  const kept = [{ run: "healthy", tag: "gradflow", steps: range(3) }, null];
  const { state } = apply(loaded(), { type: "stepsLoaded", steps: range(3), alerts: [[], []], kept });
  assert.equal(state.kept, kept);
  assert.deepEqual(apply(loaded(), { type: "stepsLoaded", steps: range(3), alerts: [[], []] }).state.kept, [null, null]);
});

test("heatmaps and the colour scheme redraw what they touch", () => {
  const heats = [{ run: "healthy" }];
  let { state, fx: f } = apply(loaded(), { type: "heatsLoaded", heats });
  assert.equal(state.heats, heats);
  assert.deepEqual(f, fx(["heat"]));
  ({ state, fx: f } = apply(state, { type: "setDark", dark: true }));
  assert.equal(state.dark, true);
  assert.deepEqual(f, fx(["bars", "heat", "lines", "dom"]));
});

test("loaded lines redraw the lines view only and forget the hovered layer", () => {
  let { state } = apply(loaded(), { type: "hoverLayer", layer: "head" });
  const lines = [{ run: "healthy" }];
  let f;
  ({ state, fx: f } = apply(state, { type: "linesLoaded", lines }));
  assert.equal(state.lines, lines);
  assert.equal(state.hover, null); // the old answer's layers may not be the new one's
  assert.deepEqual(f, fx(["lines"]));
});

test("hovering a line highlights its layer in the lines view only; the same layer again changes nothing", () => {
  const s = loaded();
  let { state, fx: f } = apply(s, { type: "hoverLayer", layer: "head" });
  assert.equal(state.hover, "head");
  assert.equal(state.layer, s.layer); // hovering selects nothing
  assert.deepEqual(f, fx(["lines"]));
  const same = apply(state, { type: "hoverLayer", layer: "head" });
  assert.equal(same.state, state);
  assert.deepEqual(same.fx, fx([]));
  ({ state, fx: f } = apply(state, { type: "hoverLayer", layer: null }));
  assert.equal(state.hover, null);
  assert.deepEqual(f, fx(["lines"]));
});

test("an unknown action is an error", () => {
  assert.throws(() => reduce(initialState(), { type: "nope" }), /unknown action: nope/);
  assert.throws(() => effects(initialState(), { type: "nope" }, initialState()), /unknown action: nope/);
});

test("statList takes the shown runs' statistics from the runs answer, by name, with whether each run logged them", () => {
  assert.deepEqual(statList(initialState()), []);
  const zeta = { name: "zeta", meaning: null, unit: null, bad: null, logged: true }; // the server does not know it
  const a = runInfo("a", 10, { stats: [STATS[0], zeta, { ...STATS[4], logged: false }] });
  const b = runInfo("b", 10, { stats: [STATS[3], STATS[0], STATS[4]] });
  let s = apply(initialState(), { type: "listed", runs: [a, b] }).state;
  assert.deepEqual(statList(s), [
    { name: "abs_mean", meaning: STATS[0].meaning, unit: "value", bad: "low", logged: [true] },
    { name: "zeta", meaning: null, unit: null, bad: null, logged: [true] },
    { name: "rows", meaning: STATS[4].meaning, unit: "fraction", bad: "none", logged: [false] },
  ]);
  // compared with b: the selected run's order, then b's others; logged per shown run
  s = apply(s, { type: "compareRun", key: key("b") }).state;
  assert.deepEqual(statList(s).map((e) => [e.name, e.logged]), [
    ["abs_mean", [true, true]], ["zeta", [true, false]], ["rows", [false, true]], ["nonfinite", [false, true]],
  ]);
  // the unit sets the bar plot's axis; a statistic of unknown unit is a value
  assert.equal(statUnit(apply(s, { type: "setStat", stat: "nonfinite" }).state), "count");
  assert.equal(statUnit(apply(s, { type: "setStat", stat: "rows" }).state), "fraction");
  assert.equal(statUnit(apply(s, { type: "setStat", stat: "zeta" }).state), "value");
  assert.equal(statUnit(apply(s, { type: "setStat", stat: "nope" }).state), "value");
});
