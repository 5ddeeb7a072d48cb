"""The local cluster's Service proxy on its own: real sockets on loopback, real backends.

What kube-proxy (iptables mode) does and the harness relies on: a backend picked per new
connection among the ready ones only, the connection pinned to it; a reset when there is no
ready endpoint or the backend refuses; resets and half-closes passed through; every byte
delivered under back-pressure; closing the listener leaves established connections alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.providers.local.proxy import ServiceProxy

TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Handler(socketserver.BaseRequestHandler):
    """Reads the request until the client's FIN, then answers and closes.

    Requests: b"name" -> the server's name; b"big:N" -> N bytes of a pattern;
    b"reset" -> an RST; anything else -> "<name>:<length>:<sha256 of what it read>".
    """

    server: _Backend

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(TIMEOUT_S)
        received = bytearray()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
            if bytes(received) in (b"name", b"reset") or received.startswith(b"big:"):
                break
        if received == b"reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # now, before socketserver's own shutdown() could send a FIN
            return
        if received == b"name":
            sock.sendall(self.server.name.encode())
        elif received.startswith(b"big:"):
            size = int(received[4:])
            pattern = bytes(range(256)) * 256
            while size > 0:
                piece = pattern[: min(size, len(pattern))]
                sock.sendall(piece)
                size -= len(piece)
        else:
            digest = hashlib.sha256(received).hexdigest()
            sock.sendall(f"{self.server.name}:{len(received)}:{digest}".encode())
        sock.shutdown(socket.SHUT_WR)


class _Backend(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server_address[:2]
        return str(host), int(port)


@pytest.fixture
def backends() -> Iterator[list[_Backend]]:
    servers = [_Backend("a"), _Backend("b")]
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def make_proxy() -> Iterator[Callable[[Callable[[], list[tuple[str, int]]]], ServiceProxy]]:
    started: list[ServiceProxy] = []

    def make(ready: Callable[[], list[tuple[str, int]]]) -> ServiceProxy:
        proxy = ServiceProxy("svc", "127.0.0.1", _free_port(), ready)
        asyncio.run(proxy.start())
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        asyncio.run(proxy.close())


def _connect(proxy: ServiceProxy) -> socket.socket:
    sock = socket.create_connection((proxy.listen_host, proxy.listen_port), timeout=TIMEOUT_S)
    sock.settimeout(TIMEOUT_S)
    return sock


def _exchange(proxy: ServiceProxy, request: bytes, half_close: bool = True) -> bytes:
    with _connect(proxy) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return _read_all(sock)


def _ask_expecting_a_reset(proxy: ServiceProxy) -> None:
    """A reset can surface in connect(), send() or recv(), depending on timing."""
    with pytest.raises(ConnectionResetError), _connect(proxy) as sock:
        sock.sendall(b"name")
        sock.recv(10)


def _read_all(sock: socket.socket) -> bytes:
    parts = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


def test_new_connections_take_turns_over_the_ready_backends(
    backends: list[_Backend], make_proxy
) -> None:  # type: ignore[no-untyped-def]
    ready = [b.address for b in backends]
    proxy = make_proxy(lambda: list(ready))
    names = [_exchange(proxy, b"name") for _ in range(6)]
    assert sorted(names) == [b"a"] * 3 + [b"b"] * 3
    ready.remove(backends[0].address)  # "a" is no longer ready
    assert {_exchange(proxy, b"name") for _ in range(4)} == {b"b"}
    assert proxy.stats.connections == 10
    assert proxy.stats.per_backend == {
        f"{backends[0].address[0]}:{backends[0].address[1]}": 3,
        f"{backends[1].address[0]}:{backends[1].address[1]}": 7,
    }


def test_a_connection_stays_pinned_to_its_backend_after_it_leaves_the_endpoints(
    backends: list[_Backend], make_proxy
) -> None:  # type: ignore[no-untyped-def]
    ready = [backends[0].address]
    proxy = make_proxy(lambda: list(ready))
    with _connect(proxy) as pinned:
        pinned.sendall(b"first half ")
        deadline = time.monotonic() + TIMEOUT_S
        while proxy.stats.connections < 1 and time.monotonic() < deadline:
            time.sleep(0.005)  # the proxy picks when it accepts, a moment after connect()
        ready[:] = [backends[1].address]  # endpoints change while the connection is open
        time.sleep(0.05)
        pinned.sendall(b"second half")
        pinned.shutdown(socket.SHUT_WR)
        answer = _read_all(pinned)
    assert answer.startswith(b"a:22:")
    assert _exchange(proxy, b"name") == b"b"


def test_no_ready_endpoint_means_a_reset(make_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = make_proxy(list)
    _ask_expecting_a_reset(proxy)
    assert proxy.stats.rejected_no_endpoint == 1


def test_a_refusing_backend_means_a_reset_and_is_counted(make_proxy) -> None:  # type: ignore[no-untyped-def]
    closed = ("127.0.0.1", _free_port())  # nothing listens there
    proxy = make_proxy(lambda: [closed])
    _ask_expecting_a_reset(proxy)
    deadline = time.monotonic() + TIMEOUT_S
    while proxy.stats.backend_failed < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.stats.backend_failed == 1


def test_a_reset_from_the_backend_reaches_the_client(backends: list[_Backend], make_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = make_proxy(lambda: [backends[0].address])
    with pytest.raises(ConnectionResetError), _connect(proxy) as sock:
        sock.sendall(b"reset")
        sock.recv(10)


def test_a_half_close_passes_through_and_the_answer_still_flows(
    backends: list[_Backend], make_proxy
) -> None:  # type: ignore[no-untyped-def]
    proxy = make_proxy(lambda: [backends[0].address])
    payload = b"x" * 5000
    answer = _exchange(proxy, payload)  # the backend answers only after the client's FIN
    assert answer == f"a:5000:{hashlib.sha256(payload).hexdigest()}".encode()


def test_every_byte_arrives_under_back_pressure_both_ways(
    backends: list[_Backend], make_proxy
) -> None:  # type: ignore[no-untyped-def]
    proxy = make_proxy(lambda: [backends[0].address])
    upload = bytes(range(256)) * 40_000  # 10 MB up
    assert _exchange(proxy, upload) == (
        f"a:{len(upload)}:{hashlib.sha256(upload).hexdigest()}".encode()
    )
    size = 12_000_000  # 12 MB down, read only after the proxy's buffers have filled
    with _connect(proxy) as sock:
        sock.sendall(f"big:{size}".encode())
        time.sleep(0.5)
        received = _read_all(sock)
    pattern = bytes(range(256)) * 256
    assert len(received) == size
    assert received[: len(pattern)] == pattern and received[-1000:] == pattern[-1000:]


def test_many_concurrent_connections_each_get_their_own_answer(
    backends: list[_Backend], make_proxy
) -> None:  # type: ignore[no-untyped-def]
    proxy = make_proxy(lambda: [b.address for b in backends])

    def ask(index: int) -> bool:
        payload = f"request {index} ".encode() * (1 + index % 50)
        answer = _exchange(proxy, payload)
        name, length, digest = answer.decode().split(":")
        return (
            name in ("a", "b")
            and int(length) == len(payload)
            and digest == hashlib.sha256(payload).hexdigest()
        )

    with ThreadPoolExecutor(max_workers=32) as pool:
        outcomes = list(pool.map(ask, range(400)))
    assert all(outcomes)
    assert proxy.stats.connections == 400


def test_closing_stops_new_connections_but_not_established_ones(
    backends: list[_Backend], make_proxy
) -> None:  # type: ignore[no-untyped-def]
    proxy = make_proxy(lambda: [backends[0].address])
    established = _connect(proxy)
    established.sendall(b"before close ")
    asyncio.run(proxy.close())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.listen_host, proxy.listen_port), timeout=TIMEOUT_S)
    established.sendall(b"after close")
    established.shutdown(socket.SHUT_WR)
    assert _read_all(established).startswith(b"a:24:")
    established.close()


def test_a_taken_port_is_an_error_at_start(make_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = make_proxy(list)
    twin = ServiceProxy("twin", "127.0.0.1", proxy.listen_port, list)
    with pytest.raises(OSError):
        asyncio.run(twin.start())
