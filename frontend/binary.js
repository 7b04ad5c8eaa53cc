// The binary answers of the `heatmap` and `lines` routes (a JSON header, then
// float32 matrices: docs/format.md) decoded into what the heatmap and the
// lines view draw, their stand-ins for a statistic a run lacks, and the
// encoder tests and fixtures use. Pure: no DOM, no fetching.

import { reviveBounds, reviveGrouping } from "./grouping.js";
import { layerTypes, toNumbers } from "./model.js";

/** @typedef {import("./grouping.js").Group} Group */
/** @typedef {import("./grouping.js").Bounds} Bounds */

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
 * names and `members[row]` the layer names of each (`groupOfLayer`, grouping.js);
 * `depth` (with member rows under their group: `expandRows`, grouping.js): 0 for a
 * group's row, 1 for a member layer's.
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
    ...reviveGrouping(head),
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
