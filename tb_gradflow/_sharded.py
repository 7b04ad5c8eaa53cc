"""Sharded gradients (FSDP2 / DTensor): local partial sums, then one small
collective per logged step gives whole-layer statistics.

Every rank must take part in a logged step: the reduction is a collective.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from tb_gradflow import stats


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (without importing it
    when torch.distributed is unused)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def dtensor_indices(ts: Sequence[object]) -> list[int]:
    """The positions of the ``DTensor`` s in ``ts`` (one check of the process
    group for all of them)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return []
    return [i for i, t in enumerate(ts) if is_dtensor(t)]


def shard_group(t: Tensor) -> torch.distributed.ProcessGroup:
    """The process group over which ``t``'s shards are spread.

    Raises:
        NotImplementedError: for tensors sharded over several mesh dimensions.
    """
    mesh = t.device_mesh
    dims = [d for d, p in enumerate(t.placements) if p.is_shard()]
    if not dims:
        raise NotImplementedError("a DTensor without Shard placement is not sharded")
    if len(dims) > 1:
        raise NotImplementedError(
            f"gradients sharded over {len(dims)} mesh dimensions are not supported"
        )
    return mesh.get_group(mesh_dim=dims[0]) if mesh.ndim > 1 else mesh.get_group()


def reduce_partials(
    partials: dict[str, np.ndarray],
    sharded: Sequence[int],
    device: torch.device,
    group,
) -> None:
    """Combines each partial over the shards, by its ``combine`` op (see
    :mod:`tb_gradflow.stats`): one SUM and one MAX all-reduce for all of them.

    Args:
        partials: ``{name: (L,) float64}`` local partials, modified in place.
        sharded: the columns (layers) whose gradients are sharded.
        device: where the collective runs (CUDA for NCCL, CPU for gloo).
        group: the shards' process group.
    """
    cols = list(sharded)
    by_op: dict[str, list[str]] = {"sum": [], "max": []}
    for name in partials:
        by_op[stats.partial(name).combine].append(name)
    ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}
    for op, names in by_op.items():
        if not names:
            continue
        block = np.stack([partials[n][cols] for n in names])  # (P, S)
        t = torch.tensor(block, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t, op=ops[op], group=group)
        for name, row in zip(names, t.cpu().numpy()):
            partials[name][cols] = row


def reduce_counts(counts: Tensor, group) -> Tensor:
    """Sums per-layer non-finite counts over the shards."""
    counts = counts.to(torch.float64)
    torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.SUM, group=group)
    return counts
