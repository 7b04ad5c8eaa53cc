"""TensorBoard's two data providers over a log directory, and what the
plugin benchmarks measure them with (a fresh plugin behind TensorBoard's WSGI
app, timing, resident memory)."""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import time
from collections.abc import Callable

import numpy as np
from tensorboard import context
from tensorboard.backend import application
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.compat.proto import event_pb2
from tensorboard.data import server_ingester
from tensorboard.plugins import base_plugin
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import grpc_util
from werkzeug import test as werkzeug_test
from werkzeug import wrappers

from tb_gradflow import metadata
from tb_gradflow.loader import DEFAULT_SAMPLES_PER_RUN, GradFlowLoader

RUN = "big"


class FileWriter:
    """What ``RecordWriter`` needs of a ``SummaryWriter``: a file writer that
    adds each summary at its step."""

    def __init__(self, path: str) -> None:
        self.file_writer = EventFileWriter(path, max_queue_size=100)

    def _get_file_writer(self):
        return self

    def add_summary(self, summary, global_step: int) -> None:
        event = event_pb2.Event(
            step=global_step, wall_time=time.time(), summary=summary
        )
        self.file_writer.add_event(event)


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid``, MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def server_pid() -> int | None:
    """The Rust data server this process started (its child), if any."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # the parent pid
            return int(entry)
    return None


def binary_answer(response: wrappers.Response) -> tuple[dict, np.ndarray]:
    """The JSON header and the float32 values of a binary answer."""
    body = response.get_data()
    (n,) = struct.unpack("<I", body[:4])
    header = json.loads(body[4 : 4 + n])
    return header, np.frombuffer(body[4 + n + (-(4 + n) % 4) :], dtype="<f4")


class Rust:
    """TensorBoard's Rust data server (``--load_fast=true``)."""

    name = "rust data server"

    def __init__(self, logdir: str) -> None:
        flags = argparse.Namespace(samples_per_plugin={})
        GradFlowLoader().fix_flags(flags)  # what `tensorboard --logdir` does
        self.ingester = server_ingester.SubprocessServerDataIngester(
            server_binary=server_ingester.get_server_binary(),
            logdir=logdir,
            reload_interval=1,
            channel_creds_type=grpc_util.ChannelCredsType.LOCAL,
            samples_per_plugin=flags.samples_per_plugin,
        )
        self.ingester.start()
        self.provider = self.ingester.data_provider
        pid = server_pid()
        # MB as it started, before it has read much of the logdir
        self.started_rss = rss_mb(pid) if pid else math.nan

    def reload(self) -> None:
        pass  # reloads by itself every second

    def close(self) -> None:
        # The server runs with --die-after-stdin; TensorBoard has no stop method.
        self.ingester._stdin_handle.close()


class Python:
    """TensorBoard's Python multiplexer (``--load_fast=false``)."""

    name = "python multiplexer"

    def __init__(self, logdir: str) -> None:
        flags = argparse.Namespace(samples_per_plugin={})
        GradFlowLoader().fix_flags(flags)  # what `tensorboard --logdir` does
        self.mux = plugin_event_multiplexer.EventMultiplexer(
            tensor_size_guidance=flags.samples_per_plugin
        )
        self.mux.AddRunsFromDirectory(logdir)
        self.provider = tb_data_provider.MultiplexerDataProvider(self.mux, logdir)

    def reload(self) -> None:
        self.mux.Reload()

    def close(self) -> None:
        pass


def wait_for_step(
    provider, tag: str, step: int, timeout: float = 600.0, runs: tuple = (RUN,)
) -> float:
    """Seconds until the provider lists ``step`` as the last step of ``tag``
    in each of ``runs``."""
    start = time.perf_counter()
    while True:
        listing = provider.list_tensors(
            context.RequestContext(), experiment_id="", plugin_name=metadata.PLUGIN_NAME
        )
        series = [listing.get(run, {}).get(tag) for run in runs]
        if all(s is not None and s.max_step >= step for s in series):
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"step {step} not ingested after {timeout} s")
        time.sleep(0.05)


def timed(fn: Callable[[], wrappers.Response]) -> tuple[float, wrappers.Response]:
    start = time.perf_counter()
    response = fn()
    elapsed = time.perf_counter() - start
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return elapsed, response


def make_client(provider):
    """A fresh plugin (empty cache) behind TensorBoard's WSGI app."""
    plugin = GradFlowLoader().load(
        base_plugin.TBContext(
            data_provider=provider,
            sampling_hints={metadata.PLUGIN_NAME: DEFAULT_SAMPLES_PER_RUN},
        )
    )
    app = application.TensorBoardWSGI([plugin], data_provider=provider)
    return werkzeug_test.Client(app, wrappers.Response)
