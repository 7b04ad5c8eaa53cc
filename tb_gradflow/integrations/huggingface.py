"""Gradient flow in the Hugging Face ``transformers.Trainer``: GradFlowCallback.

::

    from tb_gradflow.integrations.huggingface import GradFlowCallback
    args = TrainingArguments("out", report_to="tensorboard", logging_steps=10)
    Trainer(model, args, train_dataset=data, callbacks=[GradFlowCallback()]).train()
"""

from __future__ import annotations

import inspect
import os
from functools import partial
from typing import Any

from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir

from tb_gradflow.collect import GradFlow, watch
from tb_gradflow.integrations._options import check_watch_options

__all__ = ["GradFlowCallback"]

_SET_HERE = ("optimizer", "scaler", "step_fn", "rank", "start_step")


def _logging_step(state: Any, every: int, first: bool) -> int | None:
    """The ``global_step`` at which Trainer logs the loss of the update about to
    run (it counts the update first), or None if it is not logged: Trainer logs
    where ``global_step % logging_steps == 0`` (and step 1 with
    ``logging_first_step``)."""
    step = state.global_step + 1
    return step if step % every == 0 or (first and step == 1) else None


class GradFlowCallback(TrainerCallback):
    """Logs the gradient flow of a ``Trainer``'s model to TensorBoard, in the run
    folder of the Trainer's own scalars.

    On train begin, a watcher (see :func:`tb_gradflow.watch`) on the Trainer's
    optimizer (the torch optimizer inside Accelerate's wrapper, with its
    ``GradScaler`` under fp16): the gradient after accumulation and
    ``max_grad_norm`` clipping, logged at the ``global_step`` where Trainer logs
    that update's loss. ``every`` defaults to the Trainer's ``logging_steps``
    (a ratio is already a step count by then); with ``logging_strategy``
    ``"epoch"`` or ``"no"`` the gradient is still logged every
    ``logging_steps`` updates (the Trainer's default is 500), unless ``every`` is
    given. A resumed run continues the numbering. Only the main process writes.

    The writer is the ``TensorBoardCallback``'s (``report_to="tensorboard"``),
    which that callback opens on train begin and closes on train end; without
    one, the callback opens its own ``SummaryWriter`` in the directory that
    callback would use (``$TENSORBOARD_LOGGING_DIR``, else
    ``<output_dir>/runs/<date>_<host>``) and closes it on train end. The watcher
    is removed on train end, before any writer closes.

    Args:
        **watch_options: options of :func:`tb_gradflow.watch` (``every``,
            ``name``, ``include_bias``, ``include``, ``exclude``, ``stats``,
            ``trace_nonfinite``, ``on_alert``, ``thresholds``, ``parameters``);
            the callback sets the others.

    Attributes:
        watcher: the watcher of the current training, or None.

    Raises:
        TypeError: for an option ``watch`` does not take or the callback sets.
    """

    def __init__(self, **watch_options: Any) -> None:
        self._options = check_watch_options(
            "GradFlowCallback", watch_options, _SET_HERE
        )
        self.watcher: GradFlow | None = None
        self._own_writer: Any = None

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        self._finish()
        options = dict(self._options)
        every = options.pop("every", None) or state.logging_steps
        writer = None
        if state.is_world_process_zero:
            tensorboard = _tensorboard_callback(self)
            writer = None if tensorboard is None else tensorboard.tb_writer
            if writer is None:
                from torch.utils.tensorboard import SummaryWriter

                log_dir = os.environ.get("TENSORBOARD_LOGGING_DIR")
                log_dir = log_dir or os.path.join(args.output_dir, default_logdir())
                writer = self._own_writer = SummaryWriter(log_dir=log_dir)
        self.watcher = watch(
            model,
            writer,
            optimizer=optimizer,
            scaler=getattr(optimizer, "scaler", None),
            every=every,
            rank=None,
            step_fn=partial(_logging_step, state, every, args.logging_first_step),
            **options,
        )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._finish()

    def _finish(self) -> None:
        if self.watcher is not None:
            self.watcher.remove()
            self.watcher = None
        if self._own_writer is not None:
            self._own_writer.close()
            self._own_writer = None


def _tensorboard_callback(callback: TrainerCallback) -> TensorBoardCallback | None:
    """The Trainer's ``TensorBoardCallback``, found through the callback handler
    that is calling ``callback`` (a callback is not given the Trainer), or None.
    Report callbacks come before the user's in the handler's list, so the
    TensorBoard callback has opened its writer by then."""
    frame = inspect.currentframe()
    try:
        for _ in range(4):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return None
            callbacks = getattr(frame.f_locals.get("self"), "callbacks", None)
            if isinstance(callbacks, list) and any(cb is callback for cb in callbacks):
                return next(
                    (cb for cb in callbacks if isinstance(cb, TensorBoardCallback)),
                    None,
                )
        return None
    finally:
        del frame
