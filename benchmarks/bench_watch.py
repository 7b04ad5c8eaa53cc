"""Training-step time with tb_gradflow.watch against the alternatives, in one run.

(a) a 24-layer MLP of width 512, batch 64; (b) a 2-layer LSTM (hidden 256,
sequence 50, batch 32). Variants: nothing (twice: the A/A noise), watch every
step and every 10th, one plain read of the gradients watch reads (the floor for
any statistic), the blog post's per-layer loop, a per-parameter L2-norm loop, and a
per-parameter ``add_histogram`` loop; ``trace_nonfinite`` not armed, and its
hooks armed. Method: ``_harness.py`` (interleaved,
shuffled blocks). Each variant is set up once for all its blocks (its own SGD
optimizer, writer and watcher: the steady state of a run), and its writer
flushes inside every timed block.

Usage:
    python benchmarks/bench_watch.py            # both models, full run (~3 min)
    python benchmarks/bench_watch.py --quick    # smoke run
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import NamedTuple

import _harness
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow
from tb_gradflow.module_tracer import ModuleTracer

BASELINE = "baseline (nothing)"
UPDATE = ("update_ratio", "weight_norm")
WITH_UPDATE_1 = "watch(every=1, stats=update_ratio+weight_norm)"
WITH_UPDATE_10 = "watch(every=10, stats=update_ratio+weight_norm)"
SINGLE_READ = "single read: g.abs().sum() per tensor, 1 copy"
TRACE_IDLE = "watch(every=1, trace_nonfinite=True), not armed"
TRACE_ARMED = "non-finite trace armed (hooks on every module)"


class MLP(nn.Module):
    """24 Linear layers: 23 x (512 -> 512, ReLU), then 512 -> 10."""

    def __init__(self, width: int = 512, depth: int = 24, classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LSTMClassifier(nn.Module):
    """nn.LSTM(64, 256, num_layers=2) + Linear(256, 10) on the last step."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(64, 256, num_layers=2, batch_first=True)
        self.head = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)  # (B, T, H)
        return self.head(out[:, -1])


def make_case(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, int]:
    """Model, inputs, targets and steps per block."""
    if name == "mlp":
        return MLP(), torch.randn(64, 512), torch.randint(0, 10, (64,)), 20
    return LSTMClassifier(), torch.randn(32, 50, 64), torch.randint(0, 10, (32,)), 10


# -- the variants ------------------------------------------------------------
# Each variant is set up once, for all its blocks, with an optimizer of its own
# (plain SGD: no state, so every variant trains the same model alike) and, for
# the TensorBoard variants, a writer of its own: blocks measure the steady
# state of a training run, not the one-time set-up of a watcher or a writer.
# A variant is (optimizer, hook, flush, clock): `hook` runs after backward
# (None: nothing), `flush` at the end of every block (inside the timed region,
# so that a background writer's backlog counts), and `clock` (or None)
# accumulates time spent inside the optimizer's step pre-hooks, where watch()
# works.


class Variant(NamedTuple):
    opt: torch.optim.Optimizer
    hook: Callable[[], None] | None
    flush: Callable[[], None]
    clock: Clock | None
    # around each block, outside the timed region
    enter: Callable[[], None] | None = None
    leave: Callable[[], None] | None = None


class Clock:
    """Accumulates the seconds between a ``start`` and a ``stop`` hook, around
    the step pre-hooks and around the step post-hooks registered in between
    (the optimizer's own step is not counted)."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.total = 0.0
        self._t0 = 0.0
        opt.register_step_pre_hook(self._start)
        opt.register_step_post_hook(self._start)

    def _start(self, *args) -> None:
        self._t0 = time.perf_counter()

    def stop_after(self, opt: torch.optim.Optimizer) -> None:
        """Registers the stop hooks: call after the hooks to be timed."""
        opt.register_step_pre_hook(self._stop)
        opt.register_step_post_hook(self._stop)

    def _stop(self, *args) -> None:
        self.total += time.perf_counter() - self._t0


def watched_weights(model: nn.Module) -> list[nn.Parameter]:
    """The tensors watch() reads with its defaults (biases excluded)."""
    return [
        p
        for n, p in model.named_parameters()
        if not n.rsplit(".")[-1].startswith("bias")
    ]


def make_variants(model: nn.Module, logdir: str, stack: ExitStack) -> dict:
    """Every variant, set up; ``stack`` closes their writers and watchers."""
    weights = watched_weights(model)

    def sgd() -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.01)

    def plain(hook=None) -> Variant:
        return Variant(sgd(), hook, lambda: None, None)

    def watch(every: int, stats: tuple[str, ...] = (), trace=False) -> Variant:
        opt = sgd()
        folder = f"{logdir}/watch{every}{'-'.join(('', *stats))}{trace}"
        writer = stack.enter_context(SummaryWriter(folder))
        clock = Clock(opt)
        stack.enter_context(
            tb_gradflow.watch(
                model,
                writer,
                optimizer=opt,
                every=every,
                stats=stats,
                trace_nonfinite=trace,
            )
        )
        clock.stop_after(opt)
        return Variant(opt, None, writer.flush, clock)

    def single_read():
        torch.stack([p.grad.abs().sum() for p in weights]).tolist()

    def blog_post_loop():
        for p in weights:  # the blog post's: one float() (a host sync) per layer
            float(p.grad.abs().mean())

    def l2_loop():  # Lightning-style grad_norm
        torch.stack([p.grad.norm(2) for p in weights]).tolist()

    def histograms() -> Variant:
        writer = stack.enter_context(SummaryWriter(f"{logdir}/hist"))
        names = [n for n, p in model.named_parameters() if p in set(weights)]
        step = itertools.count()

        def hook():
            k = next(step)
            for n, p in zip(names, weights):
                writer.add_histogram(f"grad/{n}", p.grad, k)

        return Variant(sgd(), hook, writer.flush, None)

    def armed_trace() -> Variant:
        """The hooks trace_nonfinite arms after a non-finite step, armed for
        the whole block; each step's events taken to the host."""
        names = {id(p): n for n, p in model.named_parameters()}
        tracer = ModuleTracer(model, names)
        return Variant(
            sgd(), tracer.take, lambda: None, None, tracer.arm, tracer.disarm
        )

    return {
        BASELINE: plain(),
        "baseline again (A/A noise)": plain(),
        "watch(every=1)": watch(1),
        "watch(every=10)": watch(10),
        WITH_UPDATE_1: watch(1, UPDATE),
        WITH_UPDATE_10: watch(10, UPDATE),
        SINGLE_READ: plain(single_read),
        "blog post loop: float(g.abs().mean()) per layer": plain(blog_post_loop),
        "per-parameter L2 norm loop, 1 copy": plain(l2_loop),
        "add_histogram per parameter": histograms(),
        TRACE_IDLE: watch(1, trace=True),
        TRACE_ARMED: armed_trace(),
    }


def block(model, x, y, steps, variant: Variant, spent: list[float]) -> _harness.Block:
    """One block of training steps of one variant, ending with its flush. Also
    appends to ``spent`` the seconds per step spent in the variant's own work:
    its hook, its flush and its time inside the optimizer's pre-hooks."""
    loss_fn = nn.CrossEntropyLoss()
    opt, hook, flush, clock, enter, leave = variant

    def run() -> float:
        if enter is not None:
            enter()
        own = 0.0
        in_hooks = clock.total if clock else 0.0
        start = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            if hook is not None:
                t0 = time.perf_counter()
                hook()
                own += time.perf_counter() - t0
            opt.step()
        t0 = time.perf_counter()
        flush()
        end = time.perf_counter()
        own += end - t0 + ((clock.total - in_hooks) if clock else 0.0)
        spent.append(own / steps)
        if leave is not None:
            leave()
        return (end - start) / steps

    return run


def bench(case: str, reps: int, quick: bool) -> None:
    torch.manual_seed(0)
    model, x, y, steps = make_case(case)
    if quick:
        steps = 2
    with tempfile.TemporaryDirectory() as logdir, ExitStack() as stack:
        variants = make_variants(model, logdir, stack)
        spent: dict[str, list[float]] = {k: [] for k in variants}
        blocks = {
            k: block(model, x, y, steps, v, spent[k]) for k, v in variants.items()
        }
        results = _harness.interleave(blocks, reps)
    print(f"\n### {case}: {reps} reps x {steps} steps, per-step time")
    print(_harness.table(results, BASELINE))
    watch1 = _harness.added_ms(results, "watch(every=1)", BASELINE)
    single = _harness.added_ms(results, SINGLE_READ, BASELINE)
    hist = _harness.added_ms(results, "add_histogram per parameter", BASELINE)
    print(
        f"\n{case}, step-time differences: watch(every=1) adds {watch1:.3f} ms = "
        f"{watch1 / single:.2f}x what one plain read adds ({single:.3f} ms); "
        f"add_histogram adds {hist / watch1:.1f}x what watch adds."
    )
    own = {k: statistics.median(v[1:]) * 1e3 for k, v in spent.items()}  # no warm-up
    print(f"\n{case}, time inside each variant's own work per step (median ms):")
    print("| variant | ms per step | / single read |")
    print("|---|---:|---:|")
    for k, ms in own.items():
        if k not in (BASELINE, "baseline again (A/A noise)"):
            print(f"| {k} | {ms:.3f} | {ms / own[SINGLE_READ]:.2f} |")
    w1, hist1 = own["watch(every=1)"], own["add_histogram per parameter"]
    print(
        f"\n{case}, direct: watch(every=1) {w1:.3f} ms = "
        f"{w1 / own[SINGLE_READ]:.2f}x the plain read; "
        f"add_histogram {hist1 / w1:.1f}x watch."
    )
    u1, u10 = own[WITH_UPDATE_1], own[WITH_UPDATE_10]
    print(
        f"{case}, update statistics: every=1 {u1:.3f} ms = {u1 / w1:.2f}x the "
        f"gradient statistics alone (target <= 2); every=10 {u10:.3f} ms = "
        f"{u10 / own['watch(every=10)']:.2f}x."
    )
    idle = own[TRACE_IDLE]
    base, armed = (
        statistics.median(_harness.seconds(results, k)) * 1e3
        for k in (BASELINE, TRACE_ARMED)
    )
    print(
        f"{case}, non-finite trace: not armed, watch(every=1) {idle:.3f} ms "
        f"= {idle / w1:.2f}x without it; armed, a step takes {armed:.2f} ms = "
        f"{armed / base:.2f}x the baseline's {base:.2f} ms."
    )


def main() -> None:
    parser = _harness.arguments(__doc__, reps=9)
    parser.add_argument("--case", choices=["mlp", "lstm", "both"], default="both")
    args = _harness.parse(parser)
    cases = ["mlp", "lstm"] if args.case == "both" else [args.case]
    for case in cases:
        bench(case, args.reps, args.quick)


if __name__ == "__main__":
    main()
