"""Per-layer gradient reductions: Σ|g|, max|g| and Σg² in as few passes as possible.

Two paths, picked per device (measured in ``benchmarks/bench_watch.py``):

* CPU: ``torch._foreach_norm`` is not a fused kernel there (its inf-norm costs
  ~8x an L2 norm), so each gradient is read once by ``abs`` into a scratch
  buffer of at most ``_CHUNK`` elements, packed row by row with other
  gradients, and three row-wise reductions (sum, max, L2 norm) read each filled
  buffer: one kernel each per buffer fill, not per gradient. Rows of ``_ROW``
  elements keep the float32 partials exact to ~1e-7 (a float32 sum of squares
  over millions of elements is off by up to 1e-4); they are combined per layer
  in float64 on the host.
* Accelerators: three multi-tensor ``_foreach_norm`` launches per
  (device, dtype) group (ord 1, 2 and inf), accumulating in float32.

No function here synchronises with the device: results stay on the device until
the caller copies them to the host once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

_CHUNK = 1 << 20  # elements of the CPU scratch buffer (4 MiB of float32)
_ROW = 1024  # elements per row partial: float32 sums of <= 1024 terms stay exact


class Partials:
    """Partial reductions on one device, with the layer each belongs to.

    ``values`` is ``(2, C)`` float32 on the device: Σ|g| and max|g| of C
    disjoint pieces (rows, or whole gradients), and ``owner`` (``(C,)`` int64,
    host) the layer of each. ``norms`` is ``(R,)`` float32 on the device: L2
    norms of R disjoint pieces, and ``norm_owner`` (``(R,)`` int64, host) their
    layers; squared and summed on the host in float64.
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
    every logged step, so that a step's loop only launches kernels. Gradients
    are cut into pieces and packed into groups that each fill the scratch
    buffer once; every piece starts on a row of ``_ROW`` elements and its last
    row is padded with zeros. A step, per group: ``abs`` of each piece into the
    scratch, then three row-wise reductions over the whole group (sum, max, L2
    norm) into ``out``, ``(3, R)`` float32 over the R rows of all groups. One
    kernel per reduction and group, instead of per gradient, is what makes this
    fast on many small gradients: a kernel launch costs as much as reducing
    ~100K elements.
    """

    def __init__(self, grads: Sequence[Tensor], owners: Sequence[int], buf: Tensor):
        groups: list[list[tuple[int, int, int, int]]] = [[]]  # (layer, start, n, at)
        used = 0
        for i, g in enumerate(grads):
            start = 0
            while start < g.numel():
                if used == buf.numel():
                    groups.append([])
                    used = 0
                n = min(g.numel() - start, buf.numel() - used)
                groups[-1].append((i, start, n, used))
                used += _padded(n)
                start += n
        row_owner = [
            np.full(_padded(n) // _ROW, owners[i], dtype=np.int64)
            for group in groups
            for i, _, n, _ in group
        ]
        self.row_owner = np.concatenate(row_owner)
        self.out = torch.empty(3, self.row_owner.size, device=buf.device)
        self.groups: list[_Group] = []
        row = 0
        for group in groups:
            rows = sum(_padded(n) for _, _, n, _ in group) // _ROW
            self.groups.append(
                _Group(
                    pieces=[_piece(i, grads[i], *place, buf) for i, *place in group],
                    rows=buf[: rows * _ROW].view(rows, _ROW),  # (R_g, ROW)
                    sums=self.out[0, row : row + rows],
                    maxs=self.out[1, row : row + rows],
                    norms=self.out[2, row : row + rows],
                )
            )
            row += rows


class _Piece(NamedTuple):
    """Elements ``span`` of gradient ``layer`` (None: all), and where they go."""

    layer: int
    span: tuple[int, int] | None
    widen: bool  # not float32: copy, then abs in place
    dst: Tensor  # the piece's place in the scratch, in the gradient's shape if whole
    tail: Tensor | None  # its last row's padding: zeroed at every step, since
    # other groups and other plans (layouts) write the same buffer


class _Group(NamedTuple):
    """Pieces that fill the scratch once, and the row-wise outputs they reduce to."""

    pieces: list[_Piece]
    rows: Tensor  # (R_g, ROW) view of the filled scratch
    sums: Tensor  # (R_g,) views of the plan's output
    maxs: Tensor
    norms: Tensor


def _piece(layer: int, g: Tensor, start: int, n: int, at: int, buf: Tensor) -> _Piece:
    """Elements ``[start, start + n)`` of ``g``, packed at ``buf[at:]``."""
    whole = n == g.numel()
    end = at + _padded(n)
    return _Piece(
        layer=layer,
        span=None if whole else (start, start + n),
        widen=g.dtype != torch.float32,
        dst=buf[at : at + n].view(g.shape if whole else (n,)),
        tail=buf[at + n : end] if end > at + n else None,
    )


def _reduce_dense_cpu(
    grads: Sequence[Tensor], owners: Sequence[int], scratch: dict
) -> Partials:
    """The CPU path. The returned partials are views of buffers in ``scratch``:
    valid until the next call with the same ``scratch``."""
    device = grads[0].device
    owners = [o for g, o in zip(grads, owners) if g.numel()]
    grads = [g for g in grads if g.numel()]
    if not grads:
        return _empty(device)
    key = ("plan", device, tuple(owners), tuple((g.shape, g.dtype) for g in grads))
    plan = scratch.get(key)
    if plan is None:
        plan = scratch[key] = _CpuPlan(grads, owners, _scratch_buffer(grads, scratch))
    for group in plan.groups:
        for piece in group.pieces:
            g = grads[piece.layer]
            if piece.span is not None:
                g = g.reshape(-1)[piece.span[0] : piece.span[1]]
            if piece.widen:  # abs() cannot write another dtype
                piece.dst.copy_(g).abs_()
            else:
                torch.abs(g, out=piece.dst)
            if piece.tail is not None:
                piece.tail.zero_()  # zeros change no sum, max or norm
        torch.sum(group.rows, 1, out=group.sums)
        torch.amax(group.rows, 1, out=group.maxs)
        torch.linalg.vector_norm(group.rows, dim=1, out=group.norms)
    return Partials(plan.out[:2], plan.row_owner, plan.out[2], plan.row_owner)


def _scratch_buffer(grads: Sequence[Tensor], scratch: dict) -> Tensor:
    """The device's scratch buffer, grown to what ``grads`` fill (at most
    ``_CHUNK`` elements).

    Growing it drops the device's plans: they hold views of the old buffer.
    """
    device = grads[0].device
    size = min(sum(_padded(g.numel()) for g in grads), _CHUNK)
    buf = scratch.get(device)
    if buf is None or buf.numel() < size:
        buf = scratch[device] = torch.empty(size, device=device)
        stale = [k for k in scratch if isinstance(k, tuple) and k[1] == device]
        for key in stale:
            del scratch[key]
    return buf


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
                out[0] += np.bincount(p.owner, values[0], minlength=n_layers)
                np.maximum.at(out[1], p.owner, values[1])
                out[2] += np.bincount(p.norm_owner, norms * norms, minlength=n_layers)
        if i == 0 and extras is not None:
            host_extras = host[offset:]
    if extras is not None and host_extras is None:
        host_extras = extras.to("cpu", torch.float64).numpy()
    return out, host_extras
