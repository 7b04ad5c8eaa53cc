"""tb-gradflow: per-layer gradient statistics in TensorBoard.

Importing this package is cheap and never imports torch: TensorBoard imports it
to load the plugin. ``watch`` and ``GradFlow`` (torch) and the reader load on
first use (PEP 562). Besides watching and reading, the building blocks other
code (``trainkit.checks``) builds on are public here: ``select_layers`` (which
layers a watcher follows), ``layer_stats`` (their statistics, one row per
statistic of :mod:`tb_gradflow.stats`), ``from_records`` (a run from records
in memory), ``diagnose_stats`` and ``check_writer``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "watch": "tb_gradflow.collect",
    "GradFlow": "tb_gradflow.collect",
    "GradFlowAlert": "tb_gradflow.alerts",
    "GradFlowError": "tb_gradflow.alerts",
    "LoggedStep": "tb_gradflow.collect",
    "check_flow": "tb_gradflow.flow_check",
    "diagnose_stats": "tb_gradflow.flow_check",
    "check_writer": "tb_gradflow.writers",
    "layer_stats": "tb_gradflow.gradient_stats",
    "select_layers": "tb_gradflow.layers",
    "from_records": "tb_gradflow.reader",
    "Finding": "tb_gradflow.diagnosis",
    "NonfiniteOrigin": "tb_gradflow.metadata",
    "Thresholds": "tb_gradflow.rule_spec",
    "diagnose": "tb_gradflow.diagnosis",
    "load": "tb_gradflow.reader",
    "load_run": "tb_gradflow.reader",
    "GradFlowRun": "tb_gradflow.reader",
}

__all__ = [
    "Finding",
    "GradFlow",
    "GradFlowAlert",
    "GradFlowError",
    "GradFlowRun",
    "LoggedStep",
    "NonfiniteOrigin",
    "Thresholds",
    "check_flow",
    "check_writer",
    "diagnose",
    "diagnose_stats",
    "from_records",
    "layer_stats",
    "load",
    "load_run",
    "select_layers",
    "watch",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tb_gradflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
