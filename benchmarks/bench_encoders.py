"""Benchmark trainkit.encoders: packed GRU vs per-word loop vs bare packed call; dedup.

Prints, in one run (issue 6):

1. ``CharGRUEncoder`` words/s at batch 512 (1-20 characters, GRU 15 -> 64) divided by
   a per-word loop (the GRU run on each word alone), forward and forward+backward;
2. the same divided by a bare ``pack_padded_sequence`` + ``nn.GRU`` call on the same
   batch with the lengths given (the limit for this design);
3. the speed-up of ``dedup=True`` on a Zipf-distributed batch of running text,
   for the GRU and for Kim et al.'s small CNN.

Method: ``_harness.py``. All variants of a table run in one process, interleaved:
each rep runs every variant's block once, in a new random order (seeded), after one
untimed warm-up block per variant. Reported: median / min / max over reps of the time
per pass; words/s; speed-ups (words/s ratios: a reference's time / the variant's) of
medians and, per rep, to the reference block of the same rep, as median [min, max];
psi = median % of a block's wall time in which some task waited for a CPU
(``/proc/pressure/cpu``), a sign of a busy machine (a warning when over 10 %). The
summary adds the ratio of minima. On a shared machine, ``--threads 1 --clock cpu``
times this process's CPU time, which waiting for the CPU does not inflate.

Run: ``python benchmarks/bench_encoders.py`` (about a minute) or ``--quick``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import _harness
import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence

from trainkit.encoders import CharCNNEncoder, CharGRUEncoder

N_WORDS = 512  # the batch
MAX_CHARS = 20  # word lengths uniform in 1..MAX_CHARS
N_CHARS = 100  # character vocabulary, padding and unknown included
CHAR_DIM, HIDDEN = 15, 64  # GRU 15 -> 64, as in baselines.md D
ZIPF_TYPES = 20_000  # word types in the Zipf vocabulary
ZIPF_S = 1.0  # Zipf exponent: frequency of rank r is proportional to r ** -s
ZIPF_SHAPE = (32, 64)  # (B, S): 2,048 tokens of running text


_busy_tables: set[str] = set()


def measure(
    variants: dict[str, tuple[Callable[[], object], int]],
    reps: int,
    seed: int,
    clock: Callable[[], float] = time.perf_counter,
) -> _harness.Results:
    """``iters`` calls of each variant per block, by ``_harness.interleave``."""
    blocks = {
        k: _harness.timed(fn, iters, clock) for k, (fn, iters) in variants.items()
    }
    return _harness.interleave(blocks, reps, seed=seed)


def print_table(
    title: str,
    results: _harness.Results,
    words: int,
    refs: dict[str, str],
) -> dict[str, tuple[float, float, float]]:
    """Prints one markdown table; ``refs`` maps a column name to a reference variant.

    Returns each variant's speed-up over each reference, keyed ``"name / ref"``:
    (ratio of medians, median of the paired ratios, ratio of minima). On a busy
    machine contention only adds time, so the minima are the least disturbed.
    """
    print(f"\n{title}\n")
    ref_cols = "".join(f" x {col} | paired x {col} med [min, max] |" for col in refs)
    print(f"| variant | median ms | min ms | max ms | words/s |{ref_cols} psi % |")
    print("|---|---:|---:|---:|---:|" + "---:|---|" * len(refs) + "---:|")
    speedups = {}
    for name in results:
        t = _harness.seconds(results, name)
        med = statistics.median(t)
        row = (
            f"| {name} | {1e3 * med:.3f} | {1e3 * min(t):.3f} | {1e3 * max(t):.3f} "
            f"| {words / med:,.0f} |"
        )
        for ref in refs.values():
            speedup = _harness.ratio(results, ref, name)  # words/s ratio
            paired = _harness.paired(results, ref, name)
            speedups[f"{name} / {ref}"] = (
                speedup,
                statistics.median(paired),
                _harness.ratio(results, ref, name, of=min),
            )
            row += (
                f" {speedup:.2f}x | {statistics.median(paired):.2f}x "
                f"[{min(paired):.2f}, {max(paired):.2f}] |"
            )
        print(row + f" {_harness.psi(results, name):.0f} |")
    if _harness.busy(results):
        _busy_tables.add(title.split(";")[0])
    return speedups


def make_batch(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` words of uniform length 1..MAX_CHARS, right-padded: ids, lengths."""
    lengths = torch.randint(1, MAX_CHARS + 1, (n,), generator=gen)
    ids = torch.randint(2, N_CHARS, (n, MAX_CHARS), generator=gen)
    return ids.masked_fill(torch.arange(MAX_CHARS) >= lengths[:, None], 0), lengths


def make_zipf_batch(gen: torch.Generator) -> tuple[Tensor, int]:
    """``(B, S, L)`` tokens drawn from a Zipf law over ``ZIPF_TYPES`` word types."""
    types, _ = make_batch(ZIPF_TYPES, gen)
    p = torch.arange(1, ZIPF_TYPES + 1, dtype=torch.float64) ** -ZIPF_S
    n_tokens = ZIPF_SHAPE[0] * ZIPF_SHAPE[1]
    tokens = torch.multinomial(p, n_tokens, replacement=True, generator=gen)
    n_distinct = int(tokens.unique().numel())
    return types[tokens].view(*ZIPF_SHAPE, MAX_CHARS), n_distinct


def bench_packing(
    args: argparse.Namespace, gen: torch.Generator
) -> dict[str, tuple[float, float, float]]:
    ids, lengths = make_batch(N_WORDS, gen)
    enc = CharGRUEncoder(N_CHARS, CHAR_DIM, HIDDEN, dropout=0.0).eval()
    emb, gru = enc.embedding, enc.gru  # the references share the encoder's weights
    words = [ids[i : i + 1, : int(n)] for i, n in enumerate(lengths)]

    def loop() -> Tensor:
        return torch.cat([gru(emb(w))[1][-1] for w in words])  # (N, H)

    def bare() -> Tensor:
        x = emb(ids)  # (N, L, C)
        packed = pack_padded_sequence(
            x, lengths, batch_first=True, enforce_sorted=False
        )
        return gru(packed)[1][-1]  # (N, H)

    with torch.no_grad():
        diff_loop = (loop() - enc(ids)).abs().max().item()
        diff_bare = (bare() - enc(ids)).abs().max().item()
    print(
        f"\nbatch: {N_WORDS} words, lengths uniform 1..{MAX_CHARS} (mean "
        f"{lengths.double().mean():.2f}, {int(lengths.sum())} characters), "
        f"Embedding({N_CHARS}, {CHAR_DIM}) + GRU({CHAR_DIM}, {HIDDEN}); "
        f"max |loop - encoder| = {diff_loop:.2e}, max |bare - encoder| = "
        f"{diff_bare:.2e}"
    )
    q = args.quick
    fwd_variants = {
        "per-word loop": (loop, 1 if q else 2),
        "bare pack_padded_sequence + nn.GRU": (bare, 10 if q else 40),
        "CharGRUEncoder(ids)": (lambda: enc(ids), 10 if q else 40),
        "CharGRUEncoder(ids, lengths)": (lambda: enc(ids, lengths), 10 if q else 40),
    }
    with torch.no_grad():
        fwd = measure(fwd_variants, args.reps, args.seed, args.clock)
    refs = {"loop": "per-word loop", "bare": "bare pack_padded_sequence + nn.GRU"}
    out = print_table(
        f"forward (no_grad), {args.reps} reps; time per pass over {N_WORDS} words",
        fwd,
        N_WORDS,
        refs,
    )
    enc_train = CharGRUEncoder(N_CHARS, CHAR_DIM, HIDDEN, dropout=0.1).train()
    enc_train.load_state_dict(enc.state_dict())
    bwd_variants = {
        name: ((lambda f=fn: f().sum().backward()), n // 2 if n > 1 else 1)
        for name, (fn, n) in fwd_variants.items()
    }
    bwd_variants["CharGRUEncoder(ids), dropout 0.1, train()"] = (
        lambda: enc_train(ids).sum().backward(),
        5 if q else 20,
    )
    bwd = measure(bwd_variants, args.reps, args.seed + 1, args.clock)
    out_bwd = print_table(
        f"forward+backward (sum of states), {args.reps} reps; time per pass over "
        f"{N_WORDS} words",
        bwd,
        N_WORDS,
        refs,
    )
    return {
        **{f"fwd {k}": v for k, v in out.items()},
        **{f"fwd+bwd {k}": v for k, v in out_bwd.items()},
    }


def bench_dedup(
    args: argparse.Namespace, gen: torch.Generator
) -> dict[str, tuple[float, float, float]]:
    ids, n_distinct = make_zipf_batch(gen)
    n_tokens = ids.shape[0] * ids.shape[1]
    print(
        f"\nZipf batch: (B, S, L) = {tuple(ids.shape)}, {n_tokens} tokens drawn with "
        f"p(rank r) ~ r^-{ZIPF_S} from {ZIPF_TYPES:,} types (lengths 1..{MAX_CHARS}): "
        f"{n_distinct} distinct words ({n_tokens / n_distinct:.2f} tokens per word)"
    )
    gru = CharGRUEncoder(N_CHARS, CHAR_DIM, HIDDEN, dropout=0.0).eval()
    cnn = CharCNNEncoder(N_CHARS).eval()  # Kim et al. small: 525 filters + highway
    q = args.quick
    speedups = {}
    for label, enc, iters in [("GRU 15->64", gru, 4), ("CNN Kim small", cnn, 2)]:
        iters = 1 if q else iters

        def run(dedup: bool, backward: bool, enc=enc) -> None:
            enc.dedup = dedup
            out = enc(ids)
            if backward:
                out.sum().backward()

        with torch.no_grad():
            enc.dedup = False
            plain = enc(ids)
            enc.dedup = True
            diff = (plain - enc(ids)).abs().max().item()
        print(f"\n{label}: max |dedup - plain| = {diff:.2e}")
        for backward in (False, True):
            variants = {
                "plain": (lambda b=backward: run(False, b), iters),
                "dedup=True": (lambda b=backward: run(True, b), iters),
            }
            with torch.set_grad_enabled(backward):
                res = measure(variants, args.reps, args.seed + 2, args.clock)
            mode = "forward+backward" if backward else "forward (no_grad)"
            s = print_table(
                f"{label}, {mode}, {args.reps} reps; time per batch of {n_tokens} "
                "tokens",
                res,
                n_tokens,
                {"plain": "plain"},
            )
            speedups[f"{label} {mode}"] = s["dedup=True / plain"]
    return speedups


def _fmt(ratios: tuple[float, float, float], digits: int) -> str:
    median, paired, minimum = ratios
    return f"{median:.{digits}f}x ({paired:.{digits}f}x; {minimum:.{digits}f}x)"


def main(argv: list[str] | None = None) -> None:
    parser = _harness.arguments(__doc__, reps=7, quick_reps=3)
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this process's CPU time (time.process_time), which time spent "
        "waiting for a busy CPU does not inflate; meaningful with --threads 1",
    )
    args = _harness.parse(parser, argv)
    args.clock = time.perf_counter if args.clock == "wall" else time.process_time
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    print(f"numpy {np.__version__}, clock {args.clock.__name__}")
    packing = bench_packing(args, gen)
    dedup = bench_dedup(args, gen)
    print(
        "\nsummary: words/s ratios, of medians (median of per-rep paired ratios; "
        "of minima)"
    )
    enc = "CharGRUEncoder(ids)"
    for mode in ("fwd", "fwd+bwd"):
        loop = packing[f"{mode} {enc} / per-word loop"]
        bare = packing[f"{mode} {enc} / bare pack_padded_sequence + nn.GRU"]
        print(
            f"  {mode:8s} encoder / per-word loop: {_fmt(loop, 1)}   "
            f"encoder / bare packed call: {_fmt(bare, 2)}, target >= 0.9x"
        )
    for name, ratios in dedup.items():
        print(f"  dedup speed-up, {name}: {_fmt(ratios, 2)}")
    if _busy_tables:
        print("  " + _harness.busy_warning(_busy_tables))
    print(f"took {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
