// Shared test data: answers of the plugin's routes as the server sends them,
// a fake fetch that serves them, and `runs` entries. Not a test file itself.

/** A `flow` answer: non-finite values as TensorBoard's strings. */
export const FLOW = {
  run: "unnormalised_inputs", tag: "gradflow", step: 120,
  layers: ["lstm1.weight_ih_l0", "lstm1.weight_hh_l0", "head"],
  sparse: [false, false, false],
  stats: { abs_mean: [3.1e-10, "NaN", 0.00038], abs_max: [1e-9, "NaN", "Infinity"], nonfinite: [0, "NaN", 2] },
  types: ["LSTM", "LSTM", "Linear"],
  no_grad: [false, true, false], skipped: false, loss_scale: "NaN",
  alerts: [{ kind: "blocked", layer: "lstm1.weight_ih_l0", first_step: 80, last_step: 299, steps: 213, message: "m", ongoing: true }],
  left_out: [{ step: 135, reason: "abs_mean is negative (layer 'head')" }],
};

/** A `heatmap` header (the binary form's JSON part). */
export const HEAD = {
  run: "healthy", tag: "gradflow", stat: "abs_mean", layers: ["a", "bb"],
  steps: [0, 150, 299], first_steps: [0, 150, 299], last_steps: [149, 298, 299], downsampled: true,
};

/**
 * A fetch that answers `./ROUTE?...` with `routes[ROUTE]` (a function of the URL,
 * or a body: JSON or an ArrayBuffer) and 404 for other routes; `fetch.calls`
 * lists the URLs.
 * @param {Object<string, any>} routes
 */
export function fakeFetch(routes) {
  const calls = [];
  const fn = async (url) => {
    calls.push(url);
    const route = url.slice(2).split("?")[0];
    const body = routes[route];
    if (body === undefined) return { ok: false, status: 404, text: async () => "Not found: no run" };
    return {
      ok: true, status: 200,
      json: async () => (typeof body === "function" ? body(url) : body),
      arrayBuffer: async () => (typeof body === "function" ? body(url) : body),
    };
  };
  fn.calls = calls;
  return fn;
}

/** The `stats` of a `runs` entry for files of this version (every built-in statistic logged). */
export const STATS = [
  { name: "abs_mean", meaning: "mean of |g| over all elements", unit: "value", bad: "low", logged: true },
  { name: "abs_max", meaning: "largest |g|", unit: "value", bad: "high", logged: true },
  { name: "norm", meaning: "L2 norm of the gradient", unit: "value", bad: "high", logged: true },
  { name: "nonfinite", meaning: "number of NaN/Inf elements", unit: "count", bad: "high", logged: true },
  { name: "rows", meaning: "fraction of rows that received a gradient", unit: "fraction", bad: "none", logged: true },
];

/**
 * One `runs` entry (as Client.runs returns it) of an unnamed watcher whose
 * kept steps are 0..steps-1 (its last step and wall time grow with `steps`),
 * with the built-in statistics ({@link STATS}).
 * @param {string} run
 * @param {number} [steps]
 * @param {Object} [extra]
 */
export function runInfo(run, steps = 100, extra = {}) {
  return {
    run, tag: "gradflow", name: null, layers: 5, last_step: steps - 1, every: 1, last_wall_time: 1000 + steps,
    stats: STATS, ...extra,
  };
}

/**
 * A `steps` answer (as Client.steps returns it): kept steps 0..steps-1.
 * @param {string} run
 * @param {number} [steps]
 * @param {Object} [extra]
 */
export function stepsInfo(run, steps = 100, extra = {}) {
  return {
    run, tag: "gradflow", steps: Array.from({ length: steps }, (_, i) => i), first_step: 0, last_step: steps - 1,
    every: 1, expected_steps: steps, left_out: [], ...extra,
  };
}

/**
 * The `runs` answer as the server sends it for `runs` (Client.runs entries):
 * each watcher's statistic names and `not_logged`, described once at the top.
 * @param {Object[]} runs
 */
export function runsAnswer(runs) {
  const stats = {};
  const entries = runs.map((r) => {
    for (const s of r.stats || []) stats[s.name] = s.meaning === null ? null : { meaning: s.meaning, unit: s.unit, bad: s.bad };
    const names = (r.stats || []).map((s) => s.name);
    return { ...r, stats: names, not_logged: (r.stats || []).filter((s) => !s.logged).map((s) => s.name) };
  });
  return { runs: entries, stats };
}
