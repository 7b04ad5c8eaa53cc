"""The main demo (``./run demo``): the three small models of ``tb-gradflow demo``,
with ``trainkit``'s sanity checks run on a copy of each model before it trains.

Each run's text summary (TensorBoard's Text tab) then holds the checks' verdicts
beside the gradient-flow findings: the blocked run passes the initial-loss check
(its loss starts at ln 2) and fails to overfit one batch, naming the layers the
gradient does not reach, as the Gradient Flow tab does.

    python examples/demo.py --logdir runs [--steps N] [--seed N] [--no-progress]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from torch import nn

from tb_gradflow.demo import DemoConfig, replace_runs, run_demo
from trainkit.checks import check_initial_loss, overfit_batch


def sanity_checks(model, inputs, labels, optimizer, cfg: DemoConfig) -> list[str]:
    """The two checks on 16 samples, run on copies (the model is unchanged), as
    markdown lines for the run's text summary."""
    inputs, labels = inputs[:16], labels[:16]
    results = [
        check_initial_loss(model, inputs, labels, num_classes=2),
        overfit_batch(
            model,
            inputs,
            labels,
            nn.functional.cross_entropy,
            optimizer=optimizer,
            steps=cfg.overfit_steps,
        ),
    ]
    return ["### Sanity checks (trainkit.checks)", ""] + [
        f"- {r.to_markdown()}" for r in results
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="runs")
    parser.add_argument("--steps", type=int, default=DemoConfig.steps)
    parser.add_argument("--seed", type=int, default=DemoConfig.seed)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        for folder in replace_runs(args.logdir):
            print(f"Replacing the earlier demo run in {folder}")
    except ValueError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    cfg = DemoConfig(steps=args.steps, seed=args.seed)
    losses = run_demo(
        args.logdir, cfg, progress=not args.no_progress, before_training=sanity_checks
    )
    for name, loss in losses.items():
        print(f"{name}: final loss {loss:.4f}")
    print(f"Wrote {args.logdir}/. See it with: tensorboard --logdir {args.logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
