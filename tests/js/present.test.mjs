import assert from "node:assert/strict";
import { test } from "node:test";

import { notLoggedHeatmap } from "../../frontend/binary.js";
import { reviveFlow, runKey } from "../../frontend/model.js";
import { PALETTES } from "../../frontend/palette.js";
import {
  EMPTY_HINT, EMPTY_MESSAGE, alertGroups, barLabel, emptyMessage, keptLine, leftOutGroups, legendItems,
  UNKNOWN_MEANING, barOptions, heatText, linesText, logControl, palette, pngName, runLabel, runMenus, runProblem, speedMenu,
  statOptions, statTitle, stepControls,
} from "../../frontend/present.js";
import { initialState, reduce } from "../../frontend/state.js";
import { STATS, runInfo, stepsInfo } from "./fixtures.mjs";

const RUNS = [
  runInfo("healthy"),
  runInfo("big", 10000),
  runInfo("named", 10, { tag: "gradflow/encoder", name: "encoder" }),
];
/** The `steps` answers of healthy (all kept) and big (100 of 10,000 kept). */
const KEPT = { healthy: stepsInfo("healthy"), big: stepsInfo("big", 100, { expected_steps: 10000, last_step: 9999 }) };
const flow = (run, step) => reviveFlow({ run, tag: "gradflow", step, layers: ["l0"], stats: { abs_mean: [1], norm: [2], abs_max: [3] } });
const state = (...actions) => actions.reduce(reduce, initialState());
const listed = { type: "listed", runs: RUNS };
const steps = (n) => ({ type: "stepsLoaded", steps: Array.from({ length: n }, (_, i) => i * 10), alerts: [[{ kind: "blocked" }], [{ kind: "x" }]] });

test("runLabel names a watcher only when it has a name or its own tag", () => {
  assert.equal(runLabel(RUNS[0]), "healthy");
  assert.equal(runLabel(RUNS[2]), "named (encoder)");
  assert.equal(runLabel({ run: "r", tag: "gradflow/x", name: null }), "r (gradflow/x)");
});

test("the Compare menu offers 'none' and every run but the selected one", () => {
  const s = state(listed, { type: "compareRun", key: runKey(RUNS[2]) });
  const m = runMenus(s);
  assert.deepEqual(m.run.map((o) => o.label), ["healthy", "big", "named (encoder)"]);
  assert.equal(m.runValue, runKey(RUNS[0]));
  assert.deepEqual(m.compare.map((o) => o.label), ["\u2014 none \u2014", "big", "named (encoder)"]);
  assert.equal(m.compareValue, runKey(RUNS[2]));
  assert.equal(runMenus(state(listed)).compareValue, "");
  assert.deepEqual(runMenus(initialState()), { run: [], runValue: "", compare: [{ value: "", label: "\u2014 none \u2014" }], compareValue: "" });
});

test("the kept-steps line comes from the shown runs' steps answers and warns when TensorBoard sampled one", () => {
  const loaded = (kept) => ({ ...steps(3), kept });
  assert.deepEqual(keptLine(state(listed, loaded([KEPT.healthy, null]))), { text: "healthy: all 100 logged steps shown", warn: false });
  const k = keptLine(state(listed, { type: "compareRun", key: runKey(RUNS[1]) }, loaded([KEPT.healthy, KEPT.big])));
  assert.match(k.text, /^healthy: all 100 logged steps shown \u00b7 big: TensorBoard kept 100 of 10,000 /);
  assert.equal(k.warn, true);
  assert.deepEqual(keptLine(initialState()), { text: "", warn: false });
  // before its steps answer, or with another run's, a run has no line
  assert.deepEqual(keptLine(state(listed)), { text: "", warn: false });
  const other = state(listed, loaded([KEPT.big, null]));
  assert.deepEqual(keptLine(other), { text: "", warn: false });
});

test("the kept-steps line says when the heatmap and lines cover every logged step", () => {
  const big = state(listed, { type: "selectRun", key: runKey(RUNS[1]) }, { ...steps(3), kept: [KEPT.big, null] });
  const heat = { ...notLoggedHeatmap(RUNS[1], "abs_mean"), logged: true, overview: true, logged_steps: 10000 };
  const line = keptLine({ ...big, heats: [heat] });
  assert.match(line.text, /^big: TensorBoard kept 100 of 10,000 .*\(the heatmap and lines: every one of the 10,000\)$/);
  assert.equal(line.warn, true); // the bar plot and the slider still show the kept steps
  assert.doesNotMatch(keptLine({ ...big, heats: [{ ...heat, overview: false }] }).text, /every one/);
});

test("records left out are summed up per shown run, with their reasons and the loader's note as it is", () => {
  const stopped = "TensorBoard stopped reading events.x before its end (at a damaged record): steps after 24 up to 39 are in the file but not shown";
  const damaged = stepsInfo("big", 100, { left_out: [{ step: 135, reason: "abs_mean is negative (layer 'head')" }, { step: null, reason: stopped }] });
  const s = state(listed, { type: "compareRun", key: runKey(RUNS[1]) }, { ...steps(3), kept: [KEPT.healthy, damaged] });
  assert.deepEqual(leftOutGroups(s), [{
    run: "big", series: 1, summary: "big: 1 step left out (damaged record): 135",
    reasons: ["step 135: abs_mean is negative (layer 'head')"], notes: [`big: ${stopped}`],
  }]);
  assert.deepEqual(leftOutGroups(state(listed, { ...steps(3), kept: [KEPT.healthy, null] })), []);
});

test("a selected run that cannot be shown says why, as the server said it", () => {
  const message = "Run 'healthy', tag 'gradflow': the layer set changed between writer sessions";
  const s = state(listed, { type: "runFailed", key: runKey(RUNS[0]), message });
  assert.deepEqual(runProblem(s), { title: "healthy cannot be shown", hint: [{ text: message }] });
  assert.equal(runProblem(reduce(s, { type: "selectRun", key: runKey(RUNS[2]) })), null);
  assert.equal(runProblem(state(listed)), null);
});

test("the step controls show the selected step and disable themselves below two steps", () => {
  assert.deepEqual(stepControls(initialState()), {
    max: "0", value: "0", disabled: true, label: "", step: "", valueText: "", play: "\u25b6 Play", pressed: "false",
  });
  const s = state(listed, steps(30), { type: "slide", index: 4 }, { type: "togglePlay" });
  assert.deepEqual(stepControls(s), {
    max: "29", value: "4", disabled: false, label: "step 40  (5 of 30)", step: "40", valueText: "step 40",
    play: "\u23f8 Pause", pressed: "true",
  });
  assert.equal(stepControls(state(listed, steps(1))).disabled, true);
});

test("the Statistic menu lists the shown run's statistics from the runs answer, each with its meaning", () => {
  assert.deepEqual(statOptions(initialState()), []);
  const s = state(listed, steps(3), { type: "flowsLoaded", flows: [flow("healthy", 20)] });
  assert.deepEqual(statOptions(s), STATS.map((st) => ({ value: st.name, label: st.name, title: st.meaning, disabled: false })));
  assert.equal(statTitle(s), `abs_mean: ${STATS[0].meaning}`);
});

test("the Statistic menu marks a statistic a shown run did not log, and disables it when none did", () => {
  const zeta = { name: "zeta", meaning: null, unit: null, bad: null, logged: true };
  const old = runInfo("old", 10, { stats: [STATS[0], { ...STATS[4], logged: false }] });
  const mine = runInfo("mine", 10, { stats: [STATS[0], zeta, STATS[4]] });
  let s = state({ type: "listed", runs: [old, mine] }, { type: "selectRun", key: runKey(old) });
  const rows = statOptions(s).find((o) => o.value === "rows");
  assert.deepEqual(rows, {
    value: "rows", label: "rows (not logged)", disabled: true,
    title: `${STATS[4].meaning}\nNot logged: its files were written without it.`,
  });
  // asked for anyway (by the URL): the menu's tooltip says so too
  assert.equal(statTitle(reduce(s, { type: "setStat", stat: "rows" })), `rows: ${rows.title}`);
  // compared with a run that logged it: enabled, naming the run that did not
  s = reduce(s, { type: "compareRun", key: runKey(mine) });
  const options = new Map(statOptions(s).map((o) => [o.value, o]));
  assert.deepEqual([options.get("rows").label, options.get("rows").disabled], ["rows (not logged in old)", false]);
  // a statistic the server does not know, read from mine's files by name
  assert.deepEqual(options.get("zeta"), {
    value: "zeta", label: "zeta (not logged in old)", disabled: false,
    title: `${UNKNOWN_MEANING}\nNot logged in old: its files were written without it.`,
  });
  assert.match(UNKNOWN_MEANING, /does not know it/);
});

test("the bar plot's axis follows the chosen statistic's unit; a heatmap of one not logged says so", () => {
  let s = state(listed);
  assert.deepEqual(barOptions(s), { log: true, unit: "value", selectedLayer: null });
  s = reduce(s, { type: "setStat", stat: "rows" });
  assert.equal(barOptions(s).unit, "fraction");
  const heat = { run: "old", stat: "rows", downsampled: true, logged: true };
  assert.deepEqual(heatText(heat), { title: "old \u00b7 rows (max per bin)", message: "" });
  assert.deepEqual(heatText({ ...heat, logged: false }), { title: "old \u00b7 rows (not logged)", message: "rows is not logged in old" });
});

test("the legend has one entry per shown run and abs_max behind abs_mean only", () => {
  let s = state(listed, { type: "flowsLoaded", flows: [flow("healthy", 1), flow("big", 1)] });
  const items = legendItems(s);
  assert.deepEqual(items.map((i) => i.kind), ["bar", "bar", "back", "zero", "no_grad", "nonfinite", "blocked"]);
  assert.deepEqual(items.slice(0, 2).map((i) => [i.label, i.color]), [["healthy", PALETTES.light.series[0]], ["big", PALETTES.light.series[1]]]);
  s = reduce(reduce(s, { type: "setStat", stat: "norm" }), { type: "setDark", dark: true });
  assert.equal(palette(s), PALETTES.dark);
  assert.deepEqual(legendItems(s).map((i) => i.kind), ["bar", "bar", "zero", "no_grad", "nonfinite", "blocked"]);
  assert.equal(legendItems(s)[0].color, PALETTES.dark.series[0]);
});

test("alerts are grouped per shown run in series order, with the module types of that run's layers", () => {
  let s = state(listed, { type: "compareRun", key: runKey(RUNS[1]) }, steps(2));
  assert.deepEqual(alertGroups(s), [
    { run: "healthy", series: 0, alerts: [{ kind: "blocked" }], types: new Map() },
    { run: "big", series: 1, alerts: [{ kind: "x" }], types: new Map() },
  ]);
  const typed = (run, types) => reviveFlow({ run, tag: "gradflow", step: 1, layers: ["0", "1"], types, stats: { abs_mean: [1, 1] } });
  s = reduce(s, { type: "flowsLoaded", flows: [typed("healthy", ["Conv2d", ""]), typed("big", ["Linear", "ReLU"])] });
  assert.deepEqual(alertGroups(s).map((g) => [...g.types]), [[["0", "Conv2d"]], [["0", "Linear"], ["1", "ReLU"]]]);
  assert.deepEqual(alertGroups(initialState()), []);
});

test("the empty view shows only once a listing found no run", () => {
  assert.equal(emptyMessage(initialState()), null);
  assert.equal(emptyMessage(state({ type: "listed", runs: [] })), EMPTY_MESSAGE);
  assert.equal(emptyMessage(state(listed)), null);
});

test("the bar plot's name and PNG file name say what is shown, in safe characters", () => {
  const s = state(listed, { type: "flowsLoaded", flows: [flow("exp/seed 1&x", 120), flow("<b>", 120)] });
  assert.equal(barLabel(s), "Bar plot of abs_mean per layer for exp/seed 1&x at step 120 and <b> at step 120");
  assert.equal(pngName(s), "gradflow-exp_seed_1_x-b-step120-abs_mean.png");
  assert.equal(pngName(initialState()), "gradflow-step-abs_mean.png");
});

test("the empty view's hint reads as one sentence naming tb_gradflow.watch, no word twice in a row", () => {
  const text = EMPTY_HINT.map((p) => p.text).join("");
  assert.equal(text, "Log gradients with tb_gradflow.watch(model, writer, optimizer=opt) and this tab fills in by itself while training writes.");
  assert.doesNotMatch(text, /\b(\w+)\s+\1\b/i);
  assert.deepEqual(EMPTY_HINT.map((p) => Boolean(p.code)), [false, true, false]);
});

test("the legend names the mark of a layer a shown run lacks at this step, only when one is drawn", () => {
  const f = (run, layers, absent) => reviveFlow({ run, tag: "gradflow", step: 1, layers, absent, stats: { abs_mean: layers.map(() => 1) } });
  let s = state(listed, { type: "flowsLoaded", flows: [f("healthy", ["a", "b"], [false, false])] });
  assert.ok(!legendItems(s).some((i) => i.kind === "missing"));
  s = state(listed, { type: "flowsLoaded", flows: [f("healthy", ["a", "b"], [false, true])] });
  assert.deepEqual(legendItems(s).filter((i) => i.kind === "missing").map((i) => i.label), ["no such layer"]);
  s = state(listed, { type: "flowsLoaded", flows: [f("healthy", ["a"], [false]), f("big", ["a", "b"], [false, false])] });
  assert.ok(legendItems(s).some((i) => i.kind === "missing")); // the first run has no b
});

test("the legend says where abs_max is cut off on a linear scale, and drops the hatch on a count axis", () => {
  let s = state(listed, { type: "flowsLoaded", flows: [flow("healthy", 1)] }, { type: "setLog", log: false });
  assert.equal(legendItems(s).find((i) => i.kind === "back").label, "abs_max (behind; \u25b2 above the axis)");
  s = reduce(s, { type: "setStat", stat: "nonfinite" });
  assert.deepEqual(legendItems(s).map((i) => i.kind), ["bar", "zero", "no_grad", "blocked"]);
});

test("the log checkbox is off and disabled for a count, and keeps the user's choice otherwise", () => {
  let s = state(listed);
  assert.deepEqual(logControl(s), { checked: true, disabled: false, title: "Log scale for the bar plot" });
  s = reduce(s, { type: "setStat", stat: "nonfinite" });
  assert.deepEqual(logControl(s), { checked: false, disabled: true, title: "nonfinite is a count: drawn on a count axis from 0" });
  assert.equal(logControl(reduce(s, { type: "setStat", stat: "norm" })).checked, true);
  // a fraction: 0 to 1, whatever the toggle says
  assert.deepEqual(logControl(reduce(s, { type: "setStat", stat: "rows" })), {
    checked: false, disabled: true, title: "rows is a fraction: drawn from 0 to 1",
  });
});

test("the Speed menu offers the play speeds in steps per second", () => {
  const m = speedMenu(state(listed));
  assert.deepEqual(m.options.map((o) => o.label), ["1 steps/s", "4 steps/s", "10 steps/s", "25 steps/s", "100 steps/s", "500 steps/s"]);
  assert.equal(m.value, "4");
  assert.equal(speedMenu(state(listed, { type: "setSpeed", speed: 100 })).value, "100");
});

test("linesText names the run, the statistic and the scale, says when bins are drawn, and says not logged", () => {
  const lines = { run: "r", stat: "update_ratio", downsampled: false, logged: true };
  assert.deepEqual(linesText(lines, "log"), { title: "r \u00b7 update_ratio (log scale)", message: "" });
  assert.equal(linesText({ ...lines, downsampled: true }, "linear").title, "r \u00b7 update_ratio, smallest to largest per bin");
  assert.deepEqual(linesText({ ...lines, logged: false }, "log"), {
    title: "r \u00b7 update_ratio (not logged)", message: "update_ratio is not logged in r",
  });
});
