"""One ``torch.optim.Optimizer`` over several optimizers.

Learning-rate schedulers, checkpoints, ``GradScaler`` and step hooks then see one
object, e.g. for ``SparseAdam`` on sparse embeddings plus ``Adam`` on the rest.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["MultipleOptimizer"]

_HOOK_DICTS = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)


def _step_needs_closure(opt: Optimizer) -> bool:
    """Whether ``opt.step`` has a ``closure`` argument without a default (LBFGS)."""
    try:
        closure = inspect.signature(opt.step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return closure is not None and closure.default is inspect.Parameter.empty


def _groups_signature(optimizers: Sequence[Optimizer]) -> tuple:
    """What changes when a child's groups change: the identity of every parameter
    of every group, in order (one ``id`` per parameter: ~20 ns each). The
    parameters are alive (the groups hold them), so their ids are unique."""
    return tuple(
        tuple(tuple(map(id, g["params"])) for g in opt.param_groups)
        for opt in optimizers
    )


def _check_disjoint(optimizers: Sequence[Optimizer]) -> None:
    """Raises ValueError if a parameter belongs to two of the optimizers."""
    owner: dict[Tensor, int] = {}
    for i, opt in enumerate(optimizers):
        for group in opt.param_groups:
            for p in group["params"]:
                j = owner.setdefault(p, i)
                if j != i:
                    raise ValueError(
                        f"a parameter of shape {tuple(p.shape)} is in optimizers"
                        f"[{j}] ({type(optimizers[j]).__name__}) and in "
                        f"optimizers[{i}] ({type(opt).__name__}); each "
                        "parameter must belong to one optimizer only"
                    )


def _same(a: Any, b: Any) -> bool:
    """Equality that never raises (tensors, NaN and odd types compare unequal)."""
    try:
        return a is b or bool(a == b)
    except Exception:  # e.g. a multi-element tensor's __bool__
        return False


class MultipleOptimizer(Optimizer):
    """Steps, zeroes, saves and loads several optimizers as one.

    A real :class:`torch.optim.Optimizer`: ``param_groups`` is the concatenation of
    the children's own group dicts (not copies), so every
    ``torch.optim.lr_scheduler`` accepts it and its changes reach the children, also
    after :meth:`load_state_dict`. Hooks registered on it
    (:meth:`~torch.optim.Optimizer.register_step_pre_hook` and the rest) fire, and
    so do the children's.

    ``step(closure)`` evaluates the closure once, with gradients enabled, then steps
    every child without a closure; optimizers that need one (``LBFGS``) cannot be
    children. ``state`` is a read-only merged view of the children's states.
    ``defaults`` holds the options every child has (a value where they all agree,
    None where they differ), so ``OneCycleLR``/``CyclicLR`` with
    ``cycle_momentum=True`` work when every child has ``betas`` (Adam, SparseAdam)
    or every child has ``momentum`` (SGD, RMSprop). Parameter groups are added to a
    child (``multi.optimizers[i].add_param_group``), not to this object; a
    parameter added to two children is an error at the next step.

    Args:
        *optimizers: the children, in the order they step. Each parameter may
            belong to one child only.

    Attributes:
        optimizers: the children, as a tuple.

    Raises:
        TypeError: if a child is not a ``torch.optim.Optimizer``, or its ``step``
            requires a closure.
        ValueError: if there is no child, a child is given twice, or a parameter
            belongs to two children.

    Examples:
        >>> import torch
        >>> from trainkit.optim import MultipleOptimizer
        >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
        >>> opt = MultipleOptimizer(
        ...     torch.optim.SGD(a.parameters(), lr=0.1),
        ...     torch.optim.Adam(b.parameters(), lr=0.01),
        ... )
        >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        >>> b(a(torch.ones(1, 2))).sum().backward()
        >>> opt.step()
        >>> sched.step()
        >>> [group["lr"] for group in opt.param_groups]
        [0.05, 0.005]
    """

    def __init__(self, *optimizers: Optimizer) -> None:
        # Optimizer.__init__ is not called: it needs a parameter list and would
        # overwrite param_groups, which here is a live view of the children.
        if not optimizers:
            raise ValueError("MultipleOptimizer needs at least one optimizer")
        seen_opts: dict[int, int] = {}
        for i, opt in enumerate(optimizers):
            if not isinstance(opt, Optimizer):
                raise TypeError(
                    f"optimizers[{i}] must be a torch.optim.Optimizer, got "
                    f"{type(opt).__name__} (pass the optimizers as separate "
                    "arguments: MultipleOptimizer(opt_a, opt_b))"
                )
            if _step_needs_closure(opt):
                raise TypeError(
                    f"optimizers[{i}] ({type(opt).__name__}) needs a closure at "
                    "every step, which MultipleOptimizer evaluates once and does "
                    "not pass on to its children; step it on its own"
                )
            if id(opt) in seen_opts:
                raise ValueError(
                    f"optimizers[{i}] is the same object as optimizers"
                    f"[{seen_opts[id(opt)]}]"
                )
            seen_opts[id(opt)] = i
        _check_disjoint(optimizers)
        self.optimizers: tuple[Optimizer, ...] = tuple(optimizers)
        self._groups = _groups_signature(self.optimizers)
        for name in _HOOK_DICTS:
            setattr(self, name, OrderedDict())
        self._patch_step_function()  # runs the hooks registered on this object

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The children's parameter groups, in order; the dicts are theirs."""
        return [group for opt in self.optimizers for group in opt.param_groups]

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        """The options every child has: the value where all agree, else None."""
        shared = [opt.defaults for opt in self.optimizers]
        keys = [k for k in shared[0] if all(k in d for d in shared[1:])]
        return {
            k: shared[0][k] if all(_same(d[k], shared[0][k]) for d in shared) else None
            for k in keys
        }

    @property
    def state(self) -> defaultdict[Tensor, Any]:  # type: ignore[override]
        """A merged, read-only snapshot of the children's per-parameter states
        (the per-parameter dicts themselves are the children's); a parameter
        without state reads as ``{}``, as in ``torch.optim.Optimizer``."""
        return defaultdict(
            dict, ((p, s) for opt in self.optimizers for p, s in opt.state.items())
        )

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Evaluates ``closure`` once (if given), then steps every child.

        Args:
            closure: reevaluates the model and returns the loss (optional).

        Returns:
            The closure's loss, or None.

        Raises:
            ValueError: if a child's groups changed since the last step and a
                parameter now belongs to two children (no child has stepped).
        """
        groups = _groups_signature(self.optimizers)
        if groups != self._groups:  # a child's groups or their params changed
            _check_disjoint(self.optimizers)
            self._groups = groups
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Resets the gradients of every child's parameters.

        Args:
            set_to_none: set ``.grad`` to None instead of zeroing it (default: True).
        """
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """Returns ``{"optimizers": [child state dicts], "classes": [names]}``."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict: dict[str, Any] = {
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "classes": [type(opt).__name__ for opt in self.optimizers],
        }
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state dict made by :meth:`state_dict` into the children.

        Raises:
            TypeError: if ``state_dict`` is not a mapping.
            ValueError: if it is not a MultipleOptimizer state dict, or holds a
                different number or different classes of optimizers.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                "load_state_dict expects the dict made by MultipleOptimizer."
                f"state_dict(), got {type(state_dict).__name__}"
            )
        state_dict = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        if "optimizers" not in state_dict:
            raise ValueError(
                "not a MultipleOptimizer state dict (no 'optimizers' entry; got keys "
                f"{sorted(state_dict)})"
            )
        saved = state_dict["optimizers"]
        if len(saved) != len(self.optimizers):
            raise ValueError(
                f"the state dict holds {len(saved)} optimizers, this "
                f"MultipleOptimizer has {len(self.optimizers)}"
            )
        classes = [type(opt).__name__ for opt in self.optimizers]
        saved_classes = state_dict.get("classes", classes)
        if list(saved_classes) != classes:
            raise ValueError(
                f"the state dict holds optimizers {list(saved_classes)}, this "
                f"MultipleOptimizer has {classes}"
            )
        for opt, opt_state in zip(self.optimizers, saved):
            opt.load_state_dict(opt_state)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Not supported: add the group to one child instead.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError(
            "MultipleOptimizer cannot tell which optimizer a new group belongs to; "
            "call multi.optimizers[i].add_param_group(...) instead"
        )

    def __getstate__(self) -> dict[str, Any]:
        return {"optimizers": self.optimizers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Objects pickled by earlier versions also hold "defaults" (now derived).
        self.optimizers = tuple(state["optimizers"])
        self._groups = _groups_signature(self.optimizers)
        for name in _HOOK_DICTS:
            setattr(self, name, OrderedDict())
        self._patch_step_function()

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("]
        for i, opt in enumerate(self.optimizers):
            child = repr(opt).replace("\n", "\n  ")
            lines.append(f"  ({i}): {child}")
        lines.append(")")
        return "\n".join(lines)
