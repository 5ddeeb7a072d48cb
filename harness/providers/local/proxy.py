"""An L4 TCP proxy standing in for kube-proxy: one listener per Service port.

Like kube-proxy (iptables mode) it picks a backend once per NEW connection, only among
endpoints that are ready at that moment, and pins the connection to it for its lifetime.
A connection that arrives while there is no ready endpoint, or whose backend refuses, is
reset: kube-proxy REJECTs such packets, and there is no retry on another backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

CONNECT_TIMEOUT_S = 5.0


@dataclass
class ProxyStats:
    connections: int = 0
    rejected_no_endpoint: int = 0
    backend_failed: int = 0
    per_backend: dict[str, int] = field(default_factory=dict)


class ServiceProxy:
    def __init__(
        self,
        service: str,
        listen_host: str,
        listen_port: int,
        ready_backends: Callable[[], list[tuple[str, int]]],
    ) -> None:
        self.service = service
        self.listen_host = listen_host
        self.listen_port = listen_port
        self._ready_backends = ready_backends
        self._next = 0
        self._server: asyncio.Server | None = None
        self._connecting: set[asyncio.Task[None]] = set()
        self.stats = ProxyStats()

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ClientSide(self),
            self.listen_host,
            self.listen_port,
            reuse_address=True,
            backlog=1024,
        )

    async def close(self) -> None:
        """Stop listening; established connections end on their own (their pods decide)."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        for task in list(self._connecting):
            task.cancel()

    def _pick(self) -> tuple[str, int] | None:
        backends = self._ready_backends()
        self.stats.connections += 1
        if not backends:
            self.stats.rejected_no_endpoint += 1
            return None
        host, port = backends[self._next % len(backends)]
        self._next += 1
        key = f"{host}:{port}"
        self.stats.per_backend[key] = self.stats.per_backend.get(key, 0) + 1
        return host, port


class _Side(asyncio.Protocol):
    """One side of a proxied connection; forwards bytes to its peer with back-pressure."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: list[bytes] = []
        self.pending_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport: no isinstance check
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def eof_received(self) -> bool:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            if peer.transport.can_write_eof():
                peer.transport.write_eof()
        else:
            self.pending_eof = True
        return True  # keep the other direction open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            if exc is not None:
                _abort_with_reset(peer.transport)  # a reset travels on, like through NAT
            else:
                peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _ClientSide(_Side):
    def __init__(self, proxy: ServiceProxy) -> None:
        super().__init__()
        self.proxy = proxy

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        backend = self.proxy._pick()
        assert self.transport is not None
        if backend is None:
            _abort_with_reset(self.transport)
            return
        self.transport.pause_reading()
        task = asyncio.ensure_future(self._connect(*backend))
        self.proxy._connecting.add(task)
        task.add_done_callback(self.proxy._connecting.discard)

    async def _connect(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        backend = _Side()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: backend, host, port), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            self.proxy.stats.backend_failed += 1
            if self.transport is not None:
                _abort_with_reset(self.transport)
            return
        if self.transport is None or self.transport.is_closing():
            if backend.transport is not None:
                backend.transport.close()
            return
        backend.peer, self.peer = self, backend
        assert backend.transport is not None
        for chunk in self.pending:
            backend.transport.write(chunk)
        self.pending.clear()
        if self.pending_eof and backend.transport.can_write_eof():
            backend.transport.write_eof()
        self.transport.resume_reading()


def _abort_with_reset(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
