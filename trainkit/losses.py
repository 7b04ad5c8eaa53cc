r"""Losses: the soft nearest neighbour loss, a skip-gram sigmoid loss, a cosine triplet.

- :func:`soft_nearest_neighbor_loss` and :class:`SoftNearestNeighborLoss`: the soft
  nearest neighbour loss of Frosst, Papernot & Hinton (2019), vectorised over the
  batch and computed in log space, so it stays finite where the direct ratio of sums
  gives 0 / 0.
- :func:`skipgram_loss`: the sigmoid + log loss of a positive pair and ``K`` negative
  pairs, written with ``logsigmoid`` (no ``log(sigmoid(s))``, no clamping).
- :func:`cosine_triplet_loss`: the margin loss on cosine distances.

Inputs in float16/bfloat16 are computed in float32, and the loss is returned in
float32: the loss can exceed the float16 range where its inputs do not. Inputs of
different dtypes are computed in their promoted dtype (float32 and float64 give
float64). The SNNL's temperature is cast to that dtype before it is inverted or
exponentiated (1 / T overflows float16 below T = 1.5e-5); the features' dtype alone
decides it, as a 0-d tensor's dtype does in torch's type promotion.

Shape letters: ``B`` batch, ``D`` feature dim, ``K`` negatives per sample.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from trainkit import _validate

__all__ = [
    "SoftNearestNeighborLoss",
    "cosine_triplet_loss",
    "skipgram_loss",
    "soft_nearest_neighbor_loss",
]

_DISTANCES = ("euclidean", "cosine")
# Lowest exponent (relative to the row maximum) passed to exp(). On the CPU, float32
# exp() is 50-120x slower for arguments below about -87 (subnormal or zero results), so
# exponents are clamped at -85 (float64: -700); a clamped term is below e^-85 of the
# largest one and cannot change a float32 row sum.
_EXP_FLOOR = {torch.float32: -85.0, torch.float64: -700.0}
# A row whose same-class terms sum to less than e^this (relative to the row maximum)
# is recomputed relative to its own same-class maximum. Above it, the clamped terms
# perturb the same-class sum by a relative B * e^(floor - this) at most: B * 1.4e-11
# in float32, B * 4e-44 in float64.
_FALLBACK_LOG_MASS = {torch.float32: -60.0, torch.float64: -600.0}


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype == torch.float64 else torch.float32


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


# ---------------------------------------------------------------------------------
# Soft nearest neighbour loss


class _SNNLFunction(torch.autograd.Function):
    """Per-sample SNNL from features ``z`` and inverse temperature ``s``.

    The logits are ``-s * d_ij`` less a per-row constant, which cancels between the two
    log-sum-exps: ``s * (2 z_i.z_j - |z_j|^2)`` (euclidean) or ``s * z_i.z_j`` (cosine,
    ``z`` unit rows). Euclidean features are centred on their batch mean first: the
    expansion ``|z_i|^2 + |z_j|^2 - 2 z_i.z_j`` cancels catastrophically when the
    features share a large offset (float32 features at 1000 + N(0, 1) lose the
    distances to rounding). Each per-sample loss is translation invariant, so its
    gradient with respect to ``z`` sums to zero over the batch and the centring needs
    no term in backward. One exponentiation serves both sums: the same-class sum is the
    masked row sum of the all-others terms, except for rows where that mass is tiny,
    which are recomputed relative to their own same-class maximum. The gradient with
    respect to the logits is ``softmax(all) - softmax(same)``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        z: Tensor,
        s: Tensor,
        same: Tensor,
        valid: Tensor,
        euclidean: bool,
    ) -> Tensor:
        floor = _EXP_FLOOR[z.dtype]
        if euclidean:
            z = z - z.mean(0)  # (B, D)
        sq = z.square().sum(1)  # (B,)
        if euclidean:
            logits = torch.addmm((-s * sq).unsqueeze(0), z * (2 * s), z.T)  # (B, B)
        else:
            logits = (z * s) @ z.T  # (B, B)
        logits.diagonal().fill_(-math.inf)
        row_max = logits.amax(1)  # (B,)
        # In place: logits -> exp(max(logits - row_max, floor)).
        e_all = logits.sub_(row_max.unsqueeze(1)).clamp_min_(floor).exp_()
        e_all.diagonal().zero_()
        sum_all = e_all.sum(1)
        e_same = torch.where(same, e_all, 0.0)
        sum_same = e_same.sum(1)
        shift_same = row_max.clone()

        # Rows whose same-class terms were clamped: recompute those rows alone.
        slow = valid & (sum_same < math.exp(_FALLBACK_LOG_MASS[z.dtype]))
        if bool(slow.any()):
            idx = slow.nonzero().squeeze(1)
            if euclidean:
                rows = torch.addmm((-s * sq).unsqueeze(0), z[idx] * (2 * s), z.T)
            else:
                rows = (z[idx] * s) @ z.T  # (k, B)
            rows = torch.where(same[idx], rows, -math.inf)
            rows_max = rows.amax(1)
            rows = rows.sub_(rows_max.unsqueeze(1)).clamp_min_(floor).exp_()
            rows = torch.where(same[idx], rows, 0.0)  # (k, B)
            e_same[idx] = rows
            sum_same[idx] = rows.sum(1)
            shift_same[idx] = rows_max

        loss = (row_max + sum_all.log()) - (shift_same + sum_same.log())
        loss = torch.where(valid, loss, 0.0)
        ctx.save_for_backward(z, s, sq, e_all, e_same, sum_all, sum_same, valid)
        ctx.euclidean = euclidean
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        z = ctx.saved_tensors[0]
        with torch.autocast(z.device.type, enabled=False):
            return _SNNLFunction._backward(ctx, grad)

    @staticmethod
    def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        z, s, sq, e_all, e_same, sum_all, sum_same, valid = ctx.saved_tensors
        grad = torch.where(valid, grad, 0.0)
        coef_all = grad / sum_all
        coef_same = torch.where(valid, grad / sum_same, 0.0)
        # d loss_i / d logit_ij = softmax(all)_ij - softmax(same)_ij
        g = e_all * coef_all.unsqueeze(1)  # (B, B)
        g.addcmul_(e_same, coef_same.unsqueeze(1), value=-1.0)
        # Logits depend on z_i.z_j symmetrically: fold the transpose in once.
        h = g + g.T  # (B, B)
        del g
        h_sum = h.sum(1)  # (B,)
        hz = h @ z  # (B, D)
        zhz = (z * hz).sum()
        grad_z = grad_s = None
        if ctx.euclidean:
            # logit_ij = -s * (|z_i|^2 + |z_j|^2 - 2 z_i.z_j)
            if ctx.needs_input_grad[0]:
                grad_z = (hz - h_sum.unsqueeze(1) * z) * (2 * s)
            if ctx.needs_input_grad[1]:
                grad_s = zhz - (h_sum * sq).sum()
        else:
            # logit_ij = -s * (1 - z_i.z_j)
            if ctx.needs_input_grad[0]:
                grad_z = hz * s
            if ctx.needs_input_grad[1]:
                grad_s = 0.5 * (zhz - h_sum.sum())
        return grad_z, grad_s, None, None, None


def _check_snnl_inputs(x: Tensor, y: Tensor, distance: str, reduction: str) -> None:
    _validate.check_floating_tensor("x", x)
    _validate.check_ndim("x", x, 2, "(B, D)")
    _validate.check_integer_tensor("y", y)
    _validate.check_ndim("y", y, 1, "(B,)")
    if y.shape[0] != x.shape[0]:
        raise ValueError(
            "x and y must have the same batch size, got x of shape "
            f"{tuple(x.shape)} and y of shape {tuple(y.shape)}"
        )
    _validate.check_choice("distance", distance, _DISTANCES)
    _validate.check_reduction(reduction)


def _snnl(x: Tensor, y: Tensor, s: Tensor, distance: str, reduction: str) -> Tensor:
    """SNNL with inverse temperature ``s`` (a 0-d tensor); inputs already checked."""
    # float32 even under autocast: a float16 Gram matrix loses the small distances.
    with torch.autocast(x.device.type, enabled=False):
        return _snnl_impl(x, y, s, distance, reduction)


def _snnl_impl(
    x: Tensor, y: Tensor, s: Tensor, distance: str, reduction: str
) -> Tensor:
    dtype = _compute_dtype(x.dtype)
    z = x.to(dtype)
    s = s.to(dtype)
    if distance == "cosine":
        z = F.normalize(z, dim=1)
    same = y.unsqueeze(1) == y.unsqueeze(0)  # (B, B)
    same.fill_diagonal_(False)
    valid = same.any(1)  # (B,)
    n_valid = valid.sum()
    if not bool(n_valid):
        # No sample has a same-class partner: 0.0, connected to x and s.
        zero = z[:, :0].sum(1) + s.reshape(1)[:0].sum()  # (B,)
        return zero if reduction == "none" else zero.sum()
    per_sample = _SNNLFunction.apply(z, s, same, valid, distance == "euclidean")
    if reduction == "mean":
        return per_sample.sum() / n_valid
    return _reduce(per_sample, reduction)


def soft_nearest_neighbor_loss(
    x: Tensor,
    y: Tensor,
    temperature: float | Tensor = 1.0,
    *,
    distance: str = "euclidean",
    reduction: str = "mean",
) -> Tensor:
    r"""Soft nearest neighbour loss (SNNL) of a batch of features and labels.

    For sample :math:`i`, with :math:`d` the squared Euclidean distance (or
    :math:`1 - \cos` with ``distance="cosine"``) and :math:`T` the temperature:

    .. math::
        \ell_i = -\log \frac{\sum_{j \ne i,\ y_j = y_i} e^{-d_{ij} / T}}
                            {\sum_{k \ne i} e^{-d_{ik} / T}}

    It is low when every sample is closer to its own class than to the others. The
    loss is computed in log space from one :math:`B \times B` distance matrix, so it
    stays finite wherever :math:`d / T` is finite (distances of 1e6 with a
    temperature of 1e-4, float16 input), where the direct ratio of sums gives
    0 / 0. A sample with no same-class partner in the batch is left out of
    the mean (its ``"none"`` value is 0.0); if no sample has one, the result is 0.0
    with a zero gradient.

    Memory is :math:`O(B^2)`: two :math:`B \times B` buffers are kept for backward.

    Reference: N. Frosst, N. Papernot, G. Hinton, "Analyzing and Improving
    Representations with the Soft Nearest Neighbor Loss", ICML 2019,
    arXiv:1902.01889.

    Args:
        x: features, e.g. the activations of a hidden layer.
        y: integer class labels.
        temperature: :math:`T > 0`, a number or a 0-d tensor (which may require
            grad). Larger values weigh distant pairs more. Default: 1.0.
        distance: ``"euclidean"`` (squared Euclidean) or ``"cosine"``
            (:math:`1 - \cos`). Default: ``"euclidean"``.
        reduction: ``"mean"`` (over the samples that have a same-class partner),
            ``"sum"`` or ``"none"``. Default: ``"mean"``.

    Returns:
        The loss, float32 for float16/bfloat16 ``x``, else ``x``'s dtype (a
        ``temperature`` tensor is cast to that dtype before it is inverted).

    Raises:
        TypeError: if ``x`` is not floating point, ``y`` not an integer tensor, or
            ``temperature`` neither a number nor a floating-point tensor.
        ValueError: on mismatched shapes, a temperature that is not positive, or an
            unknown ``distance`` or ``reduction``.

    Shape:
        - x: :math:`(B, D)`, float.
        - y: :math:`(B,)`, integer.
        - output: :math:`()` if ``reduction != "none"``, else :math:`(B,)`.

    Examples:
        >>> x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 1.0]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> soft_nearest_neighbor_loss(x, y, temperature=2.0)
        tensor(0.3064)
        >>> soft_nearest_neighbor_loss(x, torch.tensor([0, 1, 1, 2]), reduction="none")
        tensor([0.0000, 4.0659, 4.0659, 0.0000])
    """
    _check_snnl_inputs(x, y, distance, reduction)
    if isinstance(temperature, Tensor):
        _validate.check_floating_tensor("temperature", temperature)
        if temperature.numel() != 1:
            raise ValueError(
                "temperature must be a number or a one-element tensor, got shape "
                f"{tuple(temperature.shape)}"
            )
        if not bool(temperature.detach().reshape(()) > 0):
            raise ValueError(f"Invalid temperature: {temperature.item()} (must be > 0)")
        s = temperature.reshape(()).to(_compute_dtype(x.dtype)).reciprocal()
    elif isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        if not temperature > 0:
            raise ValueError(f"Invalid temperature: {temperature} (must be > 0)")
        s = torch.tensor(1.0 / temperature, dtype=torch.float64, device=x.device)
    else:
        raise TypeError(
            "temperature must be a number or a tensor, got "
            f"{type(temperature).__name__}"
        )
    return _snnl(x, y, s, distance, reduction)


class SoftNearestNeighborLoss(nn.Module):
    r"""Soft nearest neighbour loss, optionally with a learned temperature.

    See :func:`soft_nearest_neighbor_loss` for the formula and the edge cases. The
    temperature is stored as its logarithm (``log_temperature``), so it stays
    positive. With ``learn_temperature=True`` it is an ``nn.Parameter`` trained by
    the optimizer that trains the model, through the gradient of this loss; it is not
    re-set on each call (CleverHans' ``optimized_temp_SNNL`` instead takes an inner
    SGD step on an inverse temperature). If the loss enters the objective with a
    negative factor, as in the paper's entanglement regulariser, a learned
    temperature would be pushed to *raise* it, while the paper picks the temperature
    that minimises the SNNL: in that case give ``log_temperature`` its own optimizer
    with ``maximize=True``.

    Reference: N. Frosst, N. Papernot, G. Hinton, ICML 2019, arXiv:1902.01889.

    Args:
        temperature: initial :math:`T > 0`. Default: 1.0.
        learn_temperature: make ``log_temperature`` a parameter. Default: False.
        distance: ``"euclidean"`` or ``"cosine"``. Default: ``"euclidean"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``. Default: ``"mean"``.

    Raises:
        TypeError: if ``temperature`` is not a number.
        ValueError: on a temperature that is not a finite positive number, or an
            unknown ``distance`` or ``reduction``; in ``forward``, as
            :func:`soft_nearest_neighbor_loss` on bad inputs.

    Shape:
        - x: :math:`(B, D)`, float.
        - y: :math:`(B,)`, integer.
        - output: :math:`()` if ``reduction != "none"``, else :math:`(B,)`.

    Examples:
        >>> loss_fn = SoftNearestNeighborLoss(temperature=2.0, learn_temperature=True)
        >>> x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 1.0]])
        >>> loss = loss_fn(x, torch.tensor([0, 0, 1, 1]))
        >>> loss.backward()
        >>> loss_fn.log_temperature.grad is not None
        True
    """

    log_temperature: Tensor

    def __init__(
        self,
        temperature: float = 1.0,
        *,
        learn_temperature: bool = False,
        distance: str = "euclidean",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise TypeError(
                f"temperature must be a number, got {type(temperature).__name__}"
            )
        if not 0.0 < temperature < math.inf:
            raise ValueError(
                f"Invalid temperature: {temperature} (must be finite and > 0)"
            )
        _validate.check_choice("distance", distance, _DISTANCES)
        _validate.check_reduction(reduction)
        self.distance = distance
        self.reduction = reduction
        log_t = torch.tensor(math.log(temperature))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @property
    def temperature(self) -> Tensor:
        """The current temperature, ``exp(log_temperature)`` (detached; float32 if
        ``log_temperature`` is float16/bfloat16)."""
        log_t = self.log_temperature.detach()
        return log_t.to(_compute_dtype(log_t.dtype)).exp()

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        _check_snnl_inputs(x, y, self.distance, self.reduction)
        # 1 / T, always > 0, in the loss's dtype: a float16 exp overflows above 11.1.
        s = torch.exp(-self.log_temperature.to(_compute_dtype(x.dtype)))
        return _snnl(x, y, s, self.distance, self.reduction)

    def extra_repr(self) -> str:
        learned = isinstance(self.log_temperature, nn.Parameter)
        return (
            f"temperature={self.temperature.item():.4g}, learn_temperature={learned}, "
            f"distance={self.distance!r}, reduction={self.reduction!r}"
        )


# ---------------------------------------------------------------------------------
# Skip-gram and triplet losses


def _check_same_shape(names: tuple[str, ...], tensors: tuple[Tensor, ...]) -> None:
    shapes = [tuple(t.shape) for t in tensors]
    if any(shape != shapes[0] for shape in shapes):
        listed = ", ".join(f"{n} {sh}" for n, sh in zip(names, shapes))
        raise ValueError(
            f"{' and '.join(names)} must have the same shape, got {listed}"
        )


def skipgram_loss(
    anchor: Tensor,
    positive: Tensor,
    negatives: Tensor,
    *,
    reduction: str = "mean",
) -> Tensor:
    r"""Skip-gram (negative sampling) loss of one positive and ``K`` negative pairs.

    With scores :math:`s^+ = a \cdot p` and :math:`s^-_k = a \cdot n_k`, per sample

    .. math::
        \ell = -\log\sigma(s^+) - \sum_{k=1}^{K} \log\sigma(-s^-_k)
             = \operatorname{softplus}(-s^+) + \sum_k \operatorname{softplus}(s^-_k),

    binary cross-entropy with targets 1 and 0 on the same scores. Written with
    ``logsigmoid``, so value and gradient are finite for any finite score: the
    ``-log(sigmoid(s))`` form gives ``inf`` near :math:`|s| \approx 90` (float32), and
    clamping the score or the sigmoid removes the gradient of the most wrong pairs.

    Reference: T. Mikolov et al., "Distributed Representations of Words and Phrases
    and their Compositionality", NeurIPS 2013, arXiv:1310.4546.

    Args:
        anchor: anchor vectors :math:`a`.
        positive: one positive vector :math:`p` per anchor.
        negatives: :math:`K` negative vectors :math:`n_k` per anchor (``K`` may be 0).
        reduction: ``"mean"`` (over the batch), ``"sum"`` or ``"none"``.
            Default: ``"mean"``.

    Returns:
        The loss in the inputs' promoted dtype, float32 if that is float16/bfloat16.

    Raises:
        TypeError: if an input is not a floating-point tensor.
        ValueError: on mismatched shapes or an unknown ``reduction``.

    Shape:
        - anchor: :math:`(B, D)`, float.
        - positive: :math:`(B, D)`, float.
        - negatives: :math:`(B, K, D)`, float.
        - output: :math:`()` if ``reduction != "none"``, else :math:`(B,)`.

    Examples:
        >>> a = torch.zeros(2, 3)  # zero vectors score 0: each pair costs ln 2
        >>> skipgram_loss(a, torch.ones(2, 3), torch.ones(2, 4, 3))  # 5 ln 2
        tensor(3.4657)
    """
    for name, t in (
        ("anchor", anchor),
        ("positive", positive),
        ("negatives", negatives),
    ):
        _validate.check_floating_tensor(name, t)
    _validate.check_ndim("anchor", anchor, 2, "(B, D)")
    _validate.check_ndim("negatives", negatives, 3, "(B, K, D)")
    _check_same_shape(("anchor", "positive"), (anchor, positive))
    B, D = anchor.shape
    if negatives.shape[0] != B or negatives.shape[2] != D:
        raise ValueError(
            f"negatives must have shape (B, K, D) = ({B}, K, {D}) to match anchor, "
            f"got {tuple(negatives.shape)}"
        )
    _validate.check_reduction(reduction)
    dtype = _compute_dtype(
        torch.promote_types(
            torch.promote_types(anchor.dtype, positive.dtype), negatives.dtype
        )
    )
    a = anchor.to(dtype)
    score_pos = (a * positive.to(dtype)).sum(1)  # (B,)
    score_neg = (negatives.to(dtype) @ a.unsqueeze(2)).squeeze(2)  # (B, K)
    loss = -F.logsigmoid(score_pos) - F.logsigmoid(-score_neg).sum(1)  # (B,)
    return _reduce(loss, reduction)


def cosine_triplet_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 0.3,
    *,
    reduction: str = "mean",
) -> Tensor:
    r"""Triplet margin loss on cosine distances.

    With :math:`d(u, v) = 1 - \cos(u, v)`, which lies in :math:`[0, 2]`:

    .. math::
        \ell = \max\big(d(a, p) - d(a, n) + \text{margin},\ 0\big)

    This equals ``nn.TripletMarginWithDistanceLoss`` with
    ``distance_function=lambda u, v: 1 - F.cosine_similarity(u, v)``. An all-zero
    vector has cosine 0 to everything (``F.cosine_similarity``'s eps), not NaN.

    Reference: F. Schroff, D. Kalenichenko, J. Philbin, "FaceNet", CVPR 2015,
    arXiv:1503.03832 (the triplet margin loss).

    Args:
        anchor: anchor vectors.
        positive: vectors that should be close to the anchors.
        negative: vectors that should be at least ``margin`` farther away.
        margin: the wanted gap between the distances, :math:`\ge 0`. Default: 0.3.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``. Default: ``"mean"``.

    Returns:
        The loss in the inputs' promoted dtype, float32 if that is float16/bfloat16.

    Raises:
        TypeError: if an input is not a floating-point tensor.
        ValueError: on mismatched shapes, a negative or NaN margin, or an unknown
            ``reduction``.

    Shape:
        - anchor, positive, negative: :math:`(B, D)`, float.
        - output: :math:`()` if ``reduction != "none"``, else :math:`(B,)`.

    Examples:
        >>> a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
        >>> p = torch.tensor([[1.0, 0.1], [0.0, 1.0]])
        >>> n = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
        >>> cosine_triplet_loss(a, p, n, reduction="none")
        tensor([0.0000, 1.3000])
    """
    names = ("anchor", "positive", "negative")
    tensors = (anchor, positive, negative)
    for name, t in zip(names, tensors):
        _validate.check_floating_tensor(name, t)
    _validate.check_ndim("anchor", anchor, 2, "(B, D)")
    _check_same_shape(names, tensors)
    if not margin >= 0.0:
        raise ValueError(f"Invalid margin: {margin} (must be >= 0)")
    _validate.check_reduction(reduction)
    dtype = _compute_dtype(
        torch.promote_types(
            torch.promote_types(anchor.dtype, positive.dtype), negative.dtype
        )
    )
    a, p, n = (t.to(dtype) for t in tensors)
    d_pos = 1.0 - F.cosine_similarity(a, p, dim=1)  # (B,)
    d_neg = 1.0 - F.cosine_similarity(a, n, dim=1)  # (B,)
    return _reduce(F.relu(d_pos - d_neg + margin), reduction)
