// Fetches what the state asks for and hands the answers back as actions: the
// `runs` listing (polled; with the `triage` ranking while no run is shown), the
// shown runs' steps and alerts, their heatmaps and the shown step. Only the answer to the latest request of each kind is used;
// a failure comes back as an action carrying the text the tab shows. Which
// requests a transition needs is decided in state.js; no DOM here.

import { errorText } from "./api.js";
import { currentStep, needsRanking, nextStep, shownRuns } from "./state.js";

/** Step columns asked of the `heatmap` route (its `max_steps`). */
export const HEAT_COLUMNS = 1000;

/**
 * Hands out tokens so that only the answer to the latest request of a slot is
 * used: `const t = guard.next("flow"); ...; if (guard.isCurrent("flow", t)) use()`.
 */
export class StaleGuard {
  constructor() {
    /** @type {Map<string, number>} */
    this._latest = new Map();
  }

  /**
   * A token for a new request in `slot`; earlier tokens of that slot go stale.
   * @param {string} slot
   * @returns {number}
   */
  next(slot) {
    const t = (this._latest.get(slot) || 0) + 1;
    this._latest.set(slot, t);
    return t;
  }

  /**
   * Whether `token` is still the latest of `slot`.
   * @param {string} slot
   * @param {number} token
   * @returns {boolean}
   */
  isCurrent(slot, token) {
    return this._latest.get(slot) === token;
  }
}

/**
 * The loads of the tab, bound to a client and a store.
 * @typedef {{poll: () => Promise<void>, perform: (fx: import("./state.js").Effects) => Promise<void>}} Loader
 */

/**
 * Creates the loader. `dispatch` applies an action and returns the promise of
 * the loads that action started (which it hands to {@link Loader.perform}).
 * @param {import("./api.js").Client} client
 * @param {() => import("./state.js").State} getState
 * @param {(action: import("./state.js").Action) => Promise<void>} dispatch
 * @returns {Loader}
 */
export function createLoader(client, getState, dispatch) {
  const guard = new StaleGuard();
  const failed = (err) => dispatch({ type: "failed", message: errorText(err) });

  const loads = {
    /** The steps of the selected run and the alerts of both shown runs. */
    async runs() {
      const t = guard.next("runs");
      const { a, b } = getState();
      try {
        const [steps, alertsA, alertsB] = await Promise.all([
          client.steps(a), client.alerts(a), b ? client.alerts(b) : Promise.resolve([]),
        ]);
        if (!guard.isCurrent("runs", t)) return;
        await dispatch({ type: "stepsLoaded", steps, alerts: [alertsA, alertsB] });
      } catch (err) {
        if (guard.isCurrent("runs", t)) failed(err);
      }
    },

    /** The heatmaps of the shown runs for the chosen statistic. */
    async heat() {
      const t = guard.next("heat");
      const state = getState();
      try {
        const heats = await Promise.all(shownRuns(state).map((r) => client.heatmap(r, state.stat, HEAT_COLUMNS)));
        if (guard.isCurrent("heat", t)) dispatch({ type: "heatsLoaded", heats });
      } catch (err) {
        if (guard.isCurrent("heat", t)) failed(err);
      }
    },

    /** The selected step of the shown runs. */
    async flows() {
      const state = getState();
      const step = currentStep(state);
      if (step === undefined) return;
      const t = guard.next("flow");
      dispatch({ type: "flowRequested" });
      try {
        const flows = await Promise.all(shownRuns(state).map((r) => client.flow(r, step)));
        if (guard.isCurrent("flow", t)) dispatch({ type: "flowsLoaded", flows });
      } catch (err) {
        if (guard.isCurrent("flow", t)) dispatch({ type: "flowFailed", message: errorText(err) });
      }
    },

    /** Warms the cache with the step that playing shows next. */
    async next() {
      const state = getState();
      const step = nextStep(state);
      if (step !== undefined) client.flow(state.a, step).catch(() => {});
    },
  };

  return {
    async poll() {
      let runs;
      try {
        runs = await client.runs();
      } catch (err) {
        failed(err);
        return;
      }
      // Asked after `runs`, which has read the runs it lists: triage then
      // judges them from the plugin's cache. Any failure: the first run.
      const ranking = needsRanking(getState(), runs)
        ? await Promise.resolve().then(() => client.triage()).catch(() => null)
        : undefined;
      await dispatch({ type: "listed", runs, ranking });
    },

    async perform(fx) {
      for (const [run, tag] of fx.invalidate) client.invalidate(run, tag);
      await Promise.all(fx.load.map((name) => loads[name]()));
    },
  };
}
