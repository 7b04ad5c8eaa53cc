"""The tab's per-block and per-role bar plot: the `group` parameter of the
`flow` route and the group counts of `runs`, through TensorBoard's WSGI app."""

from __future__ import annotations

import numpy as np
from plugin_client import make_plugin_client
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from tb_gradflow import metadata
from tb_gradflow.stats import record
from tb_gradflow.summary import gradflow_pb

ROLES = ("self_attn.q_proj", "mlp.down_proj")
LAYERS = (
    "model.embed_tokens",
    *(f"model.layers.{i}.{r}" for i in range(3) for r in ROLES),
    "lm_head",
)


def write(logdir, steps=3):
    """A Llama-shaped run: layer j's abs_mean j+1, norm 10(j+1), one layer
    (block 1's down_proj) without a gradient and one (block 2's q_proj) with
    2 NaN at the last step."""
    layout = metadata.Layout(layers=LAYERS, sparse=(False,) * len(LAYERS))
    n = len(LAYERS)
    writer = EventFileWriter(str(logdir / "llama"))
    for step in range(steps):
        mean = np.arange(1, n + 1, dtype=float)
        nonfinite = np.zeros(n)
        values = {"abs_mean": mean, "abs_max": 2 * mean, "norm": 10 * mean}
        values = {k: v.copy() for k, v in values.items()}
        if step == steps - 1:
            nonfinite[5] = 2.0  # model.layers.2.self_attn.q_proj
        for stat in values:
            values[stat][4] = np.nan  # model.layers.1.mlp.down_proj: no gradient
        nonfinite[4] = np.nan
        stats = record({**values, "nonfinite": nonfinite, "rows": np.ones(n)}, n)
        proto = gradflow_pb(layout, stats, [0.0, np.nan], with_metadata=step == 0)
        writer.add_event(
            event_pb2.Event(step=step, wall_time=1.0 + step, summary=proto)
        )
    writer.close()


def test_runs_count_the_groups_and_flow_answers_per_block_and_per_role(tmp_path):
    write(tmp_path)
    client, _ = make_plugin_client(tmp_path)
    (entry,) = client.get("/data/plugin/gradflow/runs").get_json()["runs"]
    assert entry["layers"] == 8 and entry["groups"] == {"block": 5, "role": 4}
    plain = client.get("/data/plugin/gradflow/flow?run=llama").get_json()
    assert plain["layers"] == list(LAYERS)
    assert "group" not in plain and "members" not in plain
    blocks = client.get("/data/plugin/gradflow/flow?run=llama&group=block").get_json()
    assert blocks["group"] == "block"
    assert blocks["layers"] == [
        "model.embed_tokens",
        "model.layers.0",
        "model.layers.1",
        "model.layers.2",
        "lm_head",
    ]
    assert blocks["members"][1] == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.mlp.down_proj",
    ]
    # equal sizes unknown to the files: abs_mean is the mean of the members'
    mean = blocks["stats"]["abs_mean"]
    assert mean[1] == 2.5  # layers 2 and 3 (1-based)
    assert mean[2] == 4.0  # layer 4 only: layer 5 had no gradient
    np.testing.assert_allclose(blocks["stats"]["norm"][1], np.hypot(20, 30), rtol=1e-6)
    assert blocks["stats"]["nonfinite"][3] == 2.0 and blocks["no_grad"] == [False] * 5
    # the alerts still name layers
    assert {a["layer"] for a in blocks["alerts"]} >= {"model.layers.2.self_attn.q_proj"}
    roles = client.get(
        "/data/plugin/gradflow/flow?run=llama&group=role&step=0"
    ).get_json()
    assert roles["layers"] == [
        "model.embed_tokens",
        "model.layers.*.self_attn.q_proj",
        "model.layers.*.mlp.down_proj",
        "lm_head",
    ]
    assert roles["stats"]["abs_max"][2] == 2 * 7.0  # the largest of 3, (5), 7


def test_a_bad_group_answers_400(tmp_path):
    write(tmp_path)
    client, _ = make_plugin_client(tmp_path)
    response = client.get("/data/plugin/gradflow/flow?run=llama&group=stage")
    assert response.status_code == 400
    assert "Invalid group: 'stage' (one of layer, block, role)" in response.get_data(
        as_text=True
    )
