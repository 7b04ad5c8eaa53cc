"""The "What is logged" table of docs/logging.md is the statistics registry's:
one row per registered statistic, in registration order, with its meaning, unit
and bad direction as ``tb_gradflow.stats`` gives them."""

from __future__ import annotations

import re
from pathlib import Path

from tb_gradflow import stats

DOC = Path(__file__).resolve().parents[2] / "docs" / "logging.md"
HEADING = "## What is logged, per layer and logged step"


def table_rows() -> list[list[str]]:
    """The cells of each body row of the first table under HEADING, with
    Markdown's ``\\|`` read as ``|``."""
    text = DOC.read_text(encoding="utf-8")
    lines = text[text.index(HEADING) :].splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:  # past the header and the |---| line
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        rows.append([c.strip().replace("\\|", "|") for c in cells])
    return rows


def test_the_what_is_logged_table_lists_every_registered_statistic_in_its_words():
    rows = table_rows()
    want = [[f"`{s.name}`", s.meaning, s.unit, s.bad] for s in stats.statistics()]
    table = "\n".join(
        "| " + " | ".join(c.replace("|", "\\|") for c in row) + " | ... |"
        for row in want
    )
    assert [row[:4] for row in rows] == want, (
        f"docs/logging.md's table under {HEADING!r} should read (first four "
        "columns):\n" + table
    )
    for s, row in zip(stats.statistics(), rows):
        # the last column says when it is logged: always, or when chosen
        chosen = f'with `watch(..., stats=["{s.name}"])`'
        assert row[4] == ("always" if s.reads == "gradient" else chosen), row
