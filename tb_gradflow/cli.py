"""The ``tb-gradflow`` command: ``report`` a log directory, or run the ``demo``."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
import warnings
from collections.abc import Sequence

from tb_gradflow import stats
from tb_gradflow.diagnosis import diagnose
from tb_gradflow.reader import GradFlowRun, clash_message, load_all
from tb_gradflow.rule_spec import KINDS, Thresholds


def format_report(
    name: str,
    run: GradFlowRun,
    thresholds: Thresholds,
    findings=None,
    group: str = "layer",
) -> str:
    """The `` ++ name=value`` view of a run's last step (as the classic
    gradient-flow printout has it), the statistics its files lack (``--
    not logged``) and those this version does not know, then its findings
    (``diagnose(run, thresholds)`` unless given). ``group``: ``"block"`` or
    ``"role"`` lists the run's groups of layers (:meth:`GradFlowRun.grouped`)
    instead of its layers; the findings still name layers."""
    if findings is None:
        findings = diagnose(run, thresholds)
    layers = run
    if group != "layer":
        run = run.grouped(group)
    i = len(run.steps) - 1
    mean = run.values("abs_mean")[i]
    nonfinite = run.values("nonfinite")[i]
    blocked_now = {
        f.layer: f.first_step
        for f in findings
        if f.kind == "blocked" and f.holds_at(int(run.steps[i]))
    }
    absent = run.absent[i]  # (L,): not in the layer set of this step's session
    update = (
        run.values("update_ratio")[i]
        if "update_ratio" in run.stats and "update_ratio" not in run.not_logged
        else None
    )
    what = "layers" if group == "layer" else f"{group}s"
    lines = [
        f"== {name}  (step {run.steps[i]}, {len(run.steps)} logged steps, "
        f"{int((~absent).sum())} {what})"
    ]
    for j, layer in enumerate(run.layers):
        if absent[j]:
            continue
        label = run.label(layer)
        if math.isnan(nonfinite[j]):
            lines.append(f" !! {label}=no gradient")
        elif nonfinite[j] > 0:
            lines.append(f" !! {label}={mean[j]:.6g}  {int(nonfinite[j])} non-finite")
        elif mean[j] == 0:
            lines.append(f" !! {label}=0  zero gradient")
        elif layer in blocked_now:
            since = blocked_now[layer]
            lines.append(f" !! {label}={mean[j]:.6g}  blocked since step {since}")
        else:
            lines.append(f" ++ {label}={mean[j]:.6g}")
        if update is not None:
            lines[-1] += f"  update {update[j]:.2g}"
    if run.left_out:
        named = [str(lo.step) for lo in run.left_out if lo.step is not None]
        unnamed = len(run.left_out) - len(named)
        what = ", ".join(named[:20]) + (", ..." if len(named) > 20 else "")
        if unnamed:
            what += f"{', ' if named else ''}{unnamed} without a readable step"
        lines.append(f" !! {len(run.left_out)} record(s) left out: steps {what}")
        lines += [
            f"    {lo.step if lo.step is not None else '?'}: {lo.reason}"
            for lo in run.left_out[:5]
        ]
    missing = [n for n in run.not_logged if stats.get(n).reads == "gradient"]
    if missing:  # (a statistic a watcher may choose is not missed)
        lines.append(
            " -- not logged (the files lack them; they read as NaN): "
            + ", ".join(missing)
        )
    unknown = [name for name in run.stats if stats.get(name) is None]
    if unknown:
        lines.append(
            " -- read by name, not known to this tb-gradflow: " + ", ".join(unknown)
        )
    if run.skipped[i]:
        lines.append(
            f" !! step skipped by the AMP grad scaler (scale {run.loss_scale[i]:g})"
        )
    if findings:
        lines.append(" findings:")
        for f in findings:
            where = "(model)" if f.layer is None else layers.label(f.layer)
            now = ", ongoing" if f.ongoing else ""
            lines.append(
                f"   {f.kind:<12} {where}  steps {f.first_step}-{f.last_step} "
                f"({f.steps} logged{now}): {f.message}"
            )
    else:
        lines.append(" findings: none")
    return "\n".join(lines)


def _report(args: argparse.Namespace) -> int:
    """Reports every run under ``logdir`` (``--run``: that one only).

    Two watchers that get the same run key (watcher ``b`` of run ``a`` and the
    unnamed watcher of run ``a/b``) are not reported under it: the other runs
    are, then an error names the two and the commands that report each one, and
    the exit status is 2. Asking for such a key with ``--run`` is that error
    alone; a run asked for by another key is reported as usual.

    Exit status: 2 for an error (a clash included), else 1 if a finding of a
    ``--fail-on`` kind was reported, else 0.
    """
    thresholds = Thresholds(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(Thresholds)}
    )
    found = load_all(args.logdir)
    if args.run:
        # as a shell completes a directory: "./runs/a/" is the run "runs/a"
        run = args.run if args.run in found else os.path.normpath(args.run)
        if run not in found:
            raise ValueError(
                f"No run {args.run!r} in {args.logdir!r}; runs: {', '.join(found)}"
            )
        found = {run: found[run]}
    reports, failing = [], []
    for key, runs in found.items():
        if len(runs) == 1:
            findings = diagnose(runs[0], thresholds)
            name = _shown_name(args.logdir, key)
            reports.append(
                format_report(name, runs[0], thresholds, findings, args.group)
            )
            failing += [f"{name}: {f.kind}" for f in findings if f.kind in args.fail_on]
    if reports:
        print("\n\n".join(reports))
    clashes = [(key, runs) for key, runs in found.items() if len(runs) > 1]
    for key, runs in clashes:
        print(
            f"tb-gradflow report: error: {clash_message(args.logdir, key, runs)}; "
            f"report each from its own directory: {_own_commands(runs)}",
            file=sys.stderr,
        )
    if clashes:
        return 2
    if failing:
        counted = sorted(set(failing), key=failing.index)
        print(
            f"tb-gradflow report: failing on {', '.join(counted)} (--fail-on)",
            file=sys.stderr,
        )
        return 1
    return 0


def _kinds(text: str) -> frozenset[str]:
    """``--fail-on``'s value: comma-separated finding kinds, or ``all``."""
    kinds = {k.strip() for k in text.split(",") if k.strip()}
    if kinds == {"all"}:
        return frozenset(KINDS)
    unknown = sorted(kinds - set(KINDS))
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown finding kind(s) {', '.join(unknown) or repr(text)}; "
            f"choose from {', '.join(KINDS)}, or all"
        )
    return frozenset(kinds)


def _shown_name(logdir: str, key: str) -> str:
    """A run's name in a report: its key, except that ``logdir`` itself (key
    ``"."``, or ``"./<name>"`` for a named watcher) is named by its folder."""
    if key != "." and not key.startswith("./"):
        return key
    folder = os.path.basename(os.path.normpath(os.path.abspath(logdir)))
    return (folder or os.path.abspath(logdir)) + key[1:]


def _own_commands(runs: Sequence[GradFlowRun]) -> str:
    """The ``report`` commands that read each watcher under a key of its own: in
    its run directory, ``"."`` for the unnamed watcher and ``"./<name>"`` for a
    named one (no subdirectory's key starts with ``./``)."""
    commands = [
        "tb-gradflow report "
        + shlex.quote(r.path)
        + " --run "
        + shlex.quote(f"./{r.name}" if r.name else ".")
        for r in runs
    ]
    return "; ".join(commands)


def _demo(args: argparse.Namespace) -> int:
    from tb_gradflow.demo import DemoConfig, replace_runs, run_demo

    cfg = DemoConfig(steps=args.steps, seed=args.seed)
    for folder in replace_runs(args.logdir):
        print(f"Replacing the earlier demo run in {folder}")
    losses = run_demo(args.logdir, cfg, progress=not args.no_progress)
    for name, loss in losses.items():
        print(f"{name}: final loss {loss:.4f}")
    print(f"Wrote {args.logdir}/. See it with: tensorboard --logdir {args.logdir}")
    print(f"or: tb-gradflow report {args.logdir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tb-gradflow", description="Per-layer gradient flow in TensorBoard."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser(
        "report", help="print each run's last logged step and its findings"
    )
    report.add_argument("logdir", help="a TensorBoard log directory")
    report.add_argument(
        "--fail-on",
        type=_kinds,
        default=frozenset(),
        metavar="KINDS",
        help="exit with status 1 when a finding of one of these kinds is found "
        f"(comma-separated: {', '.join(KINDS)}; or all), e.g. for a CI job",
    )
    report.add_argument(
        "--group",
        choices=("layer", "block", "role"),
        default="layer",
        help="list groups of layers instead of layers: blocks "
        "(model.layers.17) or roles (model.layers.*.self_attn.q_proj); the "
        "findings still name layers",
    )
    report.add_argument(
        "--run",
        help="only this run: its directory relative to logdir ('.' for logdir "
        "itself), plus '/NAME' for a watcher named NAME, as tb_gradflow.load keys it",
    )
    defaults = Thresholds()
    for field in (f.name for f in dataclasses.fields(Thresholds)):
        default = getattr(defaults, field)
        report.add_argument(
            "--" + field.replace("_", "-"),
            type=type(default),
            default=default,
            help=f"diagnosis threshold (default: {default:g})",
        )
    report.set_defaults(func=_report)
    demo = sub.add_parser("demo", help="train the demo models and log them")
    demo.add_argument("--logdir", default="runs", help="where to write (default: runs)")
    demo.add_argument(
        "--steps", type=int, default=300, help="optimizer steps per model"
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input gives a one-line error and exit status 2, and
    warnings (a corrupt record, say) print as one plain line each."""
    args = build_parser().parse_args(argv)

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"tb-gradflow {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # shown, whatever -W says
            warnings.showwarning = show
            return args.func(args)
    except (OSError, ValueError) as e:
        print(f"tb-gradflow {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
