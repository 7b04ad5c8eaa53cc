"""The ``watch`` options a framework callback takes from its user."""

from __future__ import annotations

import inspect
from typing import Any

from tb_gradflow.collect import watch

__all__ = ["check_watch_options"]


def check_watch_options(
    callback: str, options: dict[str, Any], set_by_callback: tuple[str, ...]
) -> dict[str, Any]:
    """``options`` after checking that ``watch`` takes each and that the
    callback does not set it itself.

    Raises:
        TypeError: naming an option ``watch`` does not take, or one the
            callback sets.
    """
    taken = set(inspect.signature(watch).parameters) - {"model", "writer"}
    for key in options:
        if key in set_by_callback:
            raise TypeError(
                f"{callback} sets {key!r} itself (from the trainer); leave it out"
            )
        if key not in taken:
            raise TypeError(
                f"{callback} got an unknown option {key!r}; it takes watch()'s "
                f"options: {', '.join(sorted(taken - set(set_by_callback)))}"
            )
    return dict(options)
