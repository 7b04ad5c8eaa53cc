"""Training-step time with tb_gradflow.watch against the alternatives, in one run.

(a) a 24-layer MLP of width 512, batch 64; (b) a 2-layer LSTM (hidden 256,
sequence 50, batch 32). Variants: nothing (twice: the A/A noise), watch every
step and every 10th, one plain read of the gradients watch reads (the floor for
any statistic), the seed's per-layer loop, a per-parameter L2-norm loop, and a
per-parameter ``add_histogram`` loop. Method: ``_harness.py`` (interleaved,
shuffled blocks; TensorBoard writers flush inside the timed block).

Usage:
    python benchmarks/bench_watch.py            # both models, full run (~3 min)
    python benchmarks/bench_watch.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import _harness
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow

BASELINE = "baseline (nothing)"
SINGLE_READ = "single read: g.abs().sum() per tensor, 1 copy"


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
# Each factory sets a variant up for one block and returns (hook, close, clock):
# `hook` runs after backward (None: nothing), `close` after the block (writers
# flush there), and `clock` (or None) accumulates time spent inside the
# optimizer's step pre-hooks, where watch() works.


class Clock:
    """Accumulates the seconds between a ``start`` and a ``stop`` pre-hook."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.total = 0.0
        self._t0 = 0.0
        self._handles = [opt.register_step_pre_hook(self._start)]

    def _start(self, *args) -> None:
        self._t0 = time.perf_counter()

    def stop_after(self, opt: torch.optim.Optimizer) -> None:
        """Registers the stop hook: call after the hooks to be timed."""
        self._handles.append(opt.register_step_pre_hook(self._stop))

    def _stop(self, *args) -> None:
        self.total += time.perf_counter() - self._t0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def watched_weights(model: nn.Module) -> list[nn.Parameter]:
    """The tensors watch() reads with its defaults (biases excluded)."""
    return [
        p
        for n, p in model.named_parameters()
        if not n.rsplit(".")[-1].startswith("bias")
    ]


def variant_factories(model, opt, logdir) -> dict[str, Callable]:
    weights = watched_weights(model)

    def nothing():
        return None, lambda: None, None

    def watch(every):
        def make():
            writer = SummaryWriter(f"{logdir}/watch{every}")
            clock = Clock(opt)
            flow = tb_gradflow.watch(model, writer, optimizer=opt, every=every)
            clock.stop_after(opt)

            def close():
                flow.remove()
                clock.remove()
                writer.flush()
                writer.close()

            return None, close, clock

        return make

    def per_step(fn):
        def make():
            return fn, lambda: None, None

        return make

    def single_read():
        torch.stack([p.grad.abs().sum() for p in weights]).tolist()

    def seed_loop():
        for p in weights:  # the seed: one float() (a host sync) per layer
            float(p.grad.abs().mean())

    def l2_loop():  # Lightning-style grad_norm
        torch.stack([p.grad.norm(2) for p in weights]).tolist()

    def histograms():
        writer = SummaryWriter(f"{logdir}/hist")
        names = [n for n, p in model.named_parameters() if p in set(weights)]
        state = {"step": 0}

        def hook():
            for n, p in zip(names, weights):
                writer.add_histogram(f"grad/{n}", p.grad, state["step"])
            state["step"] += 1

        def close():
            writer.flush()
            writer.close()

        return hook, close, None

    return {
        BASELINE: nothing,
        "baseline again (A/A noise)": nothing,
        "watch(every=1)": watch(1),
        "watch(every=10)": watch(10),
        SINGLE_READ: per_step(single_read),
        "seed loop: float(g.abs().mean()) per layer": per_step(seed_loop),
        "per-parameter L2 norm loop, 1 copy": per_step(l2_loop),
        "add_histogram per parameter": histograms,
    }


def block(model, opt, x, y, steps, factory, spent: list[float]) -> _harness.Block:
    """One block of training steps with a variant set up and torn down inside it
    (so writers flush inside the timed region). Also appends to ``spent`` the
    seconds per step spent in the variant's own work: its hook, its close and
    its time inside the optimizer's pre-hooks."""
    loss_fn = nn.CrossEntropyLoss()

    def run() -> float:
        hook, close, clock = factory()
        own = 0.0
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
        close()
        end = time.perf_counter()
        own += end - t0 + (clock.total if clock else 0.0)
        spent.append(own / steps)
        return (end - start) / steps

    return run


def bench(case: str, reps: int, quick: bool) -> None:
    torch.manual_seed(0)
    model, x, y, steps = make_case(case)
    if quick:
        steps = 2
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with tempfile.TemporaryDirectory() as logdir:
        factories = variant_factories(model, opt, logdir)
        spent: dict[str, list[float]] = {k: [] for k in factories}
        blocks = {
            k: block(model, opt, x, y, steps, f, spent[k]) for k, f in factories.items()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--case", choices=["mlp", "lstm", "both"], default="both")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    cases = ["mlp", "lstm"] if args.case == "both" else [args.case]
    for case in cases:
        bench(case, 2 if args.quick else args.reps, args.quick)


if __name__ == "__main__":
    main()
