"""Latency of the Gradient Flow plugin's routes through TensorBoard's WSGI app.

Writes one synthetic run (default 500 layers x 10,000 logged steps) with
tb_gradflow.summary, loads it with TensorBoard's Rust data server and/or its
Python multiplexer (the two ``--load_fast`` modes), and reports for ``flow``,
``heatmap`` (binary and JSON) and ``lines`` (binary, as the tab asks it):

* cold: the first request after new data (one more step appended and ingested),
  i.e. a re-read through the data provider, plus the diagnosis for ``flow``;
* warm: the median of repeated identical requests (served from the cache;
  within the plugin's ``listing_ttl`` of 1 s, so without a ``list_tensors``);
* warm, re-checked: the same after ``listing_ttl`` (a ``list_tensors`` call that
  finds no new data), as when the tab polls;

and the heatmap's and lines' payload sizes and the event-file bytes per layer,
statistic and step. Issue 3's targets (2-core machine): warm flow <= 50 ms, warm
heatmap <= 300 ms, cold <= 1.5 s, <= 5 bytes per layer, statistic and step;
issue 19's: warm lines <= 100 ms.

With ``--triage-runs N``, instead: N such runs (``--steps`` each), and what the
tab asks first: ``runs`` on a fresh plugin (TensorBoard's listing alone; before
it read every run in full), ``triage`` on a fresh plugin (sampled reads),
``flow`` of one run on a fresh plugin (one full read), and, once every run has
been read (``steps`` of each), ``runs`` and ``triage`` again (from the plugin's
cache).

With ``--case overview``, instead: one run of 20 layers x 300,000 logged
steps (``--layers``, ``--steps``) written by the watcher's own record writer
(per-step records and an overview record per 100 logged steps), with a 10x
spike of one layer's abs_mean at one random step, served with TensorBoard's
default limits (100,000 of its steps kept): ``heatmap`` and ``lines`` (binary)
on a fresh plugin (cold: the run read, the overview binned) and again (warm),
each answer checked for the spike in its column; and the resident memory of
the data provider (the Rust data server's process, or this process for the
Python multiplexer) and of this process before and after the run is loaded
and read.

Usage:
    python benchmarks/bench_plugin.py                 # both providers (~2-4 min)
    python benchmarks/bench_plugin.py --provider rust --steps 2000   # quicker
    python benchmarks/bench_plugin.py --triage-runs 20 --steps 2000  # triage
    python benchmarks/bench_plugin.py --case overview --provider rust  # ~2 min
"""

from __future__ import annotations

import argparse
import functools
import gzip
import math
import os
import statistics
import tempfile
import time

import numpy as np
from _scale_case import bench_llama
from _tb_backends import (
    RUN,
    FileWriter,
    Python,
    Rust,
    binary_answer,
    make_client,
    rss_mb,
    server_pid,
    timed,
    wait_for_step,
)
from tensorboard import context
from tensorboard.backend import application
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins import base_plugin
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from werkzeug import test as werkzeug_test
from werkzeug import wrappers

from tb_gradflow import metadata, overview, stats
from tb_gradflow.loader import DEFAULT_SAMPLES_PER_RUN, GradFlowLoader
from tb_gradflow.record_writer import RecordWriter
from tb_gradflow.summary import gradflow_pb


class Run:
    """The synthetic run: lognormal statistics, one layer blocked half-way."""

    def __init__(self, logdir: str, layers: int, name: str = RUN) -> None:
        self.layout = metadata.Layout(
            layers=tuple(f"block{i}.weight" for i in range(layers)),
            sparse=(False,) * layers,
        )
        self.tag = metadata.layout_tag(self.layout)
        self.writer = EventFileWriter(os.path.join(logdir, name), max_queue_size=100)
        self.rng = np.random.default_rng(0)
        self.steps = 0

    def write(self, n: int) -> None:
        n_layers = len(self.layout.layers)
        for _ in range(n):
            mean = np.exp(self.rng.normal(np.log(1e-3), 1.0, n_layers))  # (L,)
            if self.steps > 5000:
                mean[7] = 0.0
            values = {"abs_mean": mean, "abs_max": 5 * mean, "norm": 30 * mean}
            values |= {"nonfinite": 0.0, "rows": 1.0}
            record = stats.record(values, n_layers, order=self.layout.stats)  # (K, L)
            summary = gradflow_pb(
                self.layout, record, [0.0, np.nan], with_metadata=self.steps == 0
            )
            event = event_pb2.Event(
                step=self.steps, wall_time=time.time(), summary=summary
            )
            self.writer.add_event(event)
            self.steps += 1
        self.writer.flush()


def write_overview_run(logdir: str, layers: int, steps: int) -> tuple[int, int, float]:
    """One watcher's run as ``watch`` writes it (per-step and overview
    records, the last partial block on close): lognormal abs_mean around
    each layer's median, with a 10x spike of one layer at one random step.

    Returns:
        ``(spike step, spike layer, spike value as float32)``.
    """
    rng = np.random.default_rng(22)
    layout = metadata.Layout(
        layers=tuple(f"block{i}.weight" for i in range(layers)),
        sparse=(False,) * layers,
    )
    writer = FileWriter(os.path.join(logdir, RUN))
    records = RecordWriter(writer, layout, "torch")
    medians = np.exp(rng.normal(np.log(1e-3), 1.0, layers))  # (L,)
    at, layer = int(rng.integers(steps)), int(rng.integers(layers))
    order = layout.stats
    chunk = 10_000  # steps drawn at once
    for start in range(0, steps, chunk):
        n = min(chunk, steps - start)
        mean = medians * np.exp(rng.normal(0.0, 0.3, (n, layers)))  # (n, L)
        if start <= at < start + n:
            mean[at - start, layer] = 10 * medians[layer]
        values = {"abs_mean": mean, "abs_max": 5 * mean, "norm": 30 * mean}
        values |= {"nonfinite": np.zeros_like(mean), "rows": np.ones_like(mean)}
        block = np.stack([values[name] for name in order], axis=1)  # (n, K, L)
        for i in range(n):
            records.write_step(start + i, block[i], False, math.nan)
    records.close()
    writer.file_writer.close()
    return at, layer, float(np.float32(10 * medians[layer]))


def bench_overview(kinds, layers: int, steps: int, repeats: int, cold: int) -> None:
    with tempfile.TemporaryDirectory() as logdir:
        start = time.perf_counter()
        at, layer, spike = write_overview_run(logdir, layers, steps)
        size = sum(
            os.path.getsize(os.path.join(logdir, RUN, f))
            for f in os.listdir(os.path.join(logdir, RUN))
        )
        print(
            f"{layers} layers x {steps} logged steps: wrote {size / 1e6:.1f} MB in "
            f"{time.perf_counter() - start:.1f} s; spike at step {at}, layer {layer}"
        )
        for kind in kinds:
            backend = kind(logdir)
            print(f"\n{backend.name}:")
            try:
                _bench_overview(backend, steps, (at, layer, spike), repeats, cold)
            finally:
                backend.close()


def _bench_overview(backend, steps: int, spike, repeats: int, cold: int) -> None:
    at, layer, value = spike
    own = os.getpid()
    if isinstance(backend, Python):
        start = time.perf_counter()
        before = rss_mb(own)
        backend.reload()
        print(
            f"  ingestion (Reload): {time.perf_counter() - start:.1f} s; this "
            f"process's RSS {before:.0f} MB before, {rss_mb(own):.0f} MB after"
        )
    else:
        server = server_pid()
        before = rss_mb(server) if server else math.nan
        waited = _wait_for_overview(backend.provider, steps - 1)
        print(
            f"  ingestion: {waited:.1f} s; data server RSS {before:.0f} MB as it "
            f"started, {rss_mb(server):.0f} MB once it had loaded the run"
        )
    base = "/data/plugin/gradflow/"
    routes = {
        name: {"run": RUN, "stat": "abs_mean", "format": "binary"}
        for name in ("heatmap", "lines")
    }
    print(
        f"  | route | cold s, fresh plugin (median of {cold}) [min, max] "
        f"| warm ms (median of {repeats}) | columns | from | spike found |"
    )
    print("  |---|---:|---:|---:|---|---|")
    before = rss_mb(own)
    for name, params in routes.items():
        colds, client, response = [], None, None
        for _ in range(cold):
            client = make_client(backend.provider)
            request = functools.partial(client.get, base + name, query_string=params)
            elapsed, response = timed(request)
            colds.append(elapsed)
        warms = [timed(request)[0] for _ in range(repeats)]
        header, values = binary_answer(response)
        columns = len(header["steps"])
        top = values.reshape(-1, len(header["layers"]), columns)[0]  # max
        (column,) = [
            c
            for c, (a, z) in enumerate(zip(header["first_steps"], header["last_steps"]))
            if a <= at <= z
        ]
        found = top[layer, column] == value and int(np.argmax(top[layer])) == column
        print(
            f"  | {name} binary | {statistics.median(colds):.2f} "
            f"[{min(colds):.2f}, {max(colds):.2f}] | "
            f"{1e3 * statistics.median(warms):.1f} | {columns} | "
            f"{header.get('from', 'steps')} | {found} |"
        )
    steps_answer = client.get(base + "steps", query_string={"run": RUN}).json
    print(
        f"  steps kept: {len(steps_answer['steps'])} of "
        f"{steps_answer['expected_steps']} logged (estimated from the kept ones)"
    )
    print(
        f"  this process's RSS: {before:.0f} MB before the first answer, "
        f"{rss_mb(own):.0f} MB after them ({2 * cold} fresh plugins, each "
        "holding the run it read until the next)"
    )


def _wait_for_overview(provider, step: int, timeout: float = 900.0) -> float:
    """Seconds until the provider lists ``step`` as the last step of both
    the run's per-step and overview tags."""
    start = time.perf_counter()
    while True:
        last = []
        for plugin_name in (metadata.PLUGIN_NAME, overview.OVERVIEW_PLUGIN_NAME):
            listing = provider.list_tensors(
                context.RequestContext(), experiment_id="", plugin_name=plugin_name
            ).get(RUN, {})
            last.append(max((s.max_step for s in listing.values()), default=-1))
        if min(last) >= step:
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"step {step} not ingested after {timeout} s")
        time.sleep(0.2)


def bench(backend, run: Run, repeats: int, cold_repeats: int) -> None:
    if isinstance(backend, Python):
        start = time.perf_counter()
        backend.reload()
        print(f"  ingestion (Reload): {time.perf_counter() - start:.1f} s")
    else:
        waited = wait_for_step(backend.provider, run.tag, run.steps - 1)
        print(f"  ingestion: {waited:.1f} s")
    loader = GradFlowLoader()
    plugin = loader.load(
        base_plugin.TBContext(
            data_provider=backend.provider,
            sampling_hints={metadata.PLUGIN_NAME: DEFAULT_SAMPLES_PER_RUN},
        )
    )
    app = application.TensorBoardWSGI([plugin], data_provider=backend.provider)
    client = werkzeug_test.Client(app, wrappers.Response)
    base = "/data/plugin/gradflow/"
    routes = {
        "flow": lambda: client.get(base + "flow", query_string={"run": RUN}),
        "heatmap binary": lambda: client.get(
            base + "heatmap",
            query_string={"run": RUN, "stat": "abs_mean", "format": "binary"},
        ),
        "heatmap json": lambda: client.get(
            base + "heatmap",
            query_string={"run": RUN, "stat": "abs_mean"},
            headers={"Accept-Encoding": "gzip"},
        ),
        "lines binary": lambda: client.get(
            base + "lines",
            query_string={"run": RUN, "stat": "abs_mean", "format": "binary"},
        ),
    }
    print(
        f"  | route | cold s (median of {cold_repeats}) [min, max] "
        f"| warm ms (median of {repeats}) [min, max] "
        f"| warm, list_tensors re-checked, ms (median of {cold_repeats}) |"
    )
    print("  |---|---:|---:|---:|")
    for name, request in routes.items():
        colds, checked = [], []
        for _ in range(cold_repeats):
            run.write(1)  # new data: the cached run is stale
            backend.reload()
            wait_for_step(backend.provider, run.tag, run.steps - 1)
            time.sleep(plugin.listing_ttl)  # until the plugin asks list_tensors again
            colds.append(timed(request)[0])
        for _ in range(cold_repeats):
            time.sleep(plugin.listing_ttl)  # no new data, but asked again
            checked.append(timed(request)[0])
        warms = [timed(request)[0] for _ in range(repeats)]
        print(
            f"  | {name} | {statistics.median(colds):.2f} "
            f"[{min(colds):.2f}, {max(colds):.2f}] | "
            f"{1e3 * statistics.median(warms):.1f} "
            f"[{1e3 * min(warms):.1f}, {1e3 * max(warms):.1f}] | "
            f"{1e3 * statistics.median(checked):.1f} |"
        )
    binary = routes["heatmap binary"]().get_data()
    zipped = routes["heatmap json"]().get_data()
    json_mb = len(gzip.decompress(zipped)) / 1e6
    print(
        f"  heatmap payload ({len(run.layout.layers)} layers x 1000 columns): "
        f"binary {len(binary) / 1e6:.2f} MB, JSON {json_mb:.2f} MB "
        f"({len(zipped) / 1e6:.2f} MB gzipped); lines binary "
        f"{len(routes['lines binary']().get_data()) / 1e6:.2f} MB"
    )


def bench_triage(backend, runs: list[Run], repeats: int) -> None:
    names = tuple(f"run{k:03d}" for k in range(len(runs)))
    if isinstance(backend, Python):
        start = time.perf_counter()
        backend.reload()
        print(f"  ingestion (Reload): {time.perf_counter() - start:.1f} s")
    else:
        waited = wait_for_step(
            backend.provider, runs[0].tag, runs[0].steps - 1, runs=names
        )
        print(f"  ingestion: {waited:.1f} s")
    base = "/data/plugin/gradflow/"
    cases = {
        "runs, fresh plugin": [],
        "triage, fresh plugin": [],
        "flow of one run, fresh plugin": [],
        "runs, every run read": [],
        "triage, every run read": [],
    }
    order = None
    for _ in range(repeats):
        client = make_client(backend.provider)
        elapsed, response = timed(lambda c=client: c.get(base + "runs"))
        cases["runs, fresh plugin"].append(elapsed)
        listed = [r["run"] for r in response.json["runs"]]
        assert listed == list(names), listed
        client = make_client(backend.provider)
        elapsed, response = timed(lambda c=client: c.get(base + "triage"))
        cases["triage, fresh plugin"].append(elapsed)
        order = [r["run"] for r in response.json["runs"]]
        client = make_client(backend.provider)
        flow = timed(
            lambda c=client: c.get(base + "flow", query_string={"run": names[-1]})
        )
        cases["flow of one run, fresh plugin"].append(flow[0])
        for name in names:  # as if the tab had shown each run
            timed(
                lambda c=client, n=name: c.get(base + "steps", query_string={"run": n})
            )
        elapsed, response = timed(lambda c=client: c.get(base + "runs"))
        cases["runs, every run read"].append(elapsed)
        assert all(r["steps"] == runs[0].steps for r in response.json["runs"])
        after = timed(lambda c=client: c.get(base + "triage"))[0]
        cases["triage, every run read"].append(after)
    print(f"  | request | s (median of {repeats}) [min, max] |")
    print("  |---|---:|")
    for name, times in cases.items():
        print(
            f"  | {name} | {statistics.median(times):.3f} "
            f"[{min(times):.3f}, {max(times):.3f}] |"
        )
    print(f"  triage's first three: {order[:3]}")


def write_triage_runs(logdir: str, n: int, layers: int, steps: int) -> list[Run]:
    """``n`` runs; run k's layer 7 goes non-finite from step 0 when k == n // 2,
    so the triage has one run to put first."""
    runs = []
    for k in range(n):
        run = Run(logdir, layers, name=f"run{k:03d}")
        run.rng = np.random.default_rng(k)
        run.write(steps)
        runs.append(run)
    bad = runs[n // 2]
    bad_layout = bad.layout
    n_layers = len(bad_layout.layers)
    values = {name: np.ones(n_layers) for name in bad_layout.stats}  # all 1
    values["abs_mean"][7] = np.inf
    values["nonfinite"][7] = 3
    record = stats.record(values, n_layers, order=bad_layout.stats)  # (K, L)
    for _ in range(3):  # three more steps with a non-finite layer
        summary = gradflow_pb(bad_layout, record, [0.0, np.nan], with_metadata=False)
        bad.writer.add_event(
            event_pb2.Event(step=bad.steps, wall_time=time.time(), summary=summary)
        )
        bad.steps += 1
    bad.writer.flush()
    # every run ends at the same step, so one wait covers them all
    for run in runs:
        if run.steps < bad.steps:
            run.write(bad.steps - run.steps)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--case",
        choices=("routes", "overview", "llama"),
        default="routes",
        help="routes: one run's routes (or the triage, with --triage-runs); "
        "overview: a run far past TensorBoard's limit, drawn from every step; "
        "llama: a LLaMA-70B-shaped run (723 layers) of 20,000 steps",
    )
    parser.add_argument(
        "--layers", type=int, help="500 (overview: 20; llama: 80 decoder blocks)"
    )
    parser.add_argument(
        "--steps", type=int, help="10,000 (overview: 300,000; llama: 20,000)"
    )
    parser.add_argument("--repeats", type=int, default=20, help="warm requests")
    parser.add_argument("--cold-repeats", type=int, default=3, help="cold requests")
    parser.add_argument(
        "--provider", choices=("rust", "python", "both"), default="both"
    )
    parser.add_argument(
        "--triage-runs",
        type=int,
        default=0,
        help="benchmark the triage route over this many runs instead",
    )
    args = parser.parse_args()
    kinds = {"rust": [Rust], "python": [Python], "both": [Rust, Python]}
    if args.case == "overview":
        bench_overview(
            kinds[args.provider],
            args.layers or 20,
            args.steps or 300_000,
            args.repeats,
            args.cold_repeats,
        )
        return
    if args.case == "llama":
        bench_llama(
            kinds[args.provider],
            args.layers or 80,
            args.steps or 20_000,
            args.repeats,
            args.cold_repeats,
        )
        return
    args.layers = args.layers or 500
    args.steps = args.steps or 10_000
    if args.triage_runs:
        with tempfile.TemporaryDirectory() as logdir:
            start = time.perf_counter()
            runs = write_triage_runs(logdir, args.triage_runs, args.layers, args.steps)
            print(
                f"{args.triage_runs} runs of {args.layers} layers x {runs[0].steps} "
                f"steps: written in {time.perf_counter() - start:.1f} s"
            )
            for kind in kinds[args.provider]:
                backend = kind(logdir)
                print(f"\n{backend.name}:")
                try:
                    bench_triage(backend, runs, args.cold_repeats)
                finally:
                    backend.close()
            for run in runs:
                run.writer.close()
        return
    with tempfile.TemporaryDirectory() as logdir:
        run = Run(logdir, args.layers)
        start = time.perf_counter()
        run.write(args.steps)
        size = sum(
            os.path.getsize(os.path.join(logdir, RUN, f))
            for f in os.listdir(os.path.join(logdir, RUN))
        )
        per_value = size / (args.layers * len(run.layout.stats) * run.steps)
        print(
            f"{args.layers} layers x {args.steps} steps: wrote {size / 1e6:.1f} MB "
            f"in {time.perf_counter() - start:.1f} s, {per_value:.3f} bytes per "
            f"layer, statistic and step ({len(run.layout.stats)} statistics)"
        )
        for kind in kinds[args.provider]:
            backend = kind(logdir)
            print(f"\n{backend.name}:")
            try:
                bench(backend, run, args.repeats, args.cold_repeats)
            finally:
                backend.close()
        run.writer.close()


if __name__ == "__main__":
    main()
