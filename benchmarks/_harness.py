"""The benchmarks' shared method: interleaved, shuffled blocks in one process.

Every variant's block runs once per rep, in a new random order per rep (seeded),
after one warm-up block each, so that slow periods of a shared machine hit all
variants alike. Reported per variant: median / min / max of the per-iteration
time over reps, the ratio of medians to the baseline, the time it adds, the
paired ratio (per rep, to the same rep's baseline block: median [min, max]) and
psi, the median share of a block's wall time in which some runnable task waited
for a CPU (``/proc/pressure/cpu``); a high psi means the figures are disturbed.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable

Block = Callable[[], float]  # runs one block, returns seconds per iteration


def read_psi_us() -> int | None:
    """Total µs that runnable tasks waited for a CPU, or None where not exposed."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().split("total=")[1])
    except (OSError, IndexError, ValueError):
        return None


def timed(run: Callable[[], None], iters: int) -> Block:
    """A block that calls ``run`` ``iters`` times."""

    def block() -> float:
        start = time.perf_counter()
        for _ in range(iters):
            run()
        return (time.perf_counter() - start) / iters

    return block


def interleave(
    blocks: dict[str, Block], reps: int, *, seed: int = 0
) -> dict[str, list[tuple[float, float]]]:
    """Runs every block once per rep in shuffled order: ``{name: [(s, psi %)]}``."""
    rng = random.Random(seed)
    for block in blocks.values():  # warm-up
        block()
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in blocks}
    for _ in range(reps):
        order = list(blocks)
        rng.shuffle(order)
        for name in order:
            psi0, t0 = read_psi_us(), time.perf_counter()
            per_iter = blocks[name]()
            wall, psi1 = time.perf_counter() - t0, read_psi_us()
            psi = (
                math.nan if psi0 is None or psi1 is None else (psi1 - psi0) / 1e4 / wall
            )
            out[name].append((per_iter, psi))
    return out


def table(results: dict[str, list[tuple[float, float]]], baseline: str) -> str:
    """A Markdown table of ``results`` against ``baseline`` (times in ms)."""
    base = [t for t, _ in results[baseline]]
    base_med = statistics.median(base)
    lines = [
        "| variant | median ms | min | max | ratio | added ms "
        "| paired ratio [min, max] | psi % |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, rows in results.items():
        ts = [t for t, _ in rows]
        med = statistics.median(ts)
        paired = [t / b for t, b in zip(ts, base)]
        psi = statistics.median(p for _, p in rows)
        lines.append(
            f"| {name} | {med * 1e3:.3f} | {min(ts) * 1e3:.3f} "
            f"| {max(ts) * 1e3:.3f} | {med / base_med:.3f} "
            f"| {(med - base_med) * 1e3:+.3f} | {statistics.median(paired):.3f} "
            f"[{min(paired):.3f}, {max(paired):.3f}] | {psi:.0f} |"
        )
    return "\n".join(lines)


def added_ms(
    results: dict[str, list[tuple[float, float]]], name: str, baseline: str
) -> float:
    """Median time ``name`` adds to ``baseline``, in ms."""
    med = statistics.median(t for t, _ in results[name])
    return (med - statistics.median(t for t, _ in results[baseline])) * 1e3
