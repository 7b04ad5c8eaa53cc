// Data of the Gradient Flow tab: the shapes of the plugin's answers, turning
// TensorBoard's "NaN"/"Infinity" strings back into numbers, the binary heatmap
// format, run keys and what changed between two `runs` listings. No DOM and no
// fetching here (api.js fetches): `node --test` imports this module.

/**
 * One watcher of one run, as listed by the `runs` route.
 * @typedef {{run: string, tag: string, name: (string|null), layers: number,
 *   steps: number, first_step: number, last_step: number, every: number,
 *   expected_steps: number}} RunInfo
 */

/**
 * A finding of the diagnosis rule.
 * @typedef {{kind: string, layer: (string|null), first_step: number,
 *   last_step: number, steps: number, message: string}} Alert
 */

/**
 * One logged step (`flow` route), with every statistic as an array of numbers.
 * @typedef {{run: string, tag: string, step: number, layers: string[],
 *   sparse: boolean[], stats: Object<string, number[]>, no_grad: boolean[],
 *   absent: boolean[], skipped: boolean, loss_scale: number, alerts: Alert[]}} Flow
 *   (`absent`: the layer is not in the layer set of that step's session)
 */

/**
 * The layers-by-steps matrix of one statistic (`heatmap` route, binary form).
 * @typedef {{run: string, tag: string, stat: string, layers: string[],
 *   steps: number[], first_steps: number[], last_steps: number[],
 *   downsampled: boolean, values: Float32Array}} Heatmap
 * `values[row * steps.length + col]` is layer `row` in column `col`.
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
    sparse: fill(json.sparse, false),
    stats,
    no_grad: fill(json.no_grad, false),
    absent: fill(json.absent, false),
    skipped: Boolean(json.skipped),
    loss_scale: toNumber(json.loss_scale),
    alerts: (json.alerts || []).map(reviveAlert),
  };
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
  };
}

/**
 * Decodes the binary heatmap body: uint32 LE header length, the JSON header,
 * zero padding to a multiple of 4, then float32 LE `[layer][column]`.
 * @param {ArrayBuffer} buffer
 * @returns {Heatmap}
 * @throws {Error} when the body is truncated or inconsistent.
 */
export function decodeHeatmap(buffer) {
  if (buffer.byteLength < 4) throw new Error("heatmap body shorter than its header length");
  const view = new DataView(buffer);
  const n = view.getUint32(0, true);
  if (4 + n > buffer.byteLength) throw new Error(`heatmap header of ${n} bytes is truncated`);
  const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, n)));
  const start = Math.ceil((4 + n) / 4) * 4;
  const layers = (head.layers || []).map(String);
  const steps = toNumbers(head.steps);
  const count = layers.length * steps.length;
  if (start + 4 * count > buffer.byteLength) {
    throw new Error(`heatmap body holds fewer than ${layers.length} x ${steps.length} values`);
  }
  const values = new Float32Array(count);
  for (let i = 0; i < count; i++) values[i] = view.getFloat32(start + 4 * i, true);
  return {
    run: String(head.run),
    tag: String(head.tag),
    stat: String(head.stat),
    layers,
    steps,
    first_steps: head.first_steps ? toNumbers(head.first_steps) : steps.slice(),
    last_steps: head.last_steps ? toNumbers(head.last_steps) : steps.slice(),
    downsampled: Boolean(head.downsampled),
    values,
  };
}

/**
 * Encodes a heatmap the way the server does (for tests and fixtures).
 * @param {Omit<Heatmap, "values">} head
 * @param {ArrayLike<number>} values `[layer][column]`
 * @returns {ArrayBuffer}
 */
export function encodeHeatmap(head, values) {
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
 * What changes when a run receives new data: the kept step count and the last
 * step. Two equal signatures mean there is nothing to redraw.
 * @param {RunInfo[]} runs
 * @returns {Map<string, string>} runKey -> signature
 */
export function runSignatures(runs) {
  const out = new Map();
  for (const r of runs) out.set(runKey(r), `${r.steps}/${r.first_step}/${r.last_step}/${r.layers}`);
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
 * The line that says how many of the logged steps TensorBoard kept.
 * @param {RunInfo} r
 * @returns {string}
 */
export function keptStepsText(r) {
  const kept = r.steps;
  const expected = Math.max(r.expected_steps || 0, kept);
  if (kept >= expected) return `all ${kept.toLocaleString("en-US")} logged steps shown`;
  return (
    `TensorBoard kept ${kept.toLocaleString("en-US")} of ${expected.toLocaleString("en-US")} ` +
    `logged steps (raise --samples_per_plugin=gradflow=N to keep more)`
  );
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
