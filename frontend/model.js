// Data of the Gradient Flow tab: the shapes of the plugin's JSON answers,
// turning TensorBoard's "NaN"/"Infinity" strings back into numbers, run keys,
// what changed between two `runs` listings and the lines that tell of kept and
// left-out steps. The binary heatmap and lines answers: binary.js; groups of
// layers (block, role) and the rows they make: grouping.js. No DOM and no
// fetching here (api.js fetches): `node --test` imports this module.

import { reviveGrouping } from "./grouping.js";

/**
 * One watcher of one run, as listed by the `runs` route (from TensorBoard's
 * listing alone: how many steps were kept is in {@link StepsInfo}). `stats`:
 * the statistics its files hold, then the ones the server knows that they lack.
 * `groups`: how many groups the `flow` route's `group=block` and `group=role`
 * give (the layer count where a mode groups nothing); null where the server
 * does not say.
 * @typedef {{run: string, tag: string, name: (string|null), layers: number,
 *   last_step: number, every: number, last_wall_time: number,
 *   stats: StatInfo[], groups?: ({block: number, role: number}|null)}} RunInfo
 */

/**
 * A statistic of a watcher, as the `runs` route lists it: what the server's
 * registry says of it (`meaning`; `unit`: "value", "count" or "fraction";
 * `bad`: "low", "high" or "none"), null in all three for one the server does
 * not know (read from the files by name), and whether the watcher's files hold
 * it (`logged` false: they were written without it, and it reads as NaN).
 * @typedef {{name: string, meaning: (string|null), unit: (string|null),
 *   bad: (string|null), logged: boolean}} StatInfo
 */

/**
 * A record left out of a run: its step (null when TensorBoard stopped reading
 * a file and the steps are not known one by one) and why.
 * @typedef {{step: (number|null), reason: string}} LeftOut
 */

/**
 * The `steps` answer: the kept steps of a run (what the slider walks), how many
 * steps the watcher logged, and the records left out.
 * @typedef {{run: string, tag: string, steps: number[], first_step: number,
 *   last_step: number, every: number, expected_steps: number,
 *   left_out: LeftOut[]}} StepsInfo
 */

/**
 * A finding of the diagnosis rule. `ongoing`: the streak had not ended when
 * the data ended, so it holds at every later step too.
 * @typedef {{kind: string, layer: (string|null), first_step: number,
 *   last_step: number, steps: number, message: string, ongoing: boolean}} Alert
 */

/**
 * One logged step (`flow` route), with every statistic as an array of numbers.
 * `types`: each layer's module class ("" when unknown). `not_logged`: the
 * statistics in `stats` that the run's files lack (all NaN).
 * @typedef {{run: string, tag: string, step: number, layers: string[],
 *   types: string[], sparse: boolean[], stats: Object<string, number[]>,
 *   no_grad: boolean[], absent: boolean[], skipped: boolean, loss_scale: number,
 *   alerts: Alert[], left_out: LeftOut[], not_logged: string[],
 *   group: ("layer"|"block"|"role"), members: (string[][]|null)}} Flow
 *   (`absent`: the layer is not in the layer set of that step's session;
 *   with `group` "block" or "role", `layers` are group names, the per-layer
 *   lists are per group, `members[i]` the layer names of group `i`, and
 *   `alerts` stay per layer: `groupOfLayer` in grouping.js)
 */

/**
 * A JSON number that TensorBoard may have sent as "NaN", "Infinity" or
 * "-Infinity"; null and other strings become NaN.
 * @param {unknown} x
 * @returns {number}
 */
export function toNumber(x) {
  if (typeof x === "number") return x;
  if (x === "Infinity") return Infinity;
  if (x === "-Infinity") return -Infinity;
  if (typeof x === "string" && x.trim() !== "") {
    const v = Number(x);
    return Number.isNaN(v) ? NaN : v;
  }
  return NaN;
}

/**
 * An array of JSON numbers as numbers (see {@link toNumber}).
 * @param {unknown[]} xs
 * @returns {number[]}
 */
export function toNumbers(xs) {
  return Array.isArray(xs) ? xs.map(toNumber) : [];
}

/**
 * A watcher's statistics from the `runs` answer: its `stats` (names) and
 * `not_logged` (the names among them its files lack), with what the answer's
 * top-level `stats` says of each (the server's registry; null for a statistic
 * it does not know). Names that are not non-empty strings are dropped.
 * @param {unknown} names the entry's `stats`
 * @param {unknown} notLogged the entry's `not_logged`
 * @param {unknown} described the answer's `stats`: name -> {meaning, unit, bad} or null
 * @returns {StatInfo[]}
 */
export function reviveStats(names, notLogged, described) {
  if (!Array.isArray(names)) return [];
  const missing = new Set(Array.isArray(notLogged) ? notLogged : []);
  const about = described && typeof described === "object" ? described : {};
  const text = (v) => (typeof v === "string" ? v : null);
  return names
    .filter((name) => typeof name === "string" && name !== "")
    .map((name) => {
      const d = Object.prototype.hasOwnProperty.call(about, name) && about[name] ? about[name] : {};
      return { name, meaning: text(d.meaning), unit: text(d.unit), bad: text(d.bad), logged: !missing.has(name) };
    });
}

/**
 * Converts a `flow` JSON answer: statistics and the loss scale become numbers,
 * missing lists become lists of the layer count.
 * @param {any} json
 * @returns {Flow}
 */
export function reviveFlow(json) {
  const layers = (json.layers || []).map(String);
  const stats = {};
  for (const [name, values] of Object.entries(json.stats || {})) stats[name] = toNumbers(values);
  const fill = (xs, v) => (Array.isArray(xs) && xs.length === layers.length ? xs.map(Boolean) : layers.map(() => v));
  return {
    run: String(json.run),
    tag: String(json.tag),
    step: toNumber(json.step),
    layers,
    types: layerTypes(json.types, layers.length),
    sparse: fill(json.sparse, false),
    stats,
    no_grad: fill(json.no_grad, false),
    absent: fill(json.absent, false),
    skipped: Boolean(json.skipped),
    loss_scale: toNumber(json.loss_scale),
    alerts: (json.alerts || []).map(reviveAlert),
    left_out: reviveLeftOut(json.left_out),
    not_logged: Array.isArray(json.not_logged) ? json.not_logged.map(String) : [],
    ...reviveGrouping(json),
  };
}

/**
 * How many layers: "1 layer", "9 layers".
 * @param {number} n
 * @returns {string}
 */
export function layerCount(n) {
  return `${n} layer${n === 1 ? "" : "s"}`;
}

/**
 * Converts a `steps` JSON answer.
 * @param {any} json
 * @returns {StepsInfo}
 */
export function reviveSteps(json) {
  return {
    run: String(json.run),
    tag: String(json.tag),
    steps: toNumbers(json.steps),
    first_step: toNumber(json.first_step),
    last_step: toNumber(json.last_step),
    every: toNumber(json.every),
    expected_steps: toNumber(json.expected_steps),
    left_out: reviveLeftOut(json.left_out),
  };
}

/**
 * Converts a `left_out` list (steps as numbers or null, reasons as text).
 * @param {unknown} xs
 * @returns {LeftOut[]}
 */
export function reviveLeftOut(xs) {
  if (!Array.isArray(xs)) return [];
  return xs.map((x) => ({
    step: x.step === null || x.step === undefined ? null : toNumber(x.step),
    reason: String(x.reason ?? ""),
  }));
}

/**
 * Each layer's module type as text, `count` of them ("" where unknown).
 * @param {unknown} xs
 * @param {number} count
 * @returns {string[]}
 */
export function layerTypes(xs, count) {
  const types = Array.isArray(xs) ? xs : [];
  return Array.from({ length: count }, (_, i) => (typeof types[i] === "string" ? types[i] : ""));
}

/**
 * A layer's name with its module type, as the tab shows it wherever it shows
 * a layer (`0 · Conv2d`, as `GradFlowRun.label` writes it); the name alone
 * when the type is not known. The name stays the key.
 * @param {string} name
 * @param {string} [type]
 * @returns {string}
 */
export function layerLabel(name, type) {
  return type ? `${name} \u00b7 ${type}` : name;
}

/**
 * Converts one alert (steps as numbers, layer as a string or null).
 * @param {any} a
 * @returns {Alert}
 */
export function reviveAlert(a) {
  return {
    kind: String(a.kind),
    layer: a.layer === null || a.layer === undefined ? null : String(a.layer),
    first_step: toNumber(a.first_step),
    last_step: toNumber(a.last_step),
    steps: toNumber(a.steps),
    message: a.message === undefined ? "" : String(a.message),
    ongoing: a.ongoing === true,
  };
}

/**
 * Whether a finding's condition holds at `step`, as the server's
 * `Finding.holds_at` says: from its first step to its last, and for an ongoing
 * streak at every later step too.
 * @param {Alert} alert
 * @param {number} step
 * @returns {boolean}
 */
export function alertHolds(alert, step) {
  return step >= alert.first_step && (alert.ongoing || step <= alert.last_step);
}

/**
 * Where a finding held, as the alerts list says it: `step 5`, `steps 80–299`,
 * and `, ongoing` when its streak had not ended when the data ended.
 * @param {Alert} alert
 * @returns {string}
 */
export function alertSpan(alert) {
  const span =
    alert.first_step === alert.last_step ? `step ${alert.first_step}` : `steps ${alert.first_step}\u2013${alert.last_step}`;
  return alert.ongoing ? `${span}, ongoing` : span;
}

/**
 * A stable key of one watcher of one run.
 * @param {{run: string, tag: string}} r
 * @returns {string}
 */
export function runKey(r) {
  return `${r.run}\u0000${r.tag}`;
}

/**
 * What changes when a run receives new data: its last step, the wall time of
 * its newest record (a step written again changes it too) and its layer count.
 * Two equal signatures mean there is nothing to redraw.
 * @param {RunInfo[]} runs
 * @returns {Map<string, string>} runKey -> signature
 */
export function runSignatures(runs) {
  const out = new Map();
  for (const r of runs) out.set(runKey(r), `${r.last_step}/${r.last_wall_time}/${r.layers}`);
  return out;
}

/**
 * Keys whose signature differs between two listings (new, changed or removed).
 * @param {Map<string, string>} before
 * @param {Map<string, string>} after
 * @returns {Set<string>}
 */
export function changedRuns(before, after) {
  const out = new Set();
  for (const [k, v] of after) if (before.get(k) !== v) out.add(k);
  for (const k of before.keys()) if (!after.has(k)) out.add(k);
  return out;
}

/**
 * The line that says how many of the logged steps are shown: all of them, or
 * how many TensorBoard kept (it samples runs longer than its limit), or how
 * many are shown when records were left out (named on the line under it).
 * @param {{steps: number[], expected_steps: number, left_out?: LeftOut[]}} info
 *   a `steps` answer
 * @returns {string}
 */
export function keptStepsText(info) {
  const kept = info.steps.length;
  const leftOut = info.left_out || [];
  const shown = new Set(info.steps);
  const dropped = new Set(leftOut.filter((lo) => lo.step !== null && !shown.has(lo.step)).map((lo) => lo.step)).size;
  const expected = Math.max(info.expected_steps || 0, kept);
  const n = (x) => x.toLocaleString("en-US");
  if (kept + dropped < expected) {
    return `TensorBoard kept ${n(kept)} of ${n(expected)} logged steps (raise --samples_per_plugin=gradflow=N to keep more)`;
  }
  if (dropped) return `${n(kept)} of ${n(expected)} logged steps shown`;
  // TensorBoard stopped reading a file: later steps are not counted here
  if (leftOut.some((lo) => lo.step === null)) return `${n(kept)} logged steps shown`;
  return `all ${n(kept)} logged steps shown`;
}

/**
 * Whether the kept-steps line is a warning: fewer steps shown than logged, or
 * records left out.
 * @param {{steps: number[], expected_steps: number, left_out?: LeftOut[]}} info
 * @returns {boolean}
 */
export function keptStepsWarn(info) {
  return info.steps.length < info.expected_steps || (info.left_out || []).length > 0;
}

/** Damaged steps named in the left-out line; the rest are counted. */
export const LEFT_OUT_NAMED = 10;

/**
 * What the tab says about a run's records left out: one line counting and
 * naming the steps left out (`1 step left out (damaged record): 135`), the
 * reason of each (`step 135: ...`, for a tooltip or details), and the reasons
 * of entries without a step (TensorBoard stopped reading a file), as they are.
 * @param {LeftOut[]} leftOut
 * @returns {{summary: string, reasons: string[], notes: string[]}} `summary`
 *   is "" when no step was left out
 */
export function leftOutText(leftOut) {
  const damaged = leftOut.filter((lo) => lo.step !== null);
  const notes = leftOut.filter((lo) => lo.step === null).map((lo) => lo.reason);
  const reasons = damaged.map((lo) => `step ${lo.step}: ${lo.reason}`);
  if (!damaged.length) return { summary: "", reasons, notes };
  const steps = [...new Set(damaged.map((lo) => lo.step))].sort((x, y) => x - y);
  const n = steps.length;
  const named = steps.slice(0, LEFT_OUT_NAMED).join(", ");
  const more = steps.length > LEFT_OUT_NAMED ? `, \u2026 (${steps.length - LEFT_OUT_NAMED} more)` : "";
  const s = n === 1 ? "" : "s";
  return { summary: `${n.toLocaleString("en-US")} step${s} left out (damaged record${s}): ${named}${more}`, reasons, notes };
}

/**
 * Layers of two runs matched by name: the first run's order, then the second
 * run's layers the first lacks. `a[i]`/`b[i]` index into each run's layers, or
 * -1 where that run has no such layer.
 * @param {string[]} first
 * @param {string[]} second
 * @returns {{names: string[], a: number[], b: number[]}}
 */
export function matchLayers(first, second) {
  const inSecond = new Map();
  second.forEach((name, i) => {
    if (!inSecond.has(name)) inSecond.set(name, i);
  });
  const names = [];
  const a = [];
  const b = [];
  const seen = new Set();
  first.forEach((name, i) => {
    names.push(name);
    a.push(i);
    b.push(inSecond.has(name) ? inSecond.get(name) : -1);
    seen.add(name);
  });
  second.forEach((name, i) => {
    if (seen.has(name)) return;
    seen.add(name);
    names.push(name);
    a.push(-1);
    b.push(i);
  });
  return { names, a, b };
}
