// Groups of layers in the Gradient Flow tab (issue 22): what a row of the bar
// plot, the heatmap and the lines view is (a layer, a block or a role), the
// groups of the `flow`, `heatmap` and `lines` answers and of a `runs` entry,
// where a grouped value is a bound, the row of each layer, and a group's layers
// shown under its heatmap row. Pure: no DOM, no fetching.

/** @typedef {import("./binary.js").Heatmap} Heatmap */

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
 * The mode and groups of a `flow`, `heatmap` or `lines` answer: "layer" and
 * no members where it has none (or an unknown mode).
 * @param {any} json
 * @returns {{group: Group, members: (string[][]|null)}}
 */
export function reviveGrouping(json) {
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
