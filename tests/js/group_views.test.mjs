// The heatmap and the lines view per block or role (issue 22): grouped
// binned answers decoded, the cells whose values are bounds, tooltips and
// titles, the alerts (per layer) in their group's row, and the requests
// carrying the Layers choice. The bar plot per group: group.test.mjs.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Client } from "../../frontend/api.js";
import { decodeHeatmap, decodeLines, encodeHeatmap } from "../../frontend/binary.js";
import { BOUND_TEXT } from "../../frontend/canvas.js";
import { boundAt, expandRows, reviveBounds, rowOfLayer } from "../../frontend/grouping.js";
import { heatTooltip, heatmapLayout, heatmapRowLabelAt } from "../../frontend/heatmap.js";
import { linesTooltip } from "../../frontend/lines.js";
import { createLoader } from "../../frontend/loader.js";
import { spikeCells } from "../../frontend/marks.js";
import { groupRowTooltip, heatRowLabels, heatText, linesText, rowUnit } from "../../frontend/present.js";
import { effects, initialState, reduce } from "../../frontend/state.js";
import { fakeFetch, runInfo, runsAnswer, stepsInfo } from "./fixtures.mjs";

const query = (url) => Object.fromEntries(new URL(url, "http://tb/").searchParams);

/** Three groups per block: a layer in no block, a block of two, a block of three. */
const MEMBERS = [["model.embed_tokens"], ["model.layers.0.q", "model.layers.0.o"], ["model.layers.1.q", "model.layers.1.o", "model.layers.1.norm"]];
const GROUPS = ["model.embed_tokens", "model.layers.0", "model.layers.1"];

/** A grouped `heatmap`/`lines` header: 2 columns of 100 steps; column 1 drawn from overview blocks. */
function groupedHead(extra = {}) {
  return {
    run: "long", tag: "gradflow", stat: "norm", layers: GROUPS, types: ["Embedding", "", ""],
    steps: [0, 100], first_steps: [0, 100], last_steps: [99, 199], downsampled: true, logged: true,
    total_norm: [1, 2], from: "overview", logged_steps: 200, group: "block", members: MEMBERS,
    bounds: { columns: [1], max: "upper", min: "lower" }, ...extra,
  };
}

test("a grouped heatmap or lines answer keeps its mode, its members and where its values are bounds", () => {
  const heat = decodeHeatmap(encodeHeatmap(groupedHead(), [1, 2, 3, 4, 5, 6]));
  assert.equal(heat.group, "block");
  assert.deepEqual(heat.members, MEMBERS);
  assert.deepEqual([...heat.bounds.columns], [1]);
  assert.equal(heat.bounds.max, "upper");
  const lines = decodeLines(encodeHeatmap(groupedHead({ bounds: undefined }), [1, 2, 3, 4, 5, 6], [1, 1, 1, 1, 1, 1]));
  assert.equal(lines.bounds, null);
  assert.equal(lines.members.length, 3);
  // per layer: no members, no bounds
  const plain = decodeHeatmap(encodeHeatmap({ ...groupedHead(), group: undefined, members: undefined, bounds: undefined }, [1, 2, 3, 4, 5, 6]));
  assert.equal(plain.group, "layer");
  assert.equal(plain.members, null);
  assert.equal(reviveBounds({ columns: "x" }), null);
  assert.equal(reviveBounds({ columns: [0], max: "exact" }).max, "exact");
});

test("boundAt: a group of several layers in a column drawn from overview blocks; abs_max's largest is exact", () => {
  const heat = decodeHeatmap(encodeHeatmap(groupedHead(), [1, 2, 3, 4, 5, 6]));
  assert.deepEqual(boundAt(heat, 1, 1), { max: true, min: true });
  assert.deepEqual(boundAt(heat, 1, 0), { max: false, min: false }); // kept steps: exact
  assert.deepEqual(boundAt(heat, 0, 1), { max: false, min: false }); // a group of one layer: exact
  const absMax = decodeHeatmap(encodeHeatmap(groupedHead({ bounds: { columns: [1], max: "exact", min: "lower" } }), [1, 2, 3, 4, 5, 6]));
  assert.deepEqual(boundAt(absMax, 2, 1), { max: false, min: true });
  assert.deepEqual(boundAt({ members: null, bounds: null }, 0, 0), { max: false, min: false });
});

test("a group's heatmap tooltip says how many layers it holds, and 'at most' where its value is a bound", () => {
  const heat = decodeHeatmap(encodeHeatmap(groupedHead(), [1, 2, 3, 4, 5, Infinity]));
  assert.deepEqual(heatTooltip(heat, { row: 1, col: 0 }), [
    "model.layers.0", "group of 2 layers", "long, steps 0\u201399 (largest in the bin)", "norm 3",
  ]);
  assert.deepEqual(heatTooltip(heat, { row: 1, col: 1 }).slice(3), ["norm at most 4", BOUND_TEXT]);
  assert.deepEqual(heatTooltip(heat, { row: 0, col: 1 }).slice(1), ["group of 1 layer", "long, steps 100\u2013199 (largest in the bin)", "norm 2"]);
  assert.equal(heatTooltip(heat, { row: 2, col: 1 })[3], "norm non-finite"); // not a bound: said as it is
});

test("a group's lines tooltip gives its bounds: at least the smallest, at most the largest", () => {
  const max = [1, 2, 3, 4, 5, 6];
  const min = [1, 2, 0.5, 1, 0.25, 0.5];
  const lines = decodeLines(encodeHeatmap(groupedHead(), max, min));
  assert.deepEqual(linesTooltip(lines, { row: 2, col: 1 }).slice(1), [
    "group of 3 layers", "long, steps 100\u2013199", "norm at least 0.5 to at most 6 (smallest to largest in the bin)", BOUND_TEXT,
  ]);
  assert.equal(linesTooltip(lines, { row: 2, col: 0 })[3], "norm 0.25 to 5 (smallest to largest in the bin)");
  assert.equal(linesTooltip(lines, { row: 0, col: 1 })[3], "norm 2"); // a group of one layer
  // abs_max: the largest is exact, the smallest still a bound
  const exact = decodeLines(encodeHeatmap(groupedHead({ stat: "abs_max", bounds: { columns: [1], max: "exact", min: "lower" } }), max, min));
  assert.equal(linesTooltip(exact, { row: 2, col: 1 })[3], "abs_max at least 0.5 to 6 (smallest to largest in the bin)");
  // a bound whose smallest equals its largest is still said as bounds
  const flat = decodeLines(encodeHeatmap(groupedHead(), max, max));
  assert.equal(linesTooltip(flat, { row: 1, col: 1 })[3], "norm at least 4 to at most 4 (smallest to largest in the bin)");
});

test("alerts name layers: a spike or a blocked layer goes to the row of the group holding it", () => {
  const heat = decodeHeatmap(encodeHeatmap(groupedHead(), [1, 2, 3, 4, 5, 6]));
  const rows = rowOfLayer(heat);
  assert.equal(rows.get("model.layers.1.norm"), 2);
  assert.equal(rows.get("model.embed_tokens"), 0);
  assert.equal(rows.has("model.layers.1"), false); // a group's name is not a layer
  const spike = { kind: "spike", layer: "model.layers.0.o", first_step: 150, last_step: 150, steps: 1, message: "", ongoing: false };
  assert.deepEqual(spikeCells(heat, [spike]), [{ row: 1, col: 1 }]);
  // per layer, the layer's own row
  const plain = { layers: ["a", "b"], members: null };
  assert.deepEqual([...rowOfLayer(plain)], [["a", 0], ["b", 1]]);
});

test("titles and accessible names say what a row is", () => {
  const heat = decodeHeatmap(encodeHeatmap(groupedHead(), [1, 2, 3, 4, 5, 6]));
  assert.equal(heatText(heat).title, "long \u00b7 norm per block (max per bin)");
  const lines = decodeLines(encodeHeatmap(groupedHead({ group: "role" }), [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]));
  assert.equal(linesText(lines, "log").title, "long \u00b7 norm per role (log scale), smallest to largest per bin");
  assert.equal(rowUnit(lines), "role");
  assert.equal(rowUnit({ group: "layer", members: null }), "layer");
});

test("the heatmap and lines requests of both shown runs carry the Layers choice; a new choice asks again", async () => {
  const runs = ["llama", "llama2"].map((run) => runInfo(run, 10, { layers: 6, groups: { block: 3, role: 4 } }));
  const binned = (url) => encodeHeatmap(groupedHead({ run: query(url).run, group: query(url).group }), [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]);
  const fetch = fakeFetch({
    runs: runsAnswer(runs),
    steps: (url) => stepsInfo(query(url).run, 10),
    alerts: { alerts: [] },
    flow: (url) => ({ run: query(url).run, tag: "gradflow", step: 9, layers: [], stats: {} }),
    heatmap: binned,
    lines: binned,
  });
  const client = new Client({ fetch });
  let state = initialState({ run: "llama", compare: "llama2", group: "block" });
  const loader = createLoader(client, () => state, (action) => {
    const before = state;
    state = reduce(before, action);
    return loader.perform(effects(before, action, state));
  });
  await loader.poll();
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setTimeout(resolve, 0));
  assert.deepEqual(state.heats.map((h) => [h.run, h.group]), [["llama", "block"], ["llama2", "block"]]);
  assert.deepEqual(state.lines.map((l) => [l.run, l.group]), [["llama", "block"], ["llama2", "block"]]);
  const before = state;
  const action = { type: "setGroup", group: "role" };
  state = reduce(before, action);
  await loader.perform(effects(before, action, state));
  assert.deepEqual(state.heats.map((h) => h.group), ["role", "role"]);
  assert.deepEqual(state.lines.map((l) => l.group), ["role", "role"]);
  // per layer, the URL leaves the group out
  assert.equal(Client.url("heatmap", { run: "r", group: null }), "./heatmap?run=r");
});

/** The same run's heatmap per layer over the same columns: layer j's value 10 j + column. */
function perLayerHead() {
  const layers = MEMBERS.flat();
  const head = { ...groupedHead(), layers, types: layers.map(() => "Linear"), group: undefined, members: undefined, bounds: undefined };
  return decodeHeatmap(encodeHeatmap(head, layers.flatMap((_, j) => [10 * j, 10 * j + 1])));
}

test("expandRows puts an expanded group's layers, from the per-layer heatmap, under its row", () => {
  const grouped = decodeHeatmap(encodeHeatmap(groupedHead(), [1, 2, 3, 4, 5, 6]));
  const heat = expandRows(grouped, perLayerHead(), ["model.layers.1", "model.embed_tokens"]);
  assert.deepEqual(heat.layers, [...GROUPS, "model.layers.1.q", "model.layers.1.o", "model.layers.1.norm"]);
  assert.deepEqual(heat.depth, [0, 0, 0, 1, 1, 1]); // a group of one layer has no rows under it
  assert.deepEqual([...heat.values], [1, 2, 3, 4, 5, 6, 30, 31, 40, 41, 50, 51]);
  assert.deepEqual(heat.members.slice(3), [null, null, null]);
  assert.equal(heat.types[3], "Linear");
  // a member row is a layer: its own row for the alerts, its own values (exact), no group line
  assert.equal(rowOfLayer(heat).get("model.layers.1.o"), 4);
  assert.equal(rowOfLayer(heat).get("model.layers.0.o"), 1);
  assert.deepEqual(boundAt(heat, 4, 1), { max: false, min: false });
  assert.deepEqual(heatTooltip(heat, { row: 4, col: 1 }).slice(0, 2), ["model.layers.1.o \u00b7 Linear", "long, steps 100\u2013199 (largest in the bin)"]);
  // nothing expanded, or the per-layer answer of another version (other columns): as it was
  assert.equal(expandRows(grouped, perLayerHead(), []), grouped);
  assert.equal(expandRows(grouped, { ...perLayerHead(), first_steps: [0, 50] }, ["model.layers.1"]), grouped);
});

test("a group's row name says whether its layers are shown, and a click on it is found", () => {
  const grouped = decodeHeatmap(encodeHeatmap(groupedHead(), [1, 2, 3, 4, 5, 6]));
  const heat = expandRows(grouped, perLayerHead(), ["model.layers.1"]);
  const labels = heatRowLabels(heat, ["model.layers.1"]);
  assert.deepEqual(labels.slice(0, 4), ["model.embed_tokens \u00b7 Embedding", "\u25b8 model.layers.0", "\u25be model.layers.1", "model.layers.1.q \u00b7 Linear"]);
  const measure = (t) => t.length * 7;
  const layout = heatmapLayout({ layers: heat.layers, labels, steps: heat.steps }, { width: 800, measure });
  const lab = layout.rowLabels[2];
  assert.equal(heatmapRowLabelAt(layout, layout.plot.x - 20, lab.y + 3), 2);
  assert.equal(heatmapRowLabelAt(layout, layout.plot.x + 5, lab.y), -1); // the matrix: a cell
  assert.equal(heatmapRowLabelAt(layout, 10, layout.plot.y - 40), -1);
});

test("clicking a group's name shows its layers under it in the heatmap, a second click hides them; a new mode closes them", async () => {
  const runs = [runInfo("llama", 10, { layers: 6, groups: { block: 3, role: 4 } })];
  const fetch = fakeFetch({
    runs: runsAnswer(runs),
    steps: (url) => stepsInfo(query(url).run, 10),
    alerts: { alerts: [] },
    flow: (url) => ({ run: query(url).run, tag: "gradflow", step: 9, layers: [], stats: {} }),
    heatmap: (url) => (query(url).group ? encodeHeatmap(groupedHead({ run: "llama" }), [1, 2, 3, 4, 5, 6]) : encodeHeatmap({
      ...groupedHead({ run: "llama" }), layers: MEMBERS.flat(), group: undefined, members: undefined, bounds: undefined,
    }, MEMBERS.flat().flatMap((_, j) => [10 * j, 10 * j + 1]))),
    lines: encodeHeatmap(groupedHead({ run: "llama" }), [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]),
  });
  let state = initialState({ run: "llama", group: "block" });
  const loader = createLoader(new Client({ fetch }), () => state, (action) => {
    const before = state;
    state = reduce(before, action);
    return loader.perform(effects(before, action, state));
  });
  const act = async (action) => {
    const before = state;
    state = reduce(before, action);
    await loader.perform(effects(before, action, state));
  };
  await loader.poll();
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(state.heats[0].layers.length, 3);
  await act({ type: "toggleExpand", group: "model.layers.0" });
  assert.deepEqual(state.expanded, ["model.layers.0"]);
  assert.deepEqual(state.heats[0].layers, [GROUPS[0], GROUPS[1], "model.layers.0.q", "model.layers.0.o", GROUPS[2]]);
  assert.ok(fetch.calls.some((u) => u.startsWith("./heatmap?") && !query(u).group)); // the per-layer answer
  await act({ type: "toggleExpand", group: "model.layers.0" });
  assert.deepEqual(state.expanded, []);
  assert.equal(state.heats[0].layers.length, 3);
  await act({ type: "toggleExpand", group: "model.layers.1" });
  const before = state;
  state = reduce(before, { type: "setGroup", group: "role" });
  assert.deepEqual(state.expanded, []);
});

test("where rows are too thin for every name, an expanded group's row is named, and any row's name can be clicked", () => {
  const layers = Array.from({ length: 92 }, (_, i) => `row${i}`);
  const measure = (t) => t.length * 7;
  const layout = heatmapLayout({ layers, steps: [0, 1], named: [17], selected: 40 }, { width: 800, measure });
  assert.ok(layout.every > 1);
  const named = layout.rowLabels.map((lab) => lab.index);
  assert.ok(named.includes(17) && named.includes(40));
  assert.deepEqual(layout.rowLabels.filter((lab) => lab.selected).map((lab) => lab.index), [40]);
  // a row whose name is not drawn is still found under the pointer
  const y = layout.plot.y + (16 + 0.5) * layout.cellH;
  assert.ok(!named.includes(16));
  assert.equal(heatmapRowLabelAt(layout, 5, y), 16);
  const grouped = decodeHeatmap(encodeHeatmap(groupedHead(), [1, 2, 3, 4, 5, 6]));
  assert.deepEqual(groupRowTooltip(grouped, 2, []), ["model.layers.1", "group of 3 layers", "click: show its layers"]);
  assert.equal(groupRowTooltip(grouped, 2, ["model.layers.1"])[2], "click: hide its layers");
});
