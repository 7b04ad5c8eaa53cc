// The tab's first view and its URL: which run it opens on (the `triage`
// ranking, the URL's choice, the user's choice), how a view is written in
// TensorBoard's URL hash and read back (url.js), and the play speed (state.js).

import assert from "node:assert/strict";
import { test } from "node:test";

import { runKey } from "../../frontend/model.js";
import {
  DEFAULT_SPEED, MIN_TICK_MS, PLAY_SPEEDS, currentStep, effects, initialState, needsRanking, nextStep, playTiming,
  reduce,
} from "../../frontend/state.js";
import { URL_PREFIX, hashWithView, parseHash, viewFromHash, viewOf } from "../../frontend/url.js";
import { runInfo } from "./fixtures.mjs";

/** Applies actions in turn; returns the last state and the last transition's effects. */
function apply(state, ...actions) {
  let fx = null;
  for (const action of actions) {
    const before = state;
    state = reduce(before, action);
    fx = effects(before, action, state);
  }
  return { state, fx };
}

const key = (run, tag = "gradflow") => runKey({ run, tag });
const range = (n, from = 0) => Array.from({ length: n }, (_, i) => from + i);
// by name: a_skipped first; by finding: edge (non-finite), then unnormalised (blocked)
const RUNS = [runInfo("a_skipped", 10), runInfo("edge_<b>cases", 10), runInfo("healthy"), runInfo("unnormalised_inputs")];
const RANKING = ["edge_<b>cases", "unnormalised_inputs", "a_skipped", "healthy"].map((run) => ({ run, tag: "gradflow" }));
const VIEW = { run: null, tag: null, compare: null, compareTag: null, stat: null, log: null, step: null, group: null };

test("the first listing opens on the run ranked first, not the first by name", () => {
  const { state, fx } = apply(initialState(), { type: "listed", runs: RUNS, ranking: RANKING });
  assert.equal(state.a.run, "edge_<b>cases");
  assert.deepEqual(fx.load, ["runs"]);
  // without a ranking (a failed triage request): the first run
  assert.equal(apply(initialState(), { type: "listed", runs: RUNS, ranking: null }).state.a.run, "a_skipped");
  // ranked runs the listing lacks are passed over
  const gone = RANKING.slice(1);
  assert.equal(apply(initialState(), { type: "listed", runs: RUNS.slice(2), ranking: gone }).state.a.run, "unnormalised_inputs");
});

test("the user's choice stays through later listings, with or without a ranking", () => {
  let { state } = apply(initialState(), { type: "listed", runs: RUNS, ranking: RANKING });
  ({ state } = apply(state, { type: "selectRun", key: key("healthy") }, { type: "stepsLoaded", steps: range(100), alerts: [[], []] }));
  const grown = RUNS.map((r) => (r.run === "edge_<b>cases" ? runInfo(r.run, 12) : r));
  for (const ranking of [undefined, RANKING]) {
    const { state: after, fx } = apply(state, { type: "listed", runs: grown, ranking });
    assert.equal(after.a.run, "healthy");
    assert.deepEqual(fx.load, []); // nothing of the shown run changed
  }
  // gone: the best ranked of those left
  const { state: after } = apply(state, { type: "listed", runs: RUNS.filter((r) => r.run !== "healthy") });
  assert.equal(after.a.run, "edge_<b>cases");
});

test("a ranking is asked for only while no run is shown and there is a choice the URL does not make", () => {
  const fresh = initialState();
  assert.equal(needsRanking(fresh, RUNS), true);
  assert.equal(needsRanking(fresh, RUNS.slice(0, 1)), false); // one run: no choice
  assert.equal(needsRanking(fresh, []), false);
  assert.equal(needsRanking(initialState({ run: "healthy" }), RUNS), false); // the URL chose
  assert.equal(needsRanking(initialState({ run: "not yet" }), RUNS), true); // its run is not listed
  const shown = apply(fresh, { type: "listed", runs: RUNS, ranking: RANKING }).state;
  assert.equal(needsRanking(shown, RUNS), false);
});

test("the URL's run, compared run, statistic, scale and step make the first view", () => {
  const view = { ...VIEW, run: "healthy", compare: "unnormalised_inputs", stat: "abs_max", log: false, step: 42 };
  let { state } = apply(initialState(view), { type: "listed", runs: RUNS, ranking: RANKING });
  assert.deepEqual([state.a.run, state.b.run, state.stat, state.log], ["healthy", "unnormalised_inputs", "abs_max", false]);
  ({ state } = apply(state, { type: "stepsLoaded", steps: range(100), alerts: [[], []] }));
  assert.equal(currentStep(state), 42);
  assert.equal(state.follow, false);
  assert.deepEqual(state.want, { a: null, b: null, step: null }); // all shown
  // the step goes to the nearest kept step, and is used once
  ({ state } = apply(initialState({ ...VIEW, step: 41 }), { type: "listed", runs: RUNS }, { type: "stepsLoaded", steps: [0, 20, 40, 60], alerts: [[], []] }));
  assert.equal(currentStep(state), 40);
  ({ state } = apply(state, { type: "stepsLoaded", steps: [0, 20, 40, 60, 80], alerts: [[], []] }));
  assert.equal(currentStep(state), 40);
});

test("a URL's run not listed yet is shown once TensorBoard lists it, unless the user chose meanwhile", () => {
  const view = { ...VIEW, run: "late", step: 7 };
  let { state, fx } = apply(initialState(view), { type: "listed", runs: RUNS, ranking: RANKING });
  assert.equal(state.a.run, "edge_<b>cases"); // shown meanwhile
  ({ state } = apply(state, { type: "stepsLoaded", steps: range(10), alerts: [[], []] }));
  assert.equal(currentStep(state), 9); // the asked step waits for the asked run
  assert.equal(viewOf(state).run, "late"); // and the URL keeps asking for it
  const withLate = [...RUNS, runInfo("late", 20)];
  ({ state, fx } = apply(state, { type: "listed", runs: withLate }));
  assert.equal(state.a.run, "late");
  assert.deepEqual(fx.load, ["runs"]);
  ({ state } = apply(state, { type: "stepsLoaded", steps: range(20), alerts: [[], []] }));
  assert.equal(currentStep(state), 7);
  // the user's choice replaces what the URL asked for
  ({ state } = apply(initialState(view), { type: "listed", runs: RUNS }, { type: "selectRun", key: key("healthy") }));
  assert.deepEqual(state.want, { a: null, b: null, step: null });
  assert.equal(apply(state, { type: "listed", runs: withLate }).state.a.run, "healthy");
});

test("parseHash reads TensorBoard's hash: the tab, then decoded key=value pairs", () => {
  assert.deepEqual(parseHash("#gradflow&p.gradflow.run=a%20b%26c&p.other.x=1"), [
    ["__tab__", "gradflow"], ["p.gradflow.run", "a b&c"], ["p.other.x", "1"],
  ]);
  assert.deepEqual(parseHash(""), []);
  assert.deepEqual(parseHash("#a=b=c&%E0%A4%A=1&x=2"), [["x", "2"]]); // malformed parts are dropped
});

test("hashWithView writes the view after TensorBoard's keys, leaving defaults out", () => {
  const view = { run: "edge_<b>cases", tag: "gradflow", compare: "gan", compareTag: "gradflow/disc", stat: "norm", log: false, step: 42 };
  assert.equal(
    hashWithView("#gradflow&p.gradflow.run=old&p.other.x=1&smoothing=0.6", view),
    "#gradflow&p.other.x=1&smoothing=0.6&p.gradflow.run=edge_%3Cb%3Ecases&p.gradflow.compare=gan" +
      "&p.gradflow.compare_tag=gradflow%2Fdisc&p.gradflow.stat=norm&p.gradflow.scale=linear&p.gradflow.step=42",
  );
  const plain = { ...VIEW, run: "healthy", tag: "gradflow", stat: "abs_mean", log: true };
  assert.equal(hashWithView("#scalars", plain), "#scalars&p.gradflow.run=healthy"); // another tab shown: kept
  assert.equal(hashWithView("", { ...VIEW }), "#");
  assert.ok(URL_PREFIX === "p.gradflow.");
});

test("viewFromHash reads back what hashWithView wrote, for any run name", () => {
  for (const run of ["healthy", "exp/run=1 & lr=1e-3", "déjà #1 %", "<img src=x onerror=alert(1)>"]) {
    const view = { run, tag: "gradflow/enc", compare: "b&c", compareTag: "gradflow", stat: "abs_max", log: false, step: 0, group: "block" };
    const back = viewFromHash(hashWithView("#gradflow", view));
    assert.deepEqual(back, { ...view, compareTag: null }); // the default tag is left out
  }
  assert.deepEqual(viewFromHash("#gradflow"), VIEW);
  assert.deepEqual(viewFromHash("#gradflow&p.gradflow.step=abc&p.gradflow.scale=cubic&p.gradflow.run="), VIEW);
  assert.equal(viewFromHash("#x&p.gradflow.scale=log").log, true);
});

test("viewOf leaves the step out while following the newest one", () => {
  let { state } = apply(initialState(), { type: "listed", runs: RUNS, ranking: RANKING }, { type: "stepsLoaded", steps: range(10), alerts: [[], []] });
  assert.deepEqual(viewOf(state), { ...VIEW, run: "edge_<b>cases", tag: "gradflow", stat: "abs_mean", log: true, group: "layer" });
  ({ state } = apply(state, { type: "slide", index: 3 }, { type: "compareRun", key: key("healthy") }));
  assert.deepEqual(viewOf(state), {
    ...VIEW, run: "edge_<b>cases", tag: "gradflow", compare: "healthy", compareTag: "gradflow", stat: "abs_mean", log: true, step: 3, group: "layer",
  });
  assert.deepEqual(viewOf(initialState()), { ...VIEW, stat: "abs_mean", log: true, group: "layer" });
});

test("playTiming keeps the chosen speed, skipping steps above 1000 / MIN_TICK_MS a second", () => {
  assert.deepEqual(PLAY_SPEEDS, [1, 4, 10, 25, 100, 500]);
  assert.equal(DEFAULT_SPEED, 4);
  for (const speed of PLAY_SPEEDS) {
    const { ms, stride } = playTiming(speed);
    assert.ok(ms >= MIN_TICK_MS, `${speed}: ${ms} ms`);
    assert.ok(Math.abs((stride * 1000) / ms - speed) / speed < 0.02, `${speed}: ${stride} per ${ms} ms`);
  }
  assert.deepEqual(playTiming(4), { ms: 250, stride: 1 }); // the one speed there was
  assert.deepEqual(playTiming(500), { ms: 50, stride: 25 });
});

test("at a fast speed each tick moves several steps, warms the one after, and stops at the end", () => {
  let { state } = apply(initialState(), { type: "listed", runs: [runInfo("r", 60)] }, { type: "stepsLoaded", steps: range(60), alerts: [[], []] });
  ({ state } = apply(state, { type: "setSpeed", speed: 500 }, { type: "slide", index: 0 }, { type: "togglePlay" }));
  assert.equal(state.speed, 500);
  assert.equal(nextStep(state), 25);
  ({ state } = apply(state, { type: "tick" }));
  assert.equal(currentStep(state), 25);
  ({ state } = apply(state, { type: "tick" }, { type: "tick" }));
  assert.equal(currentStep(state), 59); // the last step, not past it
  assert.equal(nextStep(state), undefined);
  ({ state } = apply(state, { type: "tick" }));
  assert.equal(state.playing, false);
  // only the offered speeds
  const same = apply(state, { type: "setSpeed", speed: 3 });
  assert.equal(same.state, state);
  assert.deepEqual(same.fx.redraw, []);
});

test("the Layers choice goes in the hash as layers=block or layers=role, per layer left out, and survives a reload", () => {
  const view = { ...VIEW, run: "llama", tag: "gradflow", stat: "abs_mean", log: true };
  assert.equal(hashWithView("#gradflow", { ...view, group: "block" }), "#gradflow&p.gradflow.run=llama&p.gradflow.layers=block");
  assert.equal(hashWithView("#gradflow", { ...view, group: "role" }), "#gradflow&p.gradflow.run=llama&p.gradflow.layers=role");
  assert.equal(hashWithView("#gradflow", { ...view, group: "layer" }), "#gradflow&p.gradflow.run=llama");
  assert.equal(viewFromHash("#gradflow&p.gradflow.layers=role").group, "role");
  assert.equal(viewFromHash("#gradflow&p.gradflow.layers=heads").group, null); // unknown: the default
  // a reload: the state the hash starts keeps the choice, and writes it back
  const runs = [runInfo("llama", 10, { layers: 723, groups: { block: 83, role: 12 } })];
  const reloaded = initialState(viewFromHash("#gradflow&p.gradflow.run=llama&p.gradflow.layers=block"));
  assert.equal(reloaded.group, "block");
  const { state } = apply(reloaded, { type: "listed", runs }, { type: "stepsLoaded", steps: range(10), alerts: [[], []] });
  assert.equal(viewOf(state).group, "block");
  assert.equal(hashWithView("#gradflow", viewOf(state)), "#gradflow&p.gradflow.run=llama&p.gradflow.layers=block");
  assert.equal(initialState(viewFromHash("#gradflow&p.gradflow.layers=x")).group, "layer");
});
