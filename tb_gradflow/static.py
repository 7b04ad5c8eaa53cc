"""The Gradient Flow tab's frontend files, as the plugin serves them.

Only names on a list fixed when TensorBoard starts are served, each by a route
of its own (:func:`static_names`); a name never comes from the URL, so no path
can reach outside the frontend folder.

Import-light: the standard library and ``tensorboard.errors`` only.
"""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

from tensorboard import errors

__all__ = [
    "CONTENT_TYPES",
    "STATIC_FILES",
    "content_type",
    "frontend_dir",
    "read_static",
    "static_names",
]

STATIC_FILES = (
    "index.js",
    "state.js",
    "url.js",
    "present.js",
    "api.js",
    "loader.js",
    "paint.js",
    "model.js",
    "binary.js",
    "grouping.js",
    "scale.js",
    "canvas.js",
    "palette.js",
    "bars.js",
    "export.js",
    "heatmap.js",
    "lines.js",
    "marks.js",
    "strip.js",
    "views.js",
    "page.js",
    "style.css",
)
"""Frontend files always routed (404 while missing); other ``frontend/`` files
with a served suffix are routed too if present when TensorBoard starts."""

CONTENT_TYPES = {
    ".js": "text/javascript",  # explicit: mimetypes can be wrong (TB #3120)
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_STATIC_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


def frontend_dir():
    """The tab's files: ``tb_gradflow/frontend/`` in an installed wheel, else the
    top-level ``frontend/`` folder of the source checkout (editable installs:
    setuptools' editable finder cannot map a sub-package without ``__init__.py``).
    """
    installed = importlib.resources.files("tb_gradflow").joinpath("frontend")
    if installed.is_dir():
        return installed
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():  # never another project's frontend/
        return root / "frontend"
    return installed


def static_names(folder=None) -> list[str]:
    """``STATIC_FILES`` plus the other servable files now in ``folder`` (default:
    the installed frontend)."""
    names = set(STATIC_FILES)
    folder = frontend_dir() if folder is None else folder
    try:
        present = [f.name for f in folder.iterdir() if f.is_file()]
    except OSError:
        present = []
    names.update(
        n for n in present if _STATIC_NAME.match(n) and Path(n).suffix in CONTENT_TYPES
    )
    return sorted(names)


def content_type(name: str) -> str:
    """The Content-Type a served file ``name`` is answered with."""
    return CONTENT_TYPES[Path(name).suffix]


def read_static(name: str) -> bytes:
    """The bytes of frontend file ``name``.

    Raises:
        NotFoundError: while the file is missing.
    """
    try:
        return frontend_dir().joinpath(name).read_bytes()
    except OSError:
        raise errors.NotFoundError(f"Frontend file not installed: {name}") from None
