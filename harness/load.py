"""Locust, driven as a subprocess: bounded in users, rate and time, to loopback only.

Locust is never imported here: it monkey-patches the standard library with gevent, which would
break the harness and pytest. We start `python -m locust` with an argument list, let it write
its CSV statistics and the request timeline (see loadtest/locustfile.py), and read them back.

    run = start_load("http://127.0.0.1:31859", users=10, duration_s=30, out_dir=tmp)
    run.wait_for_requests(20)      # load is flowing: inject the fault now
    ...
    result = run.wait()            # LoadResult: exit code, CSV totals, every request
    result.check()                 # raises LoadError with Locust's last log lines if it failed

With `workers=N` (N > 0) Locust runs distributed on this machine: one master (`--master
--expect-workers N`, bound to 127.0.0.1 on a free port) and N worker processes that run the
users, all in one process group. Every worker appends to the same timeline file (one
O_APPEND write per line, see loadtest/locustfile.py), so the timeline and the report look the
same as with one process; the master writes the statistics.

Traffic goes only to loopback (127.0.0.0/8, ::1, localhost). A provider that knows an address
is its own cluster's NodePort (minikube's VM IP, a kind node) passes `allow_non_loopback=True`;
nothing else should.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlsplit

from harness.measure import RequestRecord, read_timeline

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = REPO_ROOT / "loadtest" / "locustfile.py"
MAX_USERS = 200
MAX_WORKERS = 16
MAX_RUN_TIME_S = 600
# Locust needs a second or two to import and spawn; after --run-time it lets users finish their
# task for up to --stop-timeout; past all that plus this margin the process is killed.
STARTUP_MARGIN_S = float(os.environ.get("HARNESS_LOCUST_STARTUP_MARGIN_S", "30"))
DEFAULT_STOP_TIMEOUT_S = 5
TERMINATE_GRACE_S = 5.0
POLL_INTERVAL_S = 0.05


class LoadError(RuntimeError):
    """Locust could not be started or did not finish; the message carries its last lines."""


class NonLoopbackHost(LoadError, ValueError):
    """The load target is not a loopback address and no opt-in was given."""


def require_loopback(host: str, allow_non_loopback: bool = False) -> str:
    """`host` (a base URL) if it points at loopback (or the caller opted in); else raise."""
    parts = urlsplit(host)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise LoadError(f"load target {host!r} is not an http(s) URL with a host")
    if allow_non_loopback:
        return host
    name = parts.hostname
    if name == "localhost":
        return host
    try:
        loopback = ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise NonLoopbackHost(
            f"refusing to send load to {host!r}: load goes only to loopback (127.0.0.0/8, ::1, "
            "localhost). A provider whose NodePort address is its own cluster's passes "
            "allow_non_loopback=True."
        )
    return host


@dataclass(frozen=True)
class LoadSpec:
    host: str
    out_dir: Path  # timeline.jsonl, locust_stats.json, locust_*.csv, locust.log go here
    users: int = 10
    spawn_rate: float = 10.0
    duration_s: int = 30
    user_rps: float = 5.0  # tasks/s per user: users * user_rps is the target request rate
    api_key: str = ""
    golden: Path | None = None
    run_id: str = ""
    locustfile: Path = LOCUSTFILE
    stop_timeout_s: int = DEFAULT_STOP_TIMEOUT_S
    extra_args: tuple[str, ...] = ()
    allow_non_loopback: bool = False
    workers: int = 0  # > 0: distributed, one master and this many worker processes

    @property
    def timeline_path(self) -> Path:
        return self.out_dir / "timeline.jsonl"

    @property
    def csv_prefix(self) -> Path:
        return self.out_dir / "locust"

    @property
    def stats_json_path(self) -> Path:
        return self.out_dir / "locust_stats.json"  # Locust appends ".json" to --json-file

    @property
    def log_path(self) -> Path:
        return self.out_dir / "locust.log"

    def __post_init__(self) -> None:
        if not self.run_id:  # one id for the master and every worker
            object.__setattr__(self, "run_id", uuid.uuid4().hex[:8])

    def worker_log_path(self, index: int) -> Path:
        return self.out_dir / f"locust-worker-{index}.log"

    @property
    def hard_timeout_s(self) -> float:
        return self.duration_s + self.stop_timeout_s + STARTUP_MARGIN_S

    def validate(self) -> None:
        require_loopback(self.host, self.allow_non_loopback)
        if not 1 <= self.users <= MAX_USERS:
            raise LoadError(f"users must be 1..{MAX_USERS}, got {self.users}")
        if not 1 <= self.duration_s <= MAX_RUN_TIME_S:
            raise LoadError(f"duration_s must be 1..{MAX_RUN_TIME_S}, got {self.duration_s}")
        if self.spawn_rate <= 0 or self.user_rps < 0:
            raise LoadError("spawn_rate must be > 0 and user_rps >= 0")
        if not self.locustfile.is_file():
            raise LoadError(f"locustfile {self.locustfile} not found")
        if not 0 <= self.workers <= MAX_WORKERS:
            raise LoadError(f"workers must be 0..{MAX_WORKERS}, got {self.workers}")

    def _locustfile_args(self) -> list[str]:
        """The locustfile's own options: a worker needs them too (its users read them)."""
        argv = [
            "--timeline", str(self.timeline_path),
            "--user-rps", f"{self.user_rps:g}",
            "--run-id", self.run_id,
        ]  # fmt: skip
        if self.golden is not None:
            argv += ["--golden", str(self.golden)]
        return argv

    def worker_argv(self, master_port: int) -> list[str]:
        return [
            sys.executable, "-m", "locust",
            "-f", str(self.locustfile),
            "--worker", "--master-host", "127.0.0.1", "--master-port", str(master_port),
            *self._locustfile_args(),
        ]  # fmt: skip

    def argv(self, master_port: int | None = None) -> list[str]:
        argv = [
            sys.executable, "-m", "locust",
            "-f", str(self.locustfile),
            "--headless",
            "--users", str(self.users),
            "--spawn-rate", f"{self.spawn_rate:g}",
            "--run-time", f"{int(self.duration_s)}s",
            "--stop-timeout", str(int(self.stop_timeout_s)),
            "--host", self.host,
            "--only-summary",
            "--csv", str(self.csv_prefix),  # for people; totals come from the JSON file
            "--json-file", str(self.out_dir / "locust_stats"),
            # the exit code then says whether Locust itself worked; failures are in the data
            "--exit-code-on-error", "0",
            *self._locustfile_args(),
        ]  # fmt: skip
        if self.workers:
            if master_port is None:
                raise LoadError("a distributed run needs the master's port")
            argv += [
                "--master", "--expect-workers", str(self.workers),
                "--master-bind-host", "127.0.0.1", "--master-bind-port", str(master_port),
            ]  # fmt: skip
        return argv + list(self.extra_args)


@dataclass
class LocustTotals:
    requests: int
    failures: int
    rps: float
    by_name: dict[str, dict[str, float]] = field(default_factory=dict)


def read_totals(stats_json: Path) -> LocustTotals:
    """Locust's final statistics from its `--json-file` output.

    Not from the CSV: Locust (2.47) rewrites `<prefix>_stats.csv` on a one-second timer and not
    at exit, so the CSV can miss the last second of requests; the JSON file is written at exit.
    """
    if not stats_json.is_file():
        raise LoadError(f"Locust wrote no statistics: {stats_json} is missing")
    entries = json.loads(stats_json.read_text(encoding="utf-8"))
    by_name: dict[str, dict[str, float]] = {}
    first_start, last_request = float("inf"), 0.0
    for entry in entries:
        requests, failures = int(entry["num_requests"]), int(entry["num_failures"])
        first_start = min(first_start, float(entry["start_time"]))
        last_request = max(last_request, float(entry["last_request_timestamp"] or 0.0))
        by_name[f"{entry['method']} {entry['name']}".strip()] = {
            "requests": requests,
            "failures": failures,
        }
    requests = sum(int(row["requests"]) for row in by_name.values())
    span = last_request - first_start if by_name else 0.0
    return LocustTotals(
        requests=requests,
        failures=sum(int(row["failures"]) for row in by_name.values()),
        rps=round(requests / span, 3) if span > 0 else 0.0,
        by_name=by_name,
    )


@dataclass
class LoadResult:
    argv: list[str]
    exit_code: int | None  # None: killed after the hard timeout
    timed_out: bool
    started_at: float  # epoch
    ended_at: float
    totals: LocustTotals | None
    records: list[RequestRecord]
    log_tail: str
    out_dir: Path

    @property
    def requests(self) -> int:
        return self.totals.requests if self.totals else len(self.records)

    @property
    def failures(self) -> int:
        return self.totals.failures if self.totals else sum(1 for r in self.records if not r.ok)

    @property
    def rps(self) -> float:
        return self.totals.rps if self.totals else 0.0

    @property
    def ok(self) -> bool:
        return not self.timed_out and self.exit_code == 0 and self.totals is not None

    def check(self) -> LoadResult:
        if not self.ok:
            why = "timed out and was killed" if self.timed_out else f"exited {self.exit_code}"
            raise LoadError(
                f"Locust {why}; statistics {'found' if self.totals else 'missing'}, "
                f"{len(self.records)} timeline records. Last log lines "
                f"({self.out_dir / 'locust.log'}):\n{self.log_tail}"
            )
        return self


class LoadRun:
    """One Locust process. Use as a context manager so it is stopped whatever happens."""

    def __init__(self, spec: LoadSpec, env: Mapping[str, str] | None = None) -> None:
        spec.validate()
        self.spec = spec
        self._env = env
        self._process: subprocess.Popen[bytes] | None = None
        self._workers: list[subprocess.Popen[bytes]] = []
        self._log_handles: list[IO[bytes]] = []
        self.master_port: int | None = None
        self.started_at = 0.0
        self._deadline = 0.0
        self._timed_out = False

    def start(self) -> LoadRun:
        if self._process is not None:
            raise LoadError("this load run was already started")
        self.spec.out_dir.mkdir(parents=True, exist_ok=True)
        self.spec.timeline_path.write_bytes(b"")
        env = dict(os.environ if self._env is None else self._env)
        env["PYTHONUNBUFFERED"] = "1"
        if self.spec.api_key:
            env["RAG_API_KEY"] = self.spec.api_key
        log = self.spec.log_path.open("wb")
        self._log_handles.append(log)
        self.started_at = time.time()
        self._deadline = time.monotonic() + self.spec.hard_timeout_s
        if self.spec.workers:
            self.master_port = _free_loopback_port()
        # Its own process group, killed as one on timeout. The workers join the master's
        # group, which a process may only do within its session: so a new group, not a new
        # session, when there are workers.
        group: dict[str, Any] = (
            {"process_group": 0} if self.spec.workers else {"start_new_session": True}
        )
        self._process = subprocess.Popen(
            self.spec.argv(self.master_port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=env,
            **group,
        )
        try:
            for index in range(self.spec.workers):
                assert self.master_port is not None
                worker_log = self.spec.worker_log_path(index).open("wb")
                self._log_handles.append(worker_log)
                self._workers.append(
                    subprocess.Popen(
                        self.spec.worker_argv(self.master_port),
                        stdin=subprocess.DEVNULL,
                        stdout=worker_log,
                        stderr=subprocess.STDOUT,
                        cwd=REPO_ROOT,
                        env=env,
                        process_group=self._process.pid,  # the master's: one group to kill
                    )
                )
        except Exception:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def records(self) -> list[RequestRecord]:
        """The requests recorded so far (the file grows while Locust runs)."""
        return read_timeline(self.spec.timeline_path)

    def wait_for_requests(self, count: int = 1, timeout_s: float = 30.0) -> list[RequestRecord]:
        """Block until the timeline holds `count` requests: the load is flowing."""
        return self.wait_for_records(
            lambda records: len(records) >= count, f"{count} requests", timeout_s
        )

    def wait_for_records(
        self,
        done: Callable[[list[RequestRecord]], bool],
        what: str,
        timeout_s: float = 30.0,
    ) -> list[RequestRecord]:
        """Block until `done(records so far)` holds, and return those records. `what` names
        the condition for the timeout's message (e.g. "an ingest answered 401")."""
        began = time.monotonic()
        deadline = began + timeout_s
        records: list[RequestRecord] = []
        while time.monotonic() < deadline:
            records = self.records()
            if done(records):
                return records
            if not self.running():
                break
            time.sleep(POLL_INTERVAL_S)
        raise LoadError(
            f"waited {time.monotonic() - began:.1f} s (of {timeout_s:g}) for {what} "
            f"in {self.spec.timeline_path}; saw {len(records)} requests, Locust "
            f"{'running' if self.running() else 'exited'}. "
            f"Last log lines:\n{self._log_tail()}"
        )

    def wait(self) -> LoadResult:
        """Wait for Locust to finish (killing it at the hard timeout) and read its results."""
        if self._process is None:
            raise LoadError("wait() before start()")
        remaining = max(0.0, self._deadline - time.monotonic())
        try:
            exit_code: int | None = self._process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            self._timed_out = True
            self._kill_group()
            exit_code = None
        # workers quit when the master tells them; one that does not is killed
        for worker in self._workers:
            try:
                worker.wait(timeout=max(TERMINATE_GRACE_S, self._deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill_group()
        self._close_log()
        totals: LocustTotals | None
        try:
            totals = read_totals(self.spec.stats_json_path)
        except LoadError:
            totals = None
        return LoadResult(
            argv=self.spec.argv(self.master_port),
            exit_code=exit_code,
            timed_out=self._timed_out,
            started_at=self.started_at,
            ended_at=time.time(),
            totals=totals,
            records=self.records(),
            log_tail=self._log_tail(),
            out_dir=self.spec.out_dir,
        )

    def stop(self) -> None:
        """Ask Locust to stop now (SIGTERM: it writes its statistics), kill it if it hangs.
        Never raises."""
        with contextlib.suppress(Exception):
            processes = [p for p in (self._process, *self._workers) if p is not None]
            if any(process.poll() is None for process in processes):
                assert self._process is not None
                os.killpg(self._process.pid, signal.SIGTERM)
                deadline = time.monotonic() + TERMINATE_GRACE_S
                try:
                    for process in processes:
                        process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self._kill_group()
        self._close_log()

    def _kill_group(self) -> None:
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        for process in (self._process, *self._workers):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=TERMINATE_GRACE_S)

    def _close_log(self) -> None:
        handles, self._log_handles = self._log_handles, []
        for handle in handles:
            with contextlib.suppress(Exception):
                handle.close()

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.spec.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> LoadRun:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_load(
    host: str,
    out_dir: Path,
    *,
    users: int = 10,
    spawn_rate: float | None = None,
    duration_s: int = 30,
    user_rps: float = 5.0,
    api_key: str = "",
    golden: Path | None = None,
    extra_args: Sequence[str] = (),
    allow_non_loopback: bool = False,
    env: Mapping[str, str] | None = None,
    workers: int = 0,
) -> LoadRun:
    """Start Locust against `host` and return the running `LoadRun` (see the module docstring).

    The target rate is about `users * user_rps` requests/s (e.g. 10 users x 5 = 50/s) as long
    as the service answers faster than 1/user_rps seconds. `spawn_rate` defaults to all users
    within one second. `workers` > 0 runs Locust distributed with that many local worker
    processes (same timeline, same results).
    """
    spec = LoadSpec(
        host=host,
        out_dir=out_dir,
        users=users,
        spawn_rate=float(spawn_rate if spawn_rate is not None else users),
        duration_s=duration_s,
        user_rps=user_rps,
        api_key=api_key,
        golden=golden,
        extra_args=tuple(extra_args),
        allow_non_loopback=allow_non_loopback,
        workers=workers,
    )
    return LoadRun(spec, env=env).start()
