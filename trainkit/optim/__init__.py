"""Optimizers: SMORMS3, and one optimizer over sparse and dense parameters."""

from trainkit.optim.smorms3 import SMORMS3

__all__ = ["SMORMS3"]
