"""Which layers a watcher follows, and their names.

A layer is a parameter that requires grad, named by its parameter's name
without a trailing ``.weight``, with DDP/DataParallel (``module.``) and
``torch.compile`` (``_orig_mod.``) wrappers looked through.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from torch import Tensor, nn

__all__ = ["layer_name", "module_types", "select_layers", "unwrap_model"]

_SPARSE_MODULES = (nn.Embedding, nn.EmbeddingBag)
_WRAPPER_PREFIX = "module."  # DistributedDataParallel, DataParallel, DeepSpeed
_COMPILE_COMPONENT = "_orig_mod"  # torch.compile's OptimizedModule


def layer_name(param_name: str) -> str:
    """The layer name of a parameter: its name without a trailing ``.weight``.

    ``torch.compile``'s ``_orig_mod`` components are dropped as well.

    Examples:
        >>> layer_name("encoder._orig_mod.fc1.weight")
        'encoder.fc1'
        >>> layer_name("lstm.weight_ih_l0")
        'lstm.weight_ih_l0'
    """
    parts = [p for p in param_name.split(".") if p != _COMPILE_COMPONENT]
    if len(parts) > 1 and parts[-1] == "weight":
        parts = parts[:-1]
    return ".".join(parts)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strips DDP/DataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, _COMPILE_COMPONENT, None), nn.Module):
            model = getattr(model, _COMPILE_COMPONENT)
        else:
            return model


def _is_bias(param_name: str) -> bool:
    return param_name.rsplit(".", 1)[-1].startswith("bias")


def _patterns(arg: str, patterns: str | Iterable[str]) -> list[str]:
    """``patterns`` as a list of glob strings (a generator is read once)."""
    if isinstance(patterns, str):
        return [patterns]
    if not isinstance(patterns, Iterable):
        raise TypeError(
            f"{arg} must be a str or an iterable of str, got {type(patterns).__name__}"
        )
    patterns = list(patterns)
    for pat in patterns:
        if not isinstance(pat, str):
            raise TypeError(
                f"{arg} patterns must be str, got {type(pat).__name__}: {pat!r}"
            )
    return patterns


def select_layers(
    model: nn.Module,
    *,
    include_bias: bool = False,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    parameters: Iterable[Tensor] | None = None,
) -> list[tuple[str, nn.Parameter, bool]]:
    """The layers ``watch`` follows: ``(name, parameter, is_sparse)`` in model order.

    One per parameter that requires grad (tied parameters once), named by
    :func:`layer_name`; biases (last name component starting with ``bias``) only
    with ``include_bias``; ``include``/``exclude`` are glob patterns on layer
    names; ``parameters``, if given, keeps only the layers whose parameter is
    one of them (e.g. one optimizer's, when each of several optimizers gets a
    watcher).

    Raises:
        ValueError: if no layer is left, two layers end up with one name, an
            ``include`` pattern matches no layer (the message lists the
            layers), or ``parameters`` holds a tensor that is not a parameter
            of ``model``.
        TypeError: if a pattern is not a str, or ``parameters`` is not an
            iterable of tensors.
    """
    model = unwrap_model(model)
    include = None if include is None else _patterns("include", include)
    exclude = [] if exclude is None else _patterns("exclude", exclude)
    kept = None if parameters is None else _parameter_ids(model, parameters)
    sparse_params = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, _SPARSE_MODULES) and m.sparse
    }
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if named and all(n.startswith(_WRAPPER_PREFIX) for n, _ in named):
        named = [(n[len(_WRAPPER_PREFIX) :], p) for n, p in named]
    if include is not None:
        names = [layer_name(n) for n, _ in named if include_bias or not _is_bias(n)]
        for pat in include:
            if not any(fnmatch.fnmatchcase(name, pat) for name in names):
                shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
                raise ValueError(
                    f"include pattern {pat!r} matches no layer; the model's "
                    f"layers ({len(names)}): {shown}"
                )
    layers, seen = [], {}
    for pname, param in named:
        if kept is not None and id(param) not in kept:
            continue
        if not include_bias and _is_bias(pname):
            continue
        name = layer_name(pname)
        if include is not None and not any(
            fnmatch.fnmatchcase(name, pat) for pat in include
        ):
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            continue
        if name in seen:
            raise ValueError(
                f"Parameters {seen[name]!r} and {pname!r} both map to layer "
                f"name {name!r}"
            )
        seen[name] = pname
        layers.append((name, param, id(param) in sparse_params))
    if not layers:
        raise ValueError(
            "No layer to watch: the model has no parameter that requires grad and "
            f"passes the filters (include_bias={include_bias}, include={include}, "
            f"exclude={list(exclude)}"
            + ("" if kept is None else f", {len(kept)} parameters given")
            + ")"
        )
    return layers


def module_types(model: nn.Module) -> dict[int, str]:
    """The class name of the module that owns each parameter, by ``id`` of the
    parameter (the first owner of a tied one, in module order). A class that
    FSDP2's ``fully_shard`` made (``FSDPLinear``) is named by the class it
    wraps (``Linear``)."""
    owners: dict[int, str] = {}
    for module in unwrap_model(model).modules():
        kind = type(module)
        name = kind.__name__
        if name.startswith("FSDP") and any(
            base.__name__ == name[4:] for base in kind.__mro__[1:]
        ):
            name = name[4:]
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), name)
    return owners


def _parameter_ids(model: nn.Module, parameters: Iterable[Tensor]) -> set[int]:
    """The ids of ``parameters``, each checked to be a parameter of ``model``."""
    if isinstance(parameters, Tensor) or not isinstance(parameters, Iterable):
        raise TypeError(
            "parameters must be an iterable of the model's parameters, got "
            f"{type(parameters).__name__}"
        )
    own = {id(p) for p in model.parameters()}
    ids = set()
    for p in parameters:
        if not isinstance(p, Tensor):
            raise TypeError(
                f"parameters must hold tensors, got {type(p).__name__}: {p!r}"
            )
        if id(p) not in own:
            raise ValueError(
                f"parameters holds a tensor of shape {tuple(p.shape)} that is not a "
                "parameter of the model"
            )
        ids.add(id(p))
    return ids
