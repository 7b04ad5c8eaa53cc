"""Collects per-layer gradient statistics during training and writes them.

Collection runs outside ``torch.compile``: the hooks and the statistics are
``torch.compiler.disable``'d, so a compiled optimizer step or training step
runs them eagerly instead of tracing them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tb_gradflow import _sharded, metadata
from tb_gradflow import stats as stats_registry
from tb_gradflow.alerts import (
    GradFlowAlert,
    GradFlowError,
    OnlineAlerts,
)
from tb_gradflow.diagnosis import origin_finding
from tb_gradflow.gradient_stats import layer_stats
from tb_gradflow.layers import module_types, select_layers, unwrap_model
from tb_gradflow.metadata import NonfiniteOrigin
from tb_gradflow.nonfinite_trace import NonfiniteTrace
from tb_gradflow.optimizer_hooks import (
    ClosureCall,
    closure_position,
    nested_step,
    with_closure,
)
from tb_gradflow.record_writer import RecordWriter
from tb_gradflow.rule_spec import Thresholds
from tb_gradflow.scaler_patch import ScalerStepPatch
from tb_gradflow.update_stats import UpdateMeter
from tb_gradflow.watch_args import check_watch_args, optional_statistics
from tb_gradflow.writers import check_writer, claim_writer, release_writer

__all__ = ["GradFlow", "GradFlowAlert", "GradFlowError", "LoggedStep", "watch"]


@dataclasses.dataclass(frozen=True)
class LoggedStep:
    """The statistics of one logged step, as written.

    Attributes:
        step: the step the record was written at.
        stats: ``(K, L)`` float64, one row per statistic of ``names``; NaN
            columns for layers without a gradient.
        skipped: whether the AMP grad scaler skipped this optimizer step.
        loss_scale: the grad scaler's scale (NaN without a scaler).
        names: the statistics' names, in row order (the watcher's layout's).
    """

    step: int
    stats: np.ndarray
    skipped: bool
    loss_scale: float
    names: tuple[str, ...] = dataclasses.field(
        default_factory=lambda: stats_registry.names("gradient")
    )

    def stat(self, name: str) -> np.ndarray:
        """One statistic for every layer: ``(L,)``.

        Raises:
            KeyError: for a statistic this step does not hold, naming those it
                does.
        """
        if name not in self.names:
            raise KeyError(f"Unknown statistic {name!r}; this step has {self.names}")
        return self.stats[self.names.index(name)]


@dataclasses.dataclass(frozen=True)
class _Layer:
    name: str
    param: nn.Parameter
    sparse: bool


class GradFlow:
    """Watches a model's gradients and logs per-layer statistics to TensorBoard.

    With ``optimizer``, the statistics are taken just before each optimizer step
    (after gradient accumulation, ``GradScaler.unscale_`` and clipping: the
    gradient the optimizer uses). A step called with a closure
    (``optimizer.step(closure)``, as Lightning always does) runs the backward
    pass inside the step: its statistics are taken when the closure's first
    evaluation returns (for LBFGS, which evaluates it several times, the
    gradient the step starts from), or after the step if the optimizer never
    calls it. Without ``optimizer``, call :meth:`GradFlow.log` after
    ``backward()``.

    Args:
        model: the model; DDP/DataParallel/``torch.compile`` wrappers are
            looked through, so layer names match the plain model's.
        writer: a ``torch.utils.tensorboard.SummaryWriter`` or a
            ``tensorboardX.SummaryWriter`` (the records are the same bytes), or
            None to write nothing (for processes that do not log).
        optimizer: any ``torch.optim.Optimizer``, or a wrapper of one
            (Accelerate's ``AcceleratedOptimizer``, Lightning's
            ``LightningOptimizer``: the optimizer it wraps is hooked);
            statistics are taken by step hooks.
        every: log steps where ``step % every == 0``; nothing runs on others.
        include_bias: also follow biases (left out by default, as in the classic
            gradient-flow plot).
        name: a tag suffix, so several watchers can share one writer.
        include: glob patterns on layer names to keep (default: all).
        exclude: glob patterns on layer names to drop.
        scaler: the ``torch.amp.GradScaler`` that steps ``optimizer``; steps it
            skips for inf/NaN are logged too, marked skipped. Its ``step`` is
            wrapped by an instance attribute until :meth:`GradFlow.remove`; a
            copy of the scaler (``copy.deepcopy``, pickle) is not watched: its
            ``step`` is the unwrapped one, bound to the copy (a shallow
            ``copy.copy`` shares the original's ``step``, as for any instance
            attribute that holds a bound method).
        start_step: the step of the first optimizer step (for resumed runs).
        parameters: follow only the layers whose parameter is one of these
            (e.g. ``[p for g in opt.param_groups for p in g["params"]]``, for one
            watcher per optimizer of a GAN); each must be a parameter of
            ``model``.
        step_fn: numbers the steps from a framework's own counter instead of
            counting optimizer steps (a step skipped by a scaler the watcher was
            not given would shift every later one): called at each optimizer
            step, before it runs, it returns the step to log it as, or None to
            leave it out. It replaces ``start_step`` and the ``every`` schedule
            (``every`` is then only recorded, as the interval readers expect
            between logged steps). Needs ``optimizer``. The shipped
            integrations (:mod:`tb_gradflow.integrations`) use it.
        stats: statistics to log besides the gradient's, which are always
            logged (names from :mod:`tb_gradflow.stats`): ``"update_ratio"``
            (``||θ_after − θ_before|| / ||θ_before||`` of the step the
            optimizer applied) and ``"weight_norm"`` (``||θ||`` before it).
            They need ``optimizer``; measuring them copies the watched
            parameters on a logged step (buffers the size of the parameters,
            kept for the next logged step, freed by :meth:`GradFlow.remove`)
            and reads them twice more; nothing on other steps. With them a
            logged step's record is finished, written and alerted on after the
            step, so ``on_alert="raise"`` stops training after that step was
            applied. A step the AMP scaler skipped has an update of 0.
        trace_nonfinite: after a logged step whose gradient holds NaN/Inf,
            hook every module of the model until a step's backward pass turns
            non-finite again, and report the first module, in execution order,
            whose output or whose gradient (with respect to its input, output
            or a parameter) held NaN/Inf: a
            :class:`~tb_gradflow.metadata.NonfiniteOrigin`, appended to
            :attr:`nonfinite_origins`, written to the event file and alerted
            on (kind ``nonfinite_origin``). With a ``scaler``, only after
            8 skipped logged steps in a row or a loss scale below 1 (earlier
            skips calibrate the scale). Without a scaler the non-finite step
            was applied: the next step reports which parameters hold NaN/Inf
            instead, unless the step took a closure, which is then run a
            second time with the hooks armed, from the same random state (the
            optimizer's gradients and the model's buffers put back; it must
            be able to run twice), before the optimizer applies the step.
            Nothing runs while not armed. See ``docs/logging.md`` for the
            cost while armed.
        on_alert: ``"warn"`` emits a :class:`GradFlowAlert` warning the first time
            a layer turns non-finite, loses its gradient, is blocked, spikes,
            or (with ``update_ratio``) takes too large a step or stops moving,
            and for each traced non-finite origin (the rule of
            :mod:`tb_gradflow.diagnosis`, as in the tab); ``"raise"`` raises
            :class:`GradFlowError` instead; None (default) is silent.
        thresholds: the diagnosis thresholds for ``on_alert`` (only with it).
        rank: in a ``torch.distributed`` process group, the rank that writes
            (default 0; None: every rank writes to its own writer). Other ranks
            compute nothing and add no collective under DDP (pass them
            ``writer=None``); with FSDP2 (sharded DTensor parameters) every rank
            computes its shards' partial sums and one SUM and one MAX
            all-reduce per logged step give whole-layer statistics, so every
            rank must take part in every logged step.

    Steps count optimizer steps, skipped ones included:
    ``step = start_step + steps completed so far`` (without ``step_fn``).

    The hooks and the statistics never run inside ``torch.compile``: a compiled
    optimizer step (``torch.compile(lambda: opt.step())``) or a compiled model
    runs them eagerly.

    Raises:
        TypeError: if ``model``, ``writer`` or ``optimizer`` is not of its
            type (nor, for ``optimizer``, a wrapper of one), ``scaler`` has no
            ``step`` an instance attribute can wrap, ``thresholds`` is not a
            ``Thresholds``, ``include``/``exclude`` are not strings,
            ``parameters`` not tensors, or ``step_fn`` not callable.
        ValueError: for an invalid ``every``, ``start_step``, ``name``, ``rank``
            or ``on_alert``, ``scaler`` or ``step_fn`` without ``optimizer``,
            ``thresholds`` without ``on_alert``, two parameters mapping to one
            layer name, a tensor in ``parameters`` that is not the model's, or
            no layer left to watch; from a later step, if ``step_fn`` returns
            something else than an int >= 0 or None. Nothing stays registered
            when ``watch`` raises.

    A context manager: leaving the block calls :meth:`remove`. ``watch`` is
    this class.

    Attributes:
        layers: the layer names, fixed at creation, in model order.
        nonfinite_origins: what ``trace_nonfinite`` found, oldest first.
        layout: the format description written with the first record.
        last: the last logged step, or None.

    Examples:
        >>> import torch
        >>> from tb_gradflow import watch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with watch(model, None, optimizer=opt) as flow:
        ...     flow.layers
        ['0', '1']
    """

    def __init__(
        self,
        model: nn.Module,
        writer: Any,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        every: int = 1,
        include_bias: bool = False,
        name: str | None = None,
        include: str | Iterable[str] | None = None,
        exclude: str | Iterable[str] | None = None,
        scaler: Any = None,
        start_step: int = 0,
        on_alert: str | None = None,
        thresholds: Thresholds | None = None,
        rank: int | None = 0,
        parameters: Iterable[Tensor] | None = None,
        step_fn: Callable[[], int | None] | None = None,
        stats: Iterable[str] | None = None,
        trace_nonfinite: bool = False,
    ) -> None:
        optimizer = check_watch_args(
            model,
            optimizer=optimizer,
            every=every,
            name=name,
            start_step=start_step,
            step_fn=step_fn,
            rank=rank,
            on_alert=on_alert,
            thresholds=thresholds,
            scaler=scaler,
            trace_nonfinite=trace_nonfinite,
        )
        library = None if writer is None else check_writer(writer)
        selected = select_layers(
            model,
            include_bias=include_bias,
            include=include,
            exclude=exclude,
            parameters=parameters,
        )
        self._layers = [_Layer(n, p, s) for n, p, s in selected]
        self.layers = [layer.name for layer in self._layers]
        owners = module_types(model)
        # fixed for this watcher: the gradient's, then the chosen others
        self._statistics = stats_registry.statistics("gradient") + tuple(
            optional_statistics(stats, optimizer)
        )
        self._updates = (
            UpdateMeter([layer.param for layer in self._layers])
            if any(s.reads != "gradient" for s in self._statistics)
            else None
        )
        # a logged step's gradient record, waiting for the step's end
        self._pending: tuple | None = None
        self.layout = metadata.Layout(
            layers=tuple(self.layers),
            stats=tuple(s.name for s in self._statistics),
            every=every,
            name=name,
            sparse=tuple(layer.sparse for layer in self._layers),
            numel=tuple(layer.param.numel() for layer in self._layers),
            types=tuple(owners.get(id(layer.param), "") for layer in self._layers),
        )
        # In a process group, only `rank` writes (None: every rank does).
        self.writer = writer if rank is None or _process_rank() == rank else None
        self._records = None
        if self.writer is not None:
            claim_writer(self.writer, name, self)
            self._records = RecordWriter(self.writer, self.layout, library)
        self.every = every
        self.start_step = start_step
        self.last: LoggedStep | None = None
        self._optimizer = optimizer
        self._scaler = scaler
        self._step_fn = step_fn
        self._closure_call: ClosureCall | None = None  # this step's, until it ends
        # optimizer steps under way: more than one when a subclass's step calls
        # a parent's hooked step (see nested_step); stale after a step raised
        self._step_depth = 0
        self._steps_done = 0
        self._scratch: dict[torch.device, Tensor] = {}
        self._handles: list[Any] = []
        self._removed = False
        self._stepped_in_scaler = False
        self._alerts = (
            OnlineAlerts(on_alert, self.layers, self.layout.sparse, thresholds)
            if on_alert
            else None
        )
        self.nonfinite_origins: list[NonfiniteOrigin] = []
        self._trace = (
            NonfiniteTrace(
                unwrap_model(model), {id(lay.param): lay.name for lay in self._layers}
            )
            if trace_nonfinite
            else None
        )
        self._current_step = start_step  # of the step under way, logged or not
        # Statistics are computed only for someone: the writer or the alerts,
        # and on every rank when gradients are sharded (the reduction is a
        # collective that all ranks must join).
        sharded = any(_sharded.is_dtensor(layer.param) for layer in self._layers)
        # ... and for the non-finite trace, on the rank that logs
        logs = rank is None or _process_rank() == rank
        self._active = (
            self.writer is not None
            or on_alert is not None
            or sharded
            or (trace_nonfinite and logs)
        )
        try:
            if optimizer is not None:
                self._handles.append(
                    optimizer.register_step_pre_hook(self._on_optimizer_step)
                )
                self._handles.append(
                    optimizer.register_step_post_hook(self._after_optimizer_step)
                )
            if scaler is not None:
                self._handles.append(
                    ScalerStepPatch(scaler, optimizer, self._on_scaler_step)
                )
        except BaseException:  # no half-built watcher: undo what is registered
            self.remove()
            raise

    # -- automatic collection -------------------------------------------------

    @property
    def step(self) -> int:
        """The step the next optimizer step will be logged as (without
        ``step_fn``: ``start_step`` + optimizer steps so far)."""
        return self.start_step + self._steps_done

    def _due_step(self) -> int | None:
        """Counts one optimizer step; the step to log it as, or None if it is
        not logged (not due, or nobody reads the statistics)."""
        step = self.step
        self._steps_done += 1
        if self._step_fn is None:
            due = step % self.every == 0
        else:
            step = self._step_fn()
            if step is not None and (
                isinstance(step, bool)
                or not isinstance(step, (int, np.integer))
                or step < 0
            ):
                raise ValueError(
                    f"step_fn returned {step!r}: a step number must be an int >= 0 "
                    "(or None to leave the step out)"
                )
            due = step is not None
        if step is not None:
            self._current_step = int(step)
        return int(step) if due and self._active else None

    @torch.compiler.disable
    def _on_optimizer_step(
        self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any
    ) -> tuple[Any, Any] | None:
        self._stepped_in_scaler = True
        if self._step_depth > 0 and nested_step(optimizer):
            self._step_depth += 1
            return None  # the step that called this one counts and logs
        self._step_depth = 1
        self._closure_call = None
        self._pending = None  # of a step that raised: never finished
        step = self._due_step()
        if step is None:
            return None
        position = closure_position(args, kwargs)
        if position is None:
            self._collect_for(optimizer, step)
            return None
        # The closure runs the backward pass inside step(): take the statistics
        # when it returns (or after the step, if the optimizer never calls it).
        closure = args[position] if isinstance(position, int) else kwargs[position]
        if self._trace is not None:  # a non-finite gradient replays the closure
            self._trace.remember_random_state()
        call = ClosureCall(
            closure, lambda: self._collect_for(optimizer, step, replay=closure)
        )
        self._closure_call = call
        return with_closure(args, kwargs, position, call)

    @torch.compiler.disable
    def _after_optimizer_step(
        self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any
    ) -> None:
        if self._step_depth > 1:  # the end of a nested step
            self._step_depth -= 1
            return
        self._step_depth = 0
        call, self._closure_call = self._closure_call, None
        if call is not None:  # taken already, unless the closure was never called
            call.take()
        pending, self._pending = self._pending, None
        if pending is not None:  # the update statistics of the step just applied
            self._emit(*pending, update_sq=self._updates.after())
        self._end_traced_step()

    def _collect_for(
        self,
        optimizer: torch.optim.Optimizer,
        step: int,
        replay: Callable[[], Any] | None = None,
    ) -> None:
        # Fused optimizers get GradScaler's scale and inf flag as attributes
        # and unscale inside their kernel: their .grad is still scaled.
        self._collect(
            step,
            grad_scale=getattr(optimizer, "grad_scale", None),
            found_inf=getattr(optimizer, "found_inf", None),
            before_step=True,
            replay=replay,
        )

    def _on_scaler_step(
        self,
        scaler_step: Callable[..., Any],
        optimizer: torch.optim.Optimizer,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Runs ``scaler_step`` on our optimizer; logs the step if it was skipped."""
        self._stepped_in_scaler = False
        result = scaler_step(optimizer, *args, **kwargs)
        if not self._stepped_in_scaler:  # inf/NaN found: optimizer.step skipped
            skipped = self._due_step()
            if skipped is not None:
                self._collect(skipped, skipped=True)
            self._end_traced_step()
        return result

    # -- public API -----------------------------------------------------------

    def log(self, step: int) -> LoggedStep | None:
        """Logs the current gradients at ``step`` if ``step % every == 0``.

        For use without an optimizer (call after ``backward()``), or to log an
        extra step by hand.

        Returns:
            The logged statistics, or None when the step is not due or the
            watcher has no writer.

        Raises:
            RuntimeError: if the watcher was removed.
        """
        if self._removed:
            raise RuntimeError(
                "this GradFlow was removed: it logs nothing more; call "
                "tb_gradflow.watch() again to log"
            )
        if (
            isinstance(step, bool)
            or not isinstance(step, (int, np.integer))
            or step < 0
        ):
            raise ValueError(f"Invalid step: {step!r} (an int >= 0)")
        if self._optimizer is None:  # log() follows each step's backward pass
            self._current_step = int(step)
            self._end_traced_step()
        if step % self.every != 0 or not self._active:
            return None
        return self._collect(int(step))

    def remove(self) -> None:
        """Detaches every hook; the watcher writes the overview record of its
        last logged steps (:mod:`tb_gradflow.overview`), then nothing more.

        As with a torch hook's handle, optimizer and scaler steps no longer
        reach the watcher, and removing twice does nothing. :meth:`log` raises
        afterwards; :attr:`last` and :attr:`step` keep their values.
        """
        self._removed = True
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._updates is not None:
            self._updates.release()
        if self._trace is not None:
            self._trace.close()
        if self._records is not None:
            self._records.close()
        if self.writer is not None:
            release_writer(self.writer, self.layout.name, self)

    def __enter__(self) -> GradFlow:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        name = f", name={self.layout.name!r}" if self.layout.name else ""
        return (
            f"GradFlow({len(self.layers)} layers, every={self.every}{name}, "
            f"step={self.step})"
        )

    # -- computation ----------------------------------------------------------

    @torch.compiler.disable
    def _collect(
        self,
        step: int,
        *,
        grad_scale: Tensor | float | None = None,
        found_inf: Tensor | None = None,
        skipped: bool = False,
        before_step: bool = False,
        replay: Callable[[], Any] | None = None,
    ) -> LoggedStep | None:
        """Takes the gradient statistics of ``step``; with update statistics
        and ``before_step``, measures the parameters and leaves the record to
        finish when the step ends (None now), else finishes it at once (a
        skipped step: no update; a step logged by hand: not measured). Then
        tells the non-finite trace, which may ``replay`` a closure step."""
        record, fields = self._compute(grad_scale, found_inf)
        logged = self._record(step, record, fields, skipped, before_step)
        if self._trace is not None:
            nonfinite = np.nansum(record[self.layout.stats.index("nonfinite")]) > 0
            origin = self._trace.after_gradient(
                step,
                nonfinite=bool(nonfinite),
                skipped=bool(skipped or fields[0]),
                loss_scale=fields[1],
                replay=replay,
                replay_params=[
                    p for group in self._optimizer.param_groups for p in group["params"]
                ]
                if replay is not None
                else (),
            )
            if origin is not None:
                self._report_origin(origin)
        return logged

    def _record(
        self,
        step: int,
        record: np.ndarray,
        fields: tuple[bool, float],
        skipped: bool,
        before_step: bool,
    ) -> LoggedStep | None:
        if self._updates is None:
            return self._emit(step, record, fields, skipped)
        param_sq = self._updates.before()
        if before_step:
            self._pending = (step, record, fields, skipped, param_sq)
            return None
        nothing = np.zeros_like(param_sq) if skipped else np.full_like(param_sq, np.nan)
        return self._emit(step, record, fields, skipped, param_sq, update_sq=nothing)

    @torch.compiler.disable
    def _end_traced_step(self) -> None:
        """A step ended: the origin its traced forward and backward passes show."""
        if self._trace is None:
            return
        origin = self._trace.step_ended(self._current_step)
        if origin is not None:
            self._report_origin(origin)

    def _report_origin(self, origin: NonfiniteOrigin) -> None:
        """Keeps a traced origin, writes it, and alerts on it."""
        self.nonfinite_origins.append(origin)
        if self._records is not None:
            self._records.write_origin(origin)
        if self._alerts is not None:
            self._alerts.fire(origin_finding(origin, self.layers))

    def _emit(
        self,
        step: int,
        record: np.ndarray,
        fields: tuple[bool, float],
        skipped: bool,
        param_sq: np.ndarray | None = None,
        *,
        update_sq: np.ndarray | None = None,
    ) -> LoggedStep:
        """Finishes a step's record (the update statistics from the partials,
        when measured), then writes it and feeds the alerts."""
        if param_sq is not None:
            partials = {"param_sq": param_sq, "update_sq": update_sq}
            numel = np.array([layer.param.numel() for layer in self._layers])
            others = [s for s in self._statistics if s.reads != "gradient"]
            with np.errstate(invalid="ignore", divide="ignore"):
                rows = [np.asarray(s.finish(partials, numel), float) for s in others]
            record = np.concatenate([record, np.stack(rows)])  # (K, L)
        logged = LoggedStep(
            step=step,
            stats=record,
            skipped=bool(skipped or fields[0]),
            loss_scale=float(fields[1]),
            names=self.layout.stats,
        )
        self.last = logged
        if self._records is not None:
            self._records.write_step(
                logged.step, logged.stats, logged.skipped, logged.loss_scale
            )
        if self._alerts is not None:
            values = {name: logged.stats[k] for k, name in enumerate(logged.names)}
            self._alerts.update(logged.step, values, skipped=logged.skipped)
        return logged

    def _compute(
        self, grad_scale: Tensor | float | None, found_inf: Tensor | None
    ) -> tuple[np.ndarray, tuple[float, float]]:
        extras = self._step_extras(grad_scale, found_inf)
        grads = [layer.param.grad for layer in self._layers]
        gradient = [s for s in self._statistics if s.reads == "gradient"]
        record, host_extras = layer_stats(
            grads, scratch=self._scratch, extras=extras, statistics=gradient
        )
        if host_extras is None:
            host_extras = np.array([math.nan, 0.0, math.nan])
        scale, inf_flag, loss_scale = host_extras
        if math.isfinite(scale) and scale > 0:  # linear in the gradient: unscale
            scaled = [k for k, s in enumerate(gradient) if s.loss_scaled]
            record[scaled] /= scale
        return record, (inf_flag > 0, loss_scale)

    def _step_extras(
        self, grad_scale: Tensor | float | None, found_inf: Tensor | None
    ) -> Tensor | None:
        """``(3,)`` scalars to copy with the stats: grad scale, inf flag, loss scale."""
        loss_scale = None
        if self._scaler is not None:
            loss_scale = getattr(self._scaler, "_scale", None)
        elif grad_scale is not None:
            loss_scale = grad_scale
        if grad_scale is None and found_inf is None and loss_scale is None:
            return None
        values = [(grad_scale, math.nan), (found_inf, 0.0), (loss_scale, math.nan)]
        device = next(
            (v.device for v, _ in values if isinstance(v, Tensor)), torch.device("cpu")
        )
        return torch.stack([_as_scalar(v, default, device) for v, default in values])


def _process_rank() -> int:
    """This process's rank in the default process group (0 outside one)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def _as_scalar(
    value: Tensor | float | None, default: float, device: torch.device
) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().reshape(()).to(device, torch.float32)
    return torch.tensor(default if value is None else float(value), device=device)


# ``tb_gradflow.watch(model, writer, ...)``: the name the docs and users call.
watch = GradFlow
