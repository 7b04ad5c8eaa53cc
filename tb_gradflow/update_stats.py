"""The parameters and the step the optimizer applied, measured around a logged
optimizer step: the partials of the ``update_ratio`` and ``weight_norm``
statistics.

Before the step, the watched parameters are copied into buffers kept for the
next logged step (memory equal to the watched parameters, held while the
watcher lives and freed by ``remove()``), and Σθ² is taken; after it, the
buffers become θ_before − θ_after in place and Σ(Δθ)² is taken. The difference
of two nearby floats is exact in their own dtype (Sterbenz), so it is taken in
the parameter's dtype; the sums are combined in float64 with the gradient's
rescue of sums float32 cannot hold. An update smaller than half a unit in the
last place of a bfloat16/float16 weight changes nothing: its ratio is then
honestly 0. Nothing runs on steps that are not logged.

Under FSDP2 each rank measures its own shards, and the partial sums take one
SUM all-reduce after the step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from tb_gradflow import _sharded
from tb_gradflow.gradient_stats import dense_sums

__all__ = ["UpdateMeter"]


class UpdateMeter:
    """Measures the watched parameters before an optimizer step and the update
    it applied after.

    Args:
        params: the watched parameters, one per layer.
    """

    def __init__(self, params: Sequence[Tensor]) -> None:
        self._params = list(params)
        self._sharded = _sharded.dtensor_indices(self._params)
        self._before: list[Tensor] | None = None
        self._scratch: dict[torch.device, Tensor] = {}

    @torch.no_grad()
    def before(self) -> np.ndarray:
        """Copies the parameters; returns Σθ² per layer, ``(L,)`` float64."""
        local = self._local()
        if self._before is None or any(
            b.shape != t.shape or b.dtype != t.dtype or b.device != t.device
            for b, t in zip(self._before, local)
        ):
            self._before = [torch.empty_like(t) for t in local]
        torch._foreach_copy_(self._before, local)
        return self._reduced(dense_sums(local, self._scratch)[2])

    @torch.no_grad()
    def after(self) -> np.ndarray:
        """Σ(θ_after − θ_before)² per layer, ``(L,)`` float64, of the step
        since :meth:`before`."""
        if self._before is None:
            raise RuntimeError("UpdateMeter.after() without before()")
        torch._foreach_sub_(self._before, self._local())  # θ_before − θ_after
        return self._reduced(dense_sums(self._before, self._scratch)[2])

    def release(self) -> None:
        """Frees the copies of the parameters."""
        self._before = None
        self._scratch.clear()

    def _local(self) -> list[Tensor]:
        local = [p.detach() for p in self._params]
        for i in self._sharded:  # FSDP2: this rank's shard
            local[i] = local[i].to_local()
        return local

    def _reduced(self, sums: np.ndarray) -> np.ndarray:
        """``sums`` of this rank's shards summed over the shards' group."""
        if not self._sharded:
            return sums
        group = _sharded.shard_group(self._params[self._sharded[0]])
        device = self._params[self._sharded[0]].to_local().device
        partials = {"param_sq": sums}  # any partial combined by a sum
        _sharded.reduce_partials(partials, self._sharded, device, group)
        return partials["param_sq"]
