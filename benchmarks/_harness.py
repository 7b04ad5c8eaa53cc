"""The benchmarks' shared method: interleaved, shuffled blocks in one process.

Every variant's block runs once per rep, in a new random order per rep (seeded),
after one warm-up block each, so that slow periods of a shared machine hit all
variants alike. Reported per variant: median / min / max of the per-iteration
time over reps, the ratio of medians to the baseline, the time it adds, the
paired ratio (per rep, to the same rep's baseline block: median [min, max]) and
psi, the median share of a block's wall time in which some runnable task waited
for a CPU (``/proc/pressure/cpu``); a high psi means the figures are disturbed
(``busy``: a median psi over ``BUSY_PSI`` %). ``ratio`` and ``paired`` give a
script's own summaries and columns (speed-ups, a ratio of minima) from the same
results.
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterable

Block = Callable[[], float]  # runs one block, returns seconds per iteration
Results = dict[str, list[tuple[float, float]]]  # {name: [(s per iter, psi %)]}

BUSY_PSI = 10.0  # % of a block's wall time with tasks waiting for a CPU: too busy


def arguments(doc: str, *, reps: int, quick_reps: int = 2) -> argparse.ArgumentParser:
    """The options of every timing benchmark (``--quick``, ``--reps``,
    ``--threads``, ``--seed``); a script adds its own, then calls
    :func:`parse`. ``doc``: the script's docstring (its first line describes
    it)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run: figures not meaningful"
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help=f"interleaved reps (default {reps}; --quick: {quick_reps})",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed")
    parser.set_defaults(default_reps=(reps, quick_reps))
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None):
    """Parses the options, sets torch's threads, and prints the versions and
    the machine the figures are for."""
    import torch

    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = args.default_reps[1] if args.quick else args.default_reps[0]
    torch.set_num_threads(args.threads)
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, {platform.machine()}"
        + (" [--quick: smoke run, figures not meaningful]" if args.quick else "")
    )
    return args


def read_psi_us() -> int | None:
    """Total µs that runnable tasks waited for a CPU, or None where not exposed."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().split("total=")[1])
    except (OSError, IndexError, ValueError):
        return None


def timed(
    run: Callable[[], object],
    iters: int,
    clock: Callable[[], float] = time.perf_counter,
) -> Block:
    """A block that calls ``run`` ``iters`` times, timed by ``clock`` (wall time;
    ``time.process_time`` for this process's CPU time). psi stays a share of wall
    time."""

    def block() -> float:
        start = clock()
        for _ in range(iters):
            run()
        return (clock() - start) / iters

    return block


def interleave(blocks: dict[str, Block], reps: int, *, seed: int = 0) -> Results:
    """Runs every block once per rep in shuffled order: ``{name: [(s, psi %)]}``."""
    rng = random.Random(seed)
    for block in blocks.values():  # warm-up
        block()
    out: Results = {name: [] for name in blocks}
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


def seconds(results: Results, name: str) -> list[float]:
    """``name``'s seconds per iteration, one per rep."""
    return [t for t, _ in results[name]]


def ratio(
    results: Results,
    name: str,
    ref: str,
    of: Callable[[list[float]], float] = statistics.median,
) -> float:
    """``of(name's times) / of(ref's times)``: the ratio of medians, or with
    ``of=min`` the ratio of minima (contention only adds time, so the minima are
    the least disturbed)."""
    return of(seconds(results, name)) / of(seconds(results, ref))


def paired(results: Results, name: str, ref: str) -> list[float]:
    """Per rep, ``name``'s time / ``ref``'s time in the same rep."""
    return [t / r for t, r in zip(seconds(results, name), seconds(results, ref))]


def psi(results: Results, name: str) -> float:
    """``name``'s median psi %."""
    return statistics.median(p for _, p in results[name])


def busy(results: Results, limit: float = BUSY_PSI) -> bool:
    """Whether some variant's median psi is over ``limit`` %: unreliable figures."""
    return any(psi(results, name) > limit for name in results)


def busy_warning(tables: Iterable[str], limit: float = BUSY_PSI) -> str:
    """The warning for the ``tables`` that ``busy`` found."""
    return (
        f"WARNING: CPU pressure > {limit:g}% in {sorted(tables)}; other processes "
        "competed for the CPU, so those figures are unreliable"
    )


def table(
    results: Results,
    baseline: str,
    extra: dict[str, Callable[[str], str]] | None = None,
) -> str:
    """A Markdown table of ``results`` against ``baseline`` (times in ms).

    ``extra`` maps a further column's header to its cell for a variant's name;
    those columns stand before psi.
    """
    extra = extra or {}
    base_med = statistics.median(seconds(results, baseline))
    lines = [
        "| variant | median ms | min | max | ratio | added ms "
        "| paired ratio [min, max] |" + "".join(f" {h} |" for h in extra) + " psi % |",
        "|---|---:|---:|---:|---:|---:|---|" + "---:|" * len(extra) + "---:|",
    ]
    for name in results:
        ts = seconds(results, name)
        med = statistics.median(ts)
        pair = paired(results, name, baseline)
        cells = "".join(f" {cell(name)} |" for cell in extra.values())
        lines.append(
            f"| {name} | {med * 1e3:.3f} | {min(ts) * 1e3:.3f} "
            f"| {max(ts) * 1e3:.3f} | {med / base_med:.3f} "
            f"| {(med - base_med) * 1e3:+.3f} | {statistics.median(pair):.3f} "
            f"[{min(pair):.3f}, {max(pair):.3f}] |{cells} {psi(results, name):.0f} |"
        )
    return "\n".join(lines)


def added_ms(results: Results, name: str, baseline: str) -> float:
    """Median time ``name`` adds to ``baseline``, in ms."""
    med = statistics.median(seconds(results, name))
    return (med - statistics.median(seconds(results, baseline))) * 1e3
