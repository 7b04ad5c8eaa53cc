"""Optimizers: SMORMS3, and one optimizer over sparse and dense parameters."""

from trainkit.optim.multiple import MultipleOptimizer
from trainkit.optim.smorms3 import SMORMS3
from trainkit.optim.sparse_dense import sparse_dense_optimizer, split_sparse_dense

__all__ = [
    "SMORMS3",
    "MultipleOptimizer",
    "sparse_dense_optimizer",
    "split_sparse_dense",
]
