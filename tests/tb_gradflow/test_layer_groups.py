"""Layer groups: blocks and roles found in the names models use, and group
statistics equal to the statistics of the group's gradients taken as one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_names import LLAMA_ROLES, llama_layers
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow
from tb_gradflow.layer_groups import combine, group_layers


def test_a_llama_70b_shape_groups_into_80_blocks_or_9_roles_and_3_loners():
    layers = llama_layers(80)
    assert len(layers) == 723
    blocks = group_layers(layers, "block")
    assert blocks.names == (
        "model.embed_tokens",
        *(f"model.layers.{i}" for i in range(80)),
        "model.norm",
        "lm_head",
    )
    assert blocks.members[5] == tuple(range(1 + 4 * 9, 1 + 5 * 9))
    roles = group_layers(layers, "role")
    assert roles.names == (
        "model.embed_tokens",
        *(f"model.layers.*.{role}" for role in LLAMA_ROLES),
        "model.norm",
        "lm_head",
    )
    assert all(len(m) == 80 for m in roles.members[1:10])
    assert roles.members[1][:2] == (1, 10)  # q_proj of blocks 0 and 1
    layer = group_layers(layers, "layer")
    assert layer.names == tuple(layers)


@pytest.mark.parametrize(
    ("name", "block", "role"),
    [
        ("transformer.h.3.mlp.c_fc", "transformer.h.3", "mlp.c_fc"),  # GPT-2
        ("blocks.11.attn.qkv", "blocks.11", "attn.qkv"),  # ViT (timm)
        ("bert.encoder.layer.5.output.dense", "bert.encoder.layer.5", "output.dense"),
        ("layer4.0.downsample.0", "layer4.0", "downsample.0"),  # ResNet
    ],
)
def test_blocks_and_roles_of_common_models(name, block, role):
    # a second block of the same container makes it a container
    other = name.replace(block, block.rsplit(".", 1)[0] + ".99")
    layers = [name, other]
    assert group_layers(layers, "block").names == (
        block,
        other.rsplit(".", len(role.split(".")))[0],
    )
    container = block.rsplit(".", 1)[0]
    assert group_layers(layers, "role").names == (f"{container}.*.{role}",)


def test_names_without_repeated_numbered_blocks_stay_alone():
    layers = ["features.0", "features.3", "classifier.1", "lstm.weight_ih_l0", "head"]
    for by in ("block", "role"):
        assert group_layers(layers, by).names == tuple(layers)
    # one numbered child only is no container
    assert group_layers(["enc.0.fc", "dec.fc"], "block").names == ("enc.0.fc", "dec.fc")


def test_patterns_name_blocks_the_automatic_rule_does_not_see():
    layers = [
        f"stage{s}_unit{u}.conv{c}" for s in (1, 2) for u in (1, 2) for c in (1, 2)
    ]
    assert group_layers(layers, "block").names == tuple(layers)
    pattern = r"(?P<block>stage\d+_unit\d+)\.(?P<role>.+)"
    blocks = group_layers(layers, "block", [pattern])
    assert blocks.names == (
        "stage1_unit1",
        "stage1_unit2",
        "stage2_unit1",
        "stage2_unit2",
    )
    assert group_layers(layers, "role", [pattern]).names == ("conv1", "conv2")
    with pytest.raises(ValueError, match=r"needs a named group: \(\?P<block>"):
        group_layers(layers, "block", [r"stage\d+"])
    with pytest.raises(ValueError, match="Invalid pattern"):
        group_layers(layers, "block", ["(unclosed"])
    with pytest.raises(ValueError, match="Invalid by: 'stage'"):
        group_layers(layers, "stage")


def stats_of(pieces: list[np.ndarray | None]) -> dict[str, float]:
    """The statistics of the concatenation of ``pieces`` (None: no gradient)."""
    present = [p for p in pieces if p is not None]
    if not present:
        return dict.fromkeys(("abs_mean", "abs_max", "norm", "nonfinite"), np.nan)
    g = np.concatenate([p.ravel() for p in present]).astype(np.float64)
    finite = np.isfinite(g)
    return {
        "abs_mean": np.abs(g).mean(),
        "abs_max": np.abs(g).max(),
        "norm": np.sqrt((g * g).sum()),
        "nonfinite": float((~finite).sum()),
    }


def test_group_statistics_equal_those_of_the_group_taken_as_one_tensor():
    rng = np.random.default_rng(0)
    layers = [f"h.{b}.{r}" for b in range(3) for r in ("attn", "mlp")] + ["head"]
    sizes = [int(rng.integers(1, 200)) for _ in layers]
    t = 12
    grads = [
        [
            None
            if rng.random() < 0.2  # no gradient at this step
            else rng.standard_normal(n) * 10 ** rng.uniform(-6, 2)
            for n in sizes
        ]
        for _ in range(t)
    ]
    grads[4][1] = grads[4][1] if grads[4][1] is not None else np.ones(sizes[1])
    grads[4][1][0] = np.inf
    values = {
        s: np.array([[stats_of([g])[s] for g in row] for row in grads])
        for s in ("abs_mean", "abs_max", "norm", "nonfinite")
    }
    for by in ("block", "role"):
        groups = group_layers(layers, by)
        got = combine(values, sizes, groups)
        for g, members in enumerate(groups.members):
            for step in range(t):
                want = stats_of([grads[step][j] for j in members])
                for s in values:
                    np.testing.assert_allclose(
                        got[s][step, g], want[s], rtol=2e-6, err_msg=f"{by} {s}"
                    )


def test_update_ratio_of_a_group_is_its_update_norm_over_its_weight_norm():
    rng = np.random.default_rng(1)
    theta = [rng.standard_normal(n) for n in (30, 50, 20)]
    delta = [t * 10 ** rng.uniform(-4, -2) for t in theta]
    ratio = np.array(
        [[np.linalg.norm(d) / np.linalg.norm(t) for t, d in zip(theta, delta)]]
    )
    weight = np.array([[np.linalg.norm(t) for t in theta]])
    groups = group_layers(["b.0.x", "b.1.x", "b.2.x"], "role")
    got = combine({"update_ratio": ratio, "weight_norm": weight}, [30, 50, 20], groups)
    want = np.linalg.norm(np.concatenate(delta)) / np.linalg.norm(np.concatenate(theta))
    np.testing.assert_allclose(got["update_ratio"][0, 0], want, rtol=1e-6)
    np.testing.assert_allclose(
        got["weight_norm"][0, 0], np.linalg.norm(np.concatenate(theta)), rtol=1e-6
    )
    # without the weight norms the ratio cannot be combined
    assert np.isnan(
        combine({"update_ratio": ratio}, [30, 50, 20], groups)["update_ratio"]
    ).all()


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(8, 8)
        self.mlp = nn.Linear(8, 8)

    def forward(self, x):
        return x + self.mlp(torch.tanh(self.attn(x)))


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block() for _ in range(3))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return self.head(x)


def test_a_watched_run_grouped_by_block_equals_its_gradients_by_block(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    grads = []
    opt.register_step_pre_hook(
        lambda o, a, k: grads.append(
            {n: p.grad.clone() for n, p in model.named_parameters()}
        )
    )
    with (
        SummaryWriter(str(tmp_path)) as writer,
        tb_gradflow.watch(model, writer, optimizer=opt),
    ):
        for _ in range(4):
            opt.zero_grad()
            model(torch.randn(5, 8)).pow(2).mean().backward()
            opt.step()
    run = tb_gradflow.load_run(tmp_path)
    blocks = run.grouped("block")
    assert blocks.layers == ["layers.0", "layers.1", "layers.2", "head"]
    assert blocks.numel == [128, 128, 128, 16]
    assert blocks.types == ["Linear"] * 4
    for t, step_grads in enumerate(grads):
        for g, block in enumerate(blocks.layers[:3]):
            parts = [step_grads[f"{block}.{r}.weight"].numpy() for r in ("attn", "mlp")]
            want = stats_of(parts)
            for s in ("abs_mean", "abs_max", "norm"):
                np.testing.assert_allclose(blocks.values(s)[t, g], want[s], rtol=1e-5)
    roles = run.grouped("role")
    assert roles.layers == ["layers.*.attn", "layers.*.mlp", "head"]
    assert tb_gradflow.diagnose(blocks) == []  # the rule reads a grouped run


def test_encoder_and_decoder_blocks_are_different_roles_and_indices_are_no_roles():
    t5 = [
        f"{side}.block.{i}.layer.0.SelfAttention.q"
        for side in ("encoder", "decoder")
        for i in range(2)
    ]
    assert group_layers(t5, "role").names == (
        "encoder.block.*.layer.0.SelfAttention.q",
        "decoder.block.*.layer.0.SelfAttention.q",
    )
    # torchvision EfficientNet: the stem and the head are numbered, not roles
    effnet = ["features.0.0", "features.1.0.block.0.0", "features.2.0.block.0.0"]
    effnet += ["features.8.0"]
    assert group_layers(effnet, "block").names == (
        "features.0.0",
        "features.1",
        "features.2",
        "features.8.0",
    )
    # a parameter of the block itself joins its block
    own = ["blocks.0", "blocks.0.attn.qkv", "blocks.1", "blocks.1.attn.qkv"]
    blocks = group_layers(own, "block")
    assert blocks.names == ("blocks.0", "blocks.1")
    assert blocks.members == ((0, 1), (2, 3))
    assert group_layers(own, "role").names == ("blocks.*", "blocks.*.attn.qkv")


def test_a_member_with_nan_makes_its_group_nan_and_zero_weights_are_left_out():
    layers = ["b.0.x", "b.1.x"]
    groups = group_layers(layers, "role")
    nan = np.nan
    values = {  # step 0: b.0.x had a gradient holding NaN; step 1: no gradient
        "norm": np.array([[nan, 2.0], [nan, 2.0]]),
        "abs_max": np.array([[nan, 1.0], [nan, 1.0]]),
        "nonfinite": np.array([[3.0, 0.0], [nan, 0.0]]),
    }
    got = combine(values, [10, 10], groups)
    assert np.isnan(got["norm"][0, 0]) and np.isnan(got["abs_max"][0, 0])
    assert got["nonfinite"][0, 0] == 3.0
    assert got["norm"][1, 0] == 2.0 and got["nonfinite"][1, 0] == 0.0
    # LoRA's B starts at zero: ratio inf, weight norm 0
    ratio = {
        "update_ratio": np.array([[np.inf, 1e-3]]),
        "weight_norm": np.array([[0.0, 4.0]]),
    }
    got = combine(ratio, [10, 10], groups)
    np.testing.assert_allclose(got["update_ratio"][0, 0], 1e-3, rtol=1e-6)
