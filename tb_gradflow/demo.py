"""The demo: three small sequence classifiers logged with
:func:`tb_gradflow.watch`: one healthy, one where the gradient stops at the first
LSTM, one whose head takes steps far too large for its weights.

The task: sequences of ``T`` steps of ``F`` sensor readings; the label says whether
channel 0 was higher over the first 5 steps than over the last 5 (the network has
to carry information through time). The models are the one of the "Flow
Gradient, Please Flow, Darn It!" post: two stacked LSTMs and a linear head,
trained with Adam; each logs the update-to-weight ratio of the steps too.

The cause of the blocked run is one of the most common ones: the readings go in
raw (values around 70, like heart rates) instead of standardised. The first
LSTM's input weights then get gradients 70x larger than its other weights, Adam
moves them by ``lr`` per element regardless, and within a few steps the gate
pre-activations are in the tens: every sigmoid and tanh of the first LSTM is
saturated, its derivative is ~1e-9, and no gradient flows into or through it. The
loss stays at ln 2 (chance). The healthy run standardises the readings with the
training set's mean and standard deviation: the one-line fix. The third run
standardises too, but its head's parameter group has a learning rate 100x the
others': each step moves the head's weights by far more than 10% of their size.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from tb_gradflow.collect import watch
from tb_gradflow.diagnosis import diagnose
from tb_gradflow.reader import load_run

__all__ = ["DemoConfig", "SequenceClassifier", "make_data", "run_demo", "train"]


# the statistics of the applied update, logged with the gradient's
UPDATE_STATS = ("update_ratio", "weight_norm")

# before_training(model, inputs, labels, optimizer, cfg) -> markdown lines
BeforeTraining = Callable[..., list[str]]


@dataclasses.dataclass
class DemoConfig:
    steps: int = 300  # optimizer steps per model
    batch: int = 64
    samples: int = 1024  # generated training sequences
    seq_len: int = 20  # T
    features: int = 8  # F
    hidden: int = 32  # LSTM width
    lr: float = 1e-2
    seed: int = 0
    overfit_steps: int = 150  # most steps of the overfit-one-batch check


class SequenceClassifier(nn.Module):
    """Two stacked LSTMs and a linear head on the last step.

    Shape:
        - x: ``(B, T, F)`` float
        - output: ``(B, 2)`` logits
    """

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.lstm1 = nn.LSTM(features, hidden, batch_first=True)
        self.lstm2 = nn.LSTM(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm1(x)  # (B, T, H)
        h, _ = self.lstm2(h)  # (B, T, H)
        return self.head(h[:, -1])  # (B, 2)


def make_data(cfg: DemoConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw readings ``(N, T, F)`` around 70 (std 10) and labels ``(N,)``."""
    g = torch.Generator().manual_seed(cfg.seed)
    z = torch.randn(cfg.samples, cfg.seq_len, cfg.features, generator=g)  # (N, T, F)
    labels = (z[:, :5, 0].sum(1) > z[:, -5:, 0].sum(1)).long()  # (N,)
    return 70.0 + 10.0 * z, labels


def train(
    name: str,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    logdir: str,
    cfg: DemoConfig,
    *,
    progress: bool = True,
    head_lr_scale: float = 1.0,
    before_training: BeforeTraining | None = None,
) -> float:
    """Trains one model, logging with ``watch``; returns the final loss.

    After training, the diagnosis of the logged run goes into the run as a text
    summary, so the text and the tab name the same blocked layers; before it,
    ``before_training(model, inputs, labels, optimizer, cfg)`` may add lines of
    its own to that text (the repository's ``examples/demo.py`` adds
    ``trainkit``'s sanity checks). ``head_lr_scale`` multiplies the learning
    rate of the head's parameter group.
    """
    torch.manual_seed(cfg.seed)
    model = SequenceClassifier(cfg.features, cfg.hidden)
    head = list(model.head.parameters())
    body = [p for p in model.parameters() if all(p is not h for h in head)]
    opt = torch.optim.Adam(
        [{"params": body}, {"params": head, "lr": cfg.lr * head_lr_scale}], lr=cfg.lr
    )
    with SummaryWriter(os.path.join(logdir, name)) as writer:
        checks = (
            before_training(model, inputs, labels, opt, cfg) if before_training else []
        )
        with watch(model, writer, optimizer=opt, stats=UPDATE_STATS):
            loss = _train_loop(name, model, opt, inputs, labels, writer, cfg, progress)
        writer.flush()
        findings = diagnose(load_run(writer.log_dir))
        writer.add_text(
            "gradflow/checks", _checks_markdown(checks, findings), cfg.steps
        )
    return loss


def _train_loop(
    name: str,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    writer: SummaryWriter,
    cfg: DemoConfig,
    progress: bool,
) -> float:
    g = torch.Generator().manual_seed(cfg.seed + 1)
    loss_fn = nn.CrossEntropyLoss()
    bar = _ProgressBar(name, cfg.steps, enabled=progress)
    for step in range(cfg.steps):
        idx = torch.randint(0, len(inputs), (cfg.batch,), generator=g)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs[idx]), labels[idx])
        loss.backward()
        opt.step()
        writer.add_scalar("loss", loss.item(), step)
        bar.update(step + 1, loss.item())
    bar.close()
    return loss.item()


def _checks_markdown(checks: list[str], findings: list) -> str:
    lines = [*checks, "" if checks else None]
    lines = [line for line in lines if line is not None]
    lines += ["### Gradient-flow findings (the Gradient Flow tab's alerts)", ""]
    lines += [
        f"- `{f.kind}` **{f.layer or '(model)'}**, steps {f.first_step}-"
        f"{f.last_step}{' (ongoing)' if f.ongoing else ''}: {f.message}"
        for f in findings
    ] or ["- none: the gradient reaches every watched layer"]
    return "\n".join(lines)


def run_demo(
    logdir: str,
    cfg: DemoConfig | None = None,
    *,
    progress: bool = True,
    before_training: BeforeTraining | None = None,
) -> dict:
    """Writes the demo runs under ``logdir``; returns their final losses.
    ``before_training``: see :func:`train`."""
    cfg = cfg or DemoConfig()
    # Intra-op threads only cost time on models this small: 2 threads made the
    # demo 8x slower on a 2-core machine with anything else running.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_all(logdir, cfg, progress, before_training)
    finally:
        torch.set_num_threads(threads)


RUNS = ("healthy", "unnormalised_inputs", "head_lr_too_high")


def replace_runs(logdir: str) -> list[str]:
    """Empties the demo's own run folders under ``logdir`` (a second demo run
    would add a second event file to each: every curve twice); returns the
    folders emptied. Only folders that hold nothing but TensorBoard event
    files are touched.

    Raises:
        ValueError: if a demo run folder holds anything else (not a demo run:
            nothing is deleted).
    """
    emptied = []
    folders = [os.path.join(logdir, name) for name in RUNS]
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        others = [n for n in os.listdir(folder) if ".tfevents." not in n]
        others += [
            n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n))
        ]
        if others:
            raise ValueError(
                f"{folder} holds {sorted(set(others))[0]!r}, which the demo did not "
                "write: it replaces only its own runs; choose another --logdir"
            )
    for folder in folders:
        if os.path.isdir(folder) and os.listdir(folder):
            for name in os.listdir(folder):
                os.remove(os.path.join(folder, name))
            emptied.append(folder)
    return emptied


def _run_all(
    logdir: str,
    cfg: DemoConfig,
    progress: bool,
    before_training: BeforeTraining | None,
) -> dict:
    raw, labels = make_data(cfg)
    mean, std = raw.mean(dim=(0, 1)), raw.std(dim=(0, 1))  # (F,), (F,)
    normalised = (raw - mean) / std
    inputs = {"unnormalised_inputs": raw}
    # the third run: healthy inputs, the head's learning rate 100x too high
    scale = {"head_lr_too_high": 100.0}
    return {
        name: train(
            name,
            inputs.get(name, normalised),
            labels,
            logdir,
            cfg,
            progress=progress,
            head_lr_scale=scale.get(name, 1.0),
            before_training=before_training,
        )
        for name in RUNS
    }


class _ProgressBar:
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(
        self, label: str, total: int, *, enabled: bool, width: int = 30
    ) -> None:
        self.label, self.total, self.width = label, total, width
        self.enabled = enabled
        self.start = time.perf_counter()
        self.shown = 0  # last percentage drawn
        self.step_pct = 1 if sys.stderr.isatty() else 25  # fewer lines into a log

    def update(self, done: int, loss: float) -> None:
        pct = 100 * done // self.total
        if not self.enabled or (pct - self.shown < self.step_pct and done < self.total):
            return
        self.shown = pct
        end = "\r" if sys.stderr.isatty() else "\n"
        filled = self.width * done // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(
            f"{self.label:<20} [{bar}] {done}/{self.total} "
            f"loss {loss:.4f} {elapsed:5.1f}s{end}"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and sys.stderr.isatty():
            sys.stderr.write("\n")
