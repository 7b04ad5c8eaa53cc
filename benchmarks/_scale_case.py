"""``bench_plugin.py --case llama``: a run shaped like LLaMA-70B (Hugging Face
``LlamaForCausalLM`` names: 80 decoder blocks of 9 weights, plus the
embedding, the final norm and the head: 723 layers) written as ``watch``
writes it (segments of per-step records, overview records), and every route
of the plugin over it, per data provider:

* cold, fresh plugin: the route as the first request of a new plugin (it
  reads the whole run: every segment, the overview; then diagnoses or bins);
* cold, new data: the route's first request after one more step was written
  and ingested (a plugin that had read the run reads it again);
* warm: the median of repeated identical requests (the cached answer);

and the event-file bytes per layer and step, and resident memory (RSS): the
Rust data server's as it started and once it had loaded the run, and this
process's (the plugin's side of TensorBoard) before and after the answers.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import tempfile
import time

import numpy as np
from _tb_backends import (
    RUN,
    FileWriter,
    Python,
    binary_answer,
    make_client,
    rss_mb,
    server_pid,
    timed,
    wait_for_step,
)

from tb_gradflow import metadata, segments
from tb_gradflow.record_writer import RecordWriter

ROLES = (  # the weights of one LlamaDecoderLayer, in model order
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
    "input_layernorm",
    "post_attention_layernorm",
)


def llama_names(blocks: int) -> tuple[str, ...]:
    """``LlamaForCausalLM``'s weight names (80 blocks: 723)."""
    inner = [f"model.layers.{i}.{role}" for i in range(blocks) for role in ROLES]
    return ("model.embed_tokens", *inner, "model.norm", "lm_head")


class WatchedRun:
    """A LLaMA-shaped watcher's run: lognormal abs_mean around each layer's
    median (abs_max 5x, norm 30x), written through the watcher's own
    ``RecordWriter``."""

    def __init__(self, logdir: str, blocks: int) -> None:
        names = llama_names(blocks)
        self.layout = metadata.Layout(layers=names, sparse=(False,) * len(names))
        self.writer = FileWriter(os.path.join(logdir, RUN))
        self.records = RecordWriter(self.writer, self.layout, "torch")
        self.rng = np.random.default_rng(70)
        self.medians = np.exp(self.rng.normal(np.log(1e-3), 1.0, len(names)))
        self.steps = 0

    @property
    def tag(self) -> str:
        """The tag of the segment holding the last step written."""
        per_segment = segments.segment_steps(self.layout)
        index = 0 if per_segment is None else max(self.steps - 1, 0) // per_segment
        return segments.segment_tag(self.layout, segments.Segment(0, index))

    def write(self, n: int) -> None:
        layers = len(self.layout.layers)
        for start in range(0, n, 1000):
            m = min(1000, n - start)
            mean = self.medians * np.exp(self.rng.normal(0.0, 0.3, (m, layers)))
            values = {"abs_mean": mean, "abs_max": 5 * mean, "norm": 30 * mean}
            values |= {"nonfinite": np.zeros_like(mean), "rows": np.ones_like(mean)}
            block = np.stack([values[k] for k in self.layout.stats], axis=1)
            for i in range(m):  # block: (m, K, L)
                self.records.write_step(self.steps, block[i], False, math.nan)
                self.steps += 1
        self.writer.file_writer.flush()

    def close(self) -> None:
        self.records.close()
        self.writer.file_writer.close()


def _routes(run: str) -> dict[str, tuple[str, dict]]:
    binary = {"stat": "abs_mean", "format": "binary"}
    return {
        "flow": ("flow", {"run": run}),
        "flow per block": ("flow", {"run": run, "group": "block"}),
        "steps": ("steps", {"run": run}),
        "heatmap binary": ("heatmap", {"run": run, **binary}),
        "heatmap JSON": ("heatmap", {"run": run, "stat": "abs_mean"}),
        "heatmap per block": ("heatmap", {"run": run, "group": "block", **binary}),
        "lines binary": ("lines", {"run": run, **binary}),
        "alerts": ("alerts", {"run": run}),
        "runs": ("runs", {}),
        "triage": ("triage", {}),
    }


def bench_llama(kinds, blocks: int, steps: int, repeats: int, cold: int) -> None:
    with tempfile.TemporaryDirectory() as logdir:
        run = WatchedRun(logdir, blocks)
        start = time.perf_counter()
        run.write(steps)  # one session; the last partial block is never written
        written = time.perf_counter() - start
        size = sum(
            os.path.getsize(os.path.join(logdir, RUN, f))
            for f in os.listdir(os.path.join(logdir, RUN))
        )
        layers = len(run.layout.layers)
        print(
            f"{layers} layers x {steps} logged steps: {size / 1e6:.1f} MB of event "
            f"files, written in {written:.0f} s; {size / (layers * steps):.2f} bytes "
            f"per layer and step ({len(run.layout.stats)} statistics), "
            f"{segments.segment_steps(run.layout)} steps per segment"
        )
        for kind in kinds:
            backend = kind(logdir)
            print(f"\n{backend.name}:")
            try:
                _bench(backend, run, size, repeats, cold)
            finally:
                backend.close()
        run.close()


def _bench(backend, run: WatchedRun, size: int, repeats: int, cold: int) -> None:
    own = os.getpid()
    if isinstance(backend, Python):
        before = rss_mb(own)
        start = time.perf_counter()
        backend.reload()
        print(
            f"  ingestion (Reload): {time.perf_counter() - start:.1f} s; this "
            f"process's RSS {before:.0f} MB before, {rss_mb(own):.0f} MB after"
        )
    else:
        pid = server_pid()
        before = backend.started_rss
        waited = wait_for_step(backend.provider, run.tag, run.steps - 1)
        loaded = rss_mb(pid)
        print(
            f"  ingestion: {waited:.1f} s; data server RSS {before:.0f} MB as it "
            f"started, {loaded:.0f} MB loaded: {(loaded - before) / (size / 2**20):.2f}"
            " x the event files"
        )
    base = "/data/plugin/gradflow/"
    routes = _routes(RUN)
    fresh: dict[str, list[float]] = {}
    for name, (route, params) in routes.items():
        fresh[name] = []
        for _ in range(cold):
            client = make_client(backend.provider)
            request = functools.partial(client.get, base + route, query_string=params)
            fresh[name].append(timed(request)[0])
            del client, request
    before = rss_mb(own)
    client = make_client(backend.provider)
    warm: dict[str, list[float]] = {}
    for name, (route, params) in routes.items():
        request = functools.partial(client.get, base + route, query_string=params)
        timed(request)
        warm[name] = [timed(request)[0] for _ in range(repeats)]
    held = rss_mb(own) - before
    new_data: dict[str, list[float]] = {}
    for name in ("flow", "heatmap binary", "lines binary"):
        route, params = routes[name]
        request = functools.partial(client.get, base + route, query_string=params)
        new_data[name] = []
        for _ in range(cold):
            run.write(1)  # new data: the cached run is stale
            backend.reload()
            wait_for_step(backend.provider, run.tag, run.steps - 1)
            time.sleep(1.0)  # the plugin's listing_ttl: it asks list_tensors again
            new_data[name].append(timed(request)[0])
    print(
        f"  | route | cold s, fresh plugin (median of {cold}) [min, max] "
        f"| cold s, new data | warm ms (median of {repeats}) |"
    )
    print("  |---|---:|---:|---:|")
    for name in routes:
        times = fresh[name]
        again = new_data.get(name)
        print(
            f"  | {name} | {statistics.median(times):.2f} [{min(times):.2f}, "
            f"{max(times):.2f}] | "
            + (f"{statistics.median(again):.2f}" if again else "–")
            + f" | {1e3 * statistics.median(warm[name]):.1f} |"
        )
    header, _ = binary_answer(
        client.get(base + "heatmap", query_string=routes["heatmap binary"][1])
    )
    print(
        f"  heatmap answer: {len(header['layers'])} rows x {len(header['steps'])} "
        f"columns, from {header.get('from', 'steps')}; this process's RSS grew "
        f"{held:.0f} MB while one plugin read and cached the run "
        f"({held / (size / 2**20):.2f} x the event files)"
    )
