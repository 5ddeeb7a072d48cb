"""The state directory, the control socket, tuning knobs and process helpers.

Shared by the client (`LocalCluster`) and the supervisor daemon; stdlib only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.providers.local.manifests import REPO_ROOT

# Environment knobs (all optional). Tests make them small; defaults follow the kubelet.
BACKOFF_BASE_ENV = "HARNESS_LOCAL_BACKOFF_BASE_S"  # crash-loop back-off base (kubelet: 10)
PROBE_PERIOD_CAP_ENV = "HARNESS_LOCAL_PROBE_PERIOD_S"  # caps probe periodSeconds
UP_TIMEOUT_ENV = "HARNESS_LOCAL_UP_TIMEOUT_S"
STATE_DIR_ENV = "HARNESS_STATE_DIR"
# Every pod process carries this variable: `down` finds stragglers by it.
POD_MARKER_ENV = "HARNESS_LOCAL_STATE_DIR"

BACKOFF_CAP_S = 300.0
BACKOFF_RESET_AFTER_S = 600.0  # the kubelet forgets the back-off after 10 min of clean running
DEFAULT_UP_TIMEOUT_S = 180.0
RECONCILE_PERIOD_S = 0.1
SOCKET_PATH_LIMIT = 100  # sun_path is 108 bytes on Linux


def default_state_dir() -> Path:
    base = os.environ.get(STATE_DIR_ENV)
    return Path(base) / "local" if base else REPO_ROOT / ".state" / "local"


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        return default


@dataclass(frozen=True)
class StateLayout:
    """Where everything of one local cluster lives."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def config_file(self) -> Path:
        return self.root / "config.json"

    @property
    def pidfile(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def daemon_log(self) -> Path:
        return self.root / "supervisor.log"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def pods_dir(self) -> Path:
        return self.root / "pods"

    @property
    def volumes_dir(self) -> Path:
        return self.root / "volumes"

    @property
    def secrets_file(self) -> Path:
        return self.root / "secrets.json"

    @property
    def socket_path(self) -> Path:
        candidate = self.root / "control.sock"
        if len(str(candidate)) < SOCKET_PATH_LIMIT:
            return candidate
        # deep state dirs (pytest tmp_path) exceed sun_path; derive a stable short path
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"harness-local-{digest}.sock"

    def pod_log(self, pod: str) -> Path:
        return self.logs_dir / f"{pod}.log"


def write_json_atomic(path: Path, data: Any, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def kill_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def processes_with_marker(state_root: Path) -> list[int]:
    """Pids whose environment carries this cluster's marker (pods, their children)."""
    marker = f"{POD_MARKER_ENV}={state_root}".encode()
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def kill_marked_processes(state_root: Path, wait_s: float = 3.0) -> list[int]:
    """SIGKILL every process (and its group) carrying the marker; returns the pids found."""
    found = processes_with_marker(state_root)
    for pid in found:
        pgid = process_group(pid)
        if pgid is not None and pgid != os.getpgid(0):
            kill_group(pgid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(pid_alive(p) for p in found):
        time.sleep(0.05)
    return found


def _listening_inodes(port: int, address: str | None) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A":  # LISTEN
                continue
            hex_ip, hex_port = local.split(":")
            if int(hex_port, 16) != port:
                continue
            if address and len(hex_ip) == 8:
                ip = socket.inet_ntoa(bytes.fromhex(hex_ip)[::-1])
                if ip not in (address, "0.0.0.0"):  # noqa: S104 - comparing, not binding
                    continue
            inodes.add(inode)
    return inodes


def port_holders(port: int, address: str | None = None) -> list[str]:
    """'pid N (cmdline)' of processes listening on the port; best effort."""
    inodes = _listening_inodes(port, address)
    holders: list[str] = []
    if not inodes:
        return holders
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        links = set()
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):  # fds come and go while we look
                links.add(os.readlink(fd))
        if any(f"socket:[{inode}]" in links for inode in inodes):
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                cmd = "?"
            holders.append(f"pid {entry.name} ({cmd[:120]})")
    return holders


def bind_error(address: str, port: int) -> str | None:
    """None when address:port can be listened on; else why not, naming who holds it."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((address, port))
    except OSError as exc:
        holders = port_holders(port, address)
        who = f"held by {', '.join(holders)}" if holders else "holder unknown (ss -ltnp shows it)"
        return f"{address}:{port} is not free ({exc.strerror}; {who})"
    finally:
        probe.close()
    return None


def iter_pod_addresses(network: str) -> Iterator[str]:
    """Host addresses .2 .. .254 of a /24 on loopback, e.g. 127.0.1.0/24."""
    prefix = network.split("/", 1)[0].rsplit(".", 1)[0]
    for last in range(2, 255):
        yield f"{prefix}.{last}"


def tail_lines(path: Path, count: int) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except OSError:
        return []
    return data.decode(errors="replace").splitlines()[-count:]
