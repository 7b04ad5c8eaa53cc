import assert from "node:assert/strict";
import { test } from "node:test";

import { Client, HttpError } from "../../frontend/api.js";
import { encodeHeatmap } from "../../frontend/binary.js";
import { HEAT_COLUMNS, StaleGuard, createLoader } from "../../frontend/loader.js";
import { runKey } from "../../frontend/model.js";
import { currentStep, effects, initialState, reduce } from "../../frontend/state.js";
import { FLOW, HEAD, fakeFetch, runInfo, runsAnswer, stepsInfo } from "./fixtures.mjs";

/** The tab without a page: a state, index.js's dispatch, and a loader. */
function tab(client) {
  let state = initialState();
  const redraws = [];
  const loader = createLoader(client, () => state, dispatch);
  function dispatch(action) {
    const before = state;
    state = reduce(before, action);
    const fx = effects(before, action, state);
    redraws.push(...fx.redraw);
    return loader.perform(fx);
  }
  return { get state() { return state; }, dispatch, loader, redraws };
}

/** Until every pending promise callback has run. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 0));

/** The plugin's routes over `runs` (each with kept steps 0..last_step). */
function server(runs) {
  const q = (url) => Object.fromEntries(new URL(url, "http://tb/").searchParams);
  const fetch = fakeFetch({
    runs: () => runsAnswer(runs()),
    steps: (url) => stepsInfo(q(url).run, runs().find((r) => r.run === q(url).run).last_step + 1),
    alerts: (url) => ({ alerts: [{ kind: "blocked", layer: "head", first_step: 1, last_step: 2, steps: 2, message: q(url).run }] }),
    flow: (url) => ({ ...FLOW, run: q(url).run, step: Number(q(url).step) }),
    heatmap: encodeHeatmap(HEAD, [1, 2, 3, 4, 5, 6]),
    lines: encodeHeatmap(HEAD, [1, 2, 3, 4, 5, 6], [0.5, 1, 1.5, 2, 2.5, 3]),
  });
  const routes = () => fetch.calls.map((u) => `${u.slice(2).split("?")[0]} ${new URLSearchParams(u.split("?")[1]).toString()}`.trim());
  return { fetch, routes };
}

test("StaleGuard keeps only the latest token of each slot", () => {
  const g = new StaleGuard();
  const t1 = g.next("flow");
  const t2 = g.next("flow");
  const h = g.next("heat");
  assert.equal(g.isCurrent("flow", t1), false);
  assert.equal(g.isCurrent("flow", t2), true);
  assert.equal(g.isCurrent("heat", h), true);
});

test("the first poll loads the first run's steps, alerts, heatmap, lines and newest step", async () => {
  const { fetch, routes } = server(() => [runInfo("my run", 5), runInfo("other")]);
  const t = tab(new Client({ fetch }));
  await t.loader.poll();
  await settle();
  assert.deepEqual(routes(), [
    "runs",
    "triage", // answers 404 here: the first run is shown
    "steps run=my+run&tag=gradflow",
    "alerts run=my+run&tag=gradflow",
    `heatmap run=my+run&tag=gradflow&stat=abs_mean&max_steps=${HEAT_COLUMNS}&format=binary`,
    `lines run=my+run&tag=gradflow&stat=abs_mean&max_steps=${HEAT_COLUMNS}&format=binary`,
    "flow run=my+run&tag=gradflow&step=4",
  ]);
  const s = t.state;
  assert.equal(s.a.run, "my run");
  assert.deepEqual(s.steps, [0, 1, 2, 3, 4]);
  assert.equal(currentStep(s), 4);
  assert.equal(s.alerts[0][0].message, "my run");
  assert.equal(s.heats.length, 1);
  assert.equal(s.lines.length, 1);
  assert.deepEqual(Array.from(s.lines[0].max), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(Array.from(s.lines[0].min), [0.5, 1, 1.5, 2, 2.5, 3]);
  assert.equal(s.flows[0].run, "my run");
  assert.equal(s.flows[0].step, 4);
  assert.equal(s.flowPending, false);
  assert.equal(s.error, "");
  assert.deepEqual(new Set(t.redraws), new Set(["dom", "heat", "lines", "bars"]));
});

test("a compared run without the chosen statistic gets not-logged heatmap and lines, asked of no route", async () => {
  const zeta = { name: "zeta", meaning: null, unit: null, bad: null, logged: true };
  const mine = runInfo("mine", 5, { stats: [...runInfo("x").stats, zeta] });
  const { fetch, routes } = server(() => [mine, runInfo("plain", 5)]);
  const t = tab(new Client({ fetch }));
  await t.dispatch({ type: "setStat", stat: "zeta" });
  await t.loader.poll();
  await settle();
  await t.dispatch({ type: "compareRun", key: runKey({ run: "plain", tag: "gradflow" }) });
  await settle();
  const heats = routes().filter((r) => r.startsWith("heatmap"));
  assert.ok(heats.every((r) => r.includes("run=mine")), heats); // never a 400 for plain
  assert.equal(t.state.heats.length, 2);
  assert.equal(t.state.heats[0].logged, true); // the route's answer (the fake's)
  assert.deepEqual([t.state.heats[1].run, t.state.heats[1].stat, t.state.heats[1].logged], ["plain", "zeta", false]);
  const lines = routes().filter((r) => r.startsWith("lines"));
  assert.ok(lines.length > 0 && lines.every((r) => r.includes("run=mine")), lines);
  assert.equal(t.state.lines.length, 2);
  assert.equal(t.state.lines[0].logged, true);
  assert.deepEqual([t.state.lines[1].run, t.state.lines[1].stat, t.state.lines[1].logged], ["plain", "zeta", false]);
  assert.deepEqual([t.state.lines[1].max.length, t.state.lines[1].min.length], [0, 0]);
  assert.equal(t.state.error, "");
});

test("polling: an unchanged listing asks for nothing more, new steps reload without losing the selection", async () => {
  let runs = [runInfo("a", 50), runInfo("b", 50)];
  const { fetch, routes } = server(() => runs);
  const t = tab(new Client({ fetch }));
  await t.loader.poll();
  await t.dispatch({ type: "compareRun", key: runKey(runs[1]) });
  await t.dispatch({ type: "slide", index: 20 });
  t.dispatch({ type: "toggleLayer", layer: "head" });
  await settle();
  const asked = routes().length;
  await t.loader.poll();
  await settle();
  assert.deepEqual(routes().slice(asked), ["runs"]);

  runs = [runInfo("a", 80), runInfo("b", 50)];
  await t.loader.poll();
  await settle();
  const again = routes().slice(asked + 1);
  assert.ok(again.includes("steps run=a&tag=gradflow"), again); // its cache was dropped
  assert.ok(again.includes("flow run=a&tag=gradflow&step=20"), again);
  assert.ok(!again.includes("alerts run=b&tag=gradflow"), again); // b's answers are still cached
  const s = t.state;
  assert.equal(s.a.last_step, 79);
  assert.deepEqual(s.kept.map((k) => [k.run, k.steps.length]), [["a", 80], ["b", 50]]);
  assert.equal(s.b.run, "b");
  assert.equal(currentStep(s), 20);
  assert.equal(s.layer, "head");
  assert.deepEqual(s.flows.map((f) => [f.run, f.step]), [["a", 20], ["b", 20]]);
});

test("only the answer to the latest request of a kind is used", async () => {
  const waiting = [];
  const client = {
    runs: async () => [runInfo("r", 10)],
    steps: async () => stepsInfo("r", 10),
    alerts: async () => [],
    heatmap: async () => ({ run: "r" }),
    lines: async () => ({ run: "r" }),
    flow: (r, step) => new Promise((resolve) => waiting.push({ step, resolve })),
    invalidate() {},
  };
  const t = tab(client);
  await Promise.race([t.loader.poll(), settle()]);
  t.dispatch({ type: "slide", index: 3 });
  t.dispatch({ type: "slide", index: 5 });
  assert.deepEqual(waiting.map((w) => w.step), [9, 3, 5]);
  waiting[2].resolve({ run: "r", step: 5, stats: { abs_mean: [] }, alerts: [] });
  await settle();
  waiting[1].resolve({ run: "r", step: 3, stats: { abs_mean: [] }, alerts: [] }); // late: dropped
  waiting[0].resolve({ run: "r", step: 9, stats: { abs_mean: [] }, alerts: [] });
  await settle();
  assert.deepEqual(t.state.flows.map((f) => f.step), [5]);
  assert.equal(t.state.flowPending, false);
});

test("failures show as text: the server's line, and stale failures not at all", async () => {
  const { fetch } = server(() => [runInfo("r", 10)]);
  const failing = async (url) => (url.startsWith("./flow") ? { ok: false, status: 404, text: async () => "Run 'r': no step" } : fetch(url));
  const t = tab(new Client({ fetch: failing }));
  await t.loader.poll();
  await settle();
  assert.equal(t.state.error, "./flow?run=r&tag=gradflow&step=9: 404 Run 'r': no step");
  assert.equal(t.state.flowPending, false);

  const down = tab({ runs: async () => { throw new TypeError("Failed to fetch"); } });
  await down.loader.poll();
  assert.equal(down.state.error, "TypeError: Failed to fetch");
  assert.equal(down.state.loaded, false);

  let fail;
  const client = {
    runs: async () => [runInfo("r", 10), runInfo("s", 10)],
    steps: (r) => (r.run === "r" ? new Promise((_, reject) => { fail = reject; }) : Promise.resolve(stepsInfo("s", 2, { steps: [1, 2] }))),
    alerts: async () => [],
    heatmap: async () => ({ run: "s" }),
    lines: async () => ({ run: "s" }),
    flow: async (r, step) => ({ run: r.run, step, stats: {}, alerts: [] }),
    invalidate() {},
  };
  const stale = tab(client);
  stale.loader.poll();
  await settle();
  await stale.dispatch({ type: "selectRun", key: runKey({ run: "s", tag: "gradflow" }) });
  fail(new HttpError(404, "./steps?run=r: 404 gone")); // answer to a superseded request
  await settle();
  assert.equal(stale.state.error, "");
  assert.deepEqual(stale.state.steps, [1, 2]);
});

test("while playing, each loaded step warms the cache with the next one", async () => {
  const { fetch, routes } = server(() => [runInfo("r", 10)]);
  const t = tab(new Client({ fetch }));
  await t.loader.poll();
  await settle();
  await t.dispatch({ type: "togglePlay" }); // at the end: back to step 0
  await settle();
  assert.deepEqual(routes().slice(-2), ["flow run=r&tag=gradflow&step=0", "flow run=r&tag=gradflow&step=1"]);
  const asked = routes().length;
  t.dispatch({ type: "tick" });
  await settle();
  assert.equal(currentStep(t.state), 1);
  assert.deepEqual(routes().slice(asked), ["flow run=r&tag=gradflow&step=2"]); // step 1 came from the cache
});

test("the first poll opens on the run the triage ranks first; later polls ask for no ranking", async () => {
  const { fetch: base, routes } = server(() => [runInfo("a_first_by_name", 5), runInfo("broken", 5)]);
  const triage = { runs: [{ run: "broken", tag: "gradflow", worst: "nonfinite" }, { run: "a_first_by_name", tag: "gradflow", worst: null }] };
  const fetch = async (url) => (url === "./triage" ? { ok: true, status: 200, json: async () => triage } : base(url));
  const t = tab(new Client({ fetch }));
  await t.loader.poll();
  await settle();
  assert.equal(t.state.a.run, "broken");
  assert.deepEqual(routes().slice(0, 2), ["runs", "steps run=broken&tag=gradflow"]); // triage is not a fake route
  await t.loader.poll();
  await settle();
  assert.equal(t.state.a.run, "broken");
});

test("the first poll shows the kept-steps note from the selected run's steps answer", async () => {
  const { fetch } = server(() => [runInfo("r", 10)]);
  const t = tab(new Client({ fetch }));
  await t.loader.poll();
  await settle();
  assert.deepEqual(t.state.kept, [stepsInfo("r", 10), null]);
});

test("a selected run whose routes answer 404 is shown as such with the server's reason; the others stay listed", async () => {
  const reason = "Run 'old', tag 'gradflow': the layer set changed between writer sessions";
  const { fetch: base, routes } = server(() => [runInfo("good", 5), runInfo("old", 5)]);
  const fetch = async (url) => (url.includes("run=old") ? { ok: false, status: 404, text: async () => reason } : base(url));
  const t = tab(new Client({ fetch }));
  await t.loader.poll();
  await settle();
  await t.dispatch({ type: "selectRun", key: runKey({ run: "old", tag: "gradflow" }) });
  await settle();
  const s = t.state;
  assert.deepEqual(s.problem, { key: runKey({ run: "old", tag: "gradflow" }), message: reason });
  assert.deepEqual([s.steps, s.flows, s.heats, s.lines, s.kept], [[], [], [], [], [null, null]]); // nothing of "good" stays on screen
  assert.deepEqual(s.runs.map((r) => r.run), ["good", "old"]);
  assert.equal(s.error, "");
  assert.ok(!routes().some((r) => /^(heatmap|lines|flow) run=old/.test(r)), routes());
  // back to a good run: shown again
  await t.dispatch({ type: "selectRun", key: runKey({ run: "good", tag: "gradflow" }) });
  await settle();
  assert.equal(t.state.problem, null);
  assert.equal(t.state.flows[0].run, "good");
});

test("a compared run whose routes answer 404 is dropped with the reason in the status line; the selected run stays", async () => {
  const { fetch: base } = server(() => [runInfo("good", 5), runInfo("old", 5)]);
  const fetch = async (url) => (url.includes("run=old") ? { ok: false, status: 404, text: async () => "gone" } : base(url));
  const t = tab(new Client({ fetch }));
  await t.loader.poll();
  await settle();
  await t.dispatch({ type: "compareRun", key: runKey({ run: "old", tag: "gradflow" }) });
  await settle();
  const s = t.state;
  assert.equal(s.b, null);
  assert.equal(s.error, "./steps?run=old&tag=gradflow: 404 gone");
  assert.equal(s.a.run, "good");
  assert.deepEqual(s.flows.map((f) => f.run), ["good"]);
  assert.equal(s.problem, null);
});

test("a server that cannot be reached is a status line, not a run that cannot be shown", async () => {
  const client = {
    runs: async () => [runInfo("r", 10)],
    steps: async () => { throw new TypeError("Failed to fetch"); },
    alerts: async () => [],
    invalidate() {},
  };
  const t = tab(client);
  await t.loader.poll();
  await settle();
  assert.equal(t.state.problem, null);
  assert.equal(t.state.error, "TypeError: Failed to fetch");
});
