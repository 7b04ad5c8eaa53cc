// DOM of the Gradient Flow tab: its shell, menus, lists, legend and tooltip (the
// page around it, dark mode and downloads: page.js). Every name (runs, layers,
// messages) goes in with `textContent` or as an attribute value, never as HTML.

import { alertHolds, alertSpan, layerLabel } from "./model.js";
import { formatValue } from "./scale.js";

/**
 * Creates an element with a class and optional text.
 * @param {Document} doc
 * @param {string} tag
 * @param {string} [className]
 * @param {string} [text]
 * @returns {HTMLElement}
 */
export function el(doc, tag, className, text) {
  const e = doc.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

/**
 * The elements the tab updates, as built by {@link buildShell}.
 * @typedef {{root: HTMLElement, run: HTMLSelectElement, compare: HTMLSelectElement,
 *   stat: HTMLSelectElement, group: HTMLSelectElement, log: HTMLInputElement, png: HTMLButtonElement,
 *   status: HTMLElement, kept: HTMLElement, leftOut: HTMLElement, play: HTMLButtonElement,
 *   speed: HTMLSelectElement, slider: HTMLInputElement, stepLabel: HTMLOutputElement, legend: HTMLElement,
 *   barHeading: HTMLElement, barWrap: HTMLElement, bars: HTMLCanvasElement, barTable: HTMLTableElement,
 *   linesWrap: HTMLElement, heatWrap: HTMLElement, alerts: HTMLElement, empty: HTMLElement,
 *   main: HTMLElement, tooltip: HTMLElement}} Shell
 */

/**
 * Builds the tab's static DOM inside `parent`.
 * @param {Document} doc
 * @param {HTMLElement} parent
 * @returns {Shell}
 */
export function buildShell(doc, parent) {
  const root = el(doc, "div", "gf");
  const bar = el(doc, "header", "gf-toolbar");
  const field = (label, control) => {
    const l = el(doc, "label", "gf-field");
    l.appendChild(el(doc, "span", "gf-field-label", label));
    l.appendChild(control);
    bar.appendChild(l);
    return control;
  };
  const run = field("Run", /** @type {HTMLSelectElement} */ (el(doc, "select")));
  run.dataset.testid = "run";
  const compare = field("Compare with", /** @type {HTMLSelectElement} */ (el(doc, "select")));
  compare.dataset.testid = "compare";
  const stat = field("Statistic", /** @type {HTMLSelectElement} */ (el(doc, "select")));
  stat.dataset.testid = "stat";
  const group = field("Layers", /** @type {HTMLSelectElement} */ (el(doc, "select")));
  group.dataset.testid = "group";
  group.title = "What a bar of the bar plot is: a layer, or a block or role of layers";
  group.parentElement.hidden = true;
  const logLabel = el(doc, "label", "gf-check");
  const log = /** @type {HTMLInputElement} */ (el(doc, "input"));
  log.type = "checkbox";
  log.checked = true;
  log.dataset.testid = "log";
  logLabel.appendChild(log);
  logLabel.appendChild(el(doc, "span", "", "log scale"));
  bar.appendChild(logLabel);
  const png = /** @type {HTMLButtonElement} */ (el(doc, "button", "gf-button", "Download PNG"));
  png.type = "button";
  png.title = "Save the bar plot as a PNG image";
  png.dataset.testid = "png";
  bar.appendChild(png);
  const status = el(doc, "span", "gf-status");
  status.setAttribute("role", "status");
  status.setAttribute("aria-live", "polite");
  bar.appendChild(status);
  root.appendChild(bar);

  const empty = el(doc, "div", "gf-empty");
  empty.dataset.testid = "empty";
  empty.hidden = true;
  root.appendChild(empty);

  const main = el(doc, "div", "gf-main");
  const kept = el(doc, "div", "gf-kept");
  kept.dataset.testid = "kept";
  main.appendChild(kept);
  const leftOut = el(doc, "div", "gf-left-out");
  leftOut.dataset.testid = "left-out";
  main.appendChild(leftOut);

  const stepRow = el(doc, "div", "gf-steps");
  const play = /** @type {HTMLButtonElement} */ (el(doc, "button", "gf-button gf-play", "\u25b6 Play"));
  play.type = "button";
  play.dataset.testid = "play";
  play.setAttribute("aria-pressed", "false");
  const speed = /** @type {HTMLSelectElement} */ (el(doc, "select", "gf-speed"));
  speed.title = "Play speed (logged steps per second; a slow server plays slower)";
  speed.setAttribute("aria-label", "Play speed");
  speed.dataset.testid = "speed";
  const slider = /** @type {HTMLInputElement} */ (el(doc, "input", "gf-slider"));
  slider.type = "range";
  slider.min = "0";
  slider.max = "0";
  slider.step = "1";
  slider.value = "0";
  slider.setAttribute("aria-label", "Logged step");
  slider.dataset.testid = "slider";
  const stepLabel = /** @type {HTMLOutputElement} */ (el(doc, "output", "gf-step"));
  stepLabel.dataset.testid = "step";
  stepRow.append(play, speed, slider, stepLabel);
  main.appendChild(stepRow);

  const barSection = el(doc, "section", "gf-card gf-bars");
  const barHeading = el(doc, "h2", "", "Gradient per layer");
  barHeading.dataset.testid = "bar-heading";
  barSection.appendChild(barHeading);
  const legend = el(doc, "div", "gf-legend");
  barSection.appendChild(legend);
  const barWrap = el(doc, "div", "gf-canvas-wrap");
  const bars = /** @type {HTMLCanvasElement} */ (el(doc, "canvas", "gf-canvas"));
  bars.setAttribute("role", "img");
  bars.dataset.testid = "bars";
  barWrap.appendChild(bars);
  barSection.appendChild(barWrap);
  const barTable = /** @type {HTMLTableElement} */ (el(doc, "table", "gf-sr-only"));
  barTable.dataset.testid = "bar-table";
  barSection.appendChild(barTable);
  main.appendChild(barSection);

  const linesSection = el(doc, "section", "gf-card gf-lines");
  linesSection.appendChild(el(doc, "h2", "", "Over the logged steps"));
  linesSection.appendChild(
    el(
      doc,
      "p",
      "gf-hint",
      "One line per layer, block or role, as the Layers menu says. Hover a line to highlight and name it; click to show that step above.",
    ),
  );
  const linesWrap = el(doc, "div", "gf-lines-wrap");
  linesSection.appendChild(linesWrap);
  main.appendChild(linesSection);

  const lower = el(doc, "div", "gf-lower");
  const heatSection = el(doc, "section", "gf-card gf-heat");
  heatSection.appendChild(el(doc, "h2", "", "Layers \u00d7 steps"));
  heatSection.appendChild(
    el(doc, "p", "gf-hint", "Log colour scale. Hover a cell for its value; click it to show that step above."),
  );
  const heatWrap = el(doc, "div", "gf-heatmaps");
  heatSection.appendChild(heatWrap);
  lower.appendChild(heatSection);
  const alertSection = el(doc, "section", "gf-card gf-alerts");
  alertSection.appendChild(el(doc, "h2", "", "Alerts"));
  const alerts = el(doc, "div", "gf-alert-list");
  alerts.dataset.testid = "alerts";
  alertSection.appendChild(alerts);
  lower.appendChild(alertSection);
  main.appendChild(lower);
  root.appendChild(main);

  const tooltip = el(doc, "div", "gf-tooltip");
  tooltip.hidden = true;
  tooltip.setAttribute("role", "tooltip");
  root.appendChild(tooltip);
  parent.appendChild(root);
  return {
    root, run, compare, stat, group, log, png, status, kept, leftOut, play, speed, slider, stepLabel, legend,
    barHeading, barWrap, bars, barTable, linesWrap, heatWrap, alerts, empty, main, tooltip,
  };
}

/**
 * Replaces a select's options (text only; `title`: an option's tooltip,
 * `disabled`: not selectable by the user), keeping `selected` when present
 * (a disabled option too: the URL may ask for it).
 * @param {HTMLSelectElement} select
 * @param {{value: string, label: string, title?: string, disabled?: boolean}[]} options
 * @param {string} selected
 */
export function setOptions(select, options, selected) {
  const doc = select.ownerDocument;
  const same =
    select.options.length === options.length &&
    options.every((o, i) => {
      const opt = select.options[i];
      return opt.value === o.value && opt.textContent === o.label && opt.title === (o.title || "") &&
        opt.disabled === Boolean(o.disabled);
    });
  if (!same) {
    select.replaceChildren(
      ...options.map((o) => {
        const opt = doc.createElement("option");
        opt.value = o.value;
        opt.textContent = o.label;
        if (o.title) opt.title = o.title;
        opt.disabled = Boolean(o.disabled);
        return opt;
      }),
    );
  }
  if (options.some((o) => o.value === selected)) select.value = selected;
}

/**
 * Shows the empty state (no runs yet) or the charts.
 * @param {Shell} shell
 * @param {string|null} message null to show the charts
 * @param {{text: string, code?: boolean}[]} [hint] the line under the message:
 *   text, and code where `code` is set
 */
export function showEmpty(shell, message, hint = []) {
  shell.empty.hidden = message === null;
  shell.main.hidden = message !== null;
  shell.empty.replaceChildren();
  if (message === null) return;
  const doc = shell.root.ownerDocument;
  shell.empty.appendChild(el(doc, "p", "gf-empty-title", message));
  const p = el(doc, "p", "gf-empty-hint");
  for (const part of hint) p.appendChild(part.code ? el(doc, "code", "", part.text) : doc.createTextNode(part.text));
  shell.empty.appendChild(p);
}

/**
 * Sets the status line (errors and refresh notes).
 * @param {Shell} shell
 * @param {string} text
 * @param {boolean} [isError]
 */
export function setStatus(shell, text, isError = false) {
  shell.status.textContent = text;
  shell.status.classList.toggle("gf-error", isError);
}

/**
 * Fills the lines about records left out under the kept-steps line: per run, a
 * `<details>` whose summary counts and names the steps left out (its reasons
 * in the summary's tooltip and in the opened details), then the reasons of
 * entries without a step, each a line of its own.
 * @param {HTMLElement} node
 * @param {{run: string, series: number, summary: string, reasons: string[],
 *   notes: string[]}[]} groups
 */
export function renderLeftOut(node, groups) {
  const doc = node.ownerDocument;
  const children = [];
  for (const g of groups) {
    if (g.summary) {
      const details = /** @type {HTMLDetailsElement} */ (el(doc, "details", "gf-warn"));
      details.dataset.run = g.run;
      const summary = el(doc, "summary", "", g.summary);
      summary.title = g.reasons.join("\n");
      const ul = el(doc, "ul");
      for (const r of g.reasons) ul.appendChild(el(doc, "li", "", r));
      details.append(summary, ul);
      children.push(details);
    }
    for (const n of g.notes) {
      const p = el(doc, "p", "gf-warn gf-left-out-note", n);
      p.dataset.run = g.run;
      children.push(p);
    }
  }
  // keep an opened <details> open while the same lines are shown
  const same =
    node.children.length === children.length &&
    children.every((c, i) => node.children[i].textContent === c.textContent);
  if (!same) node.replaceChildren(...children);
  node.hidden = children.length === 0;
}

/**
 * One legend entry.
 * @typedef {{kind: "bar"|"back"|"zero"|"no_grad"|"missing"|"nonfinite"|"reference"|"blocked", label: string,
 *   color: string}} LegendItem
 */

/**
 * Fills the bar plot's legend.
 * @param {HTMLElement} node
 * @param {LegendItem[]} items
 */
export function renderLegend(node, items) {
  const doc = node.ownerDocument;
  node.replaceChildren(
    ...items.map((it) => {
      const item = el(doc, "span", "gf-legend-item");
      const sw = el(doc, "span", `gf-swatch gf-swatch-${it.kind}`);
      sw.style.setProperty("--swatch", it.color);
      item.append(sw, el(doc, "span", "", it.label));
      return item;
    }),
  );
}

/**
 * Fills the (visually hidden) table that lists what the bar plot draws: one
 * row per layer with its name and module type (`data-layer`: the name), its
 * value(s), status and blocked flag. Screen readers read it; tests read it.
 * @param {HTMLTableElement} table
 * @param {{layers: string[], labels?: string[], series: {label: string, values: number[],
 *   status: string[], blocked: boolean[]}[]}} data
 * @param {{step: number, run: string, heading?: string, unit?: string}} info
 *   `heading`: what the bars are ("Gradient per block"), `unit`: what a row is
 */
export function renderBarTable(table, data, info) {
  const doc = table.ownerDocument;
  table.dataset.step = String(info.step);
  table.dataset.run = info.run;
  const heading = info.heading || "Gradient per layer";
  const caption = el(doc, "caption", "", `${heading}, ${info.run}, step ${info.step}`);
  const head = el(doc, "tr");
  head.appendChild(el(doc, "th", "", info.unit || "layer"));
  for (const s of data.series) head.appendChild(el(doc, "th", "", s.label));
  head.appendChild(el(doc, "th", "", "status"));
  const rows = data.layers.map((name, i) => {
    const tr = el(doc, "tr");
    tr.dataset.layerIndex = String(i);
    tr.dataset.layer = name;
    const statuses = data.series.map((s) => s.status[i]);
    const blocked = data.series.some((s) => s.blocked[i]);
    tr.dataset.status = statuses.join(" ");
    tr.dataset.blocked = String(blocked);
    const th = el(doc, "th", "gf-layer-name", data.labels ? data.labels[i] : name);
    th.scope = "row";
    tr.appendChild(th);
    for (const s of data.series) {
      tr.appendChild(el(doc, "td", "", s.status[i] === "not_logged" ? "not logged" : formatValue(s.values[i])));
    }
    tr.appendChild(el(doc, "td", "", statuses.join(", ") + (blocked ? ", blocked" : "")));
    return tr;
  });
  table.replaceChildren(caption, head, ...rows);
}

/** How each finding kind reads in the list. */
export const KIND_LABELS = {
  blocked: "blocked",
  no_gradient: "no gradient",
  all_zero: "all zero",
  nonfinite: "non-finite",
  nonfinite_origin: "where NaN/Inf began",
  exploding: "exploding",
  spike: "spike",
  skipped: "skipped step",
  update_too_large: "update too large",
  not_updating: "not updating",
};

/**
 * A group of alerts of one run; `types`: module types by layer name, for the
 * labels (names not in it are shown alone).
 * @typedef {{run: string, series: number, alerts: import("./model.js").Alert[],
 *   types?: Map<string, string>}} AlertGroup
 */

/**
 * Fills the alerts list; clicking an alert calls `onSelect(alert, group)`.
 * @param {HTMLElement} node
 * @param {AlertGroup[]} groups
 * @param {(alert: import("./model.js").Alert, group: AlertGroup) => void} onSelect
 * @param {{layer: (string|null), step: number, barOf?: (layer: (string|null)) => (string|null)}} current
 *   to mark the active alert: its layer's, holding at the step (an ongoing one
 *   at every later step); `barOf`: the bar (group) a layer is drawn in, when
 *   the bar plot groups layers
 */
export function renderAlerts(node, groups, onSelect, current) {
  const doc = node.ownerDocument;
  const children = [];
  for (const g of groups) {
    if (groups.length > 1) children.push(el(doc, "h3", `gf-alert-run gf-series-${g.series}`, g.run));
    if (!g.alerts.length) {
      children.push(el(doc, "p", "gf-none", "No findings: the gradient reaches every watched layer."));
      continue;
    }
    const ul = el(doc, "ul");
    for (const a of g.alerts) {
      const li = el(doc, "li");
      const btn = /** @type {HTMLButtonElement} */ (el(doc, "button", `gf-alert gf-kind-${a.kind}`));
      btn.type = "button";
      btn.dataset.kind = a.kind;
      btn.dataset.layer = a.layer === null ? "" : a.layer;
      btn.dataset.firstStep = String(a.first_step);
      btn.dataset.ongoing = String(a.ongoing);
      const bar = current.barOf ? current.barOf(a.layer) : a.layer;
      const active = current.layer === bar && alertHolds(a, current.step);
      btn.classList.toggle("gf-active", active);
      btn.append(el(doc, "span", "gf-kind", KIND_LABELS[a.kind] || a.kind));
      const layer = a.layer === null ? "(whole model)" : layerLabel(a.layer, g.types && g.types.get(a.layer));
      btn.append(el(doc, "span", "gf-alert-layer", layer));
      btn.append(el(doc, "span", "gf-alert-steps", `${alertSpan(a)} (${a.steps} logged)`));
      if (a.message) btn.append(el(doc, "span", "gf-alert-msg", a.message));
      btn.addEventListener("click", () => onSelect(a, g));
      li.appendChild(btn);
      ul.appendChild(li);
    }
    children.push(ul);
  }
  node.replaceChildren(...children);
}

/**
 * Shows the tooltip with one text line per entry near (x, y) in page px.
 * @param {HTMLElement} tip
 * @param {string[]} lines
 * @param {number} x
 * @param {number} y
 */
export function showTooltip(tip, lines, x, y) {
  const doc = tip.ownerDocument;
  tip.replaceChildren(...lines.map((t, i) => el(doc, "div", i === 0 ? "gf-tip-title" : "", t)));
  tip.hidden = false;
  const win = doc.defaultView;
  const w = tip.offsetWidth;
  const h = tip.offsetHeight;
  const maxX = win.scrollX + win.innerWidth - w - 8;
  const left = Math.min(x + 14, maxX);
  const top = y + 16 + h > win.scrollY + win.innerHeight ? y - h - 10 : y + 16;
  tip.style.left = `${Math.max(4, left)}px`;
  tip.style.top = `${Math.max(4, top)}px`;
}

/**
 * Hides the tooltip.
 * @param {HTMLElement} tip
 */
export function hideTooltip(tip) {
  tip.hidden = true;
}
