// What the tab shows for a state, as plain data: menu options, the kept-steps
// line, the step controls' text, legend entries, alert groups and labels.
// paint.js puts them on the page; no DOM here, so `node --test` covers it.

import { axisKind, barData } from "./bars.js";
import { referenceOf } from "./canvas.js";
import { groupOfLayer } from "./grouping.js";
import { keptStepsText, keptStepsWarn, layerCount, layerLabel, leftOutText, runKey } from "./model.js";
import { PALETTES } from "./palette.js";
import { PLAY_SPEEDS, currentStep, flowGroup, shownRuns, statList, statUnit } from "./state.js";
import { safeFileName } from "./page.js";

/** The empty view's title, shown once the logdir is read and holds no run. */
export const EMPTY_MESSAGE = "No gradient-flow data found in this logdir yet.";

/**
 * The empty view's hint under its title: text, code, text.
 * @type {{text: string, code?: boolean}[]}
 */
export const EMPTY_HINT = [
  { text: "Log gradients with " },
  { text: "tb_gradflow.watch(model, writer, optimizer=opt)", code: true },
  { text: " and this tab fills in by itself while training writes." },
];

/** The heading of the bar plot's PNG (the tab's own heading of the plot). */

/** What the Statistic menu says of a statistic the server does not know. */
export const UNKNOWN_MEANING =
  "read from the files by name: this TensorBoard's tb-gradflow does not know it (drawn as a value)";

/**
 * A menu entry; `title` is its tooltip, `disabled` greys it out.
 * @typedef {import("./state.js").State} State
 * @typedef {{value: string, label: string, title?: string, disabled?: boolean}} Option
 */

/**
 * A run's name in the menus: the run alone for an unnamed watcher, else the
 * run and the watcher's name (or tag).
 * @param {import("./model.js").RunInfo} r
 * @returns {string}
 */
export function runLabel(r) {
  return r.name === null && r.tag === "gradflow" ? r.run : `${r.run} (${r.name ?? r.tag})`;
}

/**
 * The Run and Compare menus: every run, and every run but the selected one
 * after "none".
 * @param {State} state
 * @returns {{run: Option[], runValue: string, compare: Option[], compareValue: string}}
 */
export function runMenus(state) {
  const run = state.runs.map((r) => ({ value: runKey(r), label: runLabel(r) }));
  const runValue = state.a ? runKey(state.a) : "";
  const compare = [{ value: "", label: "\u2014 none \u2014" }, ...run.filter((o) => !state.a || o.value !== runValue)];
  return { run, runValue, compare, compareValue: state.b ? runKey(state.b) : "" };
}

/**
 * The Statistic menu: the statistics the `runs` answer lists for the shown
 * runs, each with its meaning as the tooltip. One a shown run did not log is
 * marked "not logged" (naming the run when another did), and disabled when no
 * shown run logged it (the URL can still ask for it: the plot then says so).
 * @param {State} state
 * @returns {Option[]}
 */
export function statOptions(state) {
  const shown = shownRuns(state);
  return statList(state).map((s) => {
    const missing = shown.filter((_, i) => !s.logged[i]);
    const none = missing.length === shown.length;
    const where = none ? "" : ` in ${missing.map(runLabel).join(", ")}`;
    const label = missing.length ? `${s.name} (not logged${where})` : s.name;
    let title = s.meaning ?? UNKNOWN_MEANING;
    if (missing.length) title += `\nNot logged${where}: its files were written without it.`;
    return { value: s.name, label, title, disabled: none };
  });
}

/**
 * The Layers menu: bars per layer, per block or per role, each grouping mode
 * with how many bars it gives for the selected run; `hidden` where no mode
 * groups anything (both counts equal the layer count, or the server lists no
 * groups). `value`: what the bar plot shows ({@link flowGroup}).
 * @param {State} state
 * @returns {{options: Option[], value: string, hidden: boolean}}
 */
export function groupMenu(state) {
  const r = state.a;
  const g = r && r.groups;
  const options = [{ value: "layer", label: r ? `per layer (${r.layers})` : "per layer" }];
  if (!g || (g.block >= r.layers && g.role >= r.layers)) return { options, value: "layer", hidden: true };
  for (const mode of /** @type {("block"|"role")[]} */ (["block", "role"])) {
    const groups = mode === "block" ? "blocks" : "roles";
    const title = mode === "block"
      ? "One bar per block of layers (model.layers.17); a layer in no block keeps its own bar"
      : "One bar per role: the same layer in every block (model.layers.*.self_attn.q_proj)";
    options.push({ value: mode, label: `per ${mode} (${g[mode]})`, title: `${title}; ${g[mode]} ${groups}`, disabled: g[mode] >= r.layers });
  }
  return { options, value: flowGroup(state), hidden: false };
}

/**
 * The bar a layer is drawn in on the bar plot now: its group in the shown
 * grouped step (the selected run's), the layer itself per layer; null for a
 * whole-model finding.
 * @param {State} state
 * @param {string|null} layer
 * @returns {string|null}
 */
export function barOfLayer(state, layer) {
  return groupOfLayer(state.flows[0], layer);
}

/**
 * The Statistic menu's own tooltip: the chosen statistic's.
 * @param {State} state
 * @returns {string}
 */
export function statTitle(state) {
  const chosen = statOptions(state).find((o) => o.value === state.stat);
  return chosen ? `${chosen.value}: ${chosen.title}` : "";
}

/**
 * The `steps` answers of the shown runs, each with its run and series, once
 * loaded (an answer of a run no longer shown is left out).
 * @param {State} state
 * @returns {{run: import("./model.js").RunInfo, series: number,
 *   info: import("./model.js").StepsInfo}[]}
 */
function shownKept(state) {
  const out = [];
  shownRuns(state).forEach((r, i) => {
    const info = state.kept[i];
    if (info && runKey(info) === runKey(r)) out.push({ run: r, series: i, info });
  });
  return out;
}

/**
 * The line saying how many logged steps TensorBoard kept of each shown run
 * (from its `steps` answer), and that its heatmap and lines cover every
 * logged step when they were drawn from the watcher's overview records;
 * `warn` when it kept fewer than were logged or records were left out.
 * @param {State} state
 * @returns {{text: string, warn: boolean}}
 */
export function keptLine(state) {
  const kept = shownKept(state);
  const text = ({ run, info, series }) => {
    const heat = state.heats[series];
    const all = heat && runKey(heat) === runKey(run) && heat.overview && heat.logged_steps;
    const every = all ? ` (the heatmap and lines: every one of the ${heat.logged_steps.toLocaleString("en-US")})` : "";
    return `${run.run}: ${keptStepsText(info)}${every}`;
  };
  return {
    text: kept.map(text).join(" \u00b7 "),
    warn: kept.some(({ info }) => keptStepsWarn(info)),
  };
}

/**
 * What the tab says under the kept-steps line about the records left out of
 * each shown run: a summary naming the steps left out, their reasons (shown
 * when the summary is opened, and as its tooltip), and the reasons of entries
 * without a step (TensorBoard stopped reading a file) as they are.
 * @param {State} state
 * @returns {{run: string, series: number, summary: string, reasons: string[],
 *   notes: string[]}[]} one per shown run with records left out
 */
export function leftOutGroups(state) {
  const out = [];
  for (const { run, series, info } of shownKept(state)) {
    if (!info.left_out.length) continue;
    const text = leftOutText(info.left_out);
    out.push({
      run: run.run,
      series,
      summary: text.summary && `${run.run}: ${text.summary}`,
      reasons: text.reasons,
      notes: text.notes.map((n) => `${run.run}: ${n}`),
    });
  }
  return out;
}

/**
 * Why the selected run cannot be shown (its routes answered 404: e.g. files
 * of an older format whose layer set changed), as the empty view shows it;
 * null when it can.
 * @param {State} state
 * @returns {{title: string, hint: {text: string}[]}|null}
 */
export function runProblem(state) {
  const p = state.problem;
  if (!p || !state.a || runKey(state.a) !== p.key) return null;
  return { title: `${runLabel(state.a)} cannot be shown`, hint: [{ text: p.message }] };
}

/**
 * The slider, step label and play button.
 * @param {State} state
 * @returns {{max: string, value: string, disabled: boolean, label: string,
 *   step: string, valueText: string, play: string, pressed: string}}
 */
export function stepControls(state) {
  const n = state.steps.length;
  const step = currentStep(state);
  return {
    max: String(Math.max(0, n - 1)),
    value: String(Math.max(0, state.index)),
    disabled: n < 2,
    label: step === undefined ? "" : `step ${step}  (${state.index + 1} of ${n})`,
    step: step === undefined ? "" : String(step),
    valueText: step === undefined ? "" : `step ${step}`,
    play: state.playing ? "\u23f8 Pause" : "\u25b6 Play",
    pressed: String(state.playing),
  };
}

/**
 * The colours of the state's scheme.
 * @param {State} state
 * @returns {import("./palette.js").Palette}
 */
export function palette(state) {
  return state.dark ? PALETTES.dark : PALETTES.light;
}

/**
 * The bar plot's legend: one entry per shown run, abs_max behind abs_mean, then
 * the marks.
 * @param {State} state
 * @returns {import("./views.js").LegendItem[]}
 */
export function legendItems(state) {
  const p = palette(state);
  const unit = statUnit(state);
  const axis = axisKind(unit, state.log);
  /** @type {import("./views.js").LegendItem[]} */
  const items = state.flows.map((f, i) => ({ kind: "bar", label: f.run, color: p.series[i] }));
  if (state.stat === "abs_mean") {
    // on a linear axis the statistic sets the range: a taller abs_max is cut off
    const label = axis === "linear" ? "abs_max (behind; \u25b2 above the axis)" : "abs_max (behind)";
    items.push({ kind: "back", label, color: p.back[0] });
  }
  items.push({ kind: "zero", label: "exactly zero", color: p.zero }, { kind: "no_grad", label: "no gradient", color: p.noGrad });
  // a layer the (compared) run lacks, or lacks at this step: said as the heatmap says it
  if (state.flows.length && barData(state.flows, state.stat, { log: state.log, unit }).series.some((se) => se.status.includes("missing"))) {
    items.push({ kind: "missing", label: "no such layer", color: p.muted });
  }
  // a count axis draws the non-finite count itself, not the hatched column
  if (axis !== "count") items.push({ kind: "nonfinite", label: "non-finite", color: p.nonfinite });
  const reference = axis === "log" || axis === "linear" ? referenceOf(state.stat) : null;
  if (reference) items.push({ kind: "reference", label: reference.label, color: p.reference });
  items.push({ kind: "blocked", label: "blocked", color: p.blocked });
  return items;
}

/**
 * The log-scale checkbox: off and disabled for a count (a count axis from 0)
 * and for a fraction (an axis from 0 to 1).
 * @param {State} state
 * @returns {{checked: boolean, disabled: boolean, title: string}}
 */
export function logControl(state) {
  const axis = axisKind(statUnit(state), state.log);
  const fixed = axis === "count" || axis === "fraction";
  const why = { count: "a count: drawn on a count axis from 0", fraction: "a fraction: drawn from 0 to 1" }[axis];
  return {
    checked: state.log && !fixed,
    disabled: fixed,
    title: fixed ? `${state.stat} is ${why}` : "Log scale for the bar plot",
  };
}

/**
 * What the bar plot needs besides the flows: the scale toggle, the chosen
 * statistic's unit and the selected layer.
 * @param {State} state
 * @returns {{log: boolean, unit: string, selectedLayer: (string|null)}}
 */
export function barOptions(state) {
  return { log: state.log, unit: statUnit(state), selectedLayer: state.layer };
}

/**
 * A heatmap's title (with what a row is when it is a group: "per block"),
 * and the message drawn in place of its cells for a statistic the run's files
 * lack ("" otherwise).
 * @param {import("./binary.js").Heatmap} heat
 * @returns {{title: string, message: string}}
 */
export function heatText(heat) {
  if (heat.logged === false) {
    return { title: `${heat.run} \u00b7 ${heat.stat} (not logged)`, message: `${heat.stat} is not logged in ${heat.run}` };
  }
  return { title: `${heat.run} \u00b7 ${heat.stat}${perGroup(heat)}${heat.downsampled ? " (max per bin)" : ""}`, message: "" };
}

/**
 * " per block" or " per role" for a grouped answer, "" per layer.
 * @param {{group?: string, members?: (string[][]|null)}} answer
 * @returns {string}
 */
function perGroup(answer) {
  return answer.members ? ` per ${answer.group}` : "";
}

/**
 * The names of a heatmap's rows: each layer or group with its module type; a
 * group of several layers marked ▸ (click to show its layers) or, `expanded`,
 * ▾; a layer shown under its group as itself.
 * @param {import("./binary.js").Heatmap} heat
 * @param {string[]} expanded
 * @returns {string[]}
 */
export function heatRowLabels(heat, expanded) {
  return heat.layers.map((name, j) => {
    const label = layerLabel(name, heat.types ? heat.types[j] : "");
    const members = heat.members && heat.members[j];
    if (!members || members.length < 2) return label;
    return `${expanded.includes(name) ? "\u25be" : "\u25b8"} ${label}`;
  });
}

/**
 * The tooltip of a group's name in the heatmap: the name, how many layers it
 * holds, and what a click does.
 * @param {import("./binary.js").Heatmap} heat
 * @param {number} row a group's row
 * @param {string[]} expanded
 * @returns {string[]}
 */
export function groupRowTooltip(heat, row, expanded) {
  const members = (heat.members && heat.members[row]) || [];
  const open = expanded.includes(heat.layers[row]);
  return [heat.layers[row], `group of ${layerCount(members.length)}`, `click: ${open ? "hide" : "show"} its layers`];
}

/**
 * What a bar, a row of a heatmap or a line of the lines view is, for titles
 * and accessible names: "layer", "block" or "role".
 * @param {{group?: string, members?: (string[][]|null)}} answer
 * @returns {string}
 */
export function rowUnit(answer) {
  return answer.members ? String(answer.group) : "layer";
}

/**
 * A lines view's title (with what a line is when it is a group), and the message drawn in place of its lines for a
 * statistic the run's files lack ("" otherwise).
 * @param {import("./binary.js").Lines} lines
 * @param {"log"|"linear"|"count"|"fraction"} axis
 * @returns {{title: string, message: string}}
 */
export function linesText(lines, axis) {
  if (lines.logged === false) {
    return { title: `${lines.run} · ${lines.stat} (not logged)`, message: `${lines.stat} is not logged in ${lines.run}` };
  }
  const scale = { log: " (log scale)", linear: "", count: " (count)", fraction: " (fraction)" }[axis];
  const binned = lines.downsampled ? ", smallest to largest per bin" : "";
  return { title: `${lines.run} · ${lines.stat}${perGroup(lines)}${scale}${binned}`, message: "" };
}

/**
 * The Speed menu: the play speeds, in logged steps per second.
 * @param {State} state
 * @returns {{options: Option[], value: string}}
 */
export function speedMenu(state) {
  return {
    options: PLAY_SPEEDS.map((v) => ({ value: String(v), label: `${v} steps/s` })),
    value: String(state.speed),
  };
}

/**
 * The alerts list: one group per shown run, in series order, with the module
 * type of each layer the shown step (or heatmap) of that run names.
 * @param {State} state
 * @returns {import("./views.js").AlertGroup[]}
 */
export function alertGroups(state) {
  return shownRuns(state).map((r, i) => {
    const types = new Map();
    for (const source of [state.heats[i], state.flows[i]]) {
      if (!source || runKey(source) !== runKey(r) || !source.types) continue;
      source.layers.forEach((name, j) => {
        if (source.types[j]) types.set(name, source.types[j]);
      });
    }
    return { run: r.run, series: i, alerts: state.alerts[i] || [], types };
  });
}

/**
 * The empty view's message; null while there is data to show (or before the
 * first answer).
 * @param {State} state
 * @returns {string|null}
 */
export function emptyMessage(state) {
  return state.loaded && !state.a ? EMPTY_MESSAGE : null;
}

/**
 * The bar plot's heading: what a bar is in the shown step.
 * @param {State} state
 * @returns {string}
 */
export function barHeading(state) {
  const flow = state.flows[0];
  return `Gradient per ${flow ? rowUnit(flow) : "layer"}`;
}

/**
 * The bar plot's accessible name.
 * @param {State} state
 * @returns {string}
 */
export function barLabel(state) {
  const shown = state.flows.map((f) => `${f.run} at step ${f.step}`).join(" and ");
  const per = state.flows[0] ? rowUnit(state.flows[0]) : "layer";
  return `Bar plot of ${state.stat} per ${per} for ${shown}`;
}

/**
 * The file name of the bar plot's PNG (safe characters only).
 * @param {State} state
 * @returns {string}
 */
export function pngName(state) {
  const flow = state.flows[0];
  const parts = ["gradflow", ...state.flows.map((f) => f.run), `step${flow ? flow.step : ""}`, state.stat];
  return `${safeFileName(parts)}.png`;
}
