import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { test } from "node:test";

const url = (f) => new URL(`../../frontend/${f}`, import.meta.url);
const FILES = readdirSync(url("")).filter((f) => f.endsWith(".js")).sort();
/** Modules without DOM use at all: `node --test` runs every function in them. */
const PURE = ["api.js", "binary.js", "grouping.js", "loader.js", "model.js", "palette.js", "present.js", "scale.js", "state.js", "url.js"];

test("the frontend is the expected set of modules", () => {
  assert.deepEqual(FILES, ["api.js", "bars.js", "binary.js", "canvas.js", "export.js", "grouping.js", "heatmap.js", "index.js", "lines.js", "loader.js", "marks.js", "model.js", "page.js", "paint.js", "palette.js", "present.js", "scale.js", "state.js", "strip.js", "url.js", "views.js"]);
});

test("every frontend module imports without a DOM (no top-level document use)", async () => {
  for (const f of FILES) await import(url(f));
  const index = await import(url("index.js"));
  assert.deepEqual(Object.keys(index), ["render"]);
});

test("every export carries a JSDoc comment", () => {
  for (const f of FILES) {
    const src = readFileSync(url(f), "utf8");
    const re = /^export (?:async )?(?:function|class|const) (\w+)/gm;
    let m;
    while ((m = re.exec(src))) {
      const before = src.slice(0, m.index).trimEnd();
      assert.ok(before.endsWith("*/"), `${f}: export ${m[1]} has no JSDoc`);
    }
  }
});

test("no module builds HTML from strings", () => {
  for (const f of FILES) {
    const src = readFileSync(url(f), "utf8");
    assert.doesNotMatch(src, /\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write/, f);
  }
});

test("state, requests and presentation stay apart from the DOM and the clock", () => {
  for (const f of PURE) {
    const src = readFileSync(url(f), "utf8");
    assert.doesNotMatch(src, /\b(document|window)\.|\b(requestAnimationFrame|setInterval|setTimeout)\(/, f);
  }
});

test("fetches use relative URLs only (TensorBoard's path prefix and experiment routing)", () => {
  for (const f of FILES) {
    const src = readFileSync(url(f), "utf8");
    assert.doesNotMatch(src, /["'`]\/data\/plugin/, f);
    assert.doesNotMatch(src, /https?:\/\//, f);
  }
  const api = readFileSync(url("api.js"), "utf8");
  assert.match(api, /new URLSearchParams\(\)/);
  for (const f of FILES.filter((x) => x !== "api.js")) assert.doesNotMatch(readFileSync(url(f), "utf8"), /\bfetch\(/, f);
});
