"""The harness command line: bad input ends with a clear message and the right exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

REPO = Path(__file__).resolve().parents[2]


def _run_cli(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HARNESS_STATE_DIR": str(state_dir)}
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_unknown_cluster_is_a_usage_error_naming_the_choices(tmp_path: Path) -> None:
    done = _run_cli("up", "--cluster", "docker-desktop", state_dir=tmp_path)
    assert done.returncode == 2
    assert "unknown --cluster 'docker-desktop'" in done.stderr
    assert "local, minikube, kind, k3d, existing" in done.stderr


def test_status_without_a_cluster_says_how_to_get_one(tmp_path: Path) -> None:
    done = _run_cli("status", state_dir=tmp_path)
    assert done.returncode == 1
    assert "no cluster is up" in done.stderr and "harness up" in done.stderr


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_replicas_must_be_a_positive_whole_number(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["up", "--replicas", bad])
    assert exited.value.code == 2
    assert "--replicas" in capsys.readouterr().err


def test_experiment_list_names_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "list", "--json"]) == 0
    names = json.loads(capsys.readouterr().out)["experiments"]
    for expected in ("pod-delete", "pod-delete-all", "pod-crash", "chroma-kill", "llm-kill",
                     "scale-zero", "rolling-restart"):  # fmt: skip
        assert expected in names


def test_unknown_experiment_is_refused_with_the_valid_names(tmp_path: Path) -> None:
    done = _run_cli("experiment", "pod-explode", state_dir=tmp_path)
    assert done.returncode != 0
    assert "unknown experiment 'pod-explode'" in done.stderr
    assert "pod-delete" in done.stderr


def test_kill_without_a_cluster_is_a_clear_error(tmp_path: Path) -> None:
    done = _run_cli("kill", "--mode", "crash", state_dir=tmp_path)
    assert done.returncode == 1
    assert "harness up" in done.stderr


def test_python_dash_m_harness_shows_every_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "harness", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    for command in ("up", "status", "kill", "experiment", "down", "run"):
        assert command in done.stdout
