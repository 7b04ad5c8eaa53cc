// The colours of the Gradient Flow tab's canvases, light and dark (the page's own
// colours are in style.css; keep the two in step). Pure: `node --test` imports it.

/**
 * Colours of one scheme.
 * @typedef {{bg: string, fg: string, muted: string, grid: string, axis: string,
 *   series: string[], back: string[], blockedBand: string, blocked: string,
 *   noGrad: string, nonfinite: string, zero: string, selected: string,
 *   heatNaN: [number, number, number], heatInf: [number, number, number],
 *   heatZero: [number, number, number], heatAbsent: [number, number, number],
 *   reference: string, referenceBand: string, depth: [number, number, number][],
 *   spikeFill: string, spikeStroke: string}} Palette
 * `heatAbsent`: the hatching of heatmap cells of a layer not in the step's
 * layer set (drawn over the background: nothing was logged there).
 * `reference`, `referenceBand`: a statistic's rule of thumb, its line and band.
 * `spikeFill`, `spikeStroke`: the spike mark, light inside a dark outline so
 * that it shows on every colour of the heatmap's ramp.
 * `depth`: the stops of the lines view's colours, first layer to last (plasma,
 * cut where it would fade into the background).
 */

/** @type {{light: Palette, dark: Palette}} */
export const PALETTES = {
  light: {
    bg: "#ffffff", fg: "#202124", muted: "#5f6368", grid: "#e8eaed", axis: "#3c4043",
    series: ["#1a73e8", "#e8710a"], back: ["rgba(26,115,232,0.22)", "rgba(232,113,10,0.22)"],
    blockedBand: "rgba(217,48,37,0.10)", blocked: "#c5221f", noGrad: "#80868b",
    nonfinite: "#a142f4", zero: "#188038", selected: "#202124",
    heatNaN: [218, 220, 224], heatInf: [255, 0, 160], heatZero: [0, 0, 0], heatAbsent: [154, 160, 166],
    reference: "#1e8e3e", referenceBand: "rgba(30,142,62,0.13)",
    depth: [[13, 8, 135], [126, 3, 168], [204, 71, 120], [237, 121, 83], [230, 150, 20]],
    spikeFill: "#ffffff", spikeStroke: "#202124",
  },
  dark: {
    bg: "#1f1f1f", fg: "#e8eaed", muted: "#9aa0a6", grid: "#3c4043", axis: "#bdc1c6",
    series: ["#8ab4f8", "#fcad70"], back: ["rgba(138,180,248,0.28)", "rgba(252,173,112,0.28)"],
    blockedBand: "rgba(242,139,130,0.16)", blocked: "#f28b82", noGrad: "#9aa0a6",
    nonfinite: "#d7aefb", zero: "#81c995", selected: "#ffffff",
    heatNaN: [72, 74, 78], heatInf: [255, 64, 190], heatZero: [0, 0, 0], heatAbsent: [128, 134, 139],
    reference: "#81c995", referenceBand: "rgba(129,201,149,0.16)",
    depth: [[106, 0, 168], [177, 42, 144], [225, 100, 98], [252, 166, 54], [240, 249, 33]],
    spikeFill: "#ffffff", spikeStroke: "#000000",
  },
};

/**
 * The colour of layer `i` of `n` in the lines view: by depth, the first layer
 * at the first stop of `palette.depth`, the last at the last, linear between.
 * @param {number} i
 * @param {number} n
 * @param {Palette} palette
 * @returns {string} a CSS `rgb()` colour
 */
export function depthColor(i, n, palette) {
  const stops = palette.depth;
  const x = (n > 1 ? i / (n - 1) : 0) * (stops.length - 1);
  const k = Math.min(stops.length - 2, Math.floor(x));
  const f = x - k;
  const rgb = [0, 1, 2].map((c) => Math.round(stops[k][c] + (stops[k + 1][c] - stops[k][c]) * f));
  return `rgb(${rgb.join(",")})`;
}
