"""Readiness from the outside: what the harness and tests use to wait for a started service.

Standard library only, so importing it costs nothing and pulls in no service dependencies.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

READY_PATH = "/readyz"


class NotReadyInTime(TimeoutError):
    """The service did not report ready before the deadline; the message says what it saw."""


def probe_ready(base_url: str, timeout_s: float = 2.0) -> tuple[bool, dict[str, Any] | str]:
    """(ready, body of /readyz) or (False, the connection error) for one attempt."""
    url = base_url.rstrip("/") + READY_PATH
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - http only
            return response.status == 200, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        try:
            body: dict[str, Any] | str = json.loads(error.read() or b"{}")
        except ValueError:
            body = f"HTTP {error.code}"
        return False, body
    except (OSError, ValueError) as error:
        return False, f"{type(error).__name__}: {error}"


def wait_until_ready(
    base_url: str, timeout_s: float = 30.0, interval_s: float = 0.05
) -> dict[str, Any]:
    """Poll /readyz until it answers 200; returns its body. Raises NotReadyInTime."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] | str = "no answer yet"
    while time.monotonic() < deadline:
        ready, last = probe_ready(
            base_url, timeout_s=min(2.0, max(0.1, deadline - time.monotonic()))
        )
        if ready and isinstance(last, dict):
            return last
        time.sleep(interval_s)
    raise NotReadyInTime(
        f"{base_url}{READY_PATH} did not report ready within {timeout_s:.1f}s; last saw: {last}"
    )
