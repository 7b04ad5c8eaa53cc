"""Gradient flow in PyTorch Lightning: :class:`GradFlowCallback`.

Works with both packages Lightning ships as, ``lightning.pytorch`` and
``pytorch_lightning`` (the callback is a ``Callback`` of each one installed)::

    from tb_gradflow.integrations.lightning import GradFlowCallback
    trainer = Trainer(logger=TensorBoardLogger("runs"), callbacks=[GradFlowCallback()])
"""

from __future__ import annotations

import importlib
from functools import partial
from typing import Any

from tb_gradflow.collect import GradFlow, watch
from tb_gradflow.integrations._options import check_watch_options

__all__ = ["GradFlowCallback"]


def _installed() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """The ``Callback`` and ``TensorBoardLogger`` classes of each installed
    Lightning package."""
    callbacks, loggers = [], []
    for package in ("lightning.pytorch", "pytorch_lightning"):
        try:
            module = importlib.import_module(package)
            logger_module = importlib.import_module(f"{package}.loggers")
        except ImportError:
            continue
        callbacks.append(module.Callback)
        loggers.append(logger_module.TensorBoardLogger)
    if not callbacks:
        raise ImportError(
            "tb_gradflow.integrations.lightning needs PyTorch Lightning "
            "(the lightning or pytorch-lightning package)"
        )
    return tuple(callbacks), tuple(loggers)


_CALLBACKS, _TENSORBOARD_LOGGERS = _installed()

# What the callback takes from the trainer; the rest of watch()'s options are
# the user's.
_SET_HERE = ("optimizer", "scaler", "step_fn", "parameters", "rank", "start_step")


def _logging_step(trainer: Any, every: int) -> int | None:
    """The step Lightning's loggers write this batch's ``self.log`` values at
    (the batches that stepped an optimizer so far, restored on a resumed fit),
    or None on a batch Lightning does not log: it logs where
    ``(step + 1) % every == 0``."""
    step = trainer.fit_loop.epoch_loop._batches_that_stepped
    return step if (step + 1) % every == 0 else None


class GradFlowCallback(*_CALLBACKS):
    """Logs the gradient flow of a ``LightningModule`` to the trainer's
    ``TensorBoardLogger``, in the run folder of its scalars.

    On train start, one watcher per optimizer of the trainer (see
    :func:`tb_gradflow.watch`), each following the layers whose parameters that
    optimizer holds; with several optimizers (a GAN) each gets the name
    ``optimizer_<i>`` (or ``<name>_<i>``). The gradient is taken after
    accumulation, unscaling and clipping (Lightning steps with a closure: see
    ``watch``), with the precision plugin's ``GradScaler`` when there is one,
    and logged at the step where Lightning logs that batch's ``self.log``
    values: on the steps it logs (``(step + 1) % log_every_n_steps == 0``) or,
    with ``every``, where ``(step + 1) % every == 0``. A resumed fit continues
    the numbering. Only global rank 0 writes. The watchers are removed when
    training ends or fails. ``log_every_n_steps=0`` without ``every`` logs
    nothing, as for Lightning's own scalars.

    Args:
        **watch_options: options of :func:`tb_gradflow.watch` (``every``,
            ``name``, ``include_bias``, ``include``, ``exclude``, ``stats``,
            ``trace_nonfinite``, ``on_alert``, ``thresholds``); the callback
            sets the others.

    Attributes:
        watchers: the watchers of the current fit, one per optimizer.

    Raises:
        TypeError: for an option ``watch`` does not take or the callback sets.
        RuntimeError: on train start, if the trainer has no
            ``TensorBoardLogger``.
    """

    def __init__(self, **watch_options: Any) -> None:
        super().__init__()
        self._options = check_watch_options(
            "GradFlowCallback", watch_options, _SET_HERE
        )
        self.watchers: list[GradFlow] = []

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._remove()
        options = dict(self._options)
        every = options.pop("every", None) or trainer.log_every_n_steps
        if not every:
            return
        writer = _writer(trainer)
        name = options.pop("name", None)
        optimizers = list(trainer.optimizers)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        for i, optimizer in enumerate(optimizers):
            if len(optimizers) > 1:
                options["name"] = f"{name}_{i}" if name else f"optimizer_{i}"
            elif name is not None:
                options["name"] = name
            self.watchers.append(
                watch(
                    pl_module,
                    writer,
                    optimizer=optimizer,
                    scaler=scaler,
                    every=every,
                    rank=None,
                    parameters=[p for g in optimizer.param_groups for p in g["params"]],
                    step_fn=partial(_logging_step, trainer, every),
                    **options,
                )
            )

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._remove()

    def on_exception(
        self, trainer: Any, pl_module: Any, exception: BaseException
    ) -> None:
        self._remove()

    def _remove(self) -> None:
        for flow in self.watchers:
            flow.remove()
        self.watchers = []


def _writer(trainer: Any) -> Any:
    """The SummaryWriter of the trainer's TensorBoardLogger on global rank 0,
    None on other ranks (their ``logger.experiment`` writes nothing)."""
    logger = next(
        (lg for lg in trainer.loggers if isinstance(lg, _TENSORBOARD_LOGGERS)), None
    )
    if logger is None:
        found = ", ".join(type(lg).__name__ for lg in trainer.loggers) or "none"
        raise RuntimeError(
            "GradFlowCallback writes to the trainer's TensorBoardLogger, and this "
            f"Trainer has none (loggers: {found}); pass "
            "logger=TensorBoardLogger(save_dir) to the Trainer"
        )
    return logger.experiment if trainer.global_rank == 0 else None
