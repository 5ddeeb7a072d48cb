"""An L4 TCP proxy standing in for kube-proxy: one listener per Service port.

Like kube-proxy (iptables mode) it picks a backend once per NEW connection, only among
endpoints that are ready at that moment, and pins the connection to it for its lifetime.
A connection that arrives while there is no ready endpoint, or whose backend refuses, is
reset: kube-proxy REJECTs such packets, and there is no retry on another backend. A reset
from either side travels on to the other, like through NAT; a half-close (FIN) travels on
and the other direction keeps flowing.

Forwarding runs in a thread per listener, around an epoll loop over non-blocking sockets,
not in the supervisor's asyncio loop, and wakes about three times per short connection (the
request is read at accept, the backend's answer and FIN together, the client's FIN): a
proxied connection costs the supervisor about 0.28 ms of CPU against 0.66 ms with asyncio's
transports and tasks (medians of runs of the real overlay under /query load), which is most
of what a proxy adds on two cores. The supervisor reads only the counters in `stats`; the
thread reads the ready endpoints through the `ready_backends` callable.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CONNECT_TIMEOUT_S = 5.0
PROXY_NICE = -10  # as root: the proxy thread runs before busy pods, like kube-proxy in the kernel
CLOSE_TIMEOUT_S = 2.0
_RECV_BYTES = 256 * 1024
_TICK_S = 0.25  # how often connect deadlines are checked
_ACCEPT_BURST = 64  # connections taken per readiness event of the listener
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_HANGUP = select.EPOLLHUP | select.EPOLLERR
_READ = _IN | select.EPOLLRDHUP  # RDHUP: the sender's FIN, seen with its last data
_LINGER_RESET = struct.pack("ii", 1, 0)


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
        self._forwarder: _Forwarder | None = None
        self.stats = ProxyStats()

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"

    async def start(self) -> None:
        """Listen (an OSError here names a taken port) and start forwarding."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.listen_host, self.listen_port))
            listener.listen(1024)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._forwarder = _Forwarder(self, listener)
        self._forwarder.start()

    async def close(self) -> None:
        """Stop listening; established connections end on their own (their pods decide)."""
        forwarder, self._forwarder = self._forwarder, None
        if forwarder is None:
            return
        forwarder.stop_listening()
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        while not forwarder.listener_closed.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

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


class _End:
    """One socket of a proxied pair and the bytes waiting to be written to it."""

    __slots__ = ("connect_deadline", "eof", "events", "peer", "pending", "shut", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.peer: _End | None = None
        self.pending = b""  # read from the peer, not yet accepted by this socket
        self.eof = False  # this socket's sender finished (FIN received)
        self.shut = False  # FIN passed on to this socket
        self.connect_deadline = 0.0  # > 0 while the backend connection is in progress
        self.events = 0


class _Forwarder(threading.Thread):
    def __init__(self, proxy: ServiceProxy, listener: socket.socket) -> None:
        super().__init__(name=f"proxy {proxy.address}", daemon=True)
        self._proxy = proxy
        self._listener: socket.socket | None = listener
        self._epoll = select.epoll()
        self._ends: dict[int, _End] = {}
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = threading.Event()
        self.listener_closed = threading.Event()
        self._epoll.register(listener.fileno(), _IN)
        self._epoll.register(self._wake_read, _IN)

    def stop_listening(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"x")

    # the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        _raise_priority()
        next_sweep = time.monotonic() + _TICK_S
        try:
            while self._listener is not None or self._ends:
                for fd, events in self._epoll.poll(_TICK_S):
                    if self._listener is not None and fd == self._listener.fileno():
                        self._accept()
                    elif fd == self._wake_read:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_read, 64)
                    else:
                        end = self._ends.get(fd)
                        if end is not None:
                            self._serve(end, events)
                if self._stopping.is_set() and self._listener is not None:
                    self._close_listener()
                if time.monotonic() >= next_sweep:
                    self._expire_connects()
                    next_sweep = time.monotonic() + _TICK_S
        finally:
            self._close_listener()
            for end in list(self._ends.values()):
                self._drop(end)
            self._epoll.close()
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(self._listener.fileno())
            self._listener.close()
            self._listener = None
        self.listener_closed.set()

    # connections ---------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(_ACCEPT_BURST):
            try:
                client_sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. EMFILE: leave it in the backlog, try on the next event
                return
            client_sock.setblocking(False)
            backend = self._proxy._pick()
            if backend is None:
                _reset(client_sock)
                continue
            self._connect(client_sock, backend)

    def _connect(self, client_sock: socket.socket, backend: tuple[str, int]) -> None:
        backend_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        backend_sock.setblocking(False)
        for sock in (client_sock, backend_sock):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = backend_sock.connect_ex(backend)
        if code not in (0, errno.EINPROGRESS):
            self._proxy.stats.backend_failed += 1
            backend_sock.close()
            _reset(client_sock)
            return
        client, server = _End(client_sock), _End(backend_sock)
        client.peer, server.peer = server, client
        if code == errno.EINPROGRESS:
            # No wait for the connect to finish: bytes for the backend wait in `pending` until
            # it can take them (EPOLLOUT), a refusal arrives as an error on the socket, and
            # `_expire_connects` ends a connect still unanswered at the deadline.
            server.connect_deadline = time.monotonic() + CONNECT_TIMEOUT_S
        for end in (client, server):
            self._ends[end.sock.fileno()] = end
            end.events = self._wanted(end)
            self._epoll.register(end.sock.fileno(), end.events)
        # a client usually sends its request right after connecting: take it now, not on the
        # next wake-up (each wake-up is a context switch, most of what this proxy costs)
        self._read(client, drain=False)

    def _expire_connects(self) -> None:
        now = time.monotonic()
        for end in [e for e in self._ends.values() if 0 < e.connect_deadline < now]:
            try:
                end.sock.getpeername()  # connected, only nothing has crossed it yet
            except OSError:
                self._fail(end)
            else:
                end.connect_deadline = 0.0

    @staticmethod
    def _wanted(end: _End) -> int:
        peer = end.peer
        assert peer is not None
        reading = not end.eof and not peer.pending
        return (_READ if reading else 0) | (_OUT if end.pending else 0)

    def _refresh(self, end: _End) -> None:
        for each in (end, end.peer):
            if each is None or each.sock.fileno() not in self._ends:
                continue
            wanted = self._wanted(each)
            if wanted != each.events:
                each.events = wanted
                self._epoll.modify(each.sock.fileno(), wanted)

    def _serve(self, end: _End, events: int) -> None:
        if events & _OUT and end.pending and not self._flush(end):
            return
        if end.events & _IN and events & (_READ | _HANGUP):
            # data, FIN or the error that ended it; with RDHUP the FIN is already here
            self._read(end, drain=bool(events & select.EPOLLRDHUP))
        elif events & _HANGUP and end.sock.fileno() in self._ends:
            self._fail(end)  # gone while we were not reading from it

    def _read(self, end: _End, drain: bool) -> None:
        """Forward what `end` has sent; with `drain`, read on until its FIN or EAGAIN."""
        peer = end.peer
        assert peer is not None
        while True:
            try:
                data = end.sock.recv(_RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # reset by its sender (or the backend refused): pass it on
                self._fail(end)
                return
            end.connect_deadline = 0.0
            if not data:
                end.eof = True
                if not peer.pending:
                    self._shut(peer)
                self._finish_or_refresh(end)
                return
            try:
                sent = peer.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0  # full, or the backend still connecting
            except OSError:
                self._fail(peer)
                return
            if sent:
                peer.connect_deadline = 0.0
            if sent < len(data):
                peer.pending = data[sent:]  # back-pressure: stop reading until it drains
                break
            if not drain:
                break
        self._refresh(end)

    def _flush(self, end: _End) -> bool:
        """Write what waits for this socket; False when the pair is gone."""
        try:
            sent = end.sock.send(end.pending)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self._fail(end)
            return False
        end.connect_deadline = 0.0
        end.pending = end.pending[sent:]
        if not end.pending and end.peer is not None and end.peer.eof:
            self._shut(end)
        self._finish_or_refresh(end)
        return end.sock.fileno() in self._ends

    def _shut(self, end: _End) -> None:
        if not end.shut:
            end.shut = True
            with contextlib.suppress(OSError):
                end.sock.shutdown(socket.SHUT_WR)

    def _finish_or_refresh(self, end: _End) -> None:
        peer = end.peer
        assert peer is not None
        if end.eof and peer.eof and end.shut and peer.shut:
            self._drop(end)  # both directions delivered their FIN: done
        else:
            self._refresh(end)

    def _fail(self, end: _End) -> None:
        """`end` broke (reset, refused, timed out): reset its peer and drop both."""
        if end.connect_deadline:  # a backend that never answered the connect
            self._proxy.stats.backend_failed += 1
        peer = end.peer
        if peer is not None:
            _reset_on_close(peer.sock)
        self._drop(end)

    def _drop(self, end: _End) -> None:
        for each in (end, end.peer):
            if each is None:
                continue
            fd = each.sock.fileno()
            if self._ends.pop(fd, None) is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.unregister(fd)
            each.sock.close()


def _reset_on_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


def _reset(sock: socket.socket) -> None:
    _reset_on_close(sock)
    sock.close()


def _raise_priority() -> None:
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PROXY_NICE)
