"""Bounded waits: poll against a monotonic deadline; a timeout says what it saw."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """A bounded wait ran out; the message names what was awaited and what was seen."""


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.2,
    describe: Callable[[], str] | None = None,
) -> T:
    """Call ``probe`` until it returns a truthy value or ``timeout_s`` passes.

    On timeout raise :class:`WaitTimeout` with ``what`` and ``describe()`` (the last
    state seen: pod phases, log lines, ...). Exceptions from ``probe`` count as "not yet"
    and the last one is reported.
    """
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # a probe that fails is a probe that says "not yet"
            last_error = exc
        if time.monotonic() >= deadline:
            seen = describe() if describe else ""
            error = f"; last error: {last_error!r}" if last_error else ""
            raise WaitTimeout(f"timed out after {timeout_s:.1f}s waiting for {what}{error}\n{seen}")
        time.sleep(interval_s)
