// Pure maths for the Gradient Flow tab: scales, ticks, number formats and the
// heatmap colour ramp. Nothing here touches the DOM, so `node --test` imports it.

const LN10 = Math.LN10;
const E10 = Math.sqrt(50);
const E5 = Math.sqrt(10);
const E2 = Math.sqrt(2);

/**
 * A linear map from a domain to a range, with its inverse.
 * @typedef {{kind: "linear"|"log", domain: [number, number],
 *   range: [number, number], map: (v: number) => number,
 *   invert: (p: number) => number}} Scale
 */

/**
 * Linear scale `domain -> range`. A zero-width domain maps everything to range[0].
 * @param {[number, number]} domain
 * @param {[number, number]} range
 * @returns {Scale}
 */
export function scaleLinear(domain, range) {
  const [d0, d1] = domain;
  const [r0, r1] = range;
  const k = d1 === d0 ? 0 : (r1 - r0) / (d1 - d0);
  return {
    kind: "linear",
    domain: [d0, d1],
    range: [r0, r1],
    map: (v) => r0 + (v - d0) * k,
    invert: (p) => (k === 0 ? d0 : d0 + (p - r0) / k),
  };
}

/**
 * Log10 scale `domain -> range`; both domain ends must be positive. Values <= 0
 * map to an infinity beyond the low end of the range, `range[0]`'s side (+Infinity
 * for a vertical axis drawn bottom-up), so clamping puts them on the floor
 * (callers may draw them with their own mark).
 * @param {[number, number]} domain
 * @param {[number, number]} range
 * @returns {Scale}
 */
export function scaleLog(domain, range) {
  const [d0, d1] = domain;
  if (!(d0 > 0 && d1 > 0)) throw new RangeError(`log domain must be positive: ${d0}, ${d1}`);
  const l0 = Math.log10(d0);
  const lin = scaleLinear([l0, Math.log10(d1)], range);
  const below = range[0] > range[1] ? Infinity : -Infinity; // past range[0]
  return {
    kind: "log",
    domain: [d0, d1],
    range: [range[0], range[1]],
    map: (v) => (v > 0 ? lin.map(Math.log10(v)) : below),
    invert: (p) => 10 ** lin.invert(p),
  };
}

/**
 * d3's tick increment: a positive integer `inc` means the step is `inc`, a
 * negative one means the step is `1 / -inc` (kept as an integer so ticks come out
 * as exact decimals).
 * @param {number} start
 * @param {number} stop
 * @param {number} count desired number of ticks
 * @returns {number}
 */
export function tickIncrement(start, stop, count) {
  const step = (stop - start) / Math.max(0, count);
  const power = Math.floor(Math.log(step) / LN10);
  const error = step / 10 ** power;
  const f = error >= E10 ? 10 : error >= E5 ? 5 : error >= E2 ? 2 : 1;
  return power >= 0 ? f * 10 ** power : -(10 ** -power) / f;
}

/**
 * About `count` round ticks covering [start, stop], each built from an integer
 * index and the step, e.g. `ticks(0, 1, 5)` is `[0, 0.2, 0.4, 0.6, 0.8, 1]`, never
 * `0.30000000000000004`.
 * @param {number} start
 * @param {number} stop
 * @param {number} count
 * @returns {number[]}
 */
export function ticks(start, stop, count) {
  if (!(count > 0) || !Number.isFinite(start) || !Number.isFinite(stop)) return [];
  if (start === stop) return [start];
  const reverse = stop < start;
  if (reverse) [start, stop] = [stop, start];
  const inc = tickIncrement(start, stop, count);
  if (!Number.isFinite(inc) || inc === 0) return [];
  const out = [];
  if (inc > 0) {
    const i0 = Math.ceil(start / inc);
    const i1 = Math.floor(stop / inc);
    for (let i = i0; i <= i1; i++) out.push(i * inc);
  } else {
    const i0 = Math.ceil(start * -inc);
    const i1 = Math.floor(stop * -inc);
    for (let i = i0; i <= i1; i++) out.push(i / -inc);
  }
  return reverse ? out.reverse() : out;
}

/**
 * Extends [lo, hi] outwards to multiples of the tick step (d3's `nice`).
 * @param {number} lo
 * @param {number} hi
 * @param {number} count
 * @returns {[number, number]}
 */
export function niceLinear(lo, hi, count) {
  if (!(hi > lo)) return [lo, hi];
  for (let k = 0; k < 5; k++) {
    const inc = tickIncrement(lo, hi, count);
    const nlo = inc > 0 ? Math.floor(lo / inc) * inc : Math.floor(lo * -inc) / -inc;
    const nhi = inc > 0 ? Math.ceil(hi / inc) * inc : Math.ceil(hi * -inc) / -inc;
    if (nlo === lo && nhi === hi) break;
    lo = nlo;
    hi = nhi;
  }
  return [lo, hi];
}

/**
 * Ticks of a count axis: whole numbers from 0, a round step of at least 1,
 * ending at or above `max` (at 1 when `max` is 0 or not finite).
 * @param {number} max the largest count
 * @param {number} count desired number of ticks
 * @returns {number[]} e.g. `[0, 1, 2, ..., 7]` for 7, `[0, 200, ..., 1400]` for 1234
 */
export function countTicks(max, count) {
  const top = Math.max(1, Math.ceil(Number.isFinite(max) ? max : 0));
  const inc = Math.max(1, tickIncrement(0, top, Math.max(1, count))); // < 0: a fractional step
  const out = [];
  for (let i = 0; (i - 1) * inc < top; i++) out.push(i * inc);
  return out;
}

/**
 * Smallest and largest positive finite value of some arrays; null if none.
 * @param {Iterable<ArrayLike<number>>} arrays
 * @returns {[number, number] | null}
 */
export function positiveExtent(arrays) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const arr of arrays) {
    for (let i = 0; i < arr.length; i++) {
      const v = arr[i];
      if (v > 0 && v < Infinity) {
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
    }
  }
  return lo <= hi ? [lo, hi] : null;
}

/**
 * Largest finite value of some arrays (0 if none is finite and positive).
 * @param {Iterable<ArrayLike<number>>} arrays
 * @returns {number}
 */
export function finiteMax(arrays) {
  let hi = 0;
  for (const arr of arrays) {
    for (let i = 0; i < arr.length; i++) {
      const v = arr[i];
      if (Number.isFinite(v) && v > hi) hi = v;
    }
  }
  return hi;
}

/**
 * The log-scale domain for bars: whole decades around the positive finite
 * values, with at least a quarter decade below the smallest so that its bar
 * stays visible; `[1e-8, 1]` when there are none.
 * @param {[number, number] | null} extent from {@link positiveExtent}
 * @returns {[number, number]} powers of ten
 */
export function decadeDomain(extent) {
  if (!extent) return [1e-8, 1];
  // a quarter decade of headroom below the smallest value keeps its bar visible
  let k0 = Math.floor(Math.log10(extent[0]) - 0.25);
  let k1 = Math.ceil(Math.log10(extent[1]));
  if (k1 <= k0) k1 = k0 + 1;
  return [pow10(k0), pow10(k1)];
}

/**
 * 10 to an integer power, exact as a decimal literal (`pow10(-3)` is `0.001`).
 * @param {number} k integer exponent
 * @returns {number}
 */
export function pow10(k) {
  return Number(`1e${k}`);
}

/**
 * Ticks of a log scale: the powers of ten in [lo, hi], every `k`-th so that at
 * most `maxTicks` remain (exponents that are multiples of `k`).
 * @param {number} lo positive
 * @param {number} hi positive
 * @param {number} maxTicks
 * @returns {{value: number, exponent: number}[]}
 */
export function logTicks(lo, hi, maxTicks) {
  const k0 = Math.ceil(Math.log10(lo) - 1e-9);
  const k1 = Math.floor(Math.log10(hi) + 1e-9);
  const n = k1 - k0 + 1;
  const every = Math.max(1, Math.ceil(n / Math.max(1, maxTicks)));
  const out = [];
  for (let k = k0; k <= k1; k++) {
    if (((k % every) + every) % every === 0) out.push({ value: pow10(k), exponent: k });
  }
  return out;
}

const SUPERSCRIPT = { "-": "\u207b", 0: "\u2070", 1: "\u00b9", 2: "\u00b2", 3: "\u00b3",
  4: "\u2074", 5: "\u2075", 6: "\u2076", 7: "\u2077", 8: "\u2078", 9: "\u2079" };

/**
 * "10⁻⁶" for an exponent; `1` and `10` for 0 and 1.
 * @param {number} exponent integer
 * @returns {string}
 */
export function formatPow10(exponent) {
  if (exponent === 0) return "1";
  if (exponent === 1) return "10";
  return "10" + String(exponent).split("").map((c) => SUPERSCRIPT[c]).join("");
}

/**
 * A short label for a statistic: 4 significant digits, exponent form outside
 * [1e-3, 1e5), and the words for non-finite values.
 * @param {number} v
 * @returns {string}
 */
export function formatValue(v) {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "inf";
  if (v === -Infinity) return "-inf";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e-3 && a < 1e5) return String(Number(v.toPrecision(4)));
  const [m, e] = v.toExponential(2).split("e");
  return `${Number(m)}e${Number(e)}`;
}

/**
 * A chart's value axis (y) of one kind, over the pixel range `[bottom, top]`:
 * `log`, whole decades around the positive finite values (a tick per decade,
 * thinned to one every 28 px); `count`, 0 to the largest value in whole
 * numbers; `fraction`, 0 to 1; `linear`, 0 to the largest finite value, nice
 * (1 when there is none). Ticks of the others one every 40 px or so.
 * @param {"log"|"linear"|"count"|"fraction"} kind
 * @param {Iterable<ArrayLike<number>>} values what the axis must hold
 * @param {[number, number]} range pixels of the axis' bottom and top
 * @returns {{scale: Scale, ticks: {value: number, text: string, y: number}[]}}
 */
export function valueAxis(kind, values, range) {
  const arrays = [...values];
  const height = Math.abs(range[0] - range[1]);
  const count = Math.max(2, Math.floor(height / 40));
  const at = (scale, vs, text) => ({ scale, ticks: vs.map((v) => ({ value: v, text: text(v), y: scale.map(v) })) });
  if (kind === "log") {
    const [lo, hi] = decadeDomain(positiveExtent(arrays));
    const scale = scaleLog([lo, hi], range);
    const marks = logTicks(lo, hi, Math.max(2, Math.floor(height / 28)));
    return { scale, ticks: marks.map((t) => ({ value: t.value, text: formatPow10(t.exponent), y: scale.map(t.value) })) };
  }
  if (kind === "count") {
    const steps = countTicks(finiteMax(arrays), count);
    return at(scaleLinear([0, steps[steps.length - 1]], range), steps, String);
  }
  if (kind === "fraction") return at(scaleLinear([0, 1], range), ticks(0, 1, count), formatValue);
  const max = finiteMax(arrays);
  const hi = max > 0 ? niceLinear(0, max, count)[1] : 1;
  return at(scaleLinear([0, hi], range), ticks(0, hi, count), formatValue);
}

/**
 * Index of the element of a sorted array nearest to `value` (ties go to the
 * lower one); -1 for an empty array.
 * @param {ArrayLike<number>} sorted ascending
 * @param {number} value
 * @returns {number}
 */
export function nearestIndex(sorted, value) {
  const n = sorted.length;
  if (n === 0) return -1;
  let lo = 0;
  let hi = n - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] < value) lo = mid + 1;
    else hi = mid;
  }
  if (lo > 0 && value - sorted[lo - 1] <= sorted[lo] - value) return lo - 1;
  return lo;
}

// Viridis at 9 evenly spaced points (matplotlib's table), interpolated linearly.
const VIRIDIS = [
  [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
];

/**
 * The heatmap colour of `t` in [0, 1] (viridis; clamped).
 * @param {number} t
 * @returns {[number, number, number]} r, g, b in 0..255
 */
export function ramp(t) {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const a = VIRIDIS[i];
  const b = VIRIDIS[i + 1];
  return [0, 1, 2].map((c) => Math.round(a[c] + (b[c] - a[c]) * f));
}

/**
 * Position of `v` on a log colour scale over [lo, hi], clamped to [0, 1];
 * NaN for values that have no place on it (NaN, <= 0, infinite).
 * @param {number} v
 * @param {number} lo positive
 * @param {number} hi positive
 * @returns {number}
 */
export function logUnit(v, lo, hi) {
  if (!(v > 0) || v === Infinity) return NaN;
  if (!(hi > lo)) return 1;
  const t = (Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo));
  return Math.min(1, Math.max(0, t));
}
