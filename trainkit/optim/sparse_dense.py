"""Sparse embeddings to one optimizer, everything else to another, as one object.

``Adam`` rejects sparse gradients and ``SparseAdam`` rejects dense ones, so a model
with ``nn.Embedding(sparse=True)`` needs two optimizers; :func:`sparse_dense_optimizer`
builds them and joins them in a :class:`~trainkit.optim.MultipleOptimizer`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from trainkit.optim.multiple import MultipleOptimizer

__all__ = ["SparseAdam", "sparse_dense_optimizer", "split_sparse_dense"]

_SPARSE_MODULES = (nn.Embedding, nn.EmbeddingBag)


def _sparse_weight_names(module: nn.Module) -> dict[Tensor, str]:
    """The weights of sparse embeddings, each with its first qualified name."""
    names: dict[Tensor, str] = {}
    for mod_name, mod in module.named_modules():
        if isinstance(mod, _SPARSE_MODULES) and mod.sparse:
            names.setdefault(mod.weight, f"{mod_name}.weight" if mod_name else "weight")
    return names


def split_sparse_dense(
    module: nn.Module,
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Splits a module's parameters into those with sparse and dense gradients.

    The sparse ones are the weights of ``nn.Embedding`` and ``nn.EmbeddingBag``
    modules built with ``sparse=True``; all other parameters are dense. Both lists
    follow ``module.parameters()`` order, list each parameter once and include
    frozen ones (as ``torch.optim.Adam(module.parameters())`` would).

    Args:
        module: the model.

    Returns:
        ``(sparse_params, dense_params)``.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.
        ValueError: if a sparse embedding's weight is also registered in another
            module (tied weights, e.g. ``head.weight = emb.weight``): its gradient
            is then dense, which ``SparseAdam`` rejects.

    Examples:
        >>> import torch
        >>> from trainkit.optim import split_sparse_dense
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Embedding(10, 4, sparse=True), torch.nn.Linear(4, 2)
        ... )
        >>> sparse, dense = split_sparse_dense(model)
        >>> [tuple(p.shape) for p in sparse], [tuple(p.shape) for p in dense]
        ([(10, 4)], [(2, 4), (2,)])
    """
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"module must be a torch.nn.Module, got {type(module).__name__}"
        )
    sparse_names = _sparse_weight_names(module)
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        is_sparse_module = isinstance(mod, _SPARSE_MODULES) and mod.sparse
        for param_name, p in mod.named_parameters(recurse=False):
            if p in sparse_names and not (is_sparse_module and param_name == "weight"):
                where = f"{mod_name}.{param_name}" if mod_name else param_name
                raise ValueError(
                    f"{sparse_names[p]} is the weight of a sparse embedding "
                    f"(sparse=True) but is also {where} ({type(mod).__name__}): a "
                    "tied weight gets a dense gradient from the other module, which "
                    "SparseAdam rejects. Untie the weights, or build the embedding "
                    "with sparse=False and use one dense optimizer"
                )
    sparse: list[nn.Parameter] = []
    dense: list[nn.Parameter] = []
    for p in module.parameters():
        (sparse if p in sparse_names else dense).append(p)
    return sparse, dense


def _check_factory(
    factory: Callable[..., Optimizer], kwargs: Mapping[str, Any], side: str
) -> None:
    """Raises TypeError/ValueError, naming the argument, for an optimizer factory
    that is not callable or does not take one of ``kwargs``."""
    if not callable(factory):
        raise TypeError(
            f"{side} must be an optimizer class or factory (e.g. torch.optim.Adam), "
            f"got {type(factory).__name__}"
        )
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and C callables: let them raise
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    name = getattr(factory, "__name__", repr(factory))
    for key in kwargs:
        if key not in parameters or key == "params":
            accepted = ", ".join(k for k in parameters if k != "params")
            where = f"{side}_kwargs" if key != "lr" else f"lr (or {side}_kwargs)"
            raise ValueError(
                f"{name} does not accept {key!r} (from {where}); it takes: {accepted}"
            )


def _dense_grad_guard(
    names: dict[Tensor, str],
) -> Callable[[Optimizer, Any, Any], None]:
    """A step pre-hook naming a sparse-embedding weight that got a dense gradient
    (e.g. a weight also used as ``F.linear(x, emb.weight)``)."""

    def hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None and not p.grad.is_sparse:
                    raise RuntimeError(
                        f"{names.get(p, 'a sparse embedding weight')} got a dense "
                        "gradient: the weight is also used outside its "
                        "nn.Embedding(sparse=True) (a tied or shared weight). Untie "
                        "it, or build the embedding with sparse=False"
                    )

    return hook


class SparseAdam(torch.optim.SparseAdam):
    """``torch.optim.SparseAdam`` whose dense-gradient guard (a step pre-hook
    naming a sparse-embedding weight that got a dense gradient) survives
    ``copy.deepcopy`` and pickling, which drop an optimizer's hooks: the names
    are part of its state and the hook is registered again on loading.
    :func:`sparse_dense_optimizer` makes its SparseAdam child one. Named as
    torch's class, so that state dicts and messages name it as before."""

    _dense_grad_names: dict[Tensor, str]

    def guard(self, names: dict[Tensor, str]) -> None:
        """Registers the guard for the weights in ``names`` (by parameter)."""
        self._dense_grad_names = dict(names)
        self.register_step_pre_hook(_dense_grad_guard(self._dense_grad_names))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_dense_grad_names"] = self._dense_grad_names
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        names = state.pop("_dense_grad_names", {})
        super().__setstate__(state)
        self.guard(names)


def sparse_dense_optimizer(
    module: nn.Module,
    dense: Callable[..., Optimizer] = torch.optim.Adam,
    sparse: Callable[..., Optimizer] = torch.optim.SparseAdam,
    *,
    lr: float = 1e-3,
    dense_kwargs: Mapping[str, Any] | None = None,
    sparse_kwargs: Mapping[str, Any] | None = None,
) -> MultipleOptimizer:
    """One optimizer for a model whose embeddings have sparse gradients.

    Splits ``module`` with :func:`split_sparse_dense`, builds
    ``sparse(sparse_params, lr=lr, **sparse_kwargs)`` and
    ``dense(dense_params, lr=lr, **dense_kwargs)``, and returns them as one
    :class:`MultipleOptimizer` (sparse child first; a side with no parameters gets
    no child). Options go only to the child they are given for: ``SparseAdam``
    takes no ``weight_decay``, ``foreach`` or ``fused``, so put those in
    ``dense_kwargs``.

    With ``torch.optim.SparseAdam`` as ``sparse``, a sparse-embedding weight that
    receives a dense gradient at step time raises an error that names it; the
    child is then this module's :class:`SparseAdam`, which keeps that check through
    ``copy.deepcopy`` and pickling.

    .. note::
        ``torch.nn.utils.clip_grad_norm_`` raises on sparse gradients (torch 2.13
        on the CPU, with ``foreach`` True or False): clip the dense parameters only,
        or take a sparse gradient's norm as ``grad.coalesce().values().norm()``.

    Args:
        module: the model.
        dense: optimizer class (or factory) for the dense parameters.
        sparse: optimizer class (or factory) for the sparse-embedding weights.
        lr: learning rate of both children unless their kwargs set ``lr``.
        dense_kwargs: more keyword arguments for ``dense``.
        sparse_kwargs: more keyword arguments for ``sparse``.

    Returns:
        The joined optimizer; ``.optimizers`` holds the children.

    Raises:
        TypeError: if ``dense`` or ``sparse`` is not callable, or their kwargs are
            not a mapping.
        ValueError: if ``module`` has no parameters, an option is not accepted by
            its optimizer, or a sparse embedding weight is tied to another module.

    Examples:
        >>> import torch
        >>> from trainkit.optim import sparse_dense_optimizer
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Embedding(10, 4, sparse=True), torch.nn.Linear(4, 2)
        ... )
        >>> opt = sparse_dense_optimizer(
        ...     model, lr=0.01, dense_kwargs={"weight_decay": 1e-4}
        ... )
        >>> [type(child).__name__ for child in opt.optimizers]
        ['SparseAdam', 'Adam']
        >>> model(torch.tensor([1, 2, 3])).sum().backward()
        >>> opt.step()
        >>> opt.zero_grad()
    """
    sparse_params, dense_params = split_sparse_dense(module)
    if not sparse_params and not dense_params:
        raise ValueError(f"{type(module).__name__} has no parameters to optimize")
    children: list[Optimizer] = []
    for factory, params, extra, side in (
        (sparse, sparse_params, sparse_kwargs, "sparse"),
        (dense, dense_params, dense_kwargs, "dense"),
    ):
        if extra is not None and not isinstance(extra, Mapping):
            raise TypeError(
                f"{side}_kwargs must be a dict of keyword arguments, got "
                f"{type(extra).__name__}"
            )
        kwargs = {"lr": lr, **(extra or {})}
        _check_factory(factory, kwargs, side)
        if params:
            children.append(factory(params, **kwargs))
    if sparse_params and isinstance(children[0], torch.optim.SparseAdam):
        sparse_set = set(sparse_params)
        names = {p: n for n, p in module.named_parameters() if p in sparse_set}
        if type(children[0]) is torch.optim.SparseAdam:
            # adds only the guard's state; its step is SparseAdam's, already hooked
            children[0].__class__ = SparseAdam
            children[0].guard(names)
        else:  # a subclass of the user's: the guard as a plain hook
            children[0].register_step_pre_hook(_dense_grad_guard(names))
    return MultipleOptimizer(*children)
