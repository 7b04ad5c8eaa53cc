"""The parameters and the step the optimizer applied, measured around a logged
optimizer step: the partials of the ``update_ratio`` and ``weight_norm``
statistics.

Before the step, the watched parameters are copied into buffers kept for the
next logged step (memory equal to the watched parameters, held while the
watcher lives and freed by ``remove()``), and Σθ² is taken; after it, the
buffers become θ_before − θ_after in place and Σ(Δθ)² is taken. The difference
of two nearby floats is exact in their own dtype (Sterbenz), so it is taken in
the parameter's dtype (float32 for bfloat16/float16 parameters: as exact); the
sums are combined in float64. An update smaller than half a unit in the last
place of a bfloat16/float16 weight changes nothing: its ratio is then honestly
0. Nothing runs on steps that are not logged.

On the CPU, float32, bfloat16 and float16 parameters are copied into one flat
float32 buffer, each layer padded with zeros to whole rows of ``_ROW``
elements, and the buffer is walked in cache-sized chunks: each chunk is filled
(the copy, or the subtraction) and its rows' L2 norms taken while it is still in
cache, so that a step reads the parameters once and the buffer once or twice
from memory. Rows of ``_ROW`` elements keep the float32 sums exact to ~1e-7
(one float32 sum of squares over millions of elements is off by up to 1e-3).
Other parameters (other devices, float64) are copied with multi-tensor ops and
reduced by the gradient's fused reduction.

A layer whose Σx² float32 may not hold (an overflow, squares below float32's
smallest numbers, or exactly 0: a zero-initialised layer, a step that moved
nothing) is summed again in float64.

Under FSDP2 each rank measures its own shards, and the partial sums take one
SUM all-reduce after the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from tb_gradflow import _sharded
from tb_gradflow.gradient_stats import dense_sums

__all__ = ["UpdateMeter"]

_ROW = 1024  # elements per row: float32 sums of <= 1024 squares stay exact
_CHUNK = 1 << 18  # elements filled and reduced at once (1 MiB: stays in cache)
_FLAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Below this mean square, squares under float32's smallest normal (1.2e-38) may
# carry more than 1e-7 of the sum.
_TINY_MEAN_SQUARE = 1.2e-31


class UpdateMeter:
    """Measures the watched parameters before an optimizer step and the update
    it applied after.

    Args:
        params: the watched parameters, one per layer.
    """

    def __init__(self, params: Sequence[Tensor]) -> None:
        self._params = list(params)
        self._sharded = _sharded.dtensor_indices(self._params)
        self._layout: tuple | None = None
        self._flat: _FlatPlan | None = None
        self._flat_layers: list[int] = []
        self._other_layers: list[int] = []
        self._other: list[Tensor] = []  # copies of the other parameters
        self._scratch: dict[torch.device, Tensor] = {}
        self._measured = False

    @torch.no_grad()
    def before(self) -> np.ndarray:
        """Copies the parameters; returns Σθ² per layer, ``(L,)`` float64."""
        local = self._local()
        layout = tuple((t.shape, t.dtype, t.device) for t in local)
        if layout != self._layout:
            self._plan(local)
            self._layout = layout
        self._measured = True
        return self._sums(local, subtract=False)

    @torch.no_grad()
    def after(self) -> np.ndarray:
        """Σ(θ_after − θ_before)² per layer, ``(L,)`` float64, of the step
        since :meth:`before`."""
        if not self._measured:
            raise RuntimeError("UpdateMeter.after() without before()")
        self._measured = False
        return self._sums(self._local(), subtract=True)

    def release(self) -> None:
        """Frees the copies of the parameters."""
        self._layout = self._flat = None
        self._other = []
        self._scratch.clear()
        self._measured = False

    def _plan(self, local: list[Tensor]) -> None:
        flat = [
            i
            for i, t in enumerate(local)
            if t.device.type == "cpu" and t.dtype in _FLAT_DTYPES
        ]
        self._flat_layers = flat
        self._other_layers = sorted(set(range(len(local))) - set(flat))
        self._flat = _FlatPlan([local[i] for i in flat]) if flat else None
        self._other = [torch.empty_like(local[i]) for i in self._other_layers]

    def _sums(self, local: list[Tensor], *, subtract: bool) -> np.ndarray:
        """Σθ² (copying θ) or, with ``subtract``, Σ(θ_before − θ)² per layer."""
        sums = np.zeros(len(local))
        if self._flat is not None:
            sums[self._flat_layers] = self._flat.run(
                [local[i] for i in self._flat_layers], subtract=subtract
            )
        if self._other_layers:
            current = [local[i] for i in self._other_layers]
            if subtract:
                torch._foreach_sub_(self._other, current)  # θ_before − θ_after
                measured = self._other
            else:
                torch._foreach_copy_(self._other, current)
                measured = current
            sums[self._other_layers] = dense_sums(measured, self._scratch)[2]
        return self._reduced(sums)

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


class _Chunk(NamedTuple):
    """What one pass over ``_CHUNK`` elements of the flat buffer does."""

    whole: list[int]  # tensors that lie in the chunk whole
    whole_dst: list[Tensor]  # their places, shaped like them
    parts: list[tuple[int, int, int, Tensor]]  # (tensor, start, stop, place)
    rows: Tensor  # (R, ROW) view of the chunk
    norms: Tensor  # (R,) view of the plan's row norms


class _FlatPlan:
    """One flat float32 CPU buffer holding a copy of each tensor, padded to
    whole rows, walked in chunks (see the module's docstring).

    Args:
        tensors: CPU tensors of float32, bfloat16 or float16.
    """

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        sizes = [t.numel() for t in tensors]
        starts = np.concatenate([[0], np.cumsum([-(-n // _ROW) * _ROW for n in sizes])])
        self.buffer = torch.zeros(int(starts[-1]))  # padding stays 0: 0 − 0 = 0
        self.numel = np.array(sizes)
        self.places = [
            self.buffer[a : a + n] for a, n in zip(starts[:-1].tolist(), sizes)
        ]
        self.row_owner = np.repeat(np.arange(len(sizes)), np.diff(starts) // _ROW)
        self.norms = torch.zeros(self.row_owner.size)  # (R,)
        self.chunks: list[_Chunk] = []
        for c0 in range(0, self.buffer.numel(), _CHUNK):
            c1 = min(c0 + _CHUNK, self.buffer.numel())
            whole, whole_dst, parts = [], [], []
            for i, (a, n) in enumerate(zip(starts[:-1].tolist(), sizes)):
                lo, hi = max(a, c0), min(a + n, c1)
                if lo >= hi:
                    continue
                if lo == a and hi == a + n:
                    whole.append(i)
                    whole_dst.append(self.places[i].view(tensors[i].shape))
                else:
                    parts.append((i, lo - a, hi - a, self.buffer[lo:hi]))
            self.chunks.append(
                _Chunk(
                    whole,
                    whole_dst,
                    parts,
                    self.buffer[c0:c1].view(-1, _ROW),  # (R, ROW)
                    self.norms[c0 // _ROW : c1 // _ROW],
                )
            )

    def run(self, tensors: Sequence[Tensor], *, subtract: bool) -> np.ndarray:
        """Copies ``tensors`` into the buffer (or, with ``subtract``, subtracts
        them from what it holds) and returns Σx² of what it then holds per
        tensor, ``(N,)`` float64."""
        fill = torch._foreach_sub_ if subtract else torch._foreach_copy_
        flat = {i: tensors[i].reshape(-1) for c in self.chunks for i, *_ in c.parts}
        for chunk in self.chunks:
            if chunk.whole:
                fill(chunk.whole_dst, [tensors[i] for i in chunk.whole])
            if chunk.parts:
                fill(
                    [dst for *_, dst in chunk.parts],
                    [flat[i][a:b] for i, a, b, _ in chunk.parts],
                )
            torch.linalg.vector_norm(chunk.rows, dim=1, out=chunk.norms)
        norms = self.norms.numpy().astype(np.float64)
        sums = np.bincount(self.row_owner, norms * norms, minlength=self.numel.size)
        with np.errstate(invalid="ignore"):
            unsure = ~(sums > self.numel * _TINY_MEAN_SQUARE) | np.isinf(sums)
        for i in np.flatnonzero(unsure & (self.numel > 0)).tolist():
            sums[i] = self.places[i].double().square().sum().item()
        return sums
