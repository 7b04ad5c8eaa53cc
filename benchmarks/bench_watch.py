"""Training-step time with tb_gradflow.watch against the alternatives, in one run.

Every variant's block of training steps runs once per rep, in a new shuffled
order per rep (seeded), after one warm-up block each, so slow periods of a
shared machine hit all variants alike. Reported per variant: median/min/max of
the per-step time over reps, the ratio of medians to the baseline, the time it
adds, and the paired ratio (per-rep ratio to the same rep's baseline block).

Usage:
    python benchmarks/bench_watch.py            # both models, full run (~3 min)
    python benchmarks/bench_watch.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow


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


# -- the variants: each returns (after_backward, before_step, close) -----------


def watched_weights(model: nn.Module) -> list[nn.Parameter]:
    """The tensors watch() reads with its defaults (biases excluded)."""
    return [p for n, p in model.named_parameters() if not n.rsplit(".")[-1].startswith("bias")]


def variant_factories(model, opt, logdir) -> dict[str, Callable]:
    weights = watched_weights(model)

    def nothing():
        return None, lambda: None

    def watch(every):
        def make():
            writer = SummaryWriter(f"{logdir}/watch{every}")
            flow = tb_gradflow.watch(model, writer, optimizer=opt, every=every)

            def close():
                flow.remove()
                writer.flush()
                writer.close()

            return None, close

        return make

    def per_step(fn):
        def make():
            state = {"step": 0}

            def hook():
                fn(state["step"])
                state["step"] += 1

            return hook, lambda: None

        return make

    def single_read(step):
        torch.stack([p.grad.abs().sum() for p in weights]).tolist()

    def seed_loop(step):
        for p in weights:  # the seed: one float() (a host sync) per layer
            float(p.grad.abs().mean())

    def l2_loop(step):  # Lightning-style grad_norm
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

        return hook, close

    return {
        "baseline (nothing)": nothing,
        "baseline again (A/A noise)": nothing,
        "watch(every=1)": watch(1),
        "watch(every=10)": watch(10),
        "single read: g.abs().sum() per tensor, 1 copy": per_step(single_read),
        "seed loop: float(g.abs().mean()) per layer": per_step(seed_loop),
        "per-parameter L2 norm loop, 1 copy": per_step(l2_loop),
        "add_histogram per parameter": histograms,
    }


def run_block(model, opt, x, y, steps, factory) -> float:
    hook, close = factory() if factory else (None, lambda: None)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        if hook is not None:
            hook()
        opt.step()
    close()  # writers flush inside the timed block
    return (time.perf_counter() - start) / steps


def bench(case: str, reps: int, quick: bool) -> dict[str, list[float]]:
    torch.manual_seed(0)
    model, x, y, steps = make_case(case)
    if quick:
        steps = 2
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as logdir:
        factories = variant_factories(model, opt, logdir)
        for f in factories.values():  # warm-up block each
            run_block(model, opt, x, y, steps, f)
        times: dict[str, list[float]] = {k: [] for k in factories}
        for _ in range(reps):
            order = list(factories)
            rng.shuffle(order)
            for k in order:
                times[k].append(run_block(model, opt, x, y, steps, factories[k]))
    return times


def report(case: str, times: dict[str, list[float]]) -> None:
    base = times["baseline (nothing)"]
    base_med = statistics.median(base)
    print(f"\n### {case}: {len(base)} reps, per-step ms (median/min/max), shuffled blocks")
    print("| variant | median ms | min | max | ratio | added ms | paired ratio [min, max] |")
    print("|---|---:|---:|---:|---:|---:|---|")
    added = {}
    for k, ts in times.items():
        med = statistics.median(ts)
        paired = [t / b for t, b in zip(ts, base)]
        added[k] = (med - base_med) * 1e3
        print(
            f"| {k} | {med * 1e3:.3f} | {min(ts) * 1e3:.3f} | {max(ts) * 1e3:.3f} "
            f"| {med / base_med:.3f} | {added[k]:+.3f} | {statistics.median(paired):.3f} "
            f"[{min(paired):.3f}, {max(paired):.3f}] |"
        )
    single = added["single read: g.abs().sum() per tensor, 1 copy"]
    watch1 = added["watch(every=1)"]
    hist = added["add_histogram per parameter"]
    print(
        f"\n{case}: watch(every=1) adds {watch1:.3f} ms = "
        f"{watch1 / single:.2f}x what one plain read adds ({single:.3f} ms); "
        f"add_histogram adds {hist / watch1:.1f}x what watch adds."
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
        report(case, bench(case, 2 if args.quick else args.reps, args.quick))


if __name__ == "__main__":
    main()
