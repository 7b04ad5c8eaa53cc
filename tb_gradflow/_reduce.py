"""Per-layer gradient reductions: Σ|g|, max|g| and Σg² in as few passes as possible.

Two paths, picked per device (measured in ``benchmarks/bench_watch.py``):

* CPU: ``torch._foreach_norm`` is not a fused kernel there (its inf-norm costs
  ~8x an L2 norm), so each gradient is read once by ``abs`` into a scratch
  buffer of at most ``_CHUNK`` elements, packed row by row with other
  gradients (one region per thread: each thread reduces what it wrote), and
  three row-wise reductions (sum, max, L2 norm) read each filled buffer: one
  kernel each per buffer fill, not per gradient. Rows of ``_ROW``
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
    host) the layer of each (-1: of no layer, ignored). ``norms`` is ``(R,)``
    float32 on the device: L2 norms of R disjoint pieces, and ``norm_owner``
    (``(R,)`` int64, host) their layers; squared and summed on the host in
    float64.
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

    Built once per layout of gradients (shapes, dtypes, layers, threads) and
    reused on every logged step, so that a step's loop only launches kernels.
    A step, per group of pieces that fill the scratch once: ``abs`` of each
    piece into the scratch, then three row-wise reductions over the whole group
    (sum, max, L2 norm) into ``out``, ``(3, R)`` float32 over the R rows of all
    groups. One kernel per reduction and group, instead of per gradient, is
    what makes this fast on many small gradients: a kernel launch costs as much
    as reducing ~100K elements.

    The scratch is cut into one region per thread, and a piece into one equal
    part per region, at the same offset in each: ATen splits the ``abs`` of a
    piece and the row reductions of a group evenly over its threads, in order,
    so each thread reduces the rows it wrote itself. Otherwise half of every
    group moves between cores twice a step (on a 2-vCPU VM that cost up to 6x
    in some periods; ``benchmarks/bench_watch.py``). The last ``< T x ROW``
    elements of a gradient go to one region, padded with zeros to a row; rows
    that no piece fills (regions filled unevenly) have owner -1.
    """

    def __init__(
        self, grads: Sequence[Tensor], owners: Sequence[int], buf: Tensor, threads: int
    ) -> None:
        per_region = buf.numel() // (threads * _ROW) * _ROW
        groups = _pack([g.numel() for g in grads], threads, per_region)
        total = sum(threads * r for _, r in groups)
        self.out = torch.empty(3, total, device=buf.device)
        owner = []
        self.groups: list[_Group] = []
        row = 0
        for spec, r in groups:
            group_owner = np.full((threads, r), -1, dtype=np.int64)  # (T, R_g)
            for i, a, b, region, at in spec:
                end = at + ((b - a) // threads if region < 0 else _padded(b - a))
                where = slice(None) if region < 0 else region
                group_owner[where, at // _ROW : end // _ROW] = owners[i]
            owner.append(group_owner.reshape(-1))
            outs = self.out[:, row : row + threads * r].view(3, threads, r)
            self.groups.append(
                _Group(
                    pieces=[
                        _piece(grads[i], i, a, b, region, at, buf, per_region, threads)
                        for i, a, b, region, at in spec
                    ],
                    rows=buf.as_strided((threads, r, _ROW), (per_region, _ROW, 1)),
                    sums=outs[0],
                    maxs=outs[1],
                    norms=outs[2],
                )
            )
            row += threads * r
        self.row_owner = np.concatenate(owner) if owner else np.zeros(0, np.int64)


def _pack(
    sizes: Sequence[int], threads: int, per_region: int
) -> list[tuple[list[tuple[int, int, int, int, int]], int]]:
    """Places gradients of ``sizes`` elements in groups that fill the scratch
    once: per group, its pieces ``(layer, start, stop, region, offset)``
    (region -1: one equal part per region, at ``offset`` in each) and its rows
    per region. See :class:`_CpuPlan`."""
    specs: list[list[tuple[int, int, int, int, int]]] = [[]]
    used = [0] * threads  # elements used per region in the open group
    fills: list[list[int]] = []  # per closed group: elements used per region

    def close_group() -> None:
        fills.append(used.copy())
        specs.append([])
        used[:] = [0] * threads

    for i, n in enumerate(sizes):
        start = 0
        while start < n:
            rest, level = n - start, max(used)
            part = min(rest // (threads * _ROW) * _ROW, per_region - level)
            if part > 0:  # one equal part per region, at one offset
                specs[-1].append((i, start, start + threads * part, -1, level))
                used[:] = [level + part] * threads
                start += threads * part
                continue
            region = min(range(threads), key=used.__getitem__)
            k = min(rest, per_region - used[region])
            if rest >= threads * _ROW or k == 0:
                close_group()  # no room for a part in every region
                continue
            specs[-1].append((i, start, start + k, region, used[region]))
            used[region] += _padded(k)
            start += k
    close_group()
    groups = [(spec, max(fill) // _ROW) for spec, fill in zip(specs, fills)]
    return [(spec, rows) for spec, rows in groups if rows]


class _Piece(NamedTuple):
    """Elements ``[start, stop)`` of gradient ``layer``, and where they go."""

    layer: int
    start: int
    stop: int
    whole: bool  # start == 0 and stop == numel: no slicing
    shape: tuple[int, ...]  # the source's shape for ``dst``: (T, part) or (k,)
    widen: bool  # not float32: copy, then abs in place
    dst: Tensor  # (T, part): one part per region; or (k,) in one region
    tail: Tensor | None  # its last row's padding: zeroed at every step, since
    # other groups and other plans (layouts) write the same buffer


class _Group(NamedTuple):
    """Pieces that fill the scratch once, and the row-wise outputs they reduce to."""

    pieces: list[_Piece]
    rows: Tensor  # (T, R_g, ROW) view of the filled scratch: per region
    sums: Tensor  # (T, R_g) views of the plan's output
    maxs: Tensor
    norms: Tensor


def _piece(
    g: Tensor,
    layer: int,
    start: int,
    stop: int,
    region: int,
    at: int,
    buf: Tensor,
    per_region: int,
    threads: int,
) -> _Piece:
    """Elements ``[start, stop)`` of ``g``: split over all regions at offset
    ``at`` (``region`` -1), or packed into ``region`` at ``at``."""
    n = stop - start
    if region < 0:
        part = n // threads
        shape: tuple[int, ...] = (threads, part)
        dst = buf.as_strided(shape, (per_region, 1), at)
        tail = None
    else:
        shape = (n,)
        base = region * per_region + at
        dst = buf[base : base + n]
        end = base + _padded(n)
        tail = buf[base + n : end] if end > base + n else None
    return _Piece(
        layer=layer,
        start=start,
        stop=stop,
        whole=start == 0 and stop == g.numel(),
        shape=shape,
        widen=g.dtype != torch.float32,
        dst=dst,
        tail=tail,
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
    threads = torch.get_num_threads()
    layout = tuple((g.shape, g.dtype) for g in grads)
    key = ("plan", device, threads, tuple(owners), layout)
    plan = scratch.get(key)
    if plan is None:
        buf = _scratch_buffer(grads, scratch, threads)
        plan = scratch[key] = _CpuPlan(grads, owners, buf, threads)
    # one copy per step of a strided gradient, not one per piece
    grads = [g if g.is_contiguous() else g.reshape(-1) for g in grads]
    for group in plan.groups:
        for piece in group.pieces:
            g = grads[piece.layer]
            if not piece.whole:
                g = g.reshape(-1)[piece.start : piece.stop]
            g = g.reshape(piece.shape)  # a view: g is contiguous by now
            if piece.widen:  # abs() cannot write another dtype
                piece.dst.copy_(g).abs_()
            else:
                torch.abs(g, out=piece.dst)
            if piece.tail is not None:
                piece.tail.zero_()  # zeros change no sum, max or norm
        torch.sum(group.rows, 2, out=group.sums)
        torch.amax(group.rows, 2, out=group.maxs)
        torch.linalg.vector_norm(group.rows, dim=2, out=group.norms)
    out = plan.out
    return Partials(out[:2], plan.row_owner, out[2], plan.row_owner)


def _scratch_buffer(grads: Sequence[Tensor], scratch: dict, threads: int) -> Tensor:
    """The device's scratch buffer, grown to what ``grads`` fill (at most
    ``_CHUNK`` elements, and one row per thread at least).

    Growing it drops the device's plans: they hold views of the old buffer.
    Zero-filled when made: rows that no piece fills are reduced, then dropped.
    """
    device = grads[0].device
    slack = 2 * threads * _ROW * len(grads)  # padding and uneven regions
    need = sum(g.numel() for g in grads) + slack
    size = max(min(need, _CHUNK), threads * _ROW)
    buf = scratch.get(device)
    if buf is None or buf.numel() < size:
        buf = scratch[device] = torch.zeros(size, device=device)
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


def float32_unsafe(totals: np.ndarray, numel: np.ndarray) -> np.ndarray:
    """Layers whose float32 partial sums may be wrong although every element is
    finite: ``(L,)`` bool. That is: numel x max|g|² above 1e37 (Σg² then nears
    float32's 3.4e38; below it, Σg² and Σ|g| stay well within range), or
    mean|g| < 1e-15, where squares under float32's smallest normal number
    (1.2e-38: |g| < 1.1e-19; zero where denormals are flushed) may carry more
    than 1e-7 of Σg² (since Σg² >= numel x mean|g|²).

    Args:
        totals: ``(3, L)`` Σ|g|, max|g|, Σg² per layer, as reduced in float32.
        numel: ``(L,)`` elements per layer.
    """
    total, peak, _ = totals
    n = np.maximum(numel, 1)
    with np.errstate(invalid="ignore", over="ignore"):
        overflow = peak * peak * n > 1e37
        underflow = (peak > 0) & (total / n < 1e-15)
        return np.isfinite(peak) & (overflow | underflow)  # finite max: all finite


def sums_float64(grads: Sequence[Tensor]) -> Tensor:
    """Σ|g| and Σg² of each gradient, in float64: ``(2, len(grads))`` on the
    first gradient's device (sparse: the dense equivalent)."""
    sums = []
    for g in grads:
        if g.is_sparse:
            g = g.coalesce().values()
        g = g.to(grads[0].device, torch.float64)
        sums.append(torch.stack([g.abs().sum(), g.square().sum()]))
    return torch.stack(sums, dim=1)


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
    padded = np.zeros((3, n_layers + 1), dtype=np.float64)
    out = padded[:, 1:]
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
                # owner -1 (rows of no layer) goes to column 0 of `padded`, dropped
                padded[0] += np.bincount(p.owner + 1, values[0], minlength=n_layers + 1)
                np.maximum.at(padded[1], p.owner + 1, values[1])
                padded[2] += np.bincount(
                    p.norm_owner + 1, norms * norms, minlength=n_layers + 1
                )
        if i == 0 and extras is not None:
            host_extras = host[offset:]
    if extras is not None and host_extras is None:
        host_extras = extras.to("cpu", torch.float64).numpy()
    return out, host_extras
