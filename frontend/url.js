// The tab's view in TensorBoard's URL hash: which view a state keeps there, how
// it is written among TensorBoard's own keys and read back. Pure: nothing here
// reads `location` (index.js hands the hash in), so `node --test` covers it.

import { runKey } from "./model.js";
import { currentStep } from "./state.js";

/**
 * The prefix of the tab's keys in TensorBoard's URL hash: TensorBoard keeps
 * every `key=value` of its hash when it switches tabs or reloads, and hands the
 * `p.<plugin>.` ones to a plugin that asks (`experimental.GetURLPluginData`).
 */
export const URL_PREFIX = "p.gradflow.";
/** TensorBoard's name for the hash part without `=` (the active tab). */
const TAB_KEY = "__tab__";

/** @typedef {import("./state.js").State} State */

/**
 * A view as the URL holds it: the selected and compared runs (run and tag), the
 * statistic, the scale (`log`), the step (null: the newest, followed as
 * training writes more) and what a bar is (`group`: "layer", "block" or
 * "role"). null parts take the tab's defaults.
 * @typedef {{run: (string|null), tag: (string|null), compare: (string|null),
 *   compareTag: (string|null), stat: (string|null), log: (boolean|null),
 *   step: (number|null), group?: (string|null)}} View
 */

/**
 * The view to keep in the URL: what is shown, or what the URL asked for and is
 * not shown yet (a run TensorBoard has not listed yet keeps its place). The
 * step is left out while the tab follows the newest step.
 * @param {State} state
 * @returns {View}
 */
export function viewOf(state) {
  const [run, tag] = runAndTag(state.want.a, state.a);
  const [compare, compareTag] = runAndTag(state.want.b, state.b);
  const shown = state.follow || state.index < 0 ? null : currentStep(state) ?? null;
  return { run, tag, compare, compareTag, stat: state.stat, log: state.log, step: state.want.step ?? shown, group: state.group };
}

/**
 * The view held in a URL hash (`#gradflow&p.gradflow.run=...`; see
 * {@link hashWithView}). Unknown or malformed values are null.
 * @param {string} hash `location.hash`, with or without the `#`
 * @returns {View}
 */
export function viewFromHash(hash) {
  const params = new Map(parseHash(hash).filter(([k]) => k.startsWith(URL_PREFIX)).map(([k, v]) => [k.slice(URL_PREFIX.length), v]));
  const text = (k) => (params.get(k) ? params.get(k) : null);
  const step = text("step");
  const scale = text("scale");
  const group = text("layers");
  return {
    run: text("run"),
    tag: text("tag"),
    compare: text("compare"),
    compareTag: text("compare_tag"),
    stat: text("stat"),
    log: scale === "linear" ? false : scale === "log" ? true : null,
    step: step !== null && /^-?\d{1,16}$/.test(step) ? Number(step) : null,
    group: group === "layer" || group === "block" || group === "role" ? group : null,
  };
}

/**
 * `hash` with the tab's keys replaced by `view`, every other key (TensorBoard's
 * active tab, other plugins' keys) kept in place, in TensorBoard's own format:
 * the tab first, then `key=value` pairs, URI-encoded, joined by `&`. Defaults
 * are left out: the tag `gradflow`, the statistic `abs_mean`, the log scale, the
 * step when following the newest, and bars per layer (`layers=block` or
 * `layers=role` otherwise).
 * @param {string} hash `location.hash`, with or without the `#`
 * @param {View} view
 * @returns {string} the new hash, with its `#` (just `#` when empty)
 */
export function hashWithView(hash, view) {
  const kept = parseHash(hash).filter(([k]) => !k.startsWith(URL_PREFIX));
  const ours = [
    ["run", view.run],
    ["tag", view.run && view.tag !== "gradflow" ? view.tag : null],
    ["compare", view.compare],
    ["compare_tag", view.compare && view.compareTag !== "gradflow" ? view.compareTag : null],
    ["stat", view.stat === "abs_mean" ? null : view.stat],
    ["scale", view.log === false ? "linear" : null],
    ["step", view.step === null || view.step === undefined ? null : String(view.step)],
    ["layers", view.group === "block" || view.group === "role" ? view.group : null],
  ];
  for (const [k, v] of ours) if (v !== null && v !== undefined && v !== "") kept.push([URL_PREFIX + k, String(v)]);
  const tab = kept.find(([k]) => k === TAB_KEY);
  const pairs = kept.filter(([k]) => k !== TAB_KEY).map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
  return "#" + [...(tab ? [tab[1]] : []), ...pairs].join("&");
}

/**
 * The `[key, value]` pairs of a hash as TensorBoard reads it
 * (`tf_storage.getUrlHashDict`): split at `&`, a part without `=` is the active
 * tab (`__tab__`), a part with one `=` a URI-encoded pair; others are dropped.
 * @param {string} hash
 * @returns {[string, string][]}
 */
export function parseHash(hash) {
  const out = [];
  for (const part of hash.replace(/^#/, "").split("&")) {
    if (part === "") continue;
    const kv = part.split("=");
    try {
      if (kv.length === 1) out.push([TAB_KEY, kv[0]]);
      else if (kv.length === 2) out.push([decodeURIComponent(kv[0]), decodeURIComponent(kv[1])]);
    } catch {
      // a malformed %-escape: TensorBoard would throw; the tab skips the part
    }
  }
  return out;
}

/**
 * The run and tag of a shown run (or of the run key `wanted`, when the URL
 * asked for a run not shown yet); nulls for neither.
 * @param {string|null} wanted
 * @param {import("./model.js").RunInfo|null} shown
 * @returns {[string|null, string|null]}
 */
function runAndTag(wanted, shown) {
  const key = wanted ?? (shown ? runKey(shown) : null);
  if (key === null) return [null, null];
  const [run, tag] = key.split("\u0000");
  return [run, tag];
}

