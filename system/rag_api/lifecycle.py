"""Shutdown in two steps, so keep-alive clients leave before their connections close.

On SIGTERM the server stops accepting connections at once, then *drains* for up to
RAG_DRAIN_S: requests on connections already open are still served, each response carrying
``Connection: close`` so its client reconnects (through the Service, to a ready pod). When
no connection is left, or the drain time is up, uvicorn's own graceful shutdown runs: idle
connections close, in-flight requests get up to RAG_SHUTDOWN_TIMEOUT_S. Without the drain, a
client that sends on an idle keep-alive connection just as the server closes it sees the
connection drop: a failed request during every graceful pod deletion.
"""

from __future__ import annotations

import logging
import threading
import time
from types import FrameType

import uvicorn

log = logging.getLogger("rag_api")

#: set once the process has been asked to stop; the middleware reads it on every response
draining = threading.Event()


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_s: float) -> None:
        super().__init__(config)
        self.drain_s = drain_s
        self._drain_started: float | None = None
        self._listeners_closed = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # runs in a signal handler: only set flags here; on_tick does the work in the loop
        if self._drain_started is None and self.drain_s > 0:
            self._drain_started = time.monotonic()
            draining.set()
            # uvicorn re-raises captured signals once it has shut down; keep that behaviour
            self._captured_signals.append(sig)
            return
        super().handle_exit(sig, frame)  # no drain, or a second signal: shut down now

    async def on_tick(self, counter: int) -> bool:
        if self._drain_started is not None and not self.should_exit:
            if not self._listeners_closed:
                for server in self.servers:
                    server.close()  # new connections are refused from here on
                self._listeners_closed = True
                log.info("draining", extra={"connections": len(self.server_state.connections)})
            drained = not self.server_state.connections
            if drained or time.monotonic() - self._drain_started >= self.drain_s:
                self.should_exit = True
        return await super().on_tick(counter)
