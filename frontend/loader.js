// Fetches what the state asks for and hands the answers back as actions: the
// `runs` listing (polled; with the `triage` ranking while no run is shown), the
// shown runs' steps and alerts, their heatmaps and lines, and the shown step. Only the
// answer to the latest request of each kind is used; a failure comes back as an
// action carrying the text the tab shows (a shown run whose routes answer 404
// cannot be shown: `runFailed`, `compareFailed`). Which requests a transition
// needs is decided in state.js; no DOM here.

import { HttpError, errorText, reasonText } from "./api.js";
import { notLoggedHeatmap, notLoggedLines } from "./binary.js";
import { expandRows } from "./grouping.js";
import { runKey } from "./model.js";
import { currentStep, flowGroup, needsRanking, nextStep, shownRuns } from "./state.js";

/**
 * Whether a failed request says the run cannot be shown (404: unknown, or
 * data the plugin cannot read), rather than that the server is unreachable.
 * @param {unknown} err
 * @returns {boolean}
 */
function isMissing(err) {
  return err instanceof HttpError && err.status === 404;
}

/** Step columns asked of the `heatmap` and `lines` routes (their `max_steps`). */
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

  /**
   * Loads one binned answer per shown run for the chosen statistic and hands
   * them back as `action(answers)`; a run the `runs` answer does not list the
   * statistic for gets `notLogged(run, stat)` without a request.
   * @param {string} slot the stale guard's slot
   * @param {(r: import("./model.js").RunInfo, stat: string) => Promise<any>} fetchOne
   * @param {(r: import("./model.js").RunInfo, stat: string) => any} notLogged
   * @param {(answers: any[]) => import("./state.js").Action} action
   */
  async function binned(slot, fetchOne, notLogged, action) {
    const t = guard.next(slot);
    const state = getState();
    if (!state.steps.length) return; // nothing shown (a run that cannot be)
    const lacks = (r) => r.stats && r.stats.length > 0 && !r.stats.some((s) => s.name === state.stat);
    try {
      const answers = await Promise.all(
        shownRuns(state).map((r) => (lacks(r) ? notLogged(r, state.stat) : fetchOne(r, state.stat))),
      );
      if (guard.isCurrent(slot, t)) dispatch(action(answers));
    } catch (err) {
      if (guard.isCurrent(slot, t)) failed(err);
    }
  }

  const loads = {
    /**
     * The steps and alerts of both shown runs. A run whose routes answer 404
     * cannot be shown: the selected one is shown as such, with the server's
     * reason; a compared one is dropped, with the reason in the status line.
     */
    async runs() {
      const t = guard.next("runs");
      const { a, b } = getState();
      const both = (r) => Promise.all([client.steps(r), client.alerts(r)]);
      const [ra, rb] = await Promise.allSettled([both(a), b ? both(b) : Promise.resolve(null)]);
      if (!guard.isCurrent("runs", t)) return;
      if (ra.status === "rejected") {
        if (isMissing(ra.reason)) await dispatch({ type: "runFailed", key: runKey(a), message: reasonText(ra.reason) });
        else failed(ra.reason);
        return;
      }
      if (rb.status === "rejected") {
        if (!isMissing(rb.reason)) {
          failed(rb.reason);
          return;
        }
        await dispatch({ type: "compareFailed", key: runKey(b), message: errorText(rb.reason) });
      }
      const [stepsA, alertsA] = ra.value;
      const [stepsB, alertsB] = rb.status === "fulfilled" && rb.value ? rb.value : [null, []];
      await dispatch({ type: "stepsLoaded", steps: stepsA.steps, alerts: [alertsA, alertsB], kept: [stepsA, stepsB] });
    },

    /**
     * The heatmaps of the shown runs for the chosen statistic, per layer or
     * grouped as the bar plot ({@link flowGroup}; the expanded groups' member
     * layers under their rows, from the per-layer heatmap); a run the
     * `runs` answer does not list it for gets one that says "not logged"
     * without a request (the route would refuse a name the run lacks).
     */
    async heat() {
      const { expanded } = getState();
      const group = flowGroup(getState());
      const fetchOne = async (r, stat) => {
        const heat = await client.heatmap(r, stat, HEAT_COLUMNS, group);
        if (group === "layer" || !expanded.length) return heat;
        return expandRows(heat, await client.heatmap(r, stat, HEAT_COLUMNS), expanded);
      };
      await binned("heat", fetchOne, notLoggedHeatmap, (heats) => ({ type: "heatsLoaded", heats }));
    },

    /** The lines of the shown runs for the chosen statistic and grouping, as {@link heat}. */
    async lines() {
      const group = flowGroup(getState());
      await binned("lines", (r, stat) => client.lines(r, stat, HEAT_COLUMNS, group), notLoggedLines, (lines) => ({
        type: "linesLoaded", lines,
      }));
    },

    /** The selected step of the shown runs, per layer or grouped ({@link flowGroup}). */
    async flows() {
      const state = getState();
      const step = currentStep(state);
      if (step === undefined) return;
      const t = guard.next("flow");
      dispatch({ type: "flowRequested" });
      try {
        const flows = await Promise.all(shownRuns(state).map((r) => client.flow(r, step, flowGroup(state))));
        if (guard.isCurrent("flow", t)) dispatch({ type: "flowsLoaded", flows });
      } catch (err) {
        if (guard.isCurrent("flow", t)) dispatch({ type: "flowFailed", message: errorText(err) });
      }
    },

    /** Warms the cache with the step that playing shows next. */
    async next() {
      const state = getState();
      const step = nextStep(state);
      if (step !== undefined) client.flow(state.a, step, flowGroup(state)).catch(() => {});
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
      // Any failure of the ranking: the first run is shown.
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
