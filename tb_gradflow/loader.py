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

DEFAULT_SAMPLES_PER_RUN = 100_000  # logged steps kept per tag
"""TensorBoard's sampling limit for gradflow data when the user sets none, per
tag, and the most per-step records the plugin reads of one watcher.

A watcher of up to ~66 layers writes one tag per layer set: past the limit
TensorBoard keeps a random subset (always the latest step), which bounds its
memory, and the overview records cover every step. A larger one writes its
per-step records in segments (:mod:`tb_gradflow.segments`: a tag per ~32 MiB
of values, e.g. 2,300 steps of 723 layers), each below this limit, so
TensorBoard keeps every logged step and its memory grows with the run, about
as its event files do; the plugin reads a spread sample of a longer run. To
bound TensorBoard's memory, ``tensorboard --samples_per_plugin=gradflow=N``
keeps N steps of each tag (``N=0``: all).
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
