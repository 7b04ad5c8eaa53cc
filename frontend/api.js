// The plugin's HTTP routes (docs/format.md, HTTP API) as seen from the tab:
// relative URLs built with URLSearchParams (so `--path_prefix` and
// `/experiment/<id>/` keep working), JSON and binary answers, a per-URL cache,
// and errors as one line of text for the tab's status line. No DOM here.

import { decodeHeatmap, decodeLines } from "./binary.js";
import { reviveGroups } from "./grouping.js";
import { reviveAlert, reviveFlow, reviveStats, reviveSteps, runKey, toNumber } from "./model.js";

/** An HTTP error with the server's one-line message. */
export class HttpError extends Error {
  /**
   * @param {number} status
   * @param {string} message the URL, the status and the server's text
   * @param {string} [detail] the server's text alone
   */
  constructor(status, message, detail = "") {
    super(message);
    this.name = "HttpError";
    this.status = status;
    this.detail = detail;
  }
}

/**
 * Fetches the plugin's routes relative to the page's base URL and caches the
 * answers per URL (a run's entries are dropped by {@link Client#invalidate} when
 * it receives new data). Concurrent requests for the same URL share one fetch.
 */
export class Client {
  /**
   * @param {{fetch?: typeof fetch, maxEntries?: number}} [options]
   *   `fetch`: the fetch function (tests pass a fake); `maxEntries`: cache size.
   */
  constructor(options = {}) {
    this._fetch = options.fetch || ((...args) => globalThis.fetch(...args));
    this._max = options.maxEntries || 400;
    /** @type {Map<string, {run: (string|null), promise: Promise<any>}>} */
    this._cache = new Map();
  }

  /**
   * The URL of a route with its query, relative to the document base.
   * @param {string} route
   * @param {Object<string, string|number|null|undefined>} [params]
   * @returns {string}
   */
  static url(route, params = {}) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined) q.set(k, String(v));
    const s = q.toString();
    return `./${route}${s ? "?" + s : ""}`;
  }

  /**
   * @param {string} url
   * @param {"json"|"arrayBuffer"} kind
   * @returns {Promise<any>}
   */
  async _get(url, kind) {
    const res = await this._fetch(url, { headers: { Accept: kind === "json" ? "application/json" : "*/*" } });
    if (!res.ok) {
      let text = "";
      try {
        text = (await res.text()).trim();
      } catch {
        // keep the status line alone
      }
      throw new HttpError(res.status, `${url}: ${res.status} ${text}`.trim(), text);
    }
    return kind === "json" ? res.json() : res.arrayBuffer();
  }

  /**
   * @param {string} url
   * @param {string|null} runKeyOrNull the run the answer belongs to (for invalidation)
   * @param {() => Promise<any>} load
   * @returns {Promise<any>}
   */
  _cached(url, runKeyOrNull, load) {
    const hit = this._cache.get(url);
    if (hit) {
      this._cache.delete(url); // re-insert: most recently used last
      this._cache.set(url, hit);
      return hit.promise;
    }
    const promise = load();
    const entry = { run: runKeyOrNull, promise };
    this._cache.set(url, entry);
    promise.catch(() => {
      if (this._cache.get(url) === entry) this._cache.delete(url);
    });
    while (this._cache.size > this._max) this._cache.delete(this._cache.keys().next().value);
    return promise;
  }

  /**
   * Drops every cached answer of one run (all its tags when `tag` is omitted).
   * @param {string} run
   * @param {string} [tag]
   */
  invalidate(run, tag) {
    for (const [url, entry] of this._cache) {
      if (entry.run === null) continue;
      const [r, t] = entry.run.split("\u0000");
      if (r === run && (tag === undefined || t === tag)) this._cache.delete(url);
    }
  }

  /**
   * The runs with gradflow data, each with its statistics as
   * {@link import("./model.js").StatInfo}; never cached (polling reads it).
   * @returns {Promise<RunInfo[]>}
   */
  async runs() {
    const json = await this._get(Client.url("runs"), "json");
    return (json.runs || []).map((r) => ({
      run: String(r.run),
      tag: String(r.tag),
      name: r.name === null || r.name === undefined ? null : String(r.name),
      layers: toNumber(r.layers),
      last_step: toNumber(r.last_step),
      every: toNumber(r.every),
      last_wall_time: toNumber(r.last_wall_time),
      stats: reviveStats(r.stats, r.not_logged, json.stats),
      groups: reviveGroups(r.groups),
    }));
  }

  /**
   * Every watcher of every run, most severe finding first, then the most
   * recently written (`triage` route); never cached.
   * @returns {Promise<{run: string, tag: string, worst: (string|null)}[]>}
   */
  async triage() {
    const json = await this._get(Client.url("triage"), "json");
    return (json.runs || []).map((r) => ({
      run: String(r.run),
      tag: String(r.tag),
      worst: r.worst === null || r.worst === undefined ? null : String(r.worst),
    }));
  }

  /**
   * The kept steps of a run, ascending, how many were logged, and the records
   * left out.
   * @param {{run: string, tag: string}} r
   * @returns {Promise<StepsInfo>}
   */
  steps(r) {
    const url = Client.url("steps", { run: r.run, tag: r.tag });
    return this._cached(url, runKey(r), async () => reviveSteps(await this._get(url, "json")));
  }

  /**
   * One step of a run (the nearest logged step to `step`; the latest if null),
   * per layer, or per block or role (`group`; "layer" is left out of the URL).
   * @param {{run: string, tag: string}} r
   * @param {number|null} step
   * @param {"layer"|"block"|"role"} [group]
   * @returns {Promise<Flow>}
   */
  flow(r, step, group = "layer") {
    const url = Client.url("flow", { run: r.run, tag: r.tag, step, group: group === "layer" ? null : group });
    return this._cached(url, runKey(r), async () => reviveFlow(await this._get(url, "json")));
  }

  /**
   * The layers-by-steps matrix of one statistic (binary body), a row per
   * layer, or per block or role (`group`; "layer" is left out of the URL).
   * @param {{run: string, tag: string}} r
   * @param {string} stat
   * @param {number} maxSteps
   * @param {"layer"|"block"|"role"} [group]
   * @returns {Promise<Heatmap>}
   */
  heatmap(r, stat, maxSteps, group = "layer") {
    const url = Client.url("heatmap", binnedParams(r, stat, maxSteps, group));
    return this._cached(url, runKey(r), async () => decodeHeatmap(await this._get(url, "arrayBuffer")));
  }

  /**
   * Each layer's (or group's, as {@link Client#heatmap}) smallest and largest
   * value of one statistic per bin of steps (binary body), for the lines view.
   * @param {{run: string, tag: string}} r
   * @param {string} stat
   * @param {number} maxSteps
   * @param {"layer"|"block"|"role"} [group]
   * @returns {Promise<import("./binary.js").Lines>}
   */
  lines(r, stat, maxSteps, group = "layer") {
    const url = Client.url("lines", binnedParams(r, stat, maxSteps, group));
    return this._cached(url, runKey(r), async () => decodeLines(await this._get(url, "arrayBuffer")));
  }

  /**
   * The findings of a run, ordered by first step.
   * @param {{run: string, tag: string}} r
   * @returns {Promise<Alert[]>}
   */
  alerts(r) {
    const url = Client.url("alerts", { run: r.run, tag: r.tag });
    return this._cached(url, runKey(r), async () => ((await this._get(url, "json")).alerts || []).map(reviveAlert));
  }
}

/**
 * The query of a binned route (`heatmap`, `lines`), binary; `group` only
 * when it groups layers.
 * @param {{run: string, tag: string}} r
 * @param {string} stat
 * @param {number} maxSteps
 * @param {"layer"|"block"|"role"} group
 * @returns {Object<string, string|number|null>}
 */
function binnedParams(r, stat, maxSteps, group) {
  return { run: r.run, tag: r.tag, stat, max_steps: maxSteps, format: "binary", group: group === "layer" ? null : group };
}

/**
 * The text the tab shows for a failed request: the URL, status and server's
 * message for an HTTP error, else the error as a string.
 * @param {unknown} err
 * @returns {string}
 */
export function errorText(err) {
  return err instanceof HttpError ? err.message : String(err);
}

/**
 * Why a run cannot be shown: the server's own message for an HTTP error (its
 * 404 says why), else {@link errorText}.
 * @param {unknown} err
 * @returns {string}
 */
export function reasonText(err) {
  return err instanceof HttpError && err.detail ? err.detail : errorText(err);
}
