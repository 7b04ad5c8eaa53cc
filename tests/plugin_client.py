"""The Gradient Flow plugin served by TensorBoard's own WSGI app, for tests
(importable as ``plugin_client``: pyproject's pytest ``pythonpath`` holds
``tests``)."""

from __future__ import annotations


def make_plugin_client(logdir, sampling_hints=None, listing_ttl=0.0):
    """A werkzeug client of TensorBoard's WSGI app with the gradflow plugin over
    ``logdir`` (the Python loader, loaded once, keeping every per-step and
    overview record: ``sampling_hints`` limit what the plugin reads), and its
    multiplexer."""
    from tensorboard.backend import application
    from tensorboard.backend.event_processing import (
        data_provider,
        plugin_event_multiplexer,
    )
    from tensorboard.plugins import base_plugin
    from werkzeug import test, wrappers

    from tb_gradflow import metadata, overview, plugin

    mux = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={metadata.PLUGIN_NAME: 0, overview.OVERVIEW_PLUGIN_NAME: 0}
    )
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    context = base_plugin.TBContext(
        logdir=str(logdir), data_provider=provider, sampling_hints=sampling_hints
    )
    gradflow = plugin.GradFlowPlugin(context)
    gradflow.listing_ttl = listing_ttl  # 0: see new data at once
    app = application.TensorBoardWSGI([gradflow], data_provider=provider)
    return test.Client(app, wrappers.Response), mux
