// The bar plot per block or role (issue 22): the `flow` answer's groups, which
// bar an alert (per layer) goes to, the Layers menu, the state's choice and
// the requests carrying it. The URL hash keeps it: view.test.mjs.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Client } from "../../frontend/api.js";
import { barData, barLayout, barTooltip, groupSizeText } from "../../frontend/bars.js";
import { groupOfLayer, reviveGroups } from "../../frontend/grouping.js";
import { createLoader } from "../../frontend/loader.js";
import { reviveFlow } from "../../frontend/model.js";
import { barHeading, barLabel, barOfLayer, groupMenu } from "../../frontend/present.js";
import { effects, flowGroup, initialState, reduce } from "../../frontend/state.js";
import { fakeFetch, runInfo, runsAnswer, stepsInfo } from "./fixtures.mjs";

const measure = (s) => s.length * 7;
const query = (url) => Object.fromEntries(new URL(url, "http://tb/").searchParams);

/** A LLaMA-shaped model's layer names, as Hugging Face's LlamaForCausalLM names them. */
const ROLES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
  "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm"];
const BLOCKS = 3;
const LAYERS = ["model.embed_tokens",
  ...Array.from({ length: BLOCKS }, (_, b) => ROLES.map((r) => `model.layers.${b}.${r}`)).flat(), "model.norm", "lm_head"];

/** The `flow` answer per block, as the server sends it. */
function blockAnswer(run = "llama", alerts = []) {
  const names = ["model.embed_tokens", ...Array.from({ length: BLOCKS }, (_, b) => `model.layers.${b}`), "model.norm", "lm_head"];
  const members = [["model.embed_tokens"], ...Array.from({ length: BLOCKS }, (_, b) => ROLES.map((r) => `model.layers.${b}.${r}`)),
    ["model.norm"], ["lm_head"]];
  return {
    run, tag: "gradflow", step: 7, layers: names, group: "block", members,
    types: names.map(() => ""), sparse: names.map(() => false), no_grad: names.map(() => false), absent: names.map(() => false),
    stats: { abs_mean: names.map((_, i) => 10 ** -(i + 1)), abs_max: names.map((_, i) => 10 ** -i), nonfinite: names.map(() => 0) },
    alerts, left_out: [],
  };
}

const BLOCKED = { kind: "blocked", layer: "model.layers.1.mlp.up_proj", first_step: 3, last_step: 7, steps: 5, message: "m", ongoing: true };

test("reviveFlow keeps a grouped answer's mode and members; an ungrouped one is per layer", () => {
  const f = reviveFlow(blockAnswer());
  assert.equal(f.group, "block");
  assert.equal(f.layers.length, BLOCKS + 3);
  assert.deepEqual(f.members[0], ["model.embed_tokens"]);
  assert.equal(f.members[2].length, ROLES.length);
  const plain = reviveFlow({ run: "r", tag: "gradflow", step: 1, layers: ["a"], stats: {} });
  assert.equal(plain.group, "layer");
  assert.equal(plain.members, null);
  assert.equal(reviveFlow({ ...blockAnswer(), group: "heads" }).group, "layer"); // unknown mode
});

test("reviveGroups reads a runs entry's groups; none or malformed is null", () => {
  assert.deepEqual(reviveGroups({ block: 83, role: 12 }), { block: 83, role: 12 });
  assert.equal(reviveGroups(undefined), null);
  assert.equal(reviveGroups({ block: "x", role: 3 }), null);
});

test("an alert (per layer) goes to the group whose members hold its layer", () => {
  const f = reviveFlow(blockAnswer());
  assert.equal(groupOfLayer(f, "model.layers.1.mlp.up_proj"), "model.layers.1");
  assert.equal(groupOfLayer(f, "lm_head"), "lm_head"); // a layer in no block: its own name
  assert.equal(groupOfLayer(f, null), null); // a whole-model finding
  assert.equal(groupOfLayer(f, "no.such.layer"), null);
  const plain = reviveFlow({ run: "r", tag: "gradflow", step: 1, layers: ["a"], stats: {} });
  assert.equal(groupOfLayer(plain, "a"), "a");
  assert.equal(groupOfLayer(undefined, "a"), "a");
});

test("the bar plot per block draws each group, marks the block holding a blocked layer and says how many layers a bar holds", () => {
  const f = reviveFlow(blockAnswer("llama", [BLOCKED]));
  const data = barData([f], "abs_mean", { log: true, unit: "value", selectedLayer: "model.layers.1" });
  assert.deepEqual(data.layers, f.layers);
  assert.equal(data.selected, 2);
  assert.deepEqual(data.series[0].blocked, [false, false, true, false, false, false]);
  assert.deepEqual(data.series[0].sizes, [1, 9, 9, 9, 1, 1]);
  assert.ok(data.title.at(-1).text.endsWith("per block"));
  const layout = barLayout(data, { width: 900, measure });
  const tip = barTooltip(layout, 2, "abs_mean");
  assert.equal(tip[0], "model.layers.1");
  assert.equal(tip[1], "group of 9 layers");
  assert.match(tip[2], /blocked/);
  assert.equal(barTooltip(layout, 5, "abs_mean")[1], "group of 1 layer");
  // per layer: no group line
  const plain = reviveFlow({ run: "r", tag: "gradflow", step: 1, layers: ["a"], stats: { abs_mean: [1] } });
  const one = barLayout(barData([plain], "abs_mean", { log: true }), { width: 300, measure });
  assert.equal(barTooltip(one, 0, "abs_mean").length, 2);
  // compared runs whose groups differ in size: each run's count
  const series = [{ label: "a", sizes: [9] }, { label: "b", sizes: [8] }];
  assert.equal(groupSizeText(/** @type {any} */ (series), 0), "group of 9 layers in a, 8 layers in b");
});

const llama = (extra = {}) => runInfo("llama", 10, { layers: LAYERS.length, groups: { block: BLOCKS + 3, role: ROLES.length + 3 }, ...extra });

test("the Layers menu offers each mode with its bar count, hidden where no mode groups anything", () => {
  let state = reduce(initialState(), { type: "listed", runs: [llama()] });
  let menu = groupMenu(state);
  assert.equal(menu.hidden, false);
  assert.deepEqual(menu.options.map((o) => [o.value, o.label, Boolean(o.disabled)]), [
    ["layer", `per layer (${LAYERS.length})`, false], ["block", `per block (${BLOCKS + 3})`, false], ["role", "per role (12)", false],
  ]);
  assert.equal(menu.value, "layer");
  state = reduce(state, { type: "setGroup", group: "block" });
  assert.equal(groupMenu(state).value, "block");
  // a model with no blocks: both counts are the layer count
  state = reduce(initialState({ group: "block" }), { type: "listed", runs: [runInfo("mlp", 10, { groups: { block: 5, role: 5 } })] });
  menu = groupMenu(state);
  assert.equal(menu.hidden, true);
  assert.equal(menu.value, "layer");
  assert.equal(flowGroup(state), "layer"); // the URL's choice waits for a run that has groups
  // a server that lists no groups
  assert.equal(groupMenu(reduce(initialState(), { type: "listed", runs: [runInfo("old")] })).hidden, true);
  // one mode that groups nothing is offered disabled
  const half = reduce(initialState(), { type: "listed", runs: [llama({ groups: { block: 6, role: LAYERS.length } })] });
  assert.deepEqual(groupMenu(half).options.map((o) => Boolean(o.disabled)), [false, false, true]);
});

test("choosing a mode drops the selected bar, redraws and asks for the step, heatmaps and lines again; the same mode changes nothing", () => {
  let state = reduce(initialState(), { type: "listed", runs: [llama()] });
  state = reduce(state, { type: "stepsLoaded", steps: [0, 1], alerts: [[], []] });
  state = reduce(state, { type: "toggleLayer", layer: "lm_head" });
  const action = { type: "setGroup", group: "role" };
  const after = reduce(state, action);
  assert.equal(after.group, "role");
  assert.equal(after.layer, null);
  assert.deepEqual(effects(state, action, after).load, ["flows", "heat", "lines"]);
  assert.ok(effects(state, action, after).redraw.includes("bars"));
  assert.equal(reduce(after, action), after);
  assert.equal(reduce(after, { type: "setGroup", group: "heads" }), after);
  assert.deepEqual(effects(after, action, after), { redraw: [], load: [], invalidate: [] });
});

test("the bar an alert goes to, and the bar plot's name, follow the shown step's mode", () => {
  let state = reduce(initialState(), { type: "listed", runs: [llama()] });
  state = reduce(state, { type: "flowsLoaded", flows: [reviveFlow(blockAnswer())] });
  assert.equal(barOfLayer(state, BLOCKED.layer), "model.layers.1");
  assert.match(barLabel(state), /^Bar plot of abs_mean per block for llama/);
  assert.equal(barHeading(state), "Gradient per block");
  assert.equal(barHeading(initialState()), "Gradient per layer");
  // an alert click in grouped mode selects its group and step
  const focused = reduce(reduce(state, { type: "stepsLoaded", steps: [0, 3, 7], alerts: [[BLOCKED], []] }), {
    type: "focus", layer: barOfLayer(state, BLOCKED.layer), step: BLOCKED.first_step,
  });
  assert.equal(focused.layer, "model.layers.1");
  assert.equal(focused.steps[focused.index], 3);
});

test("the flow requests of both shown runs carry the mode; per layer leaves it out", async () => {
  const runs = [llama(), llama({ run: "llama2" })];
  const fetch = fakeFetch({
    runs: runsAnswer(runs),
    steps: (url) => stepsInfo(query(url).run, 10),
    alerts: { alerts: [] },
    flow: (url) => ({ ...blockAnswer(query(url).run), group: query(url).group }),
  });
  const client = new Client({ fetch });
  const [listed] = await client.runs();
  assert.deepEqual(listed.groups, { block: BLOCKS + 3, role: 12 });
  let state = initialState({ run: "llama", compare: "llama2", group: "block" });
  const loader = createLoader(client, () => state, (action) => {
    const before = state;
    state = reduce(before, action);
    return action.type === "flowsLoaded" || action.type === "flowRequested" ? Promise.resolve() : loader.perform(
      { ...effects(before, action, state), load: effects(before, action, state).load.filter((l) => l === "runs" || l === "flows") },
    );
  });
  await loader.poll();
  await new Promise((resolve) => setTimeout(resolve, 0));
  const flows = fetch.calls.filter((u) => u.startsWith("./flow?")).map(query);
  assert.deepEqual(flows, [
    { run: "llama", tag: "gradflow", step: "9", group: "block" },
    { run: "llama2", tag: "gradflow", step: "9", group: "block" },
  ]);
  assert.equal(state.flows[1].group, "block");
  assert.equal(Client.url("flow", { run: "r", group: null }), "./flow?run=r");
  await client.flow({ run: "r", tag: "gradflow" }, 1, "layer");
  assert.deepEqual(query(fetch.calls.at(-1)), { run: "r", tag: "gradflow", step: "1" });
});
