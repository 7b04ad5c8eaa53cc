"""Warnings about runs the plugin cannot show, each logged once while it
lasts: the tab asks for ``runs`` every 5 s, and TensorBoard's log must not
repeat a problem at every listing.

Standard library only.
"""

from __future__ import annotations

import collections
import logging
import threading

__all__ = ["MAX_REMEMBERED", "ProblemLog"]

MAX_REMEMBERED = 4096  # keys of other experiments kept beyond the latest listing's


class ProblemLog:
    """Logs each problem once, keyed by ``(experiment, run, tag, kind)``, not
    by its text (which can hold counts that grow while the run trains).

    Args:
        logger: where the warnings go (the plugin's logger).
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._lock = threading.Lock()
        # Keys of the warnings logged, least recently listed first.
        self._warned: collections.OrderedDict[tuple, None] = collections.OrderedDict()

    def listed(self, experiment: str, problems: dict[tuple, str]) -> None:
        """Logs as a warning each of a ``runs`` listing's ``problems`` (key:
        message) that the previous listings did not have.

        The keys of ``experiment`` that this listing lacks are forgotten (a
        problem that comes back is logged again); those it has are all kept,
        however many, so each is logged once while it lasts. Of other
        experiments' keys, the ``MAX_REMEMBERED`` least recently listed are
        kept.
        """
        with self._lock:
            new = [key for key in problems if key not in self._warned]
            gone = [k for k in self._warned if k[0] == experiment and k not in problems]
            for key in gone:
                del self._warned[key]
            for key in problems:
                self._warned[key] = None
                self._warned.move_to_end(key)
            # problems' keys are last: the oldest ones are other experiments'
            while len(self._warned) > len(problems) + MAX_REMEMBERED:
                self._warned.popitem(last=False)
        for key in new:
            self._logger.warning("%s", problems[key])

    def once(self, key: tuple, message: str) -> None:
        """Logs ``message`` unless the warning of ``key`` was logged and not
        forgotten since: a run read by another route than ``runs`` is warned
        about at once, and not again at the next listing."""
        with self._lock:
            if key in self._warned:
                self._warned.move_to_end(key)
                return
            self._warned[key] = None
        self._logger.warning("%s", message)
