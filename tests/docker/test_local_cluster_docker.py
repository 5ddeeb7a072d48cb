"""The local cluster with the docker runtime: the real overlay, pods as real containers.

One cluster for the module (2 rag-api replicas and chroma, as containers of `rag-api:dev`),
on its own nodePort and pod network so it never meets a cluster on 31859. Each test asserts
that its fault happened (new UID, restart count, termination reason) before anything else.
Needs a Docker engine (`scripts/prepare-docker.sh build`); skipped with that advice without.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.cluster import ClusterHandle
from harness.experiments import run_experiment
from harness.golden import judge, load_golden
from harness.providers.base import PodInfo
from harness.providers.local import LocalCluster
from harness.providers.local.docker_runtime import LABEL_POD_UID, LABEL_STATE_DIR
from harness.providers.local.layout import read_json
from harness.providers.local.runtime import memory_bytes
from harness.waiting import wait_for
from tests.docker.containers import docker
from tests.overlay_support import free_node_port, overlay_beside_others

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
OVERLAY = REPO / "k8s" / "overlays" / "local"
POD_NETWORK = "127.0.5.0/24"
READY_WAIT_S = 90.0
GRACE_S = 30.0  # terminationGracePeriodSeconds of the rag-api Deployment
SERVICE_USER = "10001:10001"
RAG_API_MEMORY_LIMIT = memory_bytes("1Gi")  # k8s/base/rag-api-deployment.yaml
OOM_EXPERIMENT_S = 18.0


@pytest.fixture(scope="module")
def docker_cluster(docker_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    directory = tmp_path_factory.mktemp("docker-cluster")
    cluster = LocalCluster(
        directory / "state",
        runtime="docker",
        overlay=overlay_beside_others(directory),
        pod_network=POD_NETWORK,
        node_ports={"rag-api": free_node_port()},
    )
    started = time.monotonic()
    info = cluster.up(replicas=2)
    info.extra["up_s"] = round(time.monotonic() - started, 1)
    print(f"docker cluster up in {info.extra['up_s']}s at {info.url}")
    try:
        yield cluster, info
    finally:
        try:
            cluster.down()
        except Exception as exc:  # teardown never hides the test's own failure
            print(f"teardown of the docker cluster failed: {exc!r}")


def _containers(cluster: LocalCluster, *filters: str) -> list[str]:
    argv = ["ps", "--filter", f"label={LABEL_STATE_DIR}={cluster.layout.root}"]
    for extra in filters:
        argv += ["--filter", extra]
    proc = docker(*argv, "--format", "{{.Names}}", what="list the cluster's containers")
    return proc.stdout.split()


def _inspect(name: str) -> dict[str, Any]:
    return dict(json.loads(docker("inspect", name, what=f"inspect {name}").stdout)[0])


def _detail(cluster: LocalCluster, pod: str) -> dict[str, Any]:
    return next(p for p in cluster.pod_details(None) if p["name"] == pod)


def _container_of(cluster: LocalCluster, pod: str) -> str:
    return str(_detail(cluster, pod)["container"]).removeprefix("container ")


def _ready_pods(cluster: LocalCluster) -> list[PodInfo]:
    return [p for p in cluster.list_pods("rag-api") if p.ready and not p.deleting]


def _wait_all_ready(cluster: LocalCluster) -> list[PodInfo]:
    def all_ready() -> list[PodInfo] | None:
        ready = _ready_pods(cluster)
        return ready if len(ready) == 2 == len(cluster.list_pods("rag-api")) else None

    return wait_for(
        all_ready,
        timeout_s=READY_WAIT_S,
        what="2 ready rag-api pods and no other",
        describe=lambda: cluster.diagnostics("rag-api"),
    )


def test_the_real_overlay_runs_as_containers_and_answers_through_the_node_port(
    docker_cluster: tuple[LocalCluster, Any],
) -> None:
    cluster, info = docker_cluster
    assert info.extra["runtime"] == "docker"
    pods = cluster.pod_details(None)
    assert sorted(p["app"] for p in pods) == ["chroma", "rag-api", "rag-api"]
    running = _containers(cluster, "status=running")
    assert sorted(running) == sorted(_container_of(cluster, p["name"]) for p in pods)
    golden = load_golden()
    with httpx.Client(base_url=info.url, timeout=30.0) as client:
        for question in golden.questions[:3]:
            response = client.post(
                "/query", json={"question": question.question, "top_k": golden.top_k}
            )
            assert response.status_code == 200, response.text
            verdict = judge(question, response.json())
            assert verdict.hit, verdict.explain()


def test_a_container_is_non_root_read_only_and_limited_as_the_manifest_says(
    docker_cluster: tuple[LocalCluster, Any],
) -> None:
    cluster, _ = docker_cluster
    pod = _wait_all_ready(cluster)[0]
    name = _container_of(cluster, pod.name)
    inspected = _inspect(name)
    host = inspected["HostConfig"]
    assert inspected["Config"]["User"] == SERVICE_USER
    assert host["ReadonlyRootfs"] is True
    assert host["NetworkMode"] == "host"
    assert host["Memory"] == RAG_API_MEMORY_LIMIT
    assert host["NanoCpus"] == 1_000_000_000  # limits.cpu "1"
    assert "ALL" in host["CapDrop"]
    assert "no-new-privileges" in host["SecurityOpt"]
    # and it serves, straight from the pod's own address
    with httpx.Client(base_url=cluster.pod_url(pod.name), timeout=5.0) as client:
        assert client.get("/readyz").status_code == 200
    refused = docker("exec", name, "touch", "/app/written", what="write under /app", check=False)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr, refused.stderr
    whoami = docker("exec", name, "id", "-u", what="the container's uid").stdout.strip()
    assert whoami == "10001"


def test_deleting_a_pod_gives_a_replacement_container_with_a_new_uid(
    docker_cluster: tuple[LocalCluster, Any],
) -> None:
    cluster, _ = docker_cluster
    victim = _wait_all_ready(cluster)[0]
    old_uids = {p.uid for p in cluster.list_pods("rag-api")}
    deleted_at = time.monotonic()
    cluster.delete_pod(victim.name)
    replacement = wait_for(
        lambda: next((p for p in _ready_pods(cluster) if p.uid not in old_uids), None),
        timeout_s=READY_WAIT_S,
        what=f"a ready replacement of {victim.name}",
        describe=lambda: cluster.diagnostics("rag-api"),
    )
    print(f"replacement ready {time.monotonic() - deleted_at:.1f}s after the delete")
    assert replacement.name != victim.name and replacement.restarts == 0
    assert _containers(cluster, f"label={LABEL_POD_UID}={replacement.uid}", "status=running")
    wait_for(
        lambda: not _containers(cluster, f"label={LABEL_POD_UID}={victim.uid}"),
        timeout_s=GRACE_S + 10,
        what=f"the container of deleted pod {victim.name} removed",
    )


def _stopped_event(cluster: LocalCluster, pod: str) -> dict[str, Any] | None:
    state = read_json(cluster.layout.state_file) or {}
    return next(
        (e for e in state.get("events", []) if e["object"] == pod and e["reason"] == "Stopped"),
        None,
    )


def test_graceful_delete_ends_the_container_with_exit_code_0_within_the_grace_period(
    docker_cluster: tuple[LocalCluster, Any],
) -> None:
    cluster, _ = docker_cluster
    victim = _wait_all_ready(cluster)[0]
    cluster.delete_pod(victim.name)
    event = wait_for(
        lambda: _stopped_event(cluster, victim.name),
        timeout_s=GRACE_S + 15,
        what=f"{victim.name} stopped (preStop, SIGTERM, exit)",
        describe=lambda: cluster.diagnostics(None),
    )
    match = re.match(r"exit code (\d+) \((\w+)\) after ([0-9.]+)s", event["message"])
    assert match, event
    code, reason, took_s = int(match[1]), match[2], float(match[3])
    # the exit code is docker's (State.ExitCode): python as PID 1 handled SIGTERM itself
    assert (code, reason) == (0, "Completed"), event
    assert took_s < GRACE_S, f"took {took_s}s of a {GRACE_S}s grace period (SIGKILL'd?)"
    _wait_all_ready(cluster)


def test_a_crash_restarts_the_container_in_place(
    docker_cluster: tuple[LocalCluster, Any],
) -> None:
    cluster, _ = docker_cluster
    victim = _wait_all_ready(cluster)[0]
    old_container = _container_of(cluster, victim.name)
    cluster.kill_container(victim.name, "SIGKILL")
    restarted = wait_for(
        lambda: next(
            (
                p
                for p in _ready_pods(cluster)
                if p.uid == victim.uid and p.restarts > victim.restarts
            ),
            None,
        ),
        timeout_s=READY_WAIT_S,
        what=f"{victim.name} restarted and ready",
        describe=lambda: cluster.diagnostics("rag-api"),
    )
    assert restarted.restarts == victim.restarts + 1
    assert restarted.last_termination_reason == "Error"
    assert _detail(cluster, victim.name)["last_exit_code"] == 137
    # a restart is a new container of the same pod, as in Kubernetes
    assert _container_of(cluster, victim.name) != old_container


def test_a_breached_memory_limit_is_an_oom_kill_and_the_container_restarts(
    docker_cluster: tuple[LocalCluster, Any],
) -> None:
    cluster, _ = docker_cluster
    victim = _wait_all_ready(cluster)[0]
    breach = cluster.breach_memory_limit(victim.name)
    restarted = wait_for(
        lambda: next(
            (
                p
                for p in _ready_pods(cluster)
                if p.uid == victim.uid and p.restarts > victim.restarts
            ),
            None,
        ),
        timeout_s=READY_WAIT_S,
        what=f"{victim.name} OOM-killed, restarted and ready",
        describe=lambda: f"breach: {breach}\n" + cluster.diagnostics("rag-api"),
    )
    assert restarted.restarts == victim.restarts + 1
    assert restarted.last_termination_reason == "OOMKilled", breach
    assert _detail(cluster, victim.name)["last_exit_code"] == 137
    # the new container has the manifest's limit again, not the lowered one
    assert _inspect(_container_of(cluster, victim.name))["HostConfig"]["Memory"] == (
        RAG_API_MEMORY_LIMIT
    )


def test_oom_kill_experiment_under_load_is_verified_and_recovers(
    docker_cluster: tuple[LocalCluster, Any], tmp_path: Path
) -> None:
    cluster, info = docker_cluster
    # pods restarted by the tests above are in the kubelet's back-off (10 s, 20 s, ...):
    # the experiment gets fresh pods, as a first OOM kill in production would
    for pod in _wait_all_ready(cluster):
        if pod.restarts:
            cluster.delete_pod(pod.name, grace_period_s=0)
    wait_for(
        lambda: all(p.restarts == 0 for p in _wait_all_ready(cluster)),
        timeout_s=READY_WAIT_S,
        what="2 ready rag-api pods without restarts",
        describe=lambda: cluster.diagnostics("rag-api"),
    )
    handle = ClusterHandle("local", cluster, "docker runtime test", tmp_path, info=info)
    report = run_experiment(
        handle,
        "oom-kill",
        users=10,
        duration_s=OOM_EXPERIMENT_S,
        rate_per_s=50,
        out_dir=tmp_path / "reports",
        progress=print,
    ).report
    assert report["fault_verified"], f"no restart rose: {report['pods']}"
    assert report["pods"]["restarts_rose"]
    assert report["extra"]["memory_breach"]["limit_bytes"] < RAG_API_MEMORY_LIMIT
    failed = [c for c in report["slo"]["checks"] if not c["passed"]]
    assert report["slo"]["passed"], f"oom-kill breached its SLO: {failed}"


def test_down_removes_every_container_it_made(docker_cluster: tuple[LocalCluster, Any]) -> None:
    cluster, _ = docker_cluster
    assert _containers(cluster)
    cluster.down()
    leftovers = docker(
        "ps", "--all", "--filter", f"label={LABEL_STATE_DIR}={cluster.layout.root}",
        "--format", "{{.Names}}", what="containers left after down",
    ).stdout.split()  # fmt: skip
    assert leftovers == []


def test_auto_picks_docker_when_an_engine_answers(docker_engine: str, tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "state", runtime="auto")
    assert cluster.runtime == "docker", cluster.runtime_reason
    assert docker_engine in cluster.runtime_reason
