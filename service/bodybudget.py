"""The budget of request bodies whose signature is not yet checked (`BodyBudget`), and what
request headers announce of a body (`announced_body`): service/basehandler.py admits each
/api/v1 body through it before reading a byte, so that a client without the token can't make
the server hold more than the budget.

After a burst (the budget held `TRIM_AFTER` bytes or more, and is empty again) the C heap's
free pages go back to the OS (`MemoryTrim`): Python frees the bodies, but glibc keeps the
pages of the many 64 KiB chunks for reuse, so without it the RSS would stay at the burst's
peak for good (measured: +22 MiB after 100 quiet 1 MiB bodies, back to +1.5 MiB with it).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

TRIM_AFTER = 4 * 1024 * 1024  # a burst: the budget held this many bytes at its peak


def announced_body(headers: Mapping[str, str]) -> int | None:
    """The size of the body these request headers announce: None for no body, its
    Content-Length, or 0 when it is not known yet (chunked, or a Content-Length Tornado
    will refuse as malformed)."""
    length = headers.get("Content-Length")
    if "Transfer-Encoding" in headers:
        return 0
    if length is None:
        return None
    length = length.strip()
    if not length.isdigit():
        return 0
    return int(length) or None


class BodyBudget:
    """What the request bodies whose signature is not yet checked may hold together,
    process-wide: at most `max_bytes` bytes and `max_bodies` bodies.

    A body reserves its Content-Length before a byte of it is read (a chunked one grows
    its reservation as its chunks come), and gives it back once its signature was checked,
    or its request ended. Beyond the budget a new body is refused at once: a client without
    the token can make the server hold no more than this, each body no longer than the body
    timeout. While nothing is held one body is admitted whatever its size (up to
    server.max_body_bytes, checked before), so a budget below that limit still serves."""

    def __init__(
        self, max_bytes: int, max_bodies: int, on_drained: Callable[[], None] | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self.max_bodies = max_bodies
        self.bytes = 0  # reserved by the bodies held now
        self.bodies = 0  # held now
        self.refused = 0  # bodies refused since the start (a metric)
        self.peak = 0  # the most bytes held since the budget was last empty after a burst
        # Called when the budget is empty again after a burst (MemoryTrim.soon).
        self._on_drained = on_drained

    def admit(self, size: int) -> Hold | None:
        """A hold of `size` bytes for a new body, or None (counted) if the budget is spent."""
        if self.bodies >= self.max_bodies or not self.fits(size):
            self.refused += 1
            return None
        self.bodies += 1
        self._add(size)
        return Hold(self, size)

    def _add(self, more: int) -> None:
        self.bytes += more
        self.peak = max(self.peak, self.bytes)

    def _release(self, size: int) -> None:
        self.bodies -= 1
        self.bytes -= size
        if self.bodies == 0 and self.peak >= TRIM_AFTER:
            self.peak = 0
            if self._on_drained is not None:
                self._on_drained()

    def fits(self, more: int) -> bool:
        """Whether `more` bytes can be reserved now."""
        return self.bytes == 0 or self.bytes + more <= self.max_bytes


class Hold:
    """One body's share of the `BodyBudget`; `release` is idempotent."""

    def __init__(self, budget: BodyBudget, size: int) -> None:
        self._budget = budget
        self.size = size
        self._open = True

    def cover(self, total: int) -> bool:
        """Grows the hold to `total` bytes if it is smaller; False if the budget can't."""
        more = total - self.size
        if more <= 0 or not self._open:
            return True
        if not self._budget.fits(more):
            self._budget.refused += 1
            return False
        self._budget._add(more)
        self.size = total
        return True

    def release(self) -> None:
        if self._open:
            self._open = False
            self._budget._release(self.size)


class MemoryTrim:
    """Gives the C heap's free pages back to the OS (glibc's `malloc_trim(0)`), a moment
    after `soon()` (the connections of a burst are freed as their stacks unwind) and at
    most once per `interval` seconds. Does nothing without glibc."""

    def __init__(self, delay: float = 1.0, interval: float = 10.0) -> None:
        self.delay = delay
        self.interval = interval
        self.trims = 0
        self._last = -interval
        self._pending: asyncio.TimerHandle | None = None
        self._trim = _malloc_trim()

    def soon(self) -> None:
        if self._trim is None or self._pending is not None:
            return
        wait = max(self.delay, self._last + self.interval - time.monotonic())
        self._pending = asyncio.get_running_loop().call_later(wait, self._run)

    def _run(self) -> None:
        self._pending = None
        self._last = time.monotonic()
        if self._trim is not None:
            self._trim(0)
            self.trims += 1

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to do
        log.debug("no malloc_trim in %s: memory after a burst stays with the allocator", name)
        return None
    return trim


class BudgetCollector(Collector):
    """The budget's state for /metrics, read at scrape time."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "tgc_http_unverified_bodies",
            "Request bodies held whose signature is not yet checked",
            value=self.budget.bodies,
        )
        yield GaugeMetricFamily(
            "tgc_http_unverified_body_bytes",
            "Bytes reserved by the request bodies whose signature is not yet checked",
            value=self.budget.bytes,
        )
        # CounterMetricFamily adds the _total suffix.
        yield CounterMetricFamily(
            "tgc_http_unverified_bodies_refused",
            "Request bodies refused at once (429) while the unverified-body budget was spent",
            value=self.budget.refused,
        )
