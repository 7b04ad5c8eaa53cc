"""The writers a watcher writes through, and one live watcher per writer and
name."""

from __future__ import annotations

import sys
import threading
import weakref
from typing import Any

__all__ = ["check_writer", "claim_writer", "release_writer"]


_WRITERS = "a torch.utils.tensorboard.SummaryWriter or a tensorboardX.SummaryWriter"


def check_writer(writer: Any) -> str:
    """The library whose ``SummaryWriter`` ``writer`` is (a subclass counts):
    ``"torch"`` for ``torch.utils.tensorboard``'s, ``"tensorboardX"`` for
    tensorboardX's.

    tensorboardX stays optional: it is never imported here, since an instance
    of its writer exists only once it is.

    Raises:
        TypeError: for any other object, naming the writers that are.
    """
    from torch.utils.tensorboard import SummaryWriter

    if isinstance(writer, SummaryWriter):
        return "torch"
    tensorboardx = sys.modules.get("tensorboardX")
    if tensorboardx is not None and isinstance(writer, tensorboardx.SummaryWriter):
        return "tensorboardX"
    raise TypeError(f"writer must be {_WRITERS} or None, got {type(writer).__name__}")


# The live watcher of each (writer, name): a second one would write every step
# twice under one tag (or merge two models' layers under one name).
_WATCHERS: dict[tuple[int, str | None], weakref.ref] = {}
_WATCHERS_LOCK = threading.Lock()


def claim_writer(writer: Any, name: str | None, flow: Any) -> None:
    """Records ``flow`` as the watcher writing to ``writer`` under ``name``.

    Raises:
        ValueError: if a watcher not yet removed already does, naming it.
    """
    key = (id(writer), name)
    with _WATCHERS_LOCK:
        ref = _WATCHERS.get(key)
        other = ref() if ref is not None else None
        if other is not None and not other._removed and other.writer is writer:
            what = "unnamed" if name is None else f"named {name!r}"
            raise ValueError(
                f"This writer already has a watcher {what}: {other!r}. A second "
                "one would log every step twice under one tag: call .remove() on "
                "the first (or leave its with-block), or pass another name="
            )
        _WATCHERS[key] = weakref.ref(flow)


def release_writer(writer: Any, name: str | None, flow: Any) -> None:
    key = (id(writer), name)
    with _WATCHERS_LOCK:
        ref = _WATCHERS.get(key)
        if ref is not None and ref() in (flow, None):
            del _WATCHERS[key]
