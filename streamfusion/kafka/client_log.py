"""librdkafka's errors and log lines, rate-limited into the daemon's log.

A broker that is down makes librdkafka report the same failure several times a second,
through the error callback and its own log; unfiltered that was 630 lines in half a minute.
Here every distinct message (numbers such as timings and offsets do not make it distinct) is
written at most once per interval, with the number of times it came since it was last
written.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

log = logging.getLogger("streamfusion.kafka")

LOG_INTERVAL = 10.0  # seconds: the same client error is written at most this often
_NUMBERS = re.compile(r"\d+")
_THREAD = re.compile(r"^\[thrd:[^\]]*\]: ")  # librdkafka's thread prefix on its log lines


class ClientLog:
    """One line per distinct client message per ``interval`` seconds, with a count.

    Used as librdkafka's ``logger`` (its ``log`` method) and from the error callback
    (:meth:`error`). Thread-safe: librdkafka's callbacks run on the thread that polls.

    Parameters
    ----------
    interval : float
        Seconds between two lines about the same message.
    clock : callable
        The time source (tests pass their own).

    Examples
    --------
    >>> t = [0.0]
    >>> lines = []
    >>> cl = ClientLog(10.0, clock=lambda: t[0], write=lambda lvl, text: lines.append(text))
    >>> for _ in range(5):
    ...     cl.error("Connect to 127.0.0.1:9 failed (after 3ms)")
    >>> t[0] = 11.0
    >>> cl.error("Connect to 127.0.0.1:9 failed (after 7ms)")
    >>> lines  # doctest: +NORMALIZE_WHITESPACE
    ['Kafka: Connect to 127.0.0.1:9 failed (after 3ms)',
     'Kafka: Connect to 127.0.0.1:9 failed (after 7ms) (5 times in the last 11s)']
    """

    def __init__(self, interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic,
                 write: Callable[[int, str], None] | None = None) -> None:
        self.interval = interval
        self.clock = clock
        self.write = write or (lambda level, text: log.log(level, "%s", text))
        self._seen: dict[str, tuple[float, int]] = {}  # key -> (last written, count since)
        self._lock = threading.Lock()
        self.lines = 0  # lines written (tests, metrics)

    def error(self, text: str, level: int = logging.WARNING) -> None:
        """One client error (``KafkaError.str()``)."""
        self._add(level, text)

    def log(self, level: int, fmt: str, *args: object) -> None:
        """librdkafka's ``logger`` interface: ``fmt % args`` is ``FAC [client] message``."""
        try:
            text = fmt % args
        except (TypeError, ValueError):
            text = f"{fmt} {args}"
        if len(args) == 3:  # (facility, client name, message): the message alone says it
            text = _THREAD.sub("", str(args[2]))
        self._add(max(level, logging.INFO), text)

    def _add(self, level: int, text: str) -> None:
        key = _NUMBERS.sub("#", text)
        now = self.clock()
        with self._lock:
            last, count = self._seen.get(key, (None, 0))
            if last is not None and now - last < self.interval:
                self._seen[key] = (last, count + 1)
                return
            self._seen[key] = (now, 0)
            self.lines += 1
        suffix = "" if last is None or count == 0 else \
            f" ({count + 1} times in the last {now - last:.0f}s)"
        self.write(level, f"Kafka: {text}{suffix}")
