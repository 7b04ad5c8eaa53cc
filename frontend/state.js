// The Gradient Flow tab's state and its transitions. Pure: `reduce` takes a state
// and an action and returns the next state, `effects` says what that transition
// asks for (parts to redraw, requests to make, cache entries to drop), and the
// helpers below say which runs and steps a state shows. Nothing here fetches,
// keeps a timer or touches the DOM, so `node --test` covers all of it.

import { changedRuns, runKey, runSignatures } from "./model.js";
import { nearestIndex } from "./scale.js";

/** The Statistic menu's order; other statistics follow in the server's order. */
export const STAT_ORDER = ["abs_mean", "abs_max", "norm", "nonfinite", "rows"];

/**
 * @typedef {import("./model.js").RunInfo} RunInfo
 * @typedef {import("./model.js").Flow} Flow
 * @typedef {import("./model.js").Heatmap} Heatmap
 * @typedef {import("./model.js").Alert} Alert
 */

/**
 * Everything the tab shows. `a` is the selected run, `b` the one compared with
 * it; `index` points into `steps` (-1 without steps); `follow` keeps the newest
 * step selected as training writes more; `error` is the status line's text.
 * @typedef {{runs: RunInfo[], sigs: Map<string, string>, loaded: boolean,
 *   a: (RunInfo|null), b: (RunInfo|null), stat: string, log: boolean,
 *   steps: number[], index: number, follow: boolean, playing: boolean,
 *   flows: Flow[], flowPending: boolean, heats: Heatmap[], alerts: Alert[][],
 *   layer: (string|null), dark: boolean, error: string}} State
 */

/**
 * What can happen to the state: answers of the server (`listed`, `stepsLoaded`,
 * `heatsLoaded`, `flowRequested`, `flowsLoaded`, `flowFailed`, `failed`), the
 * user (`selectRun`, `compareRun`, `setStat`, `setLog`, `toggleLayer`, `focus`,
 * `slide`, `togglePlay`), the play timer (`tick`) and the page (`setDark`).
 * @typedef {{type: "listed", runs: RunInfo[]}
 *   | {type: "stepsLoaded", steps: number[], alerts: Alert[][]}
 *   | {type: "heatsLoaded", heats: Heatmap[]}
 *   | {type: "flowRequested"}
 *   | {type: "flowsLoaded", flows: Flow[]}
 *   | {type: "flowFailed", message: string}
 *   | {type: "failed", message: string}
 *   | {type: "selectRun", key: string}
 *   | {type: "compareRun", key: string}
 *   | {type: "setStat", stat: string}
 *   | {type: "setLog", log: boolean}
 *   | {type: "setDark", dark: boolean}
 *   | {type: "toggleLayer", layer: (string|null)}
 *   | {type: "focus", layer: (string|null), step: number}
 *   | {type: "slide", index: number}
 *   | {type: "togglePlay"}
 *   | {type: "tick"}} Action
 */

/**
 * What a transition asks for: the parts to redraw in the next frame, the loads
 * to start (`runs`: steps and alerts of the shown runs; `heat`; `flows`: the
 * shown step; `next`: warm the cache with the step after it) and the cached
 * answers of `[run, tag]` pairs to drop first.
 * @typedef {{redraw: ("dom"|"bars"|"heat")[], load: ("runs"|"heat"|"flows"|"next")[],
 *   invalidate: [string, string][]}} Effects
 */

/**
 * The state before the first `runs` answer.
 * @returns {State}
 */
export function initialState() {
  return {
    runs: [], sigs: new Map(), loaded: false, a: null, b: null, stat: "abs_mean", log: true,
    steps: [], index: -1, follow: true, playing: false, flows: [], flowPending: false,
    heats: [], alerts: [[], []], layer: null, dark: false, error: "",
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
      return listed(state, action.runs);
    case "stepsLoaded": {
      const step = state.steps[state.index];
      const { steps } = action;
      const index = state.follow || step === undefined ? steps.length - 1 : nearestIndex(steps, step);
      return { ...state, steps, alerts: action.alerts, index };
    }
    case "heatsLoaded":
      return { ...state, heats: action.heats };
    case "flowRequested":
      return { ...state, flowPending: true };
    case "flowsLoaded": {
      const stats = statNames(action.flows);
      const stat = stats.length && !stats.includes(state.stat) ? stats[0] : state.stat;
      return { ...state, flows: action.flows, flowPending: false, stat };
    }
    case "flowFailed":
      return { ...state, flowPending: false, error: action.message };
    case "failed":
      return { ...state, error: action.message };
    case "selectRun": {
      const a = findRun(state.runs, action.key) || state.a;
      const b = state.b && a && runKey(state.b) === runKey(a) ? null : state.b;
      return { ...state, a, b, layer: null };
    }
    case "compareRun":
      return { ...state, b: findRun(state.runs, action.key) };
    case "setStat":
      return { ...state, stat: action.stat };
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
    case "slide":
      return selectIndex(state.playing ? { ...state, playing: false } : state, action.index);
    case "togglePlay":
      return setPlaying(state, !state.playing);
    case "tick":
      if (!state.playing || state.flowPending) return state;
      if (state.index >= state.steps.length - 1) return setPlaying(state, false);
      return selectIndex(state, state.index + 1);
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
      if (!changed.size && before.loaded) return fx([]);
      const invalidate = [...changed].map((k) => /** @type {[string, string]} */ (k.split("\u0000")));
      if (!after.a) return fx(["dom"], [], invalidate); // the empty view
      const kept = before.a !== null && after.runs.some((r) => runKey(r) === runKey(before.a));
      const touched = changed.has(runKey(after.a)) || (after.b !== null && changed.has(runKey(after.b)));
      return fx(["dom"], !before.loaded || touched || !kept ? ["runs"] : [], invalidate);
    }
    case "stepsLoaded":
      return fx(["dom"], ["heat", "flows"]);
    case "heatsLoaded":
      return fx(["heat"]);
    case "flowRequested":
      return fx([]);
    case "flowsLoaded": {
      const load = [];
      if (after.stat !== before.stat) load.push("heat");
      if (nextStep(after) !== undefined) load.push("next");
      return fx(["bars", "heat", "dom"], load);
    }
    case "flowFailed":
    case "failed":
      return fx(["dom"]);
    case "selectRun":
    case "compareRun":
      return fx(["dom"], ["runs"]);
    case "setStat":
      return fx(["bars", "dom"], ["heat"]);
    case "setLog":
      return fx(["bars"]);
    case "setDark":
      return fx(["bars", "heat", "dom"]);
    case "toggleLayer":
      return fx(["bars", "heat"]);
    case "focus":
      return moved ? fx(["bars", "heat", "dom"], ["flows"]) : fx(["bars", "heat"]);
    case "slide":
      return moved ? fx(["dom"], ["flows"]) : fx(before.playing ? ["dom"] : []);
    case "togglePlay": {
      const restarted = after.playing && moved && before.index >= before.steps.length - 1;
      return fx(["dom"], restarted ? ["flows"] : []);
    }
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
 * The selected step; undefined without steps.
 * @param {State} state
 * @returns {number|undefined}
 */
export function currentStep(state) {
  return state.steps[state.index];
}

/**
 * The step to fetch ahead while playing (the one after the selected step);
 * undefined when paused or at the last step.
 * @param {State} state
 * @returns {number|undefined}
 */
export function nextStep(state) {
  return state.playing && state.index + 1 < state.steps.length ? state.steps[state.index + 1] : undefined;
}

/**
 * The statistics of the shown step, in the Statistic menu's order.
 * @param {Flow[]} flows
 * @returns {string[]}
 */
export function statNames(flows) {
  if (!flows.length) return [];
  const rank = (s) => {
    const i = STAT_ORDER.indexOf(s);
    return i < 0 ? STAT_ORDER.length : i;
  };
  return Object.keys(flows[0].stats).sort((x, y) => rank(x) - rank(y));
}

/**
 * @param {State} state
 * @param {RunInfo[]} runs a new `runs` answer
 * @returns {State} the new listing, keeping the selected and compared runs
 *   while they are listed; `state` itself when nothing changed.
 */
function listed(state, runs) {
  const sigs = runSignatures(runs);
  if (state.loaded && !changedRuns(state.sigs, sigs).size) return state;
  const a = (state.a && findRun(runs, runKey(state.a))) || runs[0] || null;
  let b = state.b && findRun(runs, runKey(state.b));
  if (b && runKey(b) === runKey(a)) b = null;
  return { ...state, runs, sigs, loaded: true, a, b, error: a ? "" : state.error };
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
