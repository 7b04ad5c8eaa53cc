// The Gradient Flow tab's state and its transitions. Pure: `reduce` takes a state
// and an action and returns the next state, `effects` says what that transition
// asks for (parts to redraw, requests to make, cache entries to drop), and the
// helpers below say which runs and steps a state shows (how a view is written in
// TensorBoard's URL hash: url.js). Nothing here fetches, keeps a timer or
// touches the DOM, so `node --test` covers all of it.

import { changedRuns, runKey, runSignatures } from "./model.js";
import { nearestIndex } from "./scale.js";

/** Play speeds offered, in logged steps per second. */
export const PLAY_SPEEDS = [1, 4, 10, 25, 100, 500];
/** The play speed a tab starts with (logged steps per second). */
export const DEFAULT_SPEED = 4;
/** The shortest time between two play ticks (ms); faster speeds skip steps. */
export const MIN_TICK_MS = 50;
/**
 * @typedef {import("./model.js").RunInfo} RunInfo
 * @typedef {import("./model.js").StepsInfo} StepsInfo
 * @typedef {import("./model.js").Flow} Flow
 * @typedef {import("./binary.js").Heatmap} Heatmap
 * @typedef {import("./binary.js").Lines} Lines
 * @typedef {import("./model.js").Alert} Alert
 * @typedef {import("./url.js").View} View
 */

/**
 * A statistic the Statistic menu offers: what the `runs` answer says of it
 * (`meaning`, `unit`, `bad`; null where the server does not know it: read
 * from the files by name), and for each shown run whether that run logged it
 * (false where its files lack it, or where the run does not have it at all).
 * @typedef {{name: string, meaning: (string|null), unit: (string|null),
 *   bad: (string|null), logged: boolean[]}} StatEntry
 */

/**
 * Everything the tab shows. `a` is the selected run, `b` the one compared with
 * it; `index` points into `steps` (-1 without steps); `follow` keeps the newest
 * step selected as training writes more; `error` is the status line's text.
 * `ranking`: run keys, most severe finding first (the `triage` route), for the
 * run shown when none is chosen. `want`: what the URL asked for and is not
 * shown yet; the user's own choice replaces it. `speed`: play speed in logged
 * steps per second. `kept`: the `steps` answers of `a` and `b` (how many
 * steps were kept and logged, the records left out). `problem`: why the
 * selected run cannot be shown (its routes answered 404), null otherwise.
 * `lines`: the lines view's data of the shown runs; `hover`: the layer the
 * pointer is on in the lines view (highlighted there), null elsewhere.
 * `group`: what a bar of the bar plot, a row of the heatmap and a line of
 * the lines view are, a layer or a block or role of layers (the Layers menu;
 * {@link flowGroup} says which the runs can give); `expanded`: the groups
 * whose member layers the heatmap shows under their row.
 * @typedef {{runs: RunInfo[], sigs: Map<string, string>, loaded: boolean,
 *   a: (RunInfo|null), b: (RunInfo|null), stat: string, log: boolean,
 *   steps: number[], index: number, follow: boolean, playing: boolean,
 *   flows: Flow[], flowPending: boolean, heats: Heatmap[], lines: Lines[],
 *   hover: (string|null), alerts: Alert[][],
 *   kept: (StepsInfo|null)[], problem: ({key: string, message: string}|null),
 *   layer: (string|null), dark: boolean, error: string, ranking: string[],
 *   want: Want, speed: number, group: Group, expanded: string[]}} State
 */

/** @typedef {import("./grouping.js").Group} Group */

/** The values of the Layers menu, in its order. */
export const GROUPS = ["layer", "block", "role"];

/**
 * What a URL asked for that the tab does not show yet: run keys (`runKey`) of
 * runs not listed yet, and the step to show once the asked run's steps load;
 * null where nothing is pending.
 * @typedef {{a: (string|null), b: (string|null), step: (number|null)}} Want
 */

/**
 * What can happen to the state: answers of the server (`listed`, with the
 * `triage` ranking when one was asked for; `stepsLoaded`, with the `steps`
 * answers of the shown runs in `kept`; `heatsLoaded`, `linesLoaded`, `flowRequested`,
 * `flowsLoaded`, `flowFailed`, `failed`; `runFailed` and `compareFailed`: the
 * selected or compared run cannot be shown, and why), the user
 * (`selectRun`, `compareRun`, `setStat`, `setGroup`, `toggleExpand`, `setLog`, `toggleLayer`, `focus`,
 * `hoverLayer`, `slide`, `togglePlay`, `setSpeed`), the play timer (`tick`) and the page
 * (`setDark`).
 * @typedef {{type: "listed", runs: RunInfo[], ranking?: ({run: string, tag: string}[]|null)}
 *   | {type: "stepsLoaded", steps: number[], alerts: Alert[][], kept?: (StepsInfo|null)[]}
 *   | {type: "runFailed", key: string, message: string}
 *   | {type: "compareFailed", key: string, message: string}
 *   | {type: "heatsLoaded", heats: Heatmap[]}
 *   | {type: "linesLoaded", lines: Lines[]}
 *   | {type: "flowRequested"}
 *   | {type: "flowsLoaded", flows: Flow[]}
 *   | {type: "flowFailed", message: string}
 *   | {type: "failed", message: string}
 *   | {type: "selectRun", key: string}
 *   | {type: "compareRun", key: string}
 *   | {type: "setStat", stat: string}
 *   | {type: "setGroup", group: Group}
 *   | {type: "toggleExpand", group: string}
 *   | {type: "setLog", log: boolean}
 *   | {type: "setDark", dark: boolean}
 *   | {type: "toggleLayer", layer: (string|null)}
 *   | {type: "focus", layer: (string|null), step: number}
 *   | {type: "hoverLayer", layer: (string|null)}
 *   | {type: "slide", index: number}
 *   | {type: "togglePlay"}
 *   | {type: "setSpeed", speed: number}
 *   | {type: "tick"}} Action
 */

/**
 * What a transition asks for: the parts to redraw in the next frame, the loads
 * to start (`runs`: steps and alerts of the shown runs; `heat`; `lines`;
 * `flows`: the shown step; `next`: warm the cache with the step playing shows
 * next) and the cached answers of `[run, tag]` pairs to drop first.
 * @typedef {{redraw: ("dom"|"bars"|"heat"|"lines")[], load: ("runs"|"heat"|"lines"|"flows"|"next")[],
 *   invalidate: [string, string][]}} Effects
 */

/**
 * The state before the first `runs` answer, showing `view` (from the URL) once
 * its runs and steps are there.
 * @param {Partial<View>} [view]
 * @returns {State}
 */
export function initialState(view = {}) {
  const key = (run, tag) => (run ? runKey({ run, tag: tag || "gradflow" }) : null);
  return {
    runs: [], sigs: new Map(), loaded: false, a: null, b: null, stat: view.stat || "abs_mean",
    log: view.log !== false, steps: [], index: -1, follow: true, playing: false, flows: [],
    flowPending: false, heats: [], lines: [], hover: null, alerts: [[], []], kept: [null, null], problem: null,
    layer: null, dark: false, error: "", ranking: [],
    want: { a: key(view.run, view.tag), b: key(view.compare, view.compareTag), step: view.step ?? null },
    speed: DEFAULT_SPEED, group: GROUPS.includes(view.group) ? view.group : "layer", expanded: [],
  };
}

/**
 * The state after `action`. Returns `state` itself when nothing changes.
 * @param {State} state
 * @param {Action} action
 * @returns {State}
 * @throws {Error} for an unknown action type.
 */
export function reduce(state, action) {
  switch (action.type) {
    case "listed":
      return listed(state, action.runs, action.ranking);
    case "stepsLoaded": {
      const step = state.steps[state.index];
      const { steps } = action;
      const want = state.want;
      const loaded = { ...state, steps, alerts: action.alerts, kept: action.kept || [null, null], problem: null };
      if (want.step !== null && want.a === null && steps.length) {
        // the asked run's steps: show the asked step (follow only at the last one)
        const index = nearestIndex(steps, want.step);
        return { ...loaded, index, follow: index === steps.length - 1, want: { ...want, step: null } };
      }
      const index = state.follow || step === undefined ? steps.length - 1 : nearestIndex(steps, step);
      return { ...loaded, index };
    }
    case "runFailed":
      if (!state.a || runKey(state.a) !== action.key) return state; // another run is shown now
      return {
        ...state, problem: { key: action.key, message: action.message }, steps: [], index: -1, playing: false,
        flows: [], flowPending: false, heats: [], lines: [], hover: null, alerts: [[], []], kept: [null, null],
      };
    case "compareFailed":
      if (!state.b || runKey(state.b) !== action.key) return state;
      return { ...state, b: null, error: action.message, want: { ...state.want, b: null } };
    case "heatsLoaded":
      return { ...state, heats: action.heats };
    case "linesLoaded":
      return { ...state, lines: action.lines, hover: null };
    case "flowRequested":
      return { ...state, flowPending: true };
    case "flowsLoaded": {
      const loaded = { ...state, flows: action.flows, flowPending: false };
      // a statistic the shown runs do not have: the first one they have
      const names = statList(loaded).map((s) => s.name);
      return names.length && !names.includes(state.stat) ? { ...loaded, stat: names[0] } : loaded;
    }
    case "flowFailed":
      return { ...state, flowPending: false, error: action.message };
    case "failed":
      return { ...state, error: action.message };
    case "selectRun": {
      const chosen = findRun(state.runs, action.key);
      const a = chosen || state.a;
      const b = state.b && a && runKey(state.b) === runKey(a) ? null : state.b;
      // the user's choice replaces what the URL asked for
      const want = chosen ? { ...state.want, a: null, step: null } : state.want;
      return { ...state, a, b, layer: null, want, problem: null };
    }
    case "compareRun":
      return { ...state, b: findRun(state.runs, action.key), want: { ...state.want, b: null } };
    case "setStat":
      return { ...state, stat: action.stat };
    case "setGroup":
      // the selected bar names a layer or a group of the mode left
      if (!GROUPS.includes(action.group) || action.group === state.group) return state;
      return { ...state, group: action.group, layer: null, expanded: [] };
    case "toggleExpand": {
      const open = state.expanded.includes(action.group);
      return { ...state, expanded: open ? state.expanded.filter((g) => g !== action.group) : [...state.expanded, action.group] };
    }
    case "setLog":
      return { ...state, log: action.log };
    case "setDark":
      return { ...state, dark: action.dark };
    case "toggleLayer": {
      const layer = action.layer === null || state.layer === action.layer ? null : action.layer;
      return { ...state, layer };
    }
    case "focus":
      return selectIndex({ ...state, layer: action.layer }, nearestIndex(state.steps, action.step));
    case "hoverLayer":
      return action.layer === state.hover ? state : { ...state, hover: action.layer };
    case "slide":
      return selectIndex(state.playing ? { ...state, playing: false } : state, action.index);
    case "togglePlay":
      return setPlaying(state, !state.playing);
    case "setSpeed":
      return PLAY_SPEEDS.includes(action.speed) ? { ...state, speed: action.speed } : state;
    case "tick": {
      if (!state.playing || state.flowPending) return state;
      const last = state.steps.length - 1;
      if (state.index >= last) return setPlaying(state, false);
      return selectIndex(state, Math.min(last, state.index + playTiming(state.speed).stride));
    }
    default:
      throw new Error(`unknown action: ${action.type}`);
  }
}

/**
 * What the transition `before --action--> after` asks for.
 * @param {State} before
 * @param {Action} action
 * @param {State} after `reduce(before, action)`
 * @returns {Effects}
 */
export function effects(before, action, after) {
  const moved = after.steps.length > 0; // the step-selecting actions moved the selection
  switch (action.type) {
    case "listed": {
      const changed = changedRuns(before.sigs, after.sigs);
      const switched = keyOf(before.a) !== keyOf(after.a) || keyOf(before.b) !== keyOf(after.b);
      if (!changed.size && !switched && before.loaded) return fx([]);
      const invalidate = [...changed].map((k) => /** @type {[string, string]} */ (k.split("\u0000")));
      if (!after.a) return fx(["dom"], [], invalidate); // the empty view
      const touched = changed.has(runKey(after.a)) || (after.b !== null && changed.has(runKey(after.b)));
      return fx(["dom"], !before.loaded || touched || switched ? ["runs"] : [], invalidate);
    }
    case "stepsLoaded":
      return fx(["dom"], ["heat", "lines", "flows"]);
    case "runFailed":
      return fx(after === before ? [] : ["dom", "bars", "heat", "lines"]);
    case "compareFailed":
      return fx(after === before ? [] : ["dom"]);
    case "heatsLoaded":
      return fx(["heat"]);
    case "linesLoaded":
      return fx(["lines"]);
    case "flowRequested":
      return fx([]);
    case "flowsLoaded": {
      const load = [];
      if (after.stat !== before.stat) load.push("heat", "lines");
      if (nextStep(after) !== undefined) load.push("next");
      return fx(["bars", "heat", "lines", "dom"], load);
    }
    case "flowFailed":
    case "failed":
      return fx(["dom"]);
    case "selectRun":
    case "compareRun":
      return fx(["dom"], ["runs"]);
    case "setStat":
      return fx(["bars", "dom"], ["heat", "lines"]);
    case "setGroup":
      return after === before ? fx([]) : fx(["bars", "heat", "lines", "dom"], ["flows", "heat", "lines"]);
    case "toggleExpand":
      return fx([], ["heat"]);
    case "setLog":
      return fx(["bars", "lines"]);
    case "setDark":
      return fx(["bars", "heat", "lines", "dom"]);
    case "toggleLayer":
      return fx(["bars", "heat", "lines"]);
    case "focus":
      return moved ? fx(["bars", "heat", "lines", "dom"], ["flows"]) : fx(["bars", "heat", "lines"]);
    case "hoverLayer":
      return fx(after === before ? [] : ["lines"]);
    case "slide":
      return moved ? fx(["dom"], ["flows"]) : fx(before.playing ? ["dom"] : []);
    case "togglePlay": {
      const restarted = after.playing && moved && before.index >= before.steps.length - 1;
      return fx(["dom"], restarted ? ["flows"] : []);
    }
    case "setSpeed":
      return fx(after === before ? [] : ["dom"]);
    case "tick":
      if (after === before) return fx([]);
      return after.playing ? fx(["dom"], ["flows"]) : fx(["dom"]);
    default:
      throw new Error(`unknown action: ${action.type}`);
  }
}

/**
 * The runs shown: the selected one, then the compared one if any.
 * @param {State} state
 * @returns {RunInfo[]}
 */
export function shownRuns(state) {
  return /** @type {RunInfo[]} */ ([state.a, state.b].filter(Boolean));
}

/**
 * What the `flow`, `heatmap` and `lines` requests ask for: the Layers menu's
 * choice while the selected run lists its groups and that mode groups some
 * of its layers, else "layer". The compared run is asked in the same mode.
 * @param {State} state
 * @returns {Group}
 */
export function flowGroup(state) {
  const g = state.a && state.a.groups;
  if (state.group === "layer" || !g) return "layer";
  return g[state.group] < state.a.layers ? state.group : "layer";
}

/**
 * The selected step; undefined without steps.
 * @param {State} state
 * @returns {number|undefined}
 */
export function currentStep(state) {
  return state.steps[state.index];
}

/**
 * The step to fetch ahead while playing (the one the next tick shows);
 * undefined when paused or at the last step.
 * @param {State} state
 * @returns {number|undefined}
 */
export function nextStep(state) {
  const last = state.steps.length - 1;
  if (!state.playing || state.index >= last) return undefined;
  return state.steps[Math.min(last, state.index + playTiming(state.speed).stride)];
}

/**
 * How playing at `speed` logged steps per second is timed: a tick every `ms`
 * (at least {@link MIN_TICK_MS}), each moving `stride` steps. A tick while
 * the shown step still loads does nothing, so a slow server plays slower.
 * @param {number} speed steps per second, > 0
 * @returns {{ms: number, stride: number}}
 */
export function playTiming(speed) {
  const stride = Math.max(1, Math.ceil((speed * MIN_TICK_MS) / 1000));
  return { ms: Math.round((stride * 1000) / speed), stride };
}

/**
 * Whether a `runs` answer needs the `triage` ranking to choose the run shown:
 * while no run is shown (the first answer, or the first with runs), when there
 * is a choice, and the URL asks for none of them.
 * @param {State} state
 * @param {RunInfo[]} runs the answer
 * @returns {boolean}
 */
export function needsRanking(state, runs) {
  const asked = state.want.a !== null && runs.some((r) => runKey(r) === state.want.a);
  return state.a === null && runs.length > 1 && !asked;
}

/**
 * The statistics the Statistic menu offers, from the `runs` answer of the
 * shown runs: those the selected run lists, in its order, then those only the
 * compared run lists; each with whether each shown run logged it.
 * @param {State} state
 * @returns {StatEntry[]}
 */
export function statList(state) {
  const shown = shownRuns(state);
  /** @type {Map<string, StatEntry>} */
  const byName = new Map();
  shown.forEach((r, i) => {
    for (const s of r.stats || []) {
      let entry = byName.get(s.name);
      if (!entry) {
        entry = { name: s.name, meaning: null, unit: null, bad: null, logged: shown.map(() => false) };
        byName.set(s.name, entry);
      }
      if (entry.meaning === null && s.meaning !== null) Object.assign(entry, { meaning: s.meaning, unit: s.unit, bad: s.bad });
      entry.logged[i] = s.logged;
    }
  });
  return [...byName.values()];
}

/**
 * The unit of the chosen statistic, which sets the bar plot's axis: "count",
 * "fraction", or "value" (also for a statistic the server does not know).
 * @param {State} state
 * @returns {"value"|"count"|"fraction"}
 */
export function statUnit(state) {
  const entry = statList(state).find((s) => s.name === state.stat);
  const unit = entry ? entry.unit : null;
  return unit === "count" || unit === "fraction" ? unit : "value";
}

/**
 * @param {State} state
 * @param {RunInfo[]} runs a new `runs` answer
 * @param {{run: string, tag: string}[]|null|undefined} ranking the `triage`
 *   answer, when one was asked for
 * @returns {State} the new listing: the runs the URL asked for once listed, else
 *   the selected and compared runs while they are listed, else the run with
 *   the most severe finding; `state` itself when nothing changed.
 */
function listed(state, runs, ranking) {
  const sigs = runSignatures(runs);
  const order = ranking ? ranking.map(runKey) : state.ranking;
  const wantA = state.want.a === null ? null : findRun(runs, state.want.a);
  const wantB = state.want.b === null ? null : findRun(runs, state.want.b);
  const same = state.loaded && !changedRuns(state.sigs, sigs).size && !wantA && !wantB;
  if (same && (state.a !== null || !ranking)) return state;
  const a = wantA || (state.a && findRun(runs, runKey(state.a))) || firstRanked(runs, order) || runs[0] || null;
  let b = wantB || (state.b && findRun(runs, runKey(state.b)));
  if (b && runKey(b) === runKey(a)) b = null;
  const want = { ...state.want, a: wantA ? null : state.want.a, b: wantB ? null : state.want.b };
  const problem = state.problem && a && runKey(a) === state.problem.key ? state.problem : null;
  return { ...state, runs, sigs, loaded: true, a, b, error: a ? "" : state.error, ranking: order, want, problem };
}

/**
 * @param {RunInfo[]} runs
 * @param {string[]} order run keys, best first
 * @returns {RunInfo|null} the first run of `order` that is listed
 */
function firstRanked(runs, order) {
  for (const key of order) {
    const r = findRun(runs, key);
    if (r) return r;
  }
  return null;
}

/**
 * @param {RunInfo[]} runs
 * @param {string} key
 * @returns {RunInfo|null}
 */
function findRun(runs, key) {
  return runs.find((r) => runKey(r) === key) || null;
}

/**
 * @param {RunInfo|null} r
 * @returns {string|null}
 */
function keyOf(r) {
  return r ? runKey(r) : null;
}

/**
 * @param {State} state
 * @param {number} i clamped to the steps
 * @returns {State} `state` itself without steps
 */
function selectIndex(state, i) {
  const n = state.steps.length;
  if (!n) return state;
  const index = Math.max(0, Math.min(n - 1, i));
  return { ...state, index, follow: index === n - 1 };
}

/**
 * @param {State} state
 * @param {boolean} on
 * @returns {State} playing from the first step when started at the last one
 */
function setPlaying(state, on) {
  const next = { ...state, playing: on };
  return on && state.index >= state.steps.length - 1 ? selectIndex(next, 0) : next;
}

/**
 * @param {Effects["redraw"]} redraw
 * @param {Effects["load"]} [load]
 * @param {Effects["invalidate"]} [invalidate]
 * @returns {Effects}
 */
function fx(redraw, load = [], invalidate = []) {
  return { redraw, load, invalidate };
}
