"""Loads the Gradient Flow plugin into TensorBoard (the ``tensorboard_plugins``
entry point).

TensorBoard keeps only 100 (Rust data server) or 10 (``--load_fast=false``)
steps of a third-party plugin's tensors per time series. :meth:`fix_flags`, which
TensorBoard runs after parsing the command line and before it starts ingesting
data, therefore adds ``gradflow=DEFAULT_SAMPLES_PER_RUN`` to
``--samples_per_plugin`` unless the user gave a ``gradflow`` entry: a plain
``tensorboard --logdir runs`` shows every logged step of runs up to that length.
It does the same for the watchers' overview records (``gradflow_overview``:
one per 100 logged steps, so every one of a 10-million-step run) and
non-finite origins (``gradflow_events``).

Kept import-light (no torch, no numpy): TensorBoard imports entry points outside
any ``try``, so an import error here would stop ``tensorboard`` itself.
"""

from __future__ import annotations

from tensorboard.plugins import base_plugin

__all__ = ["DEFAULT_SAMPLES_PER_RUN", "GradFlowLoader"]

# == metadata.PLUGIN_NAME, overview.OVERVIEW_PLUGIN_NAME and
# metadata.EVENTS_PLUGIN_NAME, without importing numpy here
_PLUGIN_NAME = "gradflow"
_OVERVIEW_PLUGIN_NAME = "gradflow_overview"
_EVENTS_PLUGIN_NAME = "gradflow_events"
_EVENTS_KEPT = 1000  # non-finite origins kept per run and watcher

DEFAULT_SAMPLES_PER_RUN = 100_000  # logged steps kept per run and watcher
"""TensorBoard's sampling limit for gradflow data when the user sets none.

Finite on purpose: ``gradflow=0`` ("keep all") lets a million-step run take
unbounded memory (500 layers x 5 statistics x 4 bytes = 10 kB per step). Beyond
the limit TensorBoard keeps a random subset (always the latest step); the tab
shows how many of the logged steps were kept. Change it with
``tensorboard --samples_per_plugin=gradflow=N`` (``N=0``: keep all).
"""


class GradFlowLoader(base_plugin.TBLoader):
    """Sets the gradflow sampling limit, then creates the plugin."""

    def fix_flags(self, flags) -> None:
        samples = getattr(flags, "samples_per_plugin", None)
        # Core's parser turns the flag into a dict; leave anything else alone.
        if isinstance(samples, dict):
            defaults = {
                _PLUGIN_NAME: DEFAULT_SAMPLES_PER_RUN,
                _OVERVIEW_PLUGIN_NAME: DEFAULT_SAMPLES_PER_RUN,
                _EVENTS_PLUGIN_NAME: _EVENTS_KEPT,
            }
            flags.samples_per_plugin = {**defaults, **samples}

    def load(self, context: base_plugin.TBContext) -> base_plugin.TBPlugin:
        from tb_gradflow.plugin import GradFlowPlugin

        return GradFlowPlugin(context)
