"""Private argument checks shared by trainkit modules.

Each check raises with the argument's name and the offending value, in the manner of
``torch.optim`` (``ValueError(f"Invalid learning rate: {lr}")``).
"""

from __future__ import annotations

import numbers
from collections.abc import Collection

import torch
from torch import Tensor, nn

REDUCTIONS = ("mean", "sum", "none")


def check_choice(name: str, value: object, choices: Collection[object]) -> None:
    """Raises ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"Invalid {name}: {value!r} (expected one of {options})")


def check_real(name: str, value: object) -> None:
    """Raises TypeError unless ``value`` is a real number (bool is refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Invalid {name}: {value!r} (a real number)")


def check_int(name: str, value: object, expected: str) -> int:
    """``value`` as an int; raises TypeError unless it is an integer (a Python or
    numpy one; bool is refused). ``expected`` says what is valid, e.g. "an int >= 1".
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Invalid {name}: {value!r} ({expected})")
    return int(value)


def check_model_and_loss(model: object, loss_fn: object) -> None:
    """Raises TypeError unless ``model`` is an ``nn.Module``, ``loss_fn`` a callable."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")


def check_reduction(reduction: str) -> None:
    """Raises ValueError unless ``reduction`` is "mean", "sum" or "none"."""
    check_choice("reduction", reduction, REDUCTIONS)


def check_floating_tensor(name: str, value: object) -> None:
    """Raises TypeError unless ``value`` is a real floating-point tensor."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")


def check_integer_tensor(name: str, value: object) -> None:
    """Raises TypeError unless ``value`` is a tensor of an integer dtype (not bool)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    dtype = value.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {value.dtype}")


def check_ndim(name: str, value: Tensor, ndim: int, layout: str) -> None:
    """Raises ValueError unless ``value`` has ``ndim`` dims; ``layout`` names them."""
    if value.dim() != ndim:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(value.shape)}")
