"""SMORMS3(fused=True) with real compiles, against the per-tensor path.

Every test starts from an empty compile state (``torch._dynamo.reset()`` and no
kernels made yet), so that which graphs compile, and when, does not depend on
the tests that ran before. Direct calls of recorded graphs (which skip
``torch.compile``'s guards) are checked input by input against what each graph
was compiled for (``checked_direct_calls``): a recompiled graph may take its
loop bound from any tensor's ``size()[0]``, and an n-D gradient of the right
number of elements was once updated along its first dimension only.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainkit.optim import SMORMS3

F64 = {"rtol": 1e-12, "atol": 1e-12}
F32 = {"rtol": 2e-6, "atol": 1e-7}


@pytest.fixture(autouse=True)
def _fresh(fresh_fused_kernels):
    """Each test compiles from an empty state."""


def pair(shapes, dtype=torch.float64, seed=0):
    """Parameters of ``shapes`` and an equal copy of them."""
    gen = torch.Generator().manual_seed(seed)
    ours = [nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in shapes]
    return ours, [nn.Parameter(p.detach().clone()) for p in ours]


def give_grads(ours, base, gen):
    """The same random gradient to each parameter and its copy."""
    for a, b in zip(ours, base):
        g = torch.randn(a.shape, generator=gen).to(a.dtype)
        g.view(-1)[::5] = 0.0  # exact zeros: the zero-history branch
        a.grad, b.grad = g.clone(), g.clone()


def assert_same(ours, base):
    for a, b in zip(ours, base):
        torch.testing.assert_close(a, b, **(F64 if a.dtype == torch.float64 else F32))


def test_issue_reproducer_updates_every_element_after_a_recompile(checked_direct_calls):
    w = nn.Parameter(torch.zeros(5, 6, dtype=torch.float64))
    b = nn.Parameter(torch.zeros(7, dtype=torch.float64))
    groups = [{"params": [b]}, {"params": [w], "weight_decay": 0.01}]
    opt = SMORMS3(groups, lr=0.01, fused=True)
    w_ref, b_ref = (nn.Parameter(torch.zeros_like(t)) for t in (w, b))
    ref_groups = [{"params": [b_ref]}, {"params": [w_ref], "weight_decay": 0.01}]
    ref = SMORMS3(ref_groups, lr=0.01, foreach=False)
    for _ in range(3):
        for p in (w, b, w_ref, b_ref):
            p.grad = torch.ones_like(p)
        opt.step()
        ref.step()
    assert_same([w, b], [w_ref, b_ref])
    torch.testing.assert_close(w, torch.full_like(w, w_ref[0, 0].item()), **F64)
    assert checked_direct_calls, "no step ran a recorded graph directly"


# Nine shapes of 60 elements (one bucket of eight and one single call, each
# with n-D gradients), and 1-D and n-D shapes of other sizes.
SIXTY = [(60,), (6, 10), (10, 6), (3, 4, 5), (5, 12), (2, 30), (4, 15), (3, 20)]
SIXTY += [(2, 2, 15)]
OTHERS = [(7, 3), (2, 3, 4, 2), (11,), (13, 2)]


def groups_of(params, dtype_split):
    """Three groups: plain; weight decay and maximize; weight decay alone."""
    first, second, third = params[:dtype_split], params[dtype_split:-4], params[-4:]
    return [
        {"params": first},
        {"params": second, "weight_decay": 0.05, "maximize": True},
        {"params": third, "weight_decay": 0.01},
    ]


@pytest.mark.slow
def test_groups_with_and_without_decay_maximize_and_two_dtypes(checked_direct_calls):
    """float64 groups with and without weight decay, maximize in one, and a
    float32 group; n-D shapes of one size share a bucket."""
    ours, base = pair(SIXTY + OTHERS)
    thirty_two, copies = pair([(4, 15), (60,), (6, 5)], torch.float32, seed=1)
    opt = SMORMS3([*groups_of(ours, 9), {"params": thirty_two}], lr=0.02, fused=True)
    ref = SMORMS3([*groups_of(base, 9), {"params": copies}], lr=0.02, foreach=False)
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        give_grads(ours + thirty_two, base + copies, gen)
        opt.step()
        ref.step()
        assert_same(ours + thirty_two, base + copies)
    # each step after the first ran every flat group directly
    assert len(checked_direct_calls) >= 4 * 6


@pytest.mark.slow
def test_a_shape_seen_after_another_compiled_and_add_param_group(checked_direct_calls):
    """Graphs compiled on 60-element tensors run a later (7, 9) parameter, and a
    group added after the first step (another signature: weight decay)."""
    ours, base = pair(SIXTY)
    opt = SMORMS3(ours, lr=0.05, fused=True)
    ref = SMORMS3(base, lr=0.05, foreach=False)
    gen = torch.Generator().manual_seed(3)
    give_grads(ours, base, gen)
    opt.step()
    ref.step()
    late, late_copies = pair([(7, 9)] * 9 + [(9, 7), (3, 3, 7)], seed=4)
    opt.add_param_group({"params": late[:9]})
    ref.add_param_group({"params": late_copies[:9]})
    opt.add_param_group({"params": late[9:], "weight_decay": 0.1})
    ref.add_param_group({"params": late_copies[9:], "weight_decay": 0.1})
    calls_before = len(checked_direct_calls)
    for _ in range(4):
        give_grads(ours + late, base + late_copies, gen)
        opt.step()
        ref.step()
        assert_same(ours + late, base + late_copies)
    assert len(checked_direct_calls) > calls_before


@pytest.mark.slow
def test_load_state_dict_mid_run(checked_direct_calls):
    ours, base = pair(SIXTY + OTHERS, seed=5)
    opt = SMORMS3(groups_of(ours, 9), lr=0.03, fused=True)
    ref = SMORMS3(groups_of(base, 9), lr=0.03, foreach=False)
    gen = torch.Generator().manual_seed(6)
    for step in range(6):
        if step == 3:
            saved = copy.deepcopy(opt.state_dict())
            opt = SMORMS3(groups_of(ours, 9), lr=0.03, fused=True)
            opt.load_state_dict(saved)
        give_grads(ours, base, gen)
        opt.step()
        ref.step()
        assert_same(ours, base)
    for a, b in zip(ours, base):
        for key in ("mem", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[a][key], ref.state[b][key], **F64)
    assert checked_direct_calls
