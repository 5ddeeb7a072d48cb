"""The Locust driver's guards: loopback only, bounded users and time, killed at its deadline."""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

import pytest

import harness.load as load
from harness.load import LoadError, LoadRun, LoadSpec, NonLoopbackHost, require_loopback


@pytest.mark.parametrize(
    "host",
    ["http://127.0.0.1:31859", "http://127.8.9.10", "http://localhost:8000", "http://[::1]:80"],
)
def test_loopback_hosts_are_accepted(host: str) -> None:
    assert require_loopback(host) == host


@pytest.mark.parametrize(
    "host",
    ["http://192.168.49.2:31859", "http://10.0.0.1", "http://example.com", "http://0.0.0.0:80"],
)
def test_other_hosts_are_refused_unless_the_provider_opts_in(host: str, tmp_path: Path) -> None:
    with pytest.raises(NonLoopbackHost, match="only to loopback"):
        require_loopback(host)
    with pytest.raises(NonLoopbackHost):
        LoadRun(LoadSpec(host=host, out_dir=tmp_path))  # refused before anything starts
    assert not (tmp_path / "timeline.jsonl").exists()
    assert require_loopback(host, allow_non_loopback=True) == host


def test_not_a_url_is_refused() -> None:
    with pytest.raises(LoadError, match="http"):
        require_loopback("127.0.0.1:31859")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"users": 0}, "users"),
        ({"users": load.MAX_USERS + 1}, "users"),
        ({"duration_s": load.MAX_RUN_TIME_S + 1}, "duration_s"),
        ({"spawn_rate": 0}, "spawn_rate"),
        ({"locustfile": Path("/nonexistent/locustfile.py")}, "locustfile"),
    ],
)
def test_bounds_are_enforced(change: dict, message: str, tmp_path: Path) -> None:
    spec = LoadSpec(host="http://127.0.0.1:1", out_dir=tmp_path, **change)
    with pytest.raises(LoadError, match=message):
        spec.validate()


def test_argv_is_a_bounded_headless_run(tmp_path: Path) -> None:
    spec = LoadSpec(
        host="http://127.0.0.1:31859",
        out_dir=tmp_path,
        users=10,
        duration_s=30,
        user_rps=5,
        golden=tmp_path / "g.yaml",
        extra_args=("--loglevel", "WARNING"),
    )
    argv = spec.argv()
    assert argv[1:3] == ["-m", "locust"]
    pairs = dict(itertools.pairwise(argv))
    assert pairs["--users"] == "10" and pairs["--run-time"] == "30s"
    assert pairs["--timeline"] == str(tmp_path / "timeline.jsonl")
    assert pairs["--golden"] == str(tmp_path / "g.yaml")
    assert pairs["--user-rps"] == "5"
    assert "--headless" in argv and argv[-2:] == ["--loglevel", "WARNING"]
    assert spec.hard_timeout_s == 30 + spec.stop_timeout_s + load.STARTUP_MARGIN_S


def closed_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_run_past_its_deadline_is_killed(tmp_path: Path, monkeypatch) -> None:
    # a 5 s run with a deadline of 1 s: the process group is killed and the result says so
    monkeypatch.setattr(load, "STARTUP_MARGIN_S", -4.0)
    spec = LoadSpec(
        host=f"http://127.0.0.1:{closed_loopback_port()}",
        out_dir=tmp_path,
        users=1,
        duration_s=5,
        stop_timeout_s=0,
    )
    assert spec.hard_timeout_s == 1.0
    with LoadRun(spec) as run:
        result = run.wait()
    assert result.timed_out and result.exit_code is None and not result.ok
    with pytest.raises(LoadError, match="timed out"):
        result.check()
    assert run.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(run.pid, 0)
