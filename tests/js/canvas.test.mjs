import assert from "node:assert/strict";
import { test } from "node:test";

import { ellipsize } from "../../frontend/canvas.js";

const measure = (s, bold) => s.length * (bold ? 7.5 : 7); // a monospace stand-in

test("ellipsize shortens long names to fit and leaves short ones alone", () => {
  assert.equal(ellipsize("short", 100, measure), "short");
  const e = ellipsize("a".repeat(40), 70, measure);
  assert.ok(measure(e) <= 70);
  assert.ok(e.endsWith("\u2026"));
});
