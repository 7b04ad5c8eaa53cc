import assert from "node:assert/strict";
import { test } from "node:test";

import {
  Client, HttpError, StaleGuard, changedRuns, decodeHeatmap, encodeHeatmap, keptStepsText,
  matchLayers, reviveFlow, runKey, runSignatures, toNumber, toNumbers,
} from "../../frontend/model.js";

test("toNumber turns TensorBoard's NaN and Infinity strings back into numbers", () => {
  assert.ok(Number.isNaN(toNumber("NaN")));
  assert.equal(toNumber("Infinity"), Infinity);
  assert.equal(toNumber("-Infinity"), -Infinity);
  assert.equal(toNumber(1.5e-9), 1.5e-9);
  assert.ok(Number.isNaN(toNumber(null)));
  assert.ok(Number.isNaN(toNumber("")));
  assert.deepEqual(toNumbers([1, "Infinity"]), [1, Infinity]);
});

const FLOW = {
  run: "unnormalised_inputs", tag: "gradflow", step: 120,
  layers: ["lstm1.weight_ih_l0", "lstm1.weight_hh_l0", "head"],
  sparse: [false, false, false],
  stats: { abs_mean: [3.1e-10, "NaN", 0.00038], abs_max: [1e-9, "NaN", "Infinity"], nonfinite: [0, "NaN", 2] },
  no_grad: [false, true, false], skipped: false, loss_scale: "NaN",
  alerts: [{ kind: "blocked", layer: "lstm1.weight_ih_l0", first_step: 80, last_step: 299, steps: 213, message: "m" }],
};

test("reviveFlow converts every statistic and keeps the layer order", () => {
  const f = reviveFlow(FLOW);
  assert.deepEqual(f.layers, FLOW.layers);
  assert.equal(f.stats.abs_mean[0], 3.1e-10);
  assert.ok(Number.isNaN(f.stats.abs_mean[1]));
  assert.equal(f.stats.abs_max[2], Infinity);
  assert.ok(Number.isNaN(f.loss_scale));
  assert.deepEqual(f.no_grad, [false, true, false]);
  assert.equal(f.alerts[0].layer, "lstm1.weight_ih_l0");
  assert.equal(f.alerts[0].first_step, 80);
});

test("reviveFlow fills missing no_grad and sparse lists with false", () => {
  const f = reviveFlow({ ...FLOW, no_grad: undefined, sparse: undefined });
  assert.deepEqual(f.no_grad, [false, false, false]);
  assert.deepEqual(f.sparse, [false, false, false]);
});

const HEAD = {
  run: "healthy", tag: "gradflow", stat: "abs_mean", layers: ["a", "bb"],
  steps: [0, 150, 299], first_steps: [0, 150, 299], last_steps: [149, 298, 299], downsampled: true,
};

test("decodeHeatmap reads the header, skips the padding and reads float32 LE values", () => {
  for (const extra of ["", "x", "xy", "xyz"]) { // every padding length
    const head = { ...HEAD, run: "healthy" + extra };
    const values = [1, NaN, Infinity, 0, 2.5e-10, -0];
    const h = decodeHeatmap(encodeHeatmap(head, values));
    assert.equal(h.run, head.run);
    assert.deepEqual(h.layers, ["a", "bb"]);
    assert.deepEqual(h.steps, [0, 150, 299]);
    assert.deepEqual(h.last_steps, [149, 298, 299]);
    assert.equal(h.values.length, 6);
    assert.equal(h.values[0], 1);
    assert.ok(Number.isNaN(h.values[1]));
    assert.equal(h.values[2], Infinity);
    assert.equal(h.values[4], Math.fround(2.5e-10));
  }
});

test("decodeHeatmap defaults first/last steps to the steps without downsampling", () => {
  const { first_steps, last_steps, ...head } = HEAD;
  const h = decodeHeatmap(encodeHeatmap(head, [1, 2, 3, 4, 5, 6]));
  assert.deepEqual(h.first_steps, [0, 150, 299]);
  assert.deepEqual(h.last_steps, [0, 150, 299]);
});

test("decodeHeatmap rejects a truncated body", () => {
  const buf = encodeHeatmap(HEAD, [1, 2, 3, 4, 5, 6]);
  assert.throws(() => decodeHeatmap(buf.slice(0, buf.byteLength - 4)), /fewer than 2 x 3/);
  assert.throws(() => decodeHeatmap(buf.slice(0, 10)), /truncated/);
  assert.throws(() => decodeHeatmap(new ArrayBuffer(2)), /shorter/);
});

test("matchLayers keeps the first run's order and appends the second run's extras", () => {
  const m = matchLayers(["a", "b", "c"], ["c", "x", "a"]);
  assert.deepEqual(m.names, ["a", "b", "c", "x"]);
  assert.deepEqual(m.a, [0, 1, 2, -1]);
  assert.deepEqual(m.b, [2, -1, 0, 1]);
});

test("runSignatures and changedRuns report new, grown and removed runs only", () => {
  const r = (run, steps, last) => ({ run, tag: "gradflow", steps, first_step: 0, last_step: last, layers: 5 });
  const before = runSignatures([r("a", 10, 9), r("b", 10, 9), r("gone", 1, 0)]);
  const after = runSignatures([r("a", 10, 9), r("b", 12, 11), r("new", 1, 0)]);
  assert.deepEqual([...changedRuns(before, after)].sort(), ["b", "gone", "new"].map((x) => `${x}\u0000gradflow`).sort());
  assert.equal(changedRuns(after, after).size, 0);
});

test("keptStepsText says when TensorBoard sampled the logged steps", () => {
  assert.equal(keptStepsText({ steps: 300, expected_steps: 300 }), "all 300 logged steps shown");
  assert.match(keptStepsText({ steps: 100, expected_steps: 10000 }), /kept 100 of 10,000 logged steps/);
});

test("StaleGuard keeps only the latest token of each slot", () => {
  const g = new StaleGuard();
  const t1 = g.next("flow");
  const t2 = g.next("flow");
  const h = g.next("heat");
  assert.equal(g.isCurrent("flow", t1), false);
  assert.equal(g.isCurrent("flow", t2), true);
  assert.equal(g.isCurrent("heat", h), true);
});

function fakeFetch(routes) {
  const calls = [];
  const fn = async (url) => {
    calls.push(url);
    const route = url.slice(2).split("?")[0];
    const body = routes[route];
    if (body === undefined) return { ok: false, status: 404, text: async () => "Not found: no run" };
    return {
      ok: true, status: 200,
      json: async () => (typeof body === "function" ? body(url) : body),
      arrayBuffer: async () => body,
    };
  };
  fn.calls = calls;
  return fn;
}

test("Client builds relative URLs, so TensorBoard's path prefix is kept", () => {
  assert.equal(Client.url("flow", { run: "a b&c", tag: "gradflow", step: null }), "./flow?run=a+b%26c&tag=gradflow");
  assert.equal(Client.url("runs"), "./runs");
});

test("Client caches per URL, shares in-flight requests and invalidates one run", async () => {
  const fetch = fakeFetch({ flow: (url) => ({ ...FLOW, run: new URL(url, "http://x/").searchParams.get("run") }) });
  const c = new Client({ fetch });
  const r = { run: "r1", tag: "gradflow" };
  const [f1, f2] = await Promise.all([c.flow(r, 5), c.flow(r, 5)]);
  assert.equal(f1, f2);
  assert.equal(fetch.calls.length, 1);
  await c.flow({ run: "r2", tag: "gradflow" }, 5);
  c.invalidate("r1");
  await c.flow(r, 5);
  await c.flow({ run: "r2", tag: "gradflow" }, 5);
  assert.equal(fetch.calls.length, 3);
});

test("Client turns an error answer into an HttpError with the server's message and does not cache it", async () => {
  const fetch = fakeFetch({});
  const c = new Client({ fetch });
  await assert.rejects(c.steps({ run: "nope", tag: "gradflow" }), (err) => {
    assert.ok(err instanceof HttpError);
    assert.equal(err.status, 404);
    assert.match(err.message, /Not found: no run/);
    return true;
  });
  await assert.rejects(c.steps({ run: "nope", tag: "gradflow" }));
  assert.equal(fetch.calls.length, 2);
});

test("Client.heatmap asks for the binary format and decodes it", async () => {
  const fetch = fakeFetch({ heatmap: encodeHeatmap(HEAD, [1, 2, 3, 4, 5, 6]) });
  const h = await new Client({ fetch }).heatmap({ run: "healthy", tag: "gradflow" }, "abs_mean", 1000);
  assert.match(fetch.calls[0], /format=binary/);
  assert.match(fetch.calls[0], /max_steps=1000/);
  assert.deepEqual(Array.from(h.values), [1, 2, 3, 4, 5, 6]);
});

test("Client.runs converts the listing", async () => {
  const fetch = fakeFetch({ runs: { runs: [{ run: "a", tag: "gradflow", name: null, layers: 5, steps: 100, first_step: 0, last_step: 9999, every: 1, expected_steps: 10000 }] } });
  const runs = await new Client({ fetch }).runs();
  assert.equal(runs[0].expected_steps, 10000);
  assert.equal(runs[0].name, null);
  assert.equal(runKey(runs[0]), "a\u0000gradflow");
});
