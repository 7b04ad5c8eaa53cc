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
import { effects, initialState, reduce } from "./state.js";
import * as views from "./views.js";

const POLL_MS = 5000; // the iframe gets no reload calls, so it polls `runs`
const PLAY_MS = 250; // per step while playing

/**
 * Builds the tab inside the iframe's body and starts it.
 * @returns {Promise<void>}
 */
export async function render() {
  views.loadStylesheet(document, "./style.css");
  const shell = views.buildShell(document, document.body);
  await start(window, shell, new Client());
}

/**
 * @param {Window} win
 * @param {views.Shell} shell
 * @param {Client} client
 */
async function start(win, shell, client) {
  let state = initialState();
  const dirty = new Set();
  let raf = 0;
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

  shell.run.addEventListener("change", () => dispatch({ type: "selectRun", key: shell.run.value }));
  shell.compare.addEventListener("change", () => dispatch({ type: "compareRun", key: shell.compare.value }));
  shell.stat.addEventListener("change", () => dispatch({ type: "setStat", stat: shell.stat.value }));
  shell.log.addEventListener("change", () => dispatch({ type: "setLog", log: shell.log.checked }));
  shell.slider.addEventListener("input", () => dispatch({ type: "slide", index: Number(shell.slider.value) }));
  shell.play.addEventListener("click", () => dispatch({ type: "togglePlay" }));
  shell.png.addEventListener("click", () => {
    views.downloadCanvas(shell.bars, pngName(state)).catch((err) => dispatch({ type: "failed", message: errorText(err) }));
  });
  views.watchColorScheme(win, (dark) => dispatch({ type: "setDark", dark }));
  let lastWidth = 0;
  new win.ResizeObserver(() => {
    const w = shell.barWrap.clientWidth;
    if (w !== lastWidth) {
      lastWidth = w;
      mark(["bars", "heat"]);
    }
  }).observe(shell.root);
  win.setInterval(() => dispatch({ type: "tick" }), PLAY_MS);

  await loader.poll();
  win.setInterval(() => {
    if (!win.document.hidden) loader.poll();
  }, POLL_MS);
}
