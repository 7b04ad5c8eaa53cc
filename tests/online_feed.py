"""Feeding a run to :class:`tb_gradflow.diagnosis.OnlineDiagnosis` step by step,
as a watcher does, for the tests that compare it with the batch rule."""

from tb_gradflow.diagnosis import OnlineDiagnosis


def feed_online(run, thresholds=None):
    """Every finding ``OnlineDiagnosis`` returns over ``run`` (what ``diagnose``
    reads), in order."""
    online = OnlineDiagnosis(run.layers, run.sparse, thresholds)
    names = ["abs_mean", "norm", "nonfinite", "rows"]
    logged = set(getattr(run, "stats", ())) - set(getattr(run, "not_logged", ()))
    if "update_ratio" in logged:  # as a watcher with stats=["update_ratio"]
        names.append("update_ratio")
    found = []
    for t, step in enumerate(run.steps):
        stats = {s: run.values(s)[t] for s in names}
        found += online.update(int(step), stats, skipped=bool(run.skipped[t]))
    return found
