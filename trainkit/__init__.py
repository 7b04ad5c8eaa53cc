"""trainkit: small, correct building blocks for training PyTorch models.

Subpackages load on first use: ``trainkit.optim``, ``trainkit.losses``,
``trainkit.encoders``, ``trainkit.checks``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["checks", "encoders", "losses", "optim"]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"trainkit.{name}")
    raise AttributeError(f"module 'trainkit' has no attribute {name!r}")
