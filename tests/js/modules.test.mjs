import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

const FILES = ["index.js", "model.js", "scale.js", "chart.js", "views.js"];
const url = (f) => new URL(`../../frontend/${f}`, import.meta.url);

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

test("fetches use relative URLs only (TensorBoard's path prefix and experiment routing)", () => {
  const src = readFileSync(url("model.js"), "utf8");
  assert.doesNotMatch(src, /["'`]\/data\/plugin/);
  assert.doesNotMatch(src, /https?:\/\//);
});
