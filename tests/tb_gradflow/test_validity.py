"""The range checks of logged statistics: every rule flags what it should, and
statistics of real gradients (dense, sparse, non-finite, missing) pass."""

from __future__ import annotations

import importlib
import re

import numpy as np
import pytest
import torch

from tb_gradflow.gradient_stats import layer_stats
from tb_gradflow.stats import names, record
from tb_gradflow.validity import invalid_records

STATS = names("gradient")
LAYERS = ("a", "b")


def real_stats():
    """(N, K, L) statistics of real gradients: dense, sparse, with inf/NaN,
    tiny, huge, one element, and a layer without gradient."""
    gen = torch.Generator().manual_seed(0)
    records = []
    cases = [
        (torch.randn(30, 7, generator=gen), torch.randn(5, generator=gen)),
        (torch.full((4, 4), 3.0), torch.zeros(9)),
        (torch.tensor([1.0, float("inf"), -2.0]), torch.tensor([float("nan"), 1.0])),
        (torch.randn(64, generator=gen) * 1e-30, torch.randn(8, generator=gen) * 1e30),
        (torch.tensor([-4.0]), None),
        (
            torch.sparse_coo_tensor(
                [[0, 3, 7]],
                torch.randn(3, 6, generator=gen),
                (9, 6),
                check_invariants=True,
            ),
            torch.randn(2, 2, generator=gen),
        ),
    ]
    for grads in cases:
        stats, _ = layer_stats(list(grads))  # (K, L)
        records.append(stats.astype(np.float32))
    numel = [(30 * 7, 5), (16, 9), (3, 2), (64, 8), (1, 1), (54, 4)]
    return records, numel


def test_statistics_of_real_gradients_pass():
    records, numel = real_stats()
    for stats, n in zip(records, numel):
        assert invalid_records(stats[None], STATS, LAYERS, n) == [None], stats


def one(**values):
    """One record of two layers: a valid one, with ``values`` set on layer b."""
    base = {"abs_mean": 0.5, "abs_max": 1.0, "norm": 2.0, "nonfinite": 0.0, "rows": 1.0}
    stats = record({s: [v, values.get(s, v)] for s, v in base.items()}, 2)
    return stats[None].astype(np.float32)  # (1, K, L)


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"abs_mean": -1.2e9}, "abs_mean is negative"),
        ({"abs_max": -1.0, "abs_mean": -2.0}, "abs_mean is negative"),
        ({"norm": -3.0}, "norm is negative"),
        ({"rows": 1.5}, r"rows is outside \[0, 1\]"),
        ({"rows": -0.1}, r"rows is outside \[0, 1\]"),
        ({"nonfinite": 0.5}, "nonfinite is not a whole number"),
        ({"nonfinite": -1.0}, "nonfinite is negative"),
        ({"nonfinite": 17.0}, "nonfinite is more than the layer's elements"),
        ({"abs_mean": 1.5}, "abs_mean is above abs_max"),
        ({"norm": 0.9}, "norm is below abs_max"),
        ({"norm": 4.1}, r"norm is above sqrt\(numel\) x abs_max"),
    ],
)
def test_each_impossible_value_is_named_with_its_layer(values, reason):
    (got,) = invalid_records(one(**values), STATS, LAYERS, (16, 16))
    assert got is not None
    assert re.match(reason, got), got
    assert got.endswith("(layer 'b')")


def test_nan_is_no_gradient_and_unknown_numel_skips_its_checks():
    nan = float("nan")
    record = one(abs_mean=nan, abs_max=nan, norm=nan, nonfinite=nan, rows=nan)
    assert invalid_records(record, STATS, LAYERS, (16, 16)) == [None]
    assert invalid_records(one(norm=50.0), STATS, LAYERS) == [None]  # no numel
    # non-finite gradients: the order of abs_mean, abs_max and norm is not checked
    assert invalid_records(
        one(nonfinite=2, abs_max=float("inf"), norm=0.1), STATS, LAYERS, (16, 16)
    ) == [None]


def test_float32_rounding_is_allowed():
    x = np.float32(0.1)
    record = one(abs_mean=x * np.float32(1 + 2e-6), abs_max=x, norm=x)
    assert invalid_records(record, STATS, LAYERS, (16, 1)) == [None]


def test_records_checked_a_few_at_a_time_get_each_record_s_own_reason(monkeypatch):
    validity = importlib.import_module("tb_gradflow.validity")
    rng = np.random.default_rng(0)
    faults = [{"abs_mean": -1.0}, {"rows": 1.5}, {"nonfinite": 0.5}, {"norm": 0.9}]
    faults += [{}] * 4
    records = np.concatenate(
        [one(**faults[i]) for i in rng.integers(len(faults), size=50)]
    )  # (50, K, L)
    alone = [invalid_records(r[None], STATS, LAYERS, (16, 16))[0] for r in records]
    assert 0 < sum(reason is None for reason in alone) < len(alone)
    for rows in (1, 3, 7, 256):
        monkeypatch.setattr(validity, "_ROWS", rows)
        assert invalid_records(records, STATS, LAYERS, (16, 16)) == alone
