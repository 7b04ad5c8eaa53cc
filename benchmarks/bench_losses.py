"""Benchmark: trainkit's soft nearest neighbour loss vs a blog post's loop and a floor.

For n = 256 and 1024 samples, dim 128, 10 classes, x ~ N(0, 1) float32, T = 1, each
variant runs forward + backward:

- floor: ``torch.cdist`` plus one ``logsumexp`` over the same batch (the least any
  batched version has to do; its exponents are -cdist, so exp() stays in its fast
  range),
- blog post loop: the per-sample loop of "Implementing Loss Functions", with its
  slips mended (``idx`` defined, the per-sample losses added instead of
  overwritten),
- plain vectorised: masked log-sum-exps on the n x n matrix under autograd, no clamp
  (for context: the "straightforward vectorised version" of issue 5),
- trainkit: ``trainkit.losses.soft_nearest_neighbor_loss``.

Method: ``_harness.py`` (one process, 2 threads; each rep times one block of every
variant, in a new shuffled order per rep, after one warm-up block each). Reported:
median / min / max over reps of the time per call, the ratio of medians to the floor,
the time added to it, the paired ratio (per rep, to the floor block of the same rep),
how many times faster than the blog post loop, and psi = the share of a block's
wall time in which some runnable task waited for a CPU (/proc/pressure/cpu); a
high psi means the figures are disturbed (a warning when a median psi is over 10 %).

Run one at a time on a shared machine:
``flock /tmp/bench.lock .venv/bin/python benchmarks/bench_losses.py`` (``--quick`` for
a smoke run).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import _harness
import torch

from trainkit.losses import soft_nearest_neighbor_loss

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # the shared references
from references import post_snnl_loop

DIM = 128
CLASSES = 10
TEMPERATURE = 1.0
SIZES = (256, 1024)


def plain_vectorised(x: torch.Tensor, y: torch.Tensor, temp: float) -> torch.Tensor:
    """Masked log-sum-exps under autograd, without the exponent clamp."""
    n = x.shape[0]
    logits = -torch.cdist(x, x).square() / temp
    eye = torch.eye(n, dtype=torch.bool)
    logits = logits.masked_fill(eye, -math.inf)
    same = (y[:, None] == y[None, :]) & ~eye
    lse_all = torch.logsumexp(logits, 1)
    lse_same = torch.logsumexp(logits.masked_fill(~same, -math.inf), 1)
    return (lse_all - lse_same).mean()


def floor(x: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(-torch.cdist(x, x), 1).sum()


def fwd_bwd(loss_fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor):
    def run() -> None:
        x = x0.detach().requires_grad_()
        loss_fn(x).backward()

    return run


def check(n: int, x: torch.Tensor, y: torch.Tensor) -> None:
    rows = []
    for dtype in (torch.float64, torch.float32):
        xd = x.to(dtype).requires_grad_()
        ref = post_snnl_loop(xd, y, TEMPERATURE)
        (ref_g,) = torch.autograd.grad(ref, xd)
        got = soft_nearest_neighbor_loss(xd, y, TEMPERATURE)
        (got_g,) = torch.autograd.grad(got, xd)
        rows.append(
            f"| {n} | {str(dtype)[6:]} | {ref.item():.7g} | {got.item():.7g} "
            f"| {(got_g - ref_g).abs().max().item():.2g} |"
        )
    print("| n | dtype | blog post loop | trainkit | max abs grad diff |")
    print("|---|---|---:|---:|---:|")
    print("\n".join(rows))
    print()


def bench(n: int, reps: int, scale_iters: float, seed: int) -> dict:
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, DIM, generator=gen)
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    check(n, x, y)

    fast_iters = max(1, round(scale_iters * 20480 / n))  # ~20 at n = 1024
    base = "floor: cdist + logsumexp"
    loop = "blog post loop (mended)"
    ours = "trainkit soft_nearest_neighbor_loss"
    blocks = {
        base: _harness.timed(fwd_bwd(floor, x), fast_iters),
        loop: _harness.timed(
            fwd_bwd(lambda x: post_snnl_loop(x, y, TEMPERATURE), x), 1
        ),
        "plain vectorised (no clamp)": _harness.timed(
            fwd_bwd(lambda x: plain_vectorised(x, y, TEMPERATURE), x),
            max(1, fast_iters // 5),
        ),
        ours: _harness.timed(
            fwd_bwd(lambda x: soft_nearest_neighbor_loss(x, y, TEMPERATURE), x),
            fast_iters,
        ),
    }
    t0 = time.perf_counter()
    results = _harness.interleave(blocks, reps, seed=seed)
    took = time.perf_counter() - t0

    print(
        f"n = {n}, dim {DIM}, {CLASSES} classes, T = {TEMPERATURE}: {reps} reps; "
        f"per rep the loop 1 call, the floor and trainkit {fast_iters} calls; "
        f"forward + backward, ms per call, ratios to the floor; took {took:.0f}s "
        "(warm-up included)"
    )
    print()
    faster = {"x faster than loop": lambda k: f"{_harness.ratio(results, loop, k):.1f}"}
    print(_harness.table(results, base, faster))
    print()
    return {
        "n": n,
        "vs_floor": _harness.ratio(results, ours, base),
        "vs_loop": _harness.ratio(results, ours, loop),
        "psi": _harness.psi(results, ours),
        "busy": _harness.busy(results),
    }


def main() -> None:
    parser = _harness.arguments(__doc__, reps=7)
    args = _harness.parse(parser)
    reps = args.reps
    scale_iters = 0.2 if args.quick else 1.0
    print()
    results = [bench(n, reps, scale_iters, args.seed + i) for i, n in enumerate(SIZES)]
    print("Summary (forward + backward, ratios of medians):")
    for r in results:
        print(
            f"  n = {r['n']:4d}: trainkit / blog post loop = {r['vs_loop']:.4f} "
            f"({1 / r['vs_loop']:.0f}x faster), trainkit / floor = "
            f"{r['vs_floor']:.2f}, psi {r['psi']:.0f} %"
        )
    busy = [f"n = {r['n']}" for r in results if r["busy"]]
    if busy:
        print("  " + _harness.busy_warning(busy))


if __name__ == "__main__":
    main()
