"""Layers in groups: by block (``model.layers.17``) or by role (every block's
``self_attn.q_proj``), so that a model of hundreds of layers reads as its
blocks or its roles; a group's statistics combine its layers' exactly.

A *block* is a numbered child of a container that holds several numbered
children with names below them (``model.layers.17.self_attn.q_proj``:
container ``model.layers``, block ``model.layers.17``;
``transformer.h.3.mlp.c_fc``, ``blocks.11.attn.qkv``,
``encoder.layer.5.output.dense``, ``layer1.0.conv1``). The outermost such
number makes the block; a parameter of the block itself (a layer named
``blocks.3``) is in it too. A *role* is the container, ``*`` and what follows
the block (``model.layers.*.self_attn.q_proj``), so an encoder's and a
decoder's blocks are different roles. A layer with no such number, or only
an index after it (``features.0.0``, ``lstm.weight_ih_l0``, ``lm_head``), is
in no block: it is a group of its own either way. Unusual names take
patterns: regular expressions with a named group ``block`` (and optionally
``role``; default: what follows the block), tried first, in order.

How a group's value is made from its layers' (the registry's
``Statistic.group``, :mod:`tb_gradflow.stats`): ``norm`` the root of the sum of
squares; ``mean`` weighted by each layer's number of elements (so
``abs_mean`` is the mean of ``|g|`` over the group's elements, as if it were
one tensor); ``max`` the largest; ``sum`` the sum; ``partials`` from the
layers' partial sums (``update_ratio``: ``sqrt(sum (r w)^2) / sqrt(sum w^2)``
with ``w`` the logged ``weight_norm``, NaN when it was not logged; a member
whose weights were 0, ratio ``inf``, is left out: its step cannot be recovered
from the logged values). Layers without a value at a step (no gradient,
absent: a NaN ``nonfinite`` count) are left out of their group there; a group
none of whose layers has one is NaN; a member whose value is NaN/Inf while it
had a gradient makes its group's value NaN/Inf. A statistic the registry
does not know is NaN for groups of several layers.

Over a span of steps of which only each layer's largest and smallest values
are known (the watcher's overview records), a group's extremes are not known
exactly: :func:`bound_extremes` bounds them.

Pure numpy and the standard library: the plugin uses it too.

Shape letters: ``T`` steps, ``L`` layers, ``G`` groups, ``B`` spans of steps.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np

from tb_gradflow import stats as stats_registry

__all__ = [
    "BY",
    "LayerGroups",
    "bound_extremes",
    "combine",
    "group_layers",
    "split_name",
]

BY = ("layer", "block", "role")
_NUMBER = re.compile(r"^[0-9]+$")


@dataclasses.dataclass(frozen=True)
class LayerGroups:
    """Groups of a run's layers.

    Attributes:
        by: ``"layer"``, ``"block"`` or ``"role"``.
        names: each group's name (a block, a role, or a layer in no block),
            in order of its first layer.
        members: each group's layer indices, ascending.
    """

    by: str
    names: tuple[str, ...]
    members: tuple[tuple[int, ...], ...]

    def of_layer(self, count: int) -> np.ndarray:
        """``(L,)`` int: each of ``count`` layers' group index."""
        out = np.empty(count, dtype=np.int64)
        for g, members in enumerate(self.members):
            out[list(members)] = g
        return out


def split_name(
    name: str,
    containers: frozenset[str],
    patterns: Sequence[re.Pattern[str]] = (),
) -> tuple[str, str] | None:
    """``(block, role)`` of a layer name, or None when it is in no block: the
    outermost number of a container (:func:`group_layers`) followed by a
    name, or by nothing (the block's own parameter); the role is the
    container, ``*`` and what follows (``model.layers.*.self_attn.q_proj``).

    Args:
        name: a layer name.
        containers: the prefixes that hold several numbered children (see
            :func:`group_layers`).
        patterns: compiled patterns with a ``block`` group, tried first.
    """
    for pattern in patterns:
        match = pattern.fullmatch(name) or pattern.match(name)
        if match is not None and match.groupdict().get("block"):
            block = match["block"]
            role = match.groupdict().get("role") or name[match.end("block") :]
            return block, role.lstrip(".") or block
    parts = name.split(".")
    for i in range(1, len(parts)):
        container = ".".join(parts[:i])
        if not (_NUMBER.match(parts[i]) and container in containers):
            continue
        rest = parts[i + 1 :]
        if rest and all(_NUMBER.match(p) for p in rest):
            continue  # "features.0.0": no role, only an index
        block = ".".join(parts[: i + 1])
        # a role names the container too (an encoder's and a decoder's blocks
        # are different roles); the block's own parameters are "<container>.*"
        return block, ".".join([container, "*", *rest])
    return None


def _containers(layers: Sequence[str]) -> frozenset[str]:
    """Prefixes followed by two or more different numbers among ``layers``."""
    numbers: dict[str, set[str]] = {}
    for name in layers:
        parts = name.split(".")
        for i in range(1, len(parts) - 1):
            if _NUMBER.match(parts[i]):
                numbers.setdefault(".".join(parts[:i]), set()).add(parts[i])
    return frozenset(c for c, seen in numbers.items() if len(seen) > 1)


def group_layers(
    layers: Sequence[str], by: str, patterns: Sequence[str] = ()
) -> LayerGroups:
    """Groups ``layers`` by ``by``: ``"layer"`` (each alone), ``"block"`` or
    ``"role"``.

    Raises:
        ValueError: for another ``by``, or a pattern that is not a regular
            expression with a ``block`` group.
    """
    if by not in BY:
        raise ValueError(f"Invalid by: {by!r} (one of {', '.join(BY)})")
    compiled = []
    for p in patterns:
        try:
            pattern = re.compile(p)
        except (re.error, TypeError) as e:
            raise ValueError(f"Invalid pattern: {p!r} ({e})") from e
        if "block" not in pattern.groupindex:
            raise ValueError(
                f"Invalid pattern: {p!r} (it needs a named group: (?P<block>...))"
            )
        compiled.append(pattern)
    containers = _containers(layers)
    keys = []
    for name in layers:
        split = None if by == "layer" else split_name(name, containers, compiled)
        keys.append(name if split is None else split[0 if by == "block" else 1])
    # a group named as a layer that is not in it is renamed, not to be taken
    # for that layer
    own = dict(zip(layers, keys))
    index: dict[str, list[int]] = {}
    for j, key in enumerate(keys):
        if key in own and own[key] != key:
            key = f"{key} (group)"
        index.setdefault(key, []).append(j)
    return LayerGroups(
        by=by,
        names=tuple(index),
        members=tuple(tuple(m) for m in index.values()),
    )


_ROWS = 256  # steps combined at once: the temporaries stay in cache


def combine(
    values: Mapping[str, np.ndarray],
    numel: Sequence[int] | None,
    groups: LayerGroups,
) -> dict[str, np.ndarray]:
    """Each statistic of ``values`` (``(T, L)``) for each group: ``(T, G)``
    float32, by the rule of its registry entry (see the module docstring).

    ``numel``: each layer's number of elements (None or empty: equal weights
    for ``mean``, which is then a plain mean of the layers' values).
    """
    order = np.concatenate([np.asarray(m, dtype=np.intp) for m in groups.members])
    sizes = np.array([len(m) for m in groups.members])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # (G,) into ``order``
    weights = (
        np.asarray(numel, dtype=np.float64)
        if numel is not None and len(numel) == len(order)
        else np.ones(len(order))
    )[order]  # (L,) in group order
    alone = sizes == 1
    rules = {}
    for name in values:
        statistic = stats_registry.get(name)
        rules[name] = statistic.group if statistic is not None else None
    n_steps = len(next(iter(values.values()), ()))
    out = {name: np.empty((n_steps, len(sizes)), np.float32) for name in values}
    for first in range(0, n_steps, _ROWS):
        rows = slice(first, first + _ROWS)
        chunk = {name: np.asarray(v)[rows][:, order] for name, v in values.items()}
        # (R, L) each, layers in group order. A member without a value (no
        # gradient, absent) has a NaN nonfinite count; one with a gradient
        # whose value is NaN/Inf passes it on.
        counts = chunk.get("nonfinite")
        has = None if counts is None else ~np.isnan(counts)
        for name, v in chunk.items():
            rule = rules[name]
            if rule != "max":  # sums in float64
                v = v.astype(np.float64)
            combined = _combine_all(
                name,
                rule,
                v,
                ~np.isnan(v) if has is None else has,
                chunk,
                starts,
                weights,
            )  # (R, G)
            combined[:, alone] = v[:, starts[alone]]  # a group of one is its layer
            out[name][rows] = combined
    return out


def _combine_all(
    name: str,
    rule: str | None,
    v: np.ndarray,
    has: np.ndarray,
    chunk: Mapping[str, np.ndarray],
    starts: np.ndarray,
    weights: np.ndarray,
) -> np.ndarray:
    """Every group's values of statistic ``name``: ``v`` and ``has``
    ``(R, L)`` with the layers in group order (``chunk``: every statistic's,
    so), groups starting at ``starts`` ``(G,)``; returns ``(R, G)``."""

    def per_group(x: np.ndarray, ufunc=np.add) -> np.ndarray:
        return ufunc.reduceat(x, starts, axis=1)  # (T, G)

    any_value = per_group(has, np.logical_or)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if rule == "mean":
            w = np.where(has, weights, 0.0)  # (T, L)
            out = per_group(np.where(has, v * w, 0.0)) / per_group(w)
        elif rule == "max":
            out = per_group(np.where(has, v, -np.inf), np.maximum)
        elif rule == "norm":
            out = np.sqrt(per_group(np.where(has, v * v, 0.0)))
        elif rule == "sum":
            out = per_group(np.where(has, v, 0.0))
        elif rule == "partials" and name == "update_ratio" and "weight_norm" in chunk:
            w = chunk["weight_norm"].astype(np.float64)
            # a member whose weights were 0 (ratio inf) took a step that
            # the logged values cannot give back: left out
            both = has & np.isfinite(v) & np.isfinite(w)
            step = per_group(np.where(both, (v * w) ** 2, 0.0))
            out = np.sqrt(step) / np.sqrt(per_group(np.where(both, w * w, 0.0)))
            any_value = per_group(both, np.logical_or)
        else:  # a ratio without its parts, or a statistic this version lacks
            return np.full((len(v), len(starts)), np.nan)
    return np.where(any_value, out, np.nan)


def bound_extremes(
    name: str,
    largest: np.ndarray,
    smallest: np.ndarray,
    has_grad: np.ndarray,
    groups: LayerGroups,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Bounds of each group's largest and smallest value of statistic
    ``name`` over spans of steps, from its layers' largest and smallest values
    over each span (as the overview records hold them: largest ``+inf``
    where a value was NaN/Inf, smallest the smallest finite value).

    Which layers had a value at which step of a span is not known, nor at
    which step each layer's extremes were, so a group's value (see
    :func:`combine`) is only bounded: ``high`` is at least its largest value
    over the span, by its rule: ``max``: the largest of its layers' largest
    (exact), ``sum``: their sum, ``norm``: the root of the sum of their
    squares, ``mean`` and ``partials``: the largest of them (a weighted mean
    or ratio of norms never exceeds its largest part); ``low`` is at most its
    smallest finite value: the smallest of its layers' smallest (a group's
    value is at least one of its layers' values, none negative). Layers
    without a gradient in the span are left out; a group of one layer is its
    layer, exactly. A statistic the registry does not know is NaN for groups
    of several layers, as in :func:`combine`.

    Args:
        name: the statistic.
        largest, smallest: each layer's largest and smallest value per span.
        has_grad: where a layer had a gradient at some step of the span.
        groups: the groups of the layers.

    Returns:
        ``(high, low, has_grad, exact)``: ``high`` (+inf where a layer with a
        gradient had a non-finite value; NaN without a gradient), ``low`` (NaN
        where no layer has a finite smallest value), where any layer of the
        group had a gradient, and whether ``high`` is exact for every group
        (the ``max`` rule, or groups of one layer).

    Shape:
        - largest, smallest, has_grad: ``(B, L)``
        - high, low: ``(B, G)`` float32; has_grad: ``(B, G)`` bool
    """
    statistic = stats_registry.get(name)
    rule = statistic.group if statistic is not None else None
    shape = (len(largest), len(groups.members))
    high = np.full(shape, np.nan, dtype=np.float64)
    low = np.full(shape, np.nan, dtype=np.float64)
    grad = np.zeros(shape, dtype=bool)
    for g, members in enumerate(groups.members):
        m = list(members)
        has = np.asarray(has_grad[:, m], dtype=bool)  # (B, M)
        hi = np.asarray(largest[:, m], dtype=np.float64)
        lo = np.asarray(smallest[:, m], dtype=np.float64)
        grad[:, g] = has.any(axis=1)
        finite_lo = has & np.isfinite(lo)
        least = np.where(finite_lo, lo, np.inf).min(axis=1)
        low[:, g] = np.where(finite_lo.any(axis=1), least, np.nan)
        if len(m) == 1:
            high[:, g] = hi[:, 0]
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            if rule == "sum":
                bound = np.where(has, hi, 0.0).sum(axis=1)
            elif rule == "norm":
                bound = np.sqrt(np.where(has, hi * hi, 0.0).sum(axis=1))
            elif rule in ("max", "mean", "partials"):
                bound = np.where(has, hi, -np.inf).max(axis=1)
            else:  # a statistic this version does not know: as combine()
                bound = np.full(len(hi), np.nan)
                low[:, g] = np.nan
        high[:, g] = np.where(grad[:, g], bound, np.nan)
    exact = rule == "max" or all(len(m) == 1 for m in groups.members)
    return high.astype(np.float32), low.astype(np.float32), grad, exact
