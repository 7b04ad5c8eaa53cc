// Data of the Gradient Flow tab: the shapes of the plugin's answers, turning
// TensorBoard's "NaN"/"Infinity" strings back into numbers, the binary heatmap
// format, run keys and what changed between two `runs` listings. No DOM and no
// fetching here (api.js fetches): `node --test` imports this module.

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
 *   `alerts` stay per layer: {@link groupOfLayer})
 */

/**
 * The layers-by-steps matrix of one statistic (`heatmap` route, binary form).
 * @typedef {{run: string, tag: string, stat: string, layers: string[],
 *   types: string[], steps: number[], first_steps: number[], last_steps: number[],
 *   downsampled: boolean, logged: boolean, total_norm: (number[]|null),
 *   overview?: boolean, logged_steps?: (number|null),
 *   group?: Group, members?: ((string[]|null)[]|null), bounds?: (Bounds|null),
 *   depth?: number[], values: Float32Array}} Heatmap
 * `values[row * steps.length + col]` is layer `row` in column `col`: NaN
 * where it had no gradient, +Infinity where a value was non-finite, -Infinity
 * where the layer was in none of the column's layer sets. `logged` false: the
 * run's files lack the statistic (every value NaN). `total_norm`: the model's
 * total gradient norm per column (null: an older server, or no `norm`).
 * With `group` "block" or "role" a row is a group of layers, `layers` their
 * names and `members[row]` the layer names of each ({@link groupOfLayer});
 * `depth` (with member rows under their group: {@link expandRows}): 0 for a
 * group's row, 1 for a member layer's.
 */

/** What a row of the bar plot, the heatmap and the lines view is: a layer, a
 * block of layers or a role.
 * @typedef {"layer"|"block"|"role"} Group
 */

/**
 * Where the values of a grouped heatmap or lines answer are bounds rather
 * than values: in `columns` (drawn from the watcher's overview records,
 * which hold each layer's extremes, not when they were), a group of several
 * layers has at most its `max` ("upper": an upper bound; "exact" for
 * abs_max) and at least its `min` ("lower").
 * @typedef {{columns: Set<number>, max: ("upper"|"exact"), min: "lower"}} Bounds
 */

/**
 * Each layer's smallest and largest value of one statistic per bin of steps
 * (`lines` route, binary form): the heatmap's columns, with `max` the
 * heatmap's values and `min` the smallest finite value of the bin (NaN where
 * it has none).
 * @typedef {{run: string, tag: string, stat: string, layers: string[],
 *   types: string[], steps: number[], first_steps: number[], last_steps: number[],
 *   downsampled: boolean, logged: boolean, total_norm: (number[]|null),
 *   overview?: boolean, logged_steps?: (number|null),
 *   group?: Group, members?: (string[][]|null), bounds?: (Bounds|null),
 *   max: Float32Array, min: Float32Array}} Lines
 * (per group as {@link Heatmap})
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
    ...grouping(json),
  };
}

/**
 * The mode and groups of a `flow`, `heatmap` or `lines` answer: "layer" and
 * no members where it has none (or an unknown mode).
 * @param {any} json
 * @returns {{group: Group, members: (string[][]|null)}}
 */
function grouping(json) {
  if (json.group !== "block" && json.group !== "role") return { group: "layer", members: null };
  const members = Array.isArray(json.members) ? json.members.map((m) => (Array.isArray(m) ? m.map(String) : [])) : null;
  return { group: json.group, members };
}

/**
 * A grouped binned answer's `bounds` (see {@link Bounds}); null where it has
 * none or they are malformed.
 * @param {any} b
 * @returns {Bounds|null}
 */
export function reviveBounds(b) {
  if (!b || typeof b !== "object" || !Array.isArray(b.columns)) return null;
  return { columns: new Set(b.columns.map(Number)), max: b.max === "exact" ? "exact" : "upper", min: "lower" };
}

/**
 * Whether the value of row `row` in column `col` of a heatmap or lines answer
 * is a bound (see {@link Bounds}): a group of several layers in a column
 * drawn from overview records. Its `max` bound is exact for abs_max: then
 * only `min` is a bound.
 * @param {{members?: (string[][]|null), bounds?: (Bounds|null)}} binned
 * @param {number} row
 * @param {number} col
 * @returns {{max: boolean, min: boolean}}
 */
export function boundAt(binned, row, col) {
  const b = binned.bounds;
  const several = Boolean(binned.members && binned.members[row] && binned.members[row].length > 1);
  if (!b || !several || !b.columns.has(col)) return { max: false, min: false };
  return { max: b.max === "upper", min: true };
}

/**
 * The groups of a `runs` entry (`groups`: how many blocks and roles); null
 * where it has none or they are malformed.
 * @param {any} g
 * @returns {{block: number, role: number}|null}
 */
export function reviveGroups(g) {
  if (!g || typeof g !== "object") return null;
  const block = Number(g.block);
  const role = Number(g.role);
  return Number.isInteger(block) && Number.isInteger(role) ? { block, role } : null;
}

/**
 * The name of the bar (heatmap row, line) a layer is drawn in: the group of a
 * grouped `flow`, `heatmap` or `lines` answer whose `members` hold `layer`,
 * the layer itself in an ungrouped one; null for null (a whole-model finding)
 * or a layer no group holds.
 * @param {{layers: string[], members?: (string[][]|null)}|null|undefined} flow
 * @param {string|null} layer
 * @returns {string|null}
 */
export function groupOfLayer(flow, layer) {
  if (layer === null) return null;
  if (!flow || !flow.members) return layer;
  const i = flow.members.findIndex((m) => m.includes(layer));
  return i < 0 ? null : flow.layers[i] ?? null;
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
 * The row (bar) of each layer name in an answer (`flow`, `heatmap`, `lines`):
 * its own, or in a grouped answer its group's (its own where a heatmap shows
 * the layer under its group: {@link expandRows}).
 * @param {{layers: string[], members?: ((string[]|null)[]|null)}} answer
 * @returns {Map<string, number>}
 */
export function rowOfLayer(answer) {
  if (!answer.members) return new Map(answer.layers.map((name, i) => [name, i]));
  return new Map(answer.members.flatMap((names, i) => (names ?? [answer.layers[i]]).map((name) => [name, i])));
}

/**
 * A grouped heatmap with the rows of the member layers of the `expanded`
 * groups (from `perLayer`, the same run's heatmap per layer over the same
 * columns) under their group's row. A member row's `members` entry is null
 * (a layer, not a group) and its `depth` 1; a group's 0. `grouped` itself
 * when nothing is expanded, it is not grouped, or the columns differ (an
 * answer of another version of the run).
 * @param {Heatmap} grouped
 * @param {Heatmap} perLayer
 * @param {string[]} expanded group names
 * @returns {Heatmap}
 */
export function expandRows(grouped, perLayer, expanded) {
  const cols = grouped.steps.length;
  const same = perLayer.first_steps.length === cols && perLayer.first_steps.every((a, c) => a === grouped.first_steps[c]);
  if (!grouped.members || !expanded.length || !same) return grouped;
  const open = new Set(expanded);
  const rowOf = new Map(perLayer.layers.map((name, j) => [name, j]));
  const layers = [];
  const types = [];
  const members = [];
  const depth = [];
  const rows = []; // [source matrix, row]
  grouped.layers.forEach((name, g) => {
    layers.push(name);
    types.push(grouped.types[g]);
    members.push(grouped.members[g]);
    depth.push(0);
    rows.push([grouped.values, g]);
    if (!open.has(name) || grouped.members[g].length < 2) return;
    for (const layer of grouped.members[g]) {
      const j = rowOf.get(layer);
      if (j === undefined) continue;
      layers.push(layer);
      types.push(perLayer.types[j]);
      members.push(null);
      depth.push(1);
      rows.push([perLayer.values, j]);
    }
  });
  const values = new Float32Array(layers.length * cols);
  rows.forEach(([m, r], i) => values.set(m.subarray(r * cols, (r + 1) * cols), i * cols));
  return { ...grouped, layers, types, members, depth, values };
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
function layerTypes(xs, count) {
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
 * Decodes a binary body of the `heatmap` or `lines` route: uint32 LE header
 * length, the JSON header, zero padding to a multiple of 4, then one float32
 * LE `[layer][column]` matrix per name of `names`, in that order.
 * @param {ArrayBuffer} buffer
 * @param {string[]} names
 * @returns {Object<string, any>} the header's fields, and each matrix by name
 * @throws {Error} when the body is truncated or inconsistent.
 */
function decodeBinned(buffer, names) {
  if (buffer.byteLength < 4) throw new Error("heatmap body shorter than its header length");
  const view = new DataView(buffer);
  const n = view.getUint32(0, true);
  if (4 + n > buffer.byteLength) throw new Error(`heatmap header of ${n} bytes is truncated`);
  const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, n)));
  const start = Math.ceil((4 + n) / 4) * 4;
  const layers = (head.layers || []).map(String);
  const steps = toNumbers(head.steps);
  const count = layers.length * steps.length;
  if (start + 4 * count * names.length > buffer.byteLength) {
    const shape = [...(names.length > 1 ? [names.length] : []), layers.length, steps.length];
    throw new Error(`heatmap body holds fewer than ${shape.join(" x ")} values`);
  }
  const out = {
    run: String(head.run),
    tag: String(head.tag),
    stat: String(head.stat),
    layers,
    types: layerTypes(head.types, layers.length),
    steps,
    first_steps: head.first_steps ? toNumbers(head.first_steps) : steps.slice(),
    last_steps: head.last_steps ? toNumbers(head.last_steps) : steps.slice(),
    downsampled: Boolean(head.downsampled),
    logged: head.logged !== false,
    total_norm: Array.isArray(head.total_norm) && head.total_norm.length === steps.length ? toNumbers(head.total_norm) : null,
    // drawn from the watcher's overview records: every logged step, not the kept ones
    overview: head.from === "overview",
    logged_steps: Number.isFinite(head.logged_steps) ? head.logged_steps : null,
    ...grouping(head),
    bounds: reviveBounds(head.bounds),
  };
  names.forEach((name, k) => {
    const values = new Float32Array(count);
    const at = start + 4 * count * k;
    for (let i = 0; i < count; i++) values[i] = view.getFloat32(at + 4 * i, true);
    out[name] = values;
  });
  return out;
}

/**
 * Decodes the binary heatmap body (see {@link decodeBinned}: one matrix).
 * @param {ArrayBuffer} buffer
 * @returns {Heatmap}
 * @throws {Error} when the body is truncated or inconsistent.
 */
export function decodeHeatmap(buffer) {
  return /** @type {Heatmap} */ (decodeBinned(buffer, ["values"]));
}

/**
 * Decodes the binary body of the `lines` route (see {@link decodeBinned}: the
 * `max` matrix, then the `min` one).
 * @param {ArrayBuffer} buffer
 * @returns {Lines}
 * @throws {Error} when the body is truncated or inconsistent.
 */
export function decodeLines(buffer) {
  return /** @type {Lines} */ (decodeBinned(buffer, ["max", "min"]));
}

/**
 * The header of a heatmap or lines answer for a statistic a run does not have
 * at all (the `runs` route does not list it for that run: the routes would
 * refuse the name): no layers, no steps, not logged.
 * @param {{run: string, tag: string}} r
 * @param {string} stat
 */
function notLoggedHead(r, stat) {
  return {
    run: r.run, tag: r.tag, stat, layers: [], types: [], steps: [], first_steps: [], last_steps: [],
    downsampled: false, logged: false, total_norm: null, group: "layer", members: null, bounds: null,
  };
}

/**
 * What the tab shows in place of the heatmap of a statistic a run does not
 * have at all: no layers, no steps, not logged.
 * @param {{run: string, tag: string}} r
 * @param {string} stat
 * @returns {Heatmap}
 */
export function notLoggedHeatmap(r, stat) {
  return { ...notLoggedHead(r, stat), values: new Float32Array(0) };
}

/**
 * What the tab shows in place of the lines of a statistic a run does not have
 * at all: no layers, no steps, not logged.
 * @param {{run: string, tag: string}} r
 * @param {string} stat
 * @returns {Lines}
 */
export function notLoggedLines(r, stat) {
  return { ...notLoggedHead(r, stat), max: new Float32Array(0), min: new Float32Array(0) };
}

/**
 * Encodes a heatmap the way the server does (for tests and fixtures); lines
 * with their `max`, then their `min` matrix.
 * @param {Omit<Heatmap, "values">} head
 * @param {...ArrayLike<number>} matrices each `[layer][column]`
 * @returns {ArrayBuffer}
 */
export function encodeHeatmap(head, ...matrices) {
  const values = matrices.flatMap((m) => Array.from(m));
  const json = new TextEncoder().encode(JSON.stringify(head));
  const start = Math.ceil((4 + json.length) / 4) * 4;
  const buffer = new ArrayBuffer(start + 4 * values.length);
  const view = new DataView(buffer);
  view.setUint32(0, json.length, true);
  new Uint8Array(buffer, 4, json.length).set(json);
  for (let i = 0; i < values.length; i++) view.setFloat32(start + 4 * i, values[i], true);
  return buffer;
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
