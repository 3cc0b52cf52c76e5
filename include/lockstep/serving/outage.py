"""Backoff and quiet logging for the replica's background loops during a database outage.

The routing follower, the change-log tail, the LISTEN thread and the log writer each
talk to the database several times a second. When it goes away, a loop that logs a
traceback per attempt floods the log (five tracebacks a second per loop) and hammers
a server that is trying to come back. ``Outage`` gives each loop exponential backoff
and exactly one log line per state change: one when the loop starts failing, one when
it works again (with how long and how many attempts it took).
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("lockstep.serving")


class Outage:
    """The health of one background loop: call ``ok()`` or ``failed(exc)`` after each attempt.

    Both return how long to wait before the next attempt: the loop's normal interval
    while healthy, then ``base * 2**n`` capped at ``ceiling`` while failing.
    """

    def __init__(self, what: str, interval: float, *, ceiling: float = 30.0, logger: logging.Logger = log) -> None:
        self.what = what
        self.interval = interval
        self.ceiling = max(ceiling, interval)
        self.logger = logger
        self.failures = 0  # consecutive failed attempts
        self.outages = 0  # times the loop went down
        self._since = 0.0
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self.failures > 0

    def ok(self) -> float:
        with self._lock:  # log before ``down`` turns false, so a reader of ``down`` sees the message
            if self.failures:
                self.logger.warning(
                    "%s works again after %d failed attempts over %.1f s",
                    self.what, self.failures, time.monotonic() - self._since,
                )
                self.failures = 0
        return self.interval

    def failed(self, exc: BaseException) -> float:
        with self._lock:
            self.failures += 1
            failures = self.failures
            if failures == 1:
                self.outages += 1
                self._since = time.monotonic()
        delay = min(self.ceiling, max(self.interval, 0.05) * 2**failures)
        if failures == 1:
            self.logger.error(
                "%s failing: %s; retrying with backoff up to %.0f s, no further messages until it works again",
                self.what, summary(exc), self.ceiling,
            )
        return delay


def summary(exc: BaseException) -> str:
    """One line for a log: the error's class and the first line of its message."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__
