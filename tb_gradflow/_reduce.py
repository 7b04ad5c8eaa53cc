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
_ROW = 1024  # elements per partial L2 norm: float32 sums of <= 1024 squares stay exact


class Partials:
    """Partial reductions on one device, with the layer each belongs to.

    ``values`` is ``(2, C)`` float32 on the device: Σ|g| and max|g| of C chunks,
    and ``owner`` (``(C,)`` int64, host) the layer of each chunk. ``norms`` is
    ``(R,)`` float32 on the device: L2 norms of R disjoint pieces, and
    ``norm_owner`` (``(R,)`` int64, host) their layers; squared and summed on the
    host in float64 (a float32 sum of squares over millions of elements is off
    by up to 1e-4 relative, ``torch.linalg.vector_norm`` included).
    """

    def __init__(
        self,
        values: Tensor,
        owner: np.ndarray,
        norms: Tensor,
        norm_owner: np.ndarray,
    ) -> None:
        self.values = values
        self.owner = owner
        self.norms = norms
        self.norm_owner = norm_owner


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


class _CpuPlan:
    """Scratch views and output slots for one set of gradient shapes.

    Built once per layout of gradients (shapes, dtypes, layers) and reused on
    every logged step, so a step does no view creation or host-side bookkeeping
    per tensor: each chunk is ``abs`` into the scratch, then three reductions
    that write straight into preallocated outputs.
    """

    def __init__(self, grads: Sequence[Tensor], owners: Sequence[int], buf: Tensor):
        self.values = torch.empty(2, 0)
        self.chunks: list[tuple[int, int, Tensor, Tensor, Tensor, Tensor | None]] = []
        chunk_owner, norm_owner, n_rows = [], [], 0
        for i, (g, owner) in enumerate(zip(grads, owners)):
            for start in range(0, g.numel(), _CHUNK):
                n = min(_CHUNK, g.numel() - start)
                padded = _padded(n)
                shape = g.shape if n == g.numel() else (n,)
                self.chunks.append(
                    (
                        i,
                        start,
                        buf[:n].view(shape),  # where abs() writes
                        buf[:padded],  # what the sum and max read
                        buf[:padded].view(-1, _ROW),  # (R_i, ROW): the row norms
                        buf[n:padded] if padded > n else None,  # zeroed tail
                    )
                )
                chunk_owner.append(owner)
                norm_owner.append(np.full(padded // _ROW, owner, dtype=np.int64))
                n_rows += padded // _ROW
        self.chunk_owner = np.asarray(chunk_owner, dtype=np.int64)
        self.norm_owner = (
            np.concatenate(norm_owner) if norm_owner else np.zeros(0, np.int64)
        )
        self.values = torch.empty(2, len(self.chunks), device=buf.device)
        self.norms = torch.empty(n_rows, device=buf.device)


def _reduce_dense_cpu(
    grads: Sequence[Tensor], owners: Sequence[int], scratch: dict
) -> Partials:
    device = grads[0].device
    grads = [g for g in grads if g.numel()]
    owners = [o for g, o in zip(grads, owners) if g.numel()]
    if not grads:
        return _empty(device)
    key = ("plan", device, tuple(owners), tuple((g.shape, g.dtype) for g in grads))
    plan = scratch.get(key)
    if plan is None:
        largest = _padded(min(max(g.numel() for g in grads), _CHUNK))
        buf = scratch.get(device)
        if buf is None or buf.numel() < largest:
            buf = scratch[device] = torch.empty(largest, device=device)
            stale_plans = [
                k for k in scratch if isinstance(k, tuple) and k[1] == device
            ]
            for stale in stale_plans:
                del scratch[stale]  # plans hold views of the old buffer
        plan = scratch[key] = _CpuPlan(grads, owners, buf)
    sums, maxs = plan.values[0], plan.values[1]
    row = 0
    for c, (i, start, out, flat, rows, tail) in enumerate(plan.chunks):
        g = grads[i]
        piece = (
            g if out.shape == g.shape else g.reshape(-1)[start : start + out.numel()]
        )
        if piece.dtype == torch.float32:
            torch.abs(piece, out=out)
        else:  # abs() cannot write another dtype: widen, then abs in place
            out.copy_(piece).abs_()
        if tail is not None:
            tail.zero_()  # zeros change no sum, max or norm
        torch.sum(flat, 0, out=sums[c])
        torch.amax(flat, 0, out=maxs[c])
        n_rows = rows.shape[0]
        torch.linalg.vector_norm(rows, dim=1, out=plan.norms[row : row + n_rows])
        row += n_rows
    # Copies: the plan's outputs are overwritten at the next step.
    return Partials(
        plan.values.clone(), plan.chunk_owner, plan.norms.clone(), plan.norm_owner
    )


def _padded(n: int) -> int:
    return -(-n // _ROW) * _ROW


def _empty(device: torch.device) -> Partials:
    none = np.zeros(0, np.int64)
    return Partials(torch.zeros(2, 0, device=device), none, torch.zeros(0), none)


def _reduce_dense_foreach(grads: Sequence[Tensor], owners: Sequence[int]) -> Partials:
    groups: dict[torch.dtype, list[int]] = {}
    for i, g in enumerate(grads):
        groups.setdefault(g.dtype, []).append(i)
    values, norms, order = [], [], []
    for idx in groups.values():
        group = [grads[i] for i in idx]
        l1 = torch._foreach_norm(group, 1, dtype=torch.float32)
        linf = torch._foreach_norm(group, float("inf"), dtype=torch.float32)
        l2 = torch._foreach_norm(group, 2, dtype=torch.float32)
        values.append(torch.stack([torch.stack(l1), torch.stack(linf)]))
        norms.extend(l2)
        order.extend(owners[i] for i in idx)
    owner = np.asarray(order, dtype=np.int64)
    return Partials(torch.cat(values, dim=1), owner, torch.stack(norms), owner)


def reduce_sparse(grad: Tensor, owner: int) -> tuple[Partials, int]:
    """Reduces a sparse COO gradient as its dense equivalent.

    Duplicate indices are summed first (``coalesce``), as the dense gradient
    would sum them.

    Returns:
        The partials of layer ``owner``, and the number of rows
        (first-dimension slices) that received a gradient.
    """
    g = grad.coalesce()
    v = g.values().reshape(-1)
    if v.numel() == 0:
        return _empty(grad.device), 0
    a = v.abs().float()
    rows = int(torch.unique(g.indices()[0]).numel()) if g.sparse_dim() > 1 else g._nnz()
    mine = np.array([owner], dtype=np.int64)
    values = torch.stack([a.sum(), a.amax()])[:, None]  # (2, 1)
    return Partials(values, mine, torch.linalg.vector_norm(a)[None], mine), rows


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
    """Copies partials to the host (one copy per device) and reduces them per layer.

    Args:
        parts: partials of every device.
        n_layers: the number of layers ``L``.
        extras: ``(E,)`` per-step scalars to bring along in the first device's
            copy, so that they cost no copy of their own.

    Returns:
        ``(3, L)`` float64 (Σ|g|, max|g|, Σg² per layer; 0 for layers nothing
        belongs to), and the host copy of ``extras`` (None without).
    """
    out = np.zeros((3, n_layers), dtype=np.float64)
    by_device: dict[torch.device, list[Partials]] = {}
    for part in parts:
        by_device.setdefault(part.values.device, []).append(part)
    host_extras = None
    for i, group in enumerate(by_device.values()):
        device = group[0].values.device
        pieces = [t for p in group for t in (p.values.reshape(-1), p.norms.to(device))]
        if i == 0 and extras is not None:
            pieces.append(extras.to(device))
        host = torch.cat(pieces).to("cpu", torch.float64).numpy()  # the one copy
        offset = 0
        for p in group:
            c, r = p.owner.size, p.norm_owner.size
            values = host[offset : offset + 2 * c].reshape(2, c)
            norms = host[offset + 2 * c : offset + 2 * c + r]
            offset += 2 * c + r
            with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf: counted later
                np.add.at(out[0], p.owner, values[0])
                np.maximum.at(out[1], p.owner, values[1])
                np.add.at(out[2], p.norm_owner, norms * norms)
        if i == 0 and extras is not None:
            host_extras = host[offset:]
    if extras is not None and host_extras is None:
        host_extras = extras.to("cpu", torch.float64).numpy()
    return out, host_extras
