// The Gradient Flow tab. TensorBoard loads this module in an iframe
// (`data/plugin_entry.html?name=gradflow`, `<base href="plugin/gradflow/">`) and
// calls `render()`. This file only wires things together: the state and its
// transitions are in state.js, requests in api.js and loader.js, drawing in
// paint.js. Every control dispatches an action; each action marks what it
// changed, and one requestAnimationFrame redraws it.

import { Client, errorText } from "./api.js";
import { createLoader } from "./loader.js";
import { createPainter } from "./paint.js";
import { pngName } from "./present.js";
import { effects, initialState, playTiming, reduce } from "./state.js";
import { hashWithView, viewFromHash, viewOf } from "./url.js";
import { downloadCanvas, loadStylesheet, watchColorScheme } from "./page.js";
import * as views from "./views.js";

const POLL_MS = 5000; // the iframe gets no reload calls, so it polls `runs`
const URL_WRITE_MS = 300; // the URL follows the view this long after it settles

/**
 * Builds the tab inside the iframe's body and starts it.
 * @returns {Promise<void>}
 */
export async function render() {
  loadStylesheet(document, "./style.css");
  const shell = views.buildShell(document, document.body);
  await start(window, shell, new Client());
}

/**
 * The window whose URL keeps the view: TensorBoard's page (the iframe's parent,
 * same origin), whose hash survives a reload and a switch to another tab; the
 * iframe itself when there is no readable parent (its URL is lost on reload).
 * @param {Window} win
 * @returns {Window}
 */
function urlWindow(win) {
  try {
    if (win.parent !== win && typeof win.parent.location.href === "string") return win.parent;
  } catch {
    // a cross-origin parent: keep the view in the iframe's own URL
  }
  return win;
}

/**
 * @param {Window} win
 * @param {views.Shell} shell
 * @param {Client} client
 */
async function start(win, shell, client) {
  const host = urlWindow(win);
  let state = initialState(viewFromHash(host.location.hash));
  const dirty = new Set();
  let raf = 0;
  let urlTimer = 0;
  const painter = createPainter(win, shell, () => state, dispatch);
  const loader = createLoader(client, () => state, dispatch);

  /**
   * Applies an action: the new state, one frame for what it changed, and the
   * loads it asks for.
   * @param {import("./state.js").Action} action
   * @returns {Promise<void>} settles when those loads have
   */
  function dispatch(action) {
    const before = state;
    state = reduce(before, action);
    const fx = effects(before, action, state);
    mark(fx.redraw);
    if (state !== before && !urlTimer) urlTimer = win.setTimeout(writeUrl, URL_WRITE_MS);
    return loader.perform(fx);
  }

  function mark(parts) {
    for (const p of parts) dirty.add(p);
    if (dirty.size && !raf) raf = win.requestAnimationFrame(frame);
  }

  function frame() {
    raf = 0;
    painter.draw(state, dirty);
    dirty.clear();
  }

  /**
   * Puts the view in TensorBoard's URL hash (`#gradflow&p.gradflow.run=...`),
   * replacing the history entry: not while playing (browsers throttle frequent
   * history changes), nor before the first listing (the URL's own view stays).
   */
  function writeUrl() {
    urlTimer = 0;
    if (!state.loaded || state.playing) return;
    const hash = hashWithView(host.location.hash, viewOf(state));
    if (hash === host.location.hash || (hash === "#" && !host.location.hash)) return;
    const url = new URL(host.location.href);
    url.hash = hash;
    host.history.replaceState(host.history.state, "", url.toString());
  }

  shell.run.addEventListener("change", () => dispatch({ type: "selectRun", key: shell.run.value }));
  shell.compare.addEventListener("change", () => dispatch({ type: "compareRun", key: shell.compare.value }));
  shell.stat.addEventListener("change", () => dispatch({ type: "setStat", stat: shell.stat.value }));
  shell.group.addEventListener("change", () => dispatch({ type: "setGroup", group: /** @type {any} */ (shell.group.value) }));
  shell.log.addEventListener("change", () => dispatch({ type: "setLog", log: shell.log.checked }));
  shell.slider.addEventListener("input", () => dispatch({ type: "slide", index: Number(shell.slider.value) }));
  shell.play.addEventListener("click", () => dispatch({ type: "togglePlay" }));
  shell.speed.addEventListener("change", () => dispatch({ type: "setSpeed", speed: Number(shell.speed.value) }));
  shell.png.addEventListener("click", () => {
    const canvas = painter.exportCanvas(state);
    if (!canvas) return;
    downloadCanvas(canvas, pngName(state)).catch((err) => dispatch({ type: "failed", message: errorText(err) }));
  });
  watchColorScheme(win, (dark) => dispatch({ type: "setDark", dark }));
  let lastWidth = 0;
  new win.ResizeObserver(() => {
    const w = shell.barWrap.clientWidth;
    if (w !== lastWidth) {
      lastWidth = w;
      mark(["bars", "heat", "lines"]);
    }
  }).observe(shell.root);
  const tick = () => {
    dispatch({ type: "tick" });
    win.setTimeout(tick, playTiming(state.speed).ms);
  };
  win.setTimeout(tick, playTiming(state.speed).ms);

  await loader.poll();
  win.setInterval(() => {
    if (!win.document.hidden) loader.poll();
  }, POLL_MS);
}
