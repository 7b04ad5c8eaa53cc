"""Per-layer gradient reductions: Σ|g|, max|g| and Σg² in as few passes as possible.

Two paths, picked per device (measured in ``benchmarks/bench_watch.py``):

* CPU: ``torch._foreach_norm`` is not a fused kernel there (its inf-norm costs
  ~8x an L2 norm), so each gradient is read once by ``abs`` into a scratch
  buffer of at most ``_CHUNK`` elements that stays in the L2 cache, and the three
  reductions read that buffer. ``torch.dot`` in float32 loses precision on long
  vectors (2e-5 relative on 4M elements), so chunks also bound its error
  (< 3e-7); chunk partials are combined in float64 on the host.
* Accelerators: three multi-tensor ``_foreach_norm`` launches per
  (device, dtype) group (ord 1, 2 and inf), accumulating in float32.

No function here synchronises with the device: results stay on the device until
the caller copies them to the host once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

_CHUNK = 1 << 18  # elements per CPU scratch pass: 1 MiB of float32 fits in L2


class Partials:
    """Per-chunk partial sums on one device, with the layer each chunk belongs to.

    ``values`` is ``(3, C)`` float32 on the device: rows Σ|g|, max|g|, Σg².
    ``owner`` is ``(C,)`` int64 on the host: the layer index of each chunk.
    """

    def __init__(self, values: Tensor, owner: np.ndarray) -> None:
        self.values = values
        self.owner = owner


def reduce_dense(
    grads: Sequence[Tensor], owners: Sequence[int], scratch: dict[torch.device, Tensor]
) -> Partials:
    """Reduces dense gradients that all live on one device.

    Args:
        grads: dense gradients, any floating dtype.
        owners: the layer index of each gradient.
        scratch: reusable CPU buffers, keyed by device (filled on first use).
    """
    device = grads[0].device
    if device.type == "cpu":
        return _reduce_dense_cpu(grads, owners, scratch)
    return _reduce_dense_foreach(grads, owners)


def _reduce_dense_cpu(
    grads: Sequence[Tensor], owners: Sequence[int], scratch: dict[torch.device, Tensor]
) -> Partials:
    device = grads[0].device
    largest = min(max(g.numel() for g in grads), _CHUNK)
    buf = scratch.get(device)
    if buf is None or buf.numel() < largest:
        buf = scratch[device] = torch.empty(largest, dtype=torch.float32, device=device)
    sums, maxs, squares, chunk_owner = [], [], [], []
    for g, owner in zip(grads, owners):
        n = g.numel()
        if n == 0:
            continue
        pieces = (g,) if n <= _CHUNK else g.reshape(-1).split(_CHUNK)
        for piece in pieces:
            a = buf[: piece.numel()].view(piece.shape)
            if piece.dtype == torch.float32:
                torch.abs(piece, out=a)
            else:  # abs() cannot write another dtype: widen, then abs in place
                a.copy_(piece).abs_()
            a = a.view(-1)
            sums.append(a.sum())
            maxs.append(a.amax())
            squares.append(torch.dot(a, a))
            chunk_owner.append(owner)
    if not sums:
        return Partials(torch.zeros(3, 0, device=device), np.zeros(0, np.int64))
    values = torch.stack([torch.stack(sums), torch.stack(maxs), torch.stack(squares)])
    return Partials(values, np.asarray(chunk_owner, dtype=np.int64))


def _reduce_dense_foreach(grads: Sequence[Tensor], owners: Sequence[int]) -> Partials:
    groups: dict[torch.dtype, list[int]] = {}
    for i, g in enumerate(grads):
        groups.setdefault(g.dtype, []).append(i)
    rows, order = [], []
    for idx in groups.values():
        group = [grads[i] for i in idx]
        l1 = torch._foreach_norm(group, 1, dtype=torch.float32)
        l2 = torch._foreach_norm(group, 2, dtype=torch.float32)
        linf = torch._foreach_norm(group, float("inf"), dtype=torch.float32)
        rows.append(torch.stack([torch.stack(l1), torch.stack(linf), torch.stack(l2)]))
        order.extend(owners[i] for i in idx)
    values = torch.cat(rows, dim=1)  # (3, n)
    values[2].square_()  # Σg² from the L2 norm, so chunk partials add up
    return Partials(values, np.asarray(order, dtype=np.int64))


def reduce_sparse(grad: Tensor) -> tuple[Tensor, int]:
    """Reduces a sparse COO gradient as its dense equivalent.

    Duplicate indices are summed first (``coalesce``), as the dense gradient
    would sum them.

    Returns:
        ``(3,)`` float32 on the device (Σ|g|, max|g|, Σg²) and the number of
        rows (first-dimension slices) that received a gradient.
    """
    g = grad.coalesce()
    v = g.values().reshape(-1)
    if v.numel() == 0:
        return torch.zeros(3, device=grad.device), 0
    a = v.abs().float()
    rows = int(torch.unique(g.indices()[0]).numel()) if g.sparse_dim() > 1 else g._nnz()
    return torch.stack([a.sum(), a.amax(), torch.dot(a, a)]), rows


def count_nonfinite(grads: Sequence[Tensor]) -> Tensor:
    """Counts NaN/Inf elements of each gradient: ``(len(grads),)`` int64."""
    counts = []
    for g in grads:
        if g.is_sparse:
            g = g.coalesce().values()
        counts.append(torch.logical_not(torch.isfinite(g)).sum())
    return torch.stack(counts)


def combine(
    parts: Sequence[Partials], n_layers: int, extras: Tensor | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Copies partials to the host (one copy per device) and sums them per layer.

    Args:
        parts: partials of every device.
        n_layers: the number of layers ``L``.
        extras: ``(3,)`` per-step scalars to bring along in the first device's
            copy, so that they cost no copy of their own.

    Returns:
        ``(3, L)`` float64 (Σ|g|, max|g|, Σg² per layer; 0 for layers no chunk
        belongs to), and the host copy of ``extras`` (None without).
    """
    out = np.zeros((3, n_layers), dtype=np.float64)
    host_extras = None
    for i, part in enumerate(parts):
        values = part.values
        if i == 0 and extras is not None:
            values = torch.cat([values, extras.to(values.device)[:, None]], dim=1)
        host = values.to("cpu", torch.float64).numpy()  # (3, C) or (3, C + 1)
        if i == 0 and extras is not None:
            host, host_extras = host[:, :-1], host[:, -1]
        np.add.at(out[0], part.owner, host[0])
        np.maximum.at(out[1], part.owner, host[1])
        np.add.at(out[2], part.owner, host[2])
    if extras is not None and host_extras is None:
        host_extras = extras.to("cpu", torch.float64).numpy()
    return out, host_extras
