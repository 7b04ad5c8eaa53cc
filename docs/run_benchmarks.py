"""Runs the benchmarks in ``benchmarks/`` and writes their tables into
``docs/benchmarks.md``.

Each benchmark prints Markdown tables (``benchmarks/_harness.py``). This script
runs each one with the interpreter it runs under, reads the figures from what it
printed, and writes one table per benchmark: a row per case, each with the
command, the date (UTC), the machine and the commit. In ``docs/benchmarks.md``
a benchmark's table follows the line ``<!-- table: KEY -->``; the script
replaces that table and leaves every other line of the page as it is (a page
without the line gets a new section at its end).

Run the benchmarks one at a time on a quiet machine: they time wall-clock
blocks, and the figures of a busy machine are not worth recording (each table of
the benchmarks' own output has a ``psi %`` column, the share of time other tasks
waited for a CPU).

Usage:
    .venv/bin/python docs/run_benchmarks.py               # all (~15-20 min, 2 CPUs)
    .venv/bin/python docs/run_benchmarks.py --only losses encoders
    .venv/bin/python docs/run_benchmarks.py --quick       # smoke run: prints the
                                                          # tables, writes nothing
    .venv/bin/python docs/run_benchmarks.py --quick --out /tmp/b.md   # ... to there
    .venv/bin/python docs/run_benchmarks.py --save DIR    # also keep each output
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
META = ["command", "date", "machine", "commit"]
NOT_RECORDED = "–"

Row = list[str]


@dataclass(frozen=True)
class Table:
    """A Markdown table as printed: the non-empty lines printed since the table
    before it (``caption``: the last of them), its header and its rows."""

    before: list[str]
    header: list[str]
    rows: list[Row]

    @property
    def caption(self) -> str:
        return self.before[-1] if self.before else ""

    def column(self, name: str) -> dict[str, str]:
        """``{first cell: cell of the column whose header starts with name}``."""
        i = next(i for i, h in enumerate(self.header) if h.startswith(name))
        return {row[0]: row[i] for row in self.rows}


def cells(line: str) -> Row:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def tables(text: str) -> list[Table]:
    """Every Markdown table in ``text`` (indented ones too), in order, each with
    the last non-empty line before it."""
    out: list[Table] = []
    before: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|") and i + 1 < len(lines):
            header = cells(line)
            rows = []
            i += 2  # past the |---| line
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(cells(lines[i]))
                i += 1
            out.append(Table(before, header, rows))
            before = []
            continue
        if line:
            before.append(line)
        i += 1
    return out


def first_number(cell: str) -> str:
    """``"1.17 [0.91, 1.41]"`` -> ``"1.17"``; ``"27.43x"`` -> ``"27.43x"``."""
    return cell.split(" [", 1)[0].split(" (", 1)[0]


def provider(t: Table) -> str:
    """The data provider a table of ``bench_plugin.py`` is for."""
    names = [ln[:-1] for ln in t.before if ln in PROVIDERS]
    return names[-1][0].upper() + names[-1][1:] if names else NOT_RECORDED


PROVIDERS = ("rust data server:", "python multiplexer:")


# -- Parsers: a benchmark's printed output -> its table's rows ----------------
# Each returns the rows after the META columns; the first cell names the case.


WATCH = {
    "every1": "watch(every=1)",
    "every10": "watch(every=10)",
    "upd1": "watch(every=1, stats=update_ratio+weight_norm)",
    "upd10": "watch(every=10, stats=update_ratio+weight_norm)",
    "read": "single read: g.abs().sum() per tensor, 1 copy",
    "post": "blog post loop: float(g.abs().mean()) per layer",
    "l2": "per-parameter L2 norm loop, 1 copy",
    "hist": "add_histogram per parameter",
    "trace": "watch(every=1, trace_nonfinite=True), not armed",
}
TRACE_ARMED = "non-finite trace armed (hooks on every module)"


def parse_watch(text: str) -> list[Row]:
    rows = []
    found = tables(text)
    for step, own in zip(found[::2], found[1::2]):
        case = step.caption.split("### ", 1)[1].split(":", 1)[0]
        ratio, median = step.column("ratio"), step.column("median ms")
        own_ms = own.column("ms per step")
        rows.append(
            [
                {"mlp": "(a) MLP", "lstm": "(b) LSTM"}.get(case, case),
                median["baseline (nothing)"],
                ratio["baseline again (A/A noise)"],
                ratio[WATCH["every1"]],
                *(own_ms.get(WATCH[k], NOT_RECORDED) for k in WATCH),
                ratio.get(TRACE_ARMED, NOT_RECORDED),
            ]
        )
    return rows


def parse_plugin(text: str) -> list[Row]:
    size = re.search(r"([\d.]+) bytes per layer, statistic and step", text)
    rows = []
    for t in tables(text):
        cold, warm = t.column("cold s"), t.column("warm ms")
        rows.append(
            [
                provider(t),
                size.group(1) if size else NOT_RECORDED,
                cold["flow"],
                first_number(warm["flow"]),
                cold["heatmap binary"],
                first_number(warm["heatmap binary"]),
                cold["heatmap json"],
                first_number(warm["heatmap json"]),
                cold.get("lines binary", NOT_RECORDED),
                first_number(warm.get("lines binary", NOT_RECORDED)),
            ]
        )
    return rows


def parse_triage(text: str) -> list[Row]:
    runs = re.search(r"(\d+) runs of (\d+) layers x (\d+) steps", text)
    what = f"{runs[1]} x {runs[2]} layers x {int(runs[3]):,} steps" if runs else ""
    rows = []
    for t in tables(text):
        s = t.column("s ")
        rows.append(
            [
                what,
                provider(t),
                s["runs, fresh plugin"],
                s["triage, fresh plugin"],
                s["flow of one run, fresh plugin"],
                s["runs, every run read"],
                s["triage, every run read"],
            ]
        )
    return rows


OPTIM = [
    "Adam default (per-tensor on CPU)",
    "Adam fused=True",
    "blog post SMORMS3 (per-param loop)",
    "SMORMS3 default",
    "SMORMS3 foreach=True",
    "SMORMS3 fused=True (compiled)",
]


def parse_optim(text: str) -> list[Row]:
    rows = []
    for t in tables(text):
        if "variant" not in t.header:
            continue
        median, first = t.column("median ms"), t.column("first step s")
        times = [float(median[v]) if v in median else None for v in OPTIM]
        adam, adam_fused, post, default, foreach, fused = times

        def over(a: float | None, b: float | None) -> str:
            return NOT_RECORDED if a is None or b is None else f"{a / b:.2f}"

        which = re.match(r"(\(\w\)): (.+? params\))", t.caption)
        rows.append(
            [
                " ".join(which.groups()) if which else t.caption,
                *(median.get(v, NOT_RECORDED) for v in OPTIM),
                over(default, adam),
                over(fused, adam_fused),
                over(post, default),
                first.get(OPTIM[5], NOT_RECORDED),
            ]
        )
    return rows


LOSSES = [
    "floor: cdist + logsumexp",
    "blog post loop (mended)",
    "plain vectorised (no clamp)",
    "trainkit soft_nearest_neighbor_loss",
]


def parse_losses(text: str) -> list[Row]:
    rows = []
    for t in tables(text):
        if "variant" not in t.header:
            continue
        n = re.match(r"n = (\d+)", t.caption)
        median = t.column("median ms")
        cols = [median[v] for v in LOSSES]
        floor, loop, plain, ours = map(float, cols)
        rows.append(
            [
                n[1] if n else t.caption,
                *cols,
                f"{plain / floor:.2f}",
                f"{ours / floor:.2f}",
                f"{loop / ours:.0f}x",
            ]
        )
    return rows


def parse_encoders(text: str) -> list[Row]:
    found = tables(text)
    packing = [t for t in found if "x loop" in t.header]
    dedup = [t for t in found if "x plain" in t.header]
    rows = []
    for i, t in enumerate(packing):
        loop, bare = t.column("x loop"), t.column("x bare")
        gru, cnn = (d.column("x plain")["dedup=True"] for d in dedup[i::2][:2])
        rows.append(
            [
                t.caption.split(" (", 1)[0],
                loop["CharGRUEncoder(ids)"],
                bare["CharGRUEncoder(ids)"],
                bare["CharGRUEncoder(ids, lengths)"],
                gru,
                cnn,
            ]
        )
    return rows


# -- The benchmarks -----------------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    key: str
    title: str
    script: str
    args: str
    quick: str
    columns: list[str]
    parse: Callable[[str], list[Row]]


OWN = "own ms per step: "
BENCHMARKS = [
    Benchmark(
        "watch",
        "Gradient-flow logging",
        "bench_watch.py",
        "",
        "--quick",
        [
            "model",
            "baseline step ms",
            "A/A step ratio",
            "watch(every=1) step ratio",
            OWN + "watch(every=1)",
            "watch(every=10)",
            "+ update_ratio, weight_norm, every=1",
            "same, every=10",
            "plain read",
            "the post's loop",
            "L2-norm loop",
            "add_histogram",
            "trace_nonfinite, not armed",
            "armed trace: step ratio",
        ],
        parse_watch,
    ),
    Benchmark(
        "plugin",
        "The tab's routes on one large run",
        "bench_plugin.py",
        "",
        "--layers 50 --steps 300 --repeats 3 --cold-repeats 1",
        [
            "data provider",
            "bytes per layer, statistic and step",
            "flow cold s [min, max]",
            "flow warm ms",
            "heatmap binary cold s",
            "binary warm ms",
            "heatmap JSON cold s",
            "JSON warm ms",
            "lines binary cold s",
            "lines warm ms",
        ],
        parse_plugin,
    ),
    Benchmark(
        "triage",
        "The tab's first requests over many runs",
        "bench_plugin.py",
        "--triage-runs 8",
        "--triage-runs 3 --layers 50 --steps 100 --cold-repeats 1",
        [
            "runs",
            "data provider",
            "runs, fresh s",
            "triage, fresh s",
            "flow of one run, fresh s",
            "runs, every run read s",
            "triage, every run read s",
        ],
        parse_triage,
    ),
    Benchmark(
        "optim",
        "SMORMS3",
        "bench_optim.py",
        "",
        "--quick",
        [
            "parameters",
            "Adam default ms",
            "Adam fused ms",
            "the post's SMORMS3 ms",
            "SMORMS3 default ms",
            "SMORMS3 foreach ms",
            "SMORMS3 fused ms",
            "default / Adam default",
            "fused / Adam fused",
            "the post's / default",
            "fused first step s",
        ],
        parse_optim,
    ),
    Benchmark(
        "losses",
        "Soft nearest neighbour loss",
        "bench_losses.py",
        "",
        "--quick",
        [
            "n",
            "floor ms",
            "the post's loop ms",
            "plain vectorised ms",
            "trainkit ms",
            "plain / floor",
            "trainkit / floor",
            "trainkit faster than the loop",
        ],
        parse_losses,
    ),
    Benchmark(
        "encoders",
        "Character encoders",
        "bench_encoders.py",
        "",
        "--quick",
        [
            "pass",
            "encoder / per-word loop",
            "encoder / bare packed call",
            "encoder with lengths / bare call",
            "dedup, GRU",
            "dedup, CNN",
        ],
        parse_encoders,
    ),
]


def machine() -> str:
    """CPUs, CPU model and torch version, e.g. "2 CPUs, AMD EPYC, torch 2.13.0+cpu"."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1] for ln in f if ln.startswith("model name")]
    except OSError:
        names = []
    model = names[0].strip().replace("|", "/") if names else "unknown CPU"
    torch = importlib.metadata.version("torch")
    return f"{os.cpu_count()} CPUs, {model}, torch {torch}"


def commit() -> str:
    """HEAD's short hash, marked when tracked files outside docs/ differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    sha = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs")
    return f"{sha} + uncommitted changes" if dirty else sha


def run(bench: Benchmark, args: list[str]) -> str:
    """Runs one benchmark, echoing its output to stderr; returns the output."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / bench.script), *args]
    print(f"$ {' '.join(cmd)}", file=sys.stderr, flush=True)
    out = []
    with subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
            out.append(line)
    if proc.returncode:
        sys.exit(f"{bench.script} failed with exit status {proc.returncode}")
    return "".join(out)


def markdown(bench: Benchmark, args: list[str], rows: list[Row], meta: Row) -> str:
    command = f"`python benchmarks/{' '.join([bench.script, *args])}`"
    header = META + bench.columns
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(META) + "---|" + "---:|" * (len(bench.columns) - 1),
    ]
    lines += ["| " + " | ".join([command, *meta, *row]) + " |" for row in rows]
    return "\n".join(lines)


def replace_table(page: str, bench: Benchmark, table: str) -> str:
    """``page`` with ``bench``'s table replaced (or a new section added)."""
    marker = f"<!-- table: {bench.key} -->"
    lines = page.splitlines()
    if marker not in lines:
        title = f"## {bench.title}: `benchmarks/{bench.script}`"
        return page.rstrip("\n") + f"\n\n{title}\n\n{marker}\n{table}\n"
    start = lines.index(marker) + 1
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[:start] + table.splitlines() + lines[end:]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", nargs="+", choices=[b.key for b in BENCHMARKS], metavar="KEY"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="each benchmark's smoke run; prints the tables and writes nothing",
    )
    parser.add_argument("--save", type=Path, help="keep each output as DIR/KEY.txt")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"the page to update (default: {DOC.relative_to(ROOT)}; "
        "with --quick, only a page given here is written)",
    )
    args = parser.parse_args(argv)

    chosen = [b for b in BENCHMARKS if not args.only or b.key in args.only]
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    meta = [today, machine(), commit()]
    out = args.out or DOC
    page = out.read_text(encoding="utf-8") if out.exists() else ""
    for bench in chosen:
        bench_args = (bench.quick if args.quick else bench.args).split()
        text = run(bench, bench_args)
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            (args.save / f"{bench.key}.txt").write_text(text, encoding="utf-8")
        rows = bench.parse(text)
        if not rows:
            sys.exit(f"no figures found in the output of {bench.script}")
        table = markdown(bench, bench_args, rows, meta)
        print(f"\n{bench.title} ({bench.key}):\n{table}\n", flush=True)
        page = replace_table(page, bench, table)
    if args.quick and args.out is None:
        print("--quick: smoke-run figures, not written", file=sys.stderr)
        return 0
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
