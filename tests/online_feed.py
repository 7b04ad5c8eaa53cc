"""Feeding a run to :class:`tb_gradflow.diagnosis.OnlineDiagnosis` step by step,
as a watcher does, for the tests that compare it with the batch rule."""

from tb_gradflow.diagnosis import OnlineDiagnosis


def feed_online(run, thresholds=None):
    """Every finding ``OnlineDiagnosis`` returns over ``run`` (what ``diagnose``
    reads), in order."""
    online = OnlineDiagnosis(run.layers, run.sparse, thresholds)
    found = []
    for t, step in enumerate(run.steps):
        stats = {s: run.values(s)[t] for s in ("abs_mean", "norm", "nonfinite", "rows")}
        found += online.update(int(step), stats, skipped=bool(run.skipped[t]))
    return found
