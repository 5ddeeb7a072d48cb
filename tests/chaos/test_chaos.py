"""Chaos under load: one test per scenario, each asserting that the fault happened and then
its SLO, from figures measured to the request (harness.measure) while real Locust runs.

Reports land in ``<reports-dir>/chaos/<scenario>/`` (report.json, report.md, timeline.png).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.experiments import run_tutorial_comparison
from harness.settings import REPO_ROOT
from harness.waiting import wait_for
from tests.chaos.conftest import (
    CHAOS_DURATION_S,
    CHAOS_RATE_PER_S,
    CHAOS_USERS,
    RunChaos,
    describe,
)

OLLAMA_STANDIN = REPO_ROOT / "tests" / "standins" / "ollama_quoting_standin.py"
LLM_HOST, LLM_PORT = "127.0.0.1", 11434  # where k8s/overlays/local points RAG_OLLAMA_HOST


def _assert_fault_then_slo(report: dict[str, Any]) -> None:
    assert report["fault_verified"], (
        f"{report['scenario']}: the fault did not happen (no uid changed, no restart rose): "
        f"{report['pods']}"
    )
    assert report["slo"]["passed"], describe(report)


@pytest.mark.chaos(scenario="pod-delete")
def test_graceful_delete_of_one_pod_fails_no_request(run_chaos: RunChaos) -> None:
    report = run_chaos().report
    _assert_fault_then_slo(report)
    assert report["failures"] == 0


@pytest.mark.chaos(scenario="pod-crash")
def test_sigkill_of_one_pod_fails_at_most_its_inflight_requests(run_chaos: RunChaos) -> None:
    report = run_chaos().report
    _assert_fault_then_slo(report)
    assert report["pods"]["restarts_rose"], "a crash must restart the container in place"


@pytest.mark.chaos(scenario="pod-delete-all")
def test_deleting_every_pod_has_a_bounded_outage(run_chaos: RunChaos) -> None:
    _assert_fault_then_slo(run_chaos().report)


@pytest.mark.chaos(scenario="chroma-kill")
def test_vector_store_pod_killed_recovers_with_its_data(
    run_chaos: RunChaos, http_client: httpx.Client
) -> None:
    report = run_chaos().report
    _assert_fault_then_slo(report)
    # the knowledge base lives on chroma's persistent volume: still there after the kill
    listed = http_client.get("/documents", params={"limit": 1}).json()
    assert listed["total"] >= 25, f"knowledge base lost with the chroma pod: {listed}"


@pytest.mark.chaos(scenario="scale-zero")
def test_scale_to_zero_and_back_recovers(run_chaos: RunChaos) -> None:
    _assert_fault_then_slo(run_chaos().report)


@pytest.mark.chaos(scenario="rolling-restart")
def test_rolling_restart_under_load_fails_no_request(run_chaos: RunChaos) -> None:
    report = run_chaos().report
    _assert_fault_then_slo(report)
    assert report["pods"]["uids_changed"]


@pytest.fixture
def ollama_standin(service_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """The quoting Ollama stand-in on the host's Ollama port, and the service using it."""
    process = subprocess.Popen(
        [sys.executable, str(OLLAMA_STANDIN), "--host", LLM_HOST, "--port", str(LLM_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def every_pod_uses_the_llm() -> bool:
            # each replica's breaker opened while nothing listened on 11434; it half-opens
            # after RAG_BREAKER_RESET_S and then finds the stand-in
            served: dict[str, bool] = {}
            for _ in range(6):
                with httpx.Client(base_url=service_url, timeout=10) as client:
                    response = client.post("/query", json={"question": "What is a Pod?"})
                served[response.headers.get("x-served-by", "?")] = not response.json()["degraded"]
            return len(served) >= 2 and all(served.values())

        if process.poll() is not None:
            pytest.fail(f"the Ollama stand-in did not start: {process.stderr.read()!r}")  # type: ignore[union-attr]
        wait_for(every_pod_uses_the_llm, timeout_s=90, interval_s=2,
                 what="every rag-api replica answering through the Ollama stand-in")  # fmt: skip
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.mark.chaos(scenario="llm-kill")
def test_llm_killed_answers_degrade_but_stay_correct(
    run_chaos: RunChaos, ollama_standin: subprocess.Popen[bytes], http_client: httpx.Client
) -> None:
    def kill_llm() -> str:
        ollama_standin.kill()
        return f"ollama stand-in pid {ollama_standin.pid}"

    report = run_chaos(llm_killer=kill_llm).report
    assert ollama_standin.poll() is not None, "the LLM stand-in is still running"
    assert report["slo"]["passed"], describe(report)
    assert report["server_errors"] == 0
    answer = http_client.post("/query", json={"question": "What is a Pod?"}).json()
    assert answer["degraded"] is True and answer["model"] == "extractive", answer


@pytest.mark.chaos(scenario="pod-freeze")
def test_outage_measurement_matches_a_known_outage(run_chaos: RunChaos) -> None:
    """Freeze every rag-api pod (SIGSTOP) for a set time: the measured outage must match it.

    In-flight and queued requests wait for SIGCONT, so the longest span without a successful
    completion is the freeze itself; this checks the measurement, not the service."""
    freeze_s = 1.0
    # the resolution of outage_s is the gap between successful completions (about 10 ms at
    # 100 requests/s) plus the first answer after SIGCONT, which grows with the backlog the
    # frozen pods queued; a 1 s freeze at 100/s measured 1.012-1.023 s over 5 runs
    report = run_chaos(freeze_s=freeze_s, users=20, rate_per_s=100).report
    assert report["outage_s"] is not None, f"no outage measured: {report}"
    assert abs(report["outage_s"] - freeze_s) <= 0.1, (
        f"measured outage {report['outage_s']}s vs injected {freeze_s}s "
        f"(from {report['extra']['outage_from']} to {report['extra']['outage_to']})"
    )


@pytest.mark.chaos
def test_tutorial_configuration_against_ours_side_by_side(
    cluster: Any, chaos_reports_dir: Path, harness_options: Any
) -> None:
    """The tutorial's story: one replica, no probes, no preStop, against our manifests."""
    if cluster.name != "local":
        pytest.skip("the side-by-side comparison re-applies overlays on the local cluster")
    tutorial, ours, path = run_tutorial_comparison(
        cluster,
        users=CHAOS_USERS,
        duration_s=CHAOS_DURATION_S,
        rate_per_s=CHAOS_RATE_PER_S,
        out_dir=chaos_reports_dir,
        progress=lambda line: print(line, flush=True),
        replicas=harness_options.replicas,
    )
    print(path.read_text())
    assert tutorial.report["fault_verified"] and ours.report["fault_verified"]
    assert ours.report["slo"]["passed"], describe(ours.report)
    assert ours.report["failures"] == 0, describe(ours.report)
    # one replica and no readiness gate: the replacement takes traffic before it can answer,
    # so deleting the pod must hurt users, and it shows (Kubernetes calls it recovered at once)
    assert tutorial.report["failures"] > 0, f"tutorial config lost nothing? {tutorial.report}"
