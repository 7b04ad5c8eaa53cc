import assert from "node:assert/strict";
import { test } from "node:test";

import { Client, HttpError, errorText, reasonText } from "../../frontend/api.js";
import { encodeHeatmap } from "../../frontend/binary.js";
import { runKey } from "../../frontend/model.js";
import { FLOW, HEAD, fakeFetch } from "./fixtures.mjs";

/** The query of a relative URL as a plain object (what the server reads). */
const query = (url) => Object.fromEntries(new URL(url, "http://tb/data/plugin/gradflow/").searchParams);

test("Client builds relative URLs, so TensorBoard's path prefix is kept", () => {
  assert.equal(Client.url("flow", { run: "a b&c", tag: "gradflow", step: null }), "./flow?run=a+b%26c&tag=gradflow");
  assert.equal(Client.url("runs"), "./runs");
  assert.equal(Client.url("steps", { run: undefined }), "./steps");
  assert.equal(Client.url("flow", { run: "r", step: 0 }), "./flow?run=r&step=0"); // 0 is a step, not absent
});

test("Client.url escapes run names with spaces, '/', '&', '=', '+', '#', '%' and unicode", () => {
  const names = [
    "my run", "exp/seed=1", "a&b", "a+b", "#1", "100%", "lr=1e-3 & wd=0", "déjà vu", "实验/运行",
    "emoji \u{1f525}", "<img src=x onerror=alert(1)>", "edge_<b>cases", " lead and trail ",
  ];
  for (const run of names) {
    const url = Client.url("flow", { run, tag: "gradflow/my name", step: 7 });
    assert.match(url, /^\.\/flow\?[A-Za-z0-9%+._*=&-]*$/, url); // nothing left unescaped
    assert.deepEqual(query(url), { run, tag: "gradflow/my name", step: "7" });
  }
  assert.equal(Client.url("steps", { run: "exp/seed 1&x" }), "./steps?run=exp%2Fseed+1%26x");
  assert.equal(Client.url("steps", { run: "é" }), "./steps?run=%C3%A9");
});

test("Client's routes ask for the run and tag they are given, escaped", async () => {
  const heatmap = encodeHeatmap(HEAD, [1, 2, 3, 4, 5, 6]);
  const fetch = fakeFetch({ flow: FLOW, steps: { steps: [1] }, alerts: { alerts: [] }, heatmap });
  const c = new Client({ fetch });
  const r = { run: "a b/c&d é", tag: "gradflow/x y" };
  await c.flow(r, 3);
  await c.steps(r);
  await c.alerts(r);
  await c.heatmap(r, "abs_max", 10);
  const seen = fetch.calls.map((u) => [u.slice(2).split("?")[0], query(u)]);
  assert.deepEqual(seen, [
    ["flow", { run: r.run, tag: r.tag, step: "3" }],
    ["steps", { run: r.run, tag: r.tag }],
    ["alerts", { run: r.run, tag: r.tag }],
    ["heatmap", { run: r.run, tag: r.tag, stat: "abs_max", max_steps: "10", format: "binary" }],
  ]);
});

test("Client caches per URL, shares in-flight requests and invalidates one run", async () => {
  const fetch = fakeFetch({ flow: (url) => ({ ...FLOW, run: query(url).run }) });
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

test("Client.invalidate drops one tag of a run when given one", async () => {
  const fetch = fakeFetch({ steps: { steps: [0, 1] } });
  const c = new Client({ fetch });
  const x = { run: "r", tag: "gradflow/x" };
  const y = { run: "r", tag: "gradflow/y" };
  await c.steps(x);
  await c.steps(y);
  c.invalidate("r", "gradflow/x");
  await c.steps(x);
  await c.steps(y);
  assert.equal(fetch.calls.length, 3);
});

test("Client keeps at most maxEntries answers, dropping the least recently used", async () => {
  const fetch = fakeFetch({ steps: { steps: [0] } });
  const c = new Client({ fetch, maxEntries: 2 });
  const r = (run) => ({ run, tag: "gradflow" });
  await c.steps(r("a"));
  await c.steps(r("b"));
  await c.steps(r("a")); // a is now the most recent
  await c.steps(r("c")); // drops b
  await c.steps(r("a"));
  assert.equal(fetch.calls.length, 3);
  await c.steps(r("b"));
  assert.equal(fetch.calls.length, 4);
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

test("Client.lines asks the lines route for the binary format and decodes max then min", async () => {
  const fetch = fakeFetch({ lines: encodeHeatmap(HEAD, [1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]) });
  const c = new Client({ fetch });
  const l = await c.lines({ run: "healthy", tag: "gradflow" }, "update_ratio", 1000);
  assert.deepEqual(query(fetch.calls[0]), { run: "healthy", tag: "gradflow", stat: "update_ratio", max_steps: "1000", format: "binary" });
  assert.ok(fetch.calls[0].startsWith("./lines?"));
  assert.deepEqual(Array.from(l.max), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(Array.from(l.min), [6, 5, 4, 3, 2, 1]);
  await c.lines({ run: "healthy", tag: "gradflow" }, "update_ratio", 1000);
  assert.equal(fetch.calls.length, 1); // cached per URL, as every route but runs and triage
});

test("Client.runs converts the listing and is never cached", async () => {
  const entry = {
    run: "a", tag: "gradflow", name: null, layers: 5, last_step: 9999, every: 1, last_wall_time: 1796527594.35,
    steps: null, first_step: null, expected_steps: null, // not read yet
  };
  const fetch = fakeFetch({ runs: { runs: [entry] } });
  const c = new Client({ fetch });
  const runs = await c.runs();
  assert.deepEqual(runs, [{ run: "a", tag: "gradflow", name: null, layers: 5, last_step: 9999, every: 1, last_wall_time: 1796527594.35, stats: [], groups: null }]);
  assert.equal(runKey(runs[0]), "a\u0000gradflow");
  await c.runs();
  assert.deepEqual(fetch.calls, ["./runs", "./runs"]);
});

test("Client.runs keeps each watcher's statistics: the registry's word on them, null for an unknown one, and logged", async () => {
  const entry = {
    run: "a", tag: "gradflow", name: null, layers: 5, last_step: 9, every: 1, last_wall_time: 1,
    stats: ["abs_mean", "zeta", "rows", 7], not_logged: ["rows"],
  };
  const stats = {
    abs_mean: { meaning: "mean of |g|", unit: "value", bad: "low" }, zeta: null,
    rows: { meaning: "fraction of rows", unit: "fraction", bad: "none" },
  };
  const [run] = await new Client({ fetch: fakeFetch({ runs: { runs: [entry], stats } }) }).runs();
  assert.deepEqual(run.stats, [
    { name: "abs_mean", meaning: "mean of |g|", unit: "value", bad: "low", logged: true },
    { name: "zeta", meaning: null, unit: null, bad: null, logged: true }, // the server does not know it
    { name: "rows", meaning: "fraction of rows", unit: "fraction", bad: "none", logged: false },
  ]);
});

test("Client.steps gives the kept steps, how many were logged and the records left out", async () => {
  const answer = {
    run: "big", tag: "gradflow", steps: [0, 5000, 9999], first_step: 0, last_step: 9999, every: 1, expected_steps: 10000,
    left_out: [{ step: 135, reason: "abs_mean is negative (layer 'head')" }, { step: null, reason: "TensorBoard stopped reading" }],
  };
  const info = await new Client({ fetch: fakeFetch({ steps: answer }) }).steps({ run: "big", tag: "gradflow" });
  assert.deepEqual(info, answer);
});

test("an HTTP error keeps the server's own text apart for the reason a run cannot be shown", async () => {
  const fetch = async () => ({ ok: false, status: 404, text: async () => "Run 'r', tag 'gradflow': the layer set changed\n" });
  const err = await new Client({ fetch }).steps({ run: "r", tag: "gradflow" }).catch((e) => e);
  assert.equal(err.detail, "Run 'r', tag 'gradflow': the layer set changed");
  assert.equal(reasonText(err), "Run 'r', tag 'gradflow': the layer set changed");
  assert.equal(errorText(err), "./steps?run=r&tag=gradflow: 404 Run 'r', tag 'gradflow': the layer set changed");
  assert.equal(reasonText(new TypeError("Failed to fetch")), "TypeError: Failed to fetch");
});

test("errorText shows the server's line for HTTP errors and the error otherwise", () => {
  assert.equal(errorText(new HttpError(400, "./flow?step=x: 400 step must be an integer")), "./flow?step=x: 400 step must be an integer");
  assert.equal(errorText(new TypeError("Failed to fetch")), "TypeError: Failed to fetch");
  assert.equal(errorText("offline"), "offline");
});

test("Client.triage lists the ranking in the server's order and is never cached", async () => {
  const answer = { runs: [
    { run: "b", tag: "gradflow", worst: "nonfinite", kinds: ["nonfinite"], wall_time: 2, steps: 100, basis: "sample" },
    { run: "a", tag: "gradflow/x", worst: null, kinds: [], wall_time: 3, steps: 5, basis: "all" },
  ] };
  const fetch = fakeFetch({ triage: answer });
  const c = new Client({ fetch });
  assert.deepEqual(await c.triage(), [{ run: "b", tag: "gradflow", worst: "nonfinite" }, { run: "a", tag: "gradflow/x", worst: null }]);
  await c.triage();
  assert.deepEqual(fetch.calls, ["./triage", "./triage"]);
});
