"""Event files written by an earlier version (commit 82a2e2b; see
tests/fixtures/make_format_fixtures.py): this version reads and serves them as
that version's reader read them. A run with a sparse layer, a layer without
gradient on odd steps and a non-finite value."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import tb_gradflow

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "format_82a2e2b"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


def same(got: float, want: str) -> bool:
    want = float(want)
    return (math.isnan(got) and math.isnan(want)) or got == want


def test_the_reader_reads_them_as_that_version_did():
    run = tb_gradflow.load_run(FIXTURE / "run")
    assert run.steps.tolist() == EXPECTED["steps"]
    assert run.layers == EXPECTED["layers"]
    assert run.sparse == EXPECTED["sparse"] and run.every == EXPECTED["every"]
    assert set(EXPECTED["stats"]) <= set(run.stats)
    for stat, rows in EXPECTED["stats"].items():
        values = run.values(stat)
        for t, row in enumerate(rows):
            for j, want in enumerate(row):
                assert same(float(values[t, j]), want), (stat, t, j)
    # statistics registered since (the update's) read as not logged
    assert run.not_logged == ["update_ratio", "weight_norm"] and run.left_out == []
    assert run.types == [""] * len(run.layers)  # not recorded then


@pytest.fixture
def client(plugin_client):
    return plugin_client(FIXTURE)[0]


def test_the_tab_serves_them_as_that_version_read_them(client):
    for t, step in enumerate(EXPECTED["steps"]):
        reply = client.get(f"/data/plugin/gradflow/flow?run=run&step={step}")
        assert reply.status_code == 200, reply.get_data(as_text=True)
        flow = json.loads(reply.get_data())
        assert flow["step"] == step and flow["layers"] == EXPECTED["layers"]
        for stat, rows in EXPECTED["stats"].items():
            served = [float(v) for v in flow["stats"][stat]]  # "NaN" strings too
            assert all(same(g, w) for g, w in zip(served, rows[t])), (stat, step)
