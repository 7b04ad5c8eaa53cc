"""A group's extremes over a span of steps from its layers' extremes alone
(what an overview record holds): `layer_groups.bound_extremes` against the
group's values combined at every step (`layer_groups.combine`, checked
against the gradients themselves in test_layer_groups.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tb_gradflow.layer_groups import bound_extremes, combine, group_layers

BLOCKS = [f"model.layers.{b}.{r}" for b in range(3) for r in ("q", "o", "norm")]
LAYERS = ["embed", *BLOCKS, "lm_head"]
SPANS, STEPS = 6, 40  # spans of steps, steps per span


def random_run(seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Statistics ``(SPANS * STEPS, L)`` of layers of unequal sizes, each
    without a gradient at a random tenth of the steps (NaN everywhere), and
    their sizes."""
    rng = np.random.default_rng(seed)
    shape = (SPANS * STEPS, len(LAYERS))
    mean = np.exp(rng.normal(np.log(1e-3), 1.5, shape))
    weights = np.exp(rng.normal(0.0, 1.0, shape))
    values = {
        "abs_mean": mean,
        "abs_max": 4 * mean,
        "norm": 9 * mean,
        "nonfinite": rng.integers(0, 3, shape).astype(float),
        "rows": rng.uniform(0, 1, shape),
        "update_ratio": mean / 7,
        "weight_norm": weights,
    }
    gone = rng.uniform(0, 1, shape) < 0.1
    values = {k: np.where(gone, np.nan, v) for k, v in values.items()}
    return values, rng.integers(1, 1000, len(LAYERS))


@pytest.mark.parametrize("by", ["block", "role"])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "stat", ["abs_mean", "abs_max", "norm", "nonfinite", "rows", "update_ratio"]
)
def test_the_bounds_enclose_every_steps_group_value(stat, seed, by):
    values, numel = random_run(seed)
    groups = group_layers(LAYERS, by)
    per_step = combine(values, numel, groups)[stat].astype(np.float64)  # (T, G)
    spans = values[stat].reshape(SPANS, STEPS, len(LAYERS))  # (B, S, L)
    has = ~np.isnan(spans)
    largest = np.where(has, spans, -np.inf).max(axis=1)  # (B, L), as a record holds
    smallest = np.where(has, spans, np.inf).min(axis=1)
    grad = has.any(axis=1)
    high, low, grad_g, exact = bound_extremes(
        stat, largest.astype(np.float32), smallest.astype(np.float32), grad, groups
    )
    true = per_step.reshape(SPANS, STEPS, -1)
    true_max, true_min = np.nanmax(true, axis=1), np.nanmin(true, axis=1)  # (B, G)
    assert (grad_g == ~np.isnan(true_max)).all()
    assert (high >= true_max * (1 - 1e-6)).all()
    assert (low <= true_min * (1 + 1e-6)).all()
    assert exact == (stat == "abs_max")
    if exact:
        np.testing.assert_allclose(high, true_max, rtol=1e-6)
    # a group of one layer is its layer
    for g, members in enumerate(groups.members):
        if len(members) == 1:
            np.testing.assert_allclose(high[:, g], largest[:, members[0]], rtol=1e-6)
            np.testing.assert_allclose(low[:, g], smallest[:, members[0]], rtol=1e-6)


def test_a_layer_with_a_non_finite_value_makes_its_groups_bound_non_finite():
    groups = group_layers(["a.0.x", "a.0.y", "a.1.x", "a.1.y"], "block")
    largest = np.array([[1.0, np.inf, 2.0, 3.0]], dtype=np.float32)
    smallest = np.array([[0.5, 0.25, 1.0, 2.0]], dtype=np.float32)
    grad = np.array([[True, True, True, False]])
    high, low, has, _ = bound_extremes("norm", largest, smallest, grad, groups)
    assert high[0, 0] == np.inf and high[0, 1] == 2.0  # a.1.y had no gradient
    assert low.tolist() == [[0.25, 1.0]] and has.tolist() == [[True, True]]
