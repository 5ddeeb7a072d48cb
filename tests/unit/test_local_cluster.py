"""The local cluster with real processes and real sockets on loopback.

The pods run `standin_pod_server.py`, a STAND-IN for the rag-api image (the real service
takes too long to start for the default run); the e2e test at the end runs the real overlay.
Each test gets its own state dir, nodePort and pod network, so tests never meet a user's
cluster on 31859.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from harness.providers.base import ClusterError, PodInfo, RolloutTimeout
from harness.providers.local import ImageMapping, LocalCluster, ManifestError
from tests.overlay_support import LOCAL_OVERLAY, free_node_port, overlay_beside_others
from tests.standin_manifests import deployment_and_service

HERE = Path(__file__).parent
REPO = HERE.parents[1]
STANDIN_IMAGE = {"local-standin": ImageMapping(None, HERE)}
WAIT_S = float(os.environ.get("HARNESS_TEST_WAIT_S", "20"))
_ports = itertools.count(31870 + os.getpid() % 200 * 4)  # per-run offset: parallel runs differ
_networks = itertools.count(64 + os.getpid() % 8 * 16)


def standin_manifest(
    node_port: int, replicas: int = 2, extra_env: dict[str, str] | None = None, grace: int = 5
) -> list[dict[str, object]]:
    env: list[dict[str, object]] = [
        {"name": "STANDIN_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "STANDIN_PORT", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "port"}}},
        {
            "name": "API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "rag-api-secret", "key": "api-key"}},
        },
    ]
    env += [{"name": k, "value": v} for k, v in (extra_env or {}).items()]
    pod_spec = {
        "terminationGracePeriodSeconds": grace,
        "containers": [
            {
                "name": "rag-api",
                "image": "local-standin:test",
                "command": ["python", "standin_pod_server.py"],
                "ports": [{"containerPort": 8000, "name": "http"}],
                "env": env,
                "readinessProbe": {
                    "httpGet": {"path": "/readyz", "port": "http"},
                    "periodSeconds": 1,
                    "failureThreshold": 1,
                },
                "livenessProbe": {
                    "httpGet": {"path": "/healthz", "port": "http"},
                    # a slow start on a busy machine must not be taken for a dead container
                    "initialDelaySeconds": 3,
                    "periodSeconds": 1,
                    "timeoutSeconds": 1,
                    "failureThreshold": 3,
                },
                "lifecycle": {"preStop": {"sleep": {"seconds": 0.3}}},
            }
        ],
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg"},
        "data": {"port": "8000"},
    }
    strategy = {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    return [
        config_map,
        *deployment_and_service(
            {}, node_port, replicas=replicas, strategy=strategy, pod_spec=pod_spec
        ),
    ]


@dataclass
class RunningCluster:
    cluster: LocalCluster
    state_dir: Path
    node_port: int
    url: str = ""


def write_manifest(path: Path, objects: list[dict[str, object]]) -> Path:
    path.write_text(yaml.safe_dump_all(objects))
    return path


def make_cluster(
    tmp_path: Path, objects_for_port: object = standin_manifest, **kwargs: object
) -> RunningCluster:
    node_port = next(_ports)
    objects = objects_for_port(node_port) if callable(objects_for_port) else objects_for_port
    overlay = write_manifest(tmp_path / "manifest.yaml", objects)  # type: ignore[arg-type]
    state_dir = tmp_path / "state"
    cluster = LocalCluster(
        state_dir,
        overlay=overlay,
        pod_network=f"127.0.{next(_networks)}.0/24",
        image_mappings=STANDIN_IMAGE,
        **kwargs,  # type: ignore[arg-type]
    )
    return RunningCluster(cluster, state_dir, node_port)


def processes_of(state_dir: Path) -> list[psutil.Process]:
    """Live processes whose command line or environment names the state dir."""
    marker = str(state_dir.resolve())
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            environ = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if marker in cmdline or marker in environ.get("HARNESS_LOCAL_STATE_DIR", "-"):
            found.append(proc)
    return found


@pytest.fixture(autouse=True)
def fast_kubelet(monkeypatch: pytest.MonkeyPatch) -> None:
    # the supervisor inherits these: probes every 0.2 s, crash back-off from 0.3 s
    monkeypatch.setenv("HARNESS_LOCAL_PROBE_PERIOD_S", "0.2")
    monkeypatch.setenv("HARNESS_LOCAL_BACKOFF_BASE_S", "0.3")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningCluster]:
    test_cluster = make_cluster(tmp_path)
    info = test_cluster.cluster.up(replicas=2)
    test_cluster.url = info.url
    try:
        yield test_cluster
    finally:
        test_cluster.cluster.down()
        assert processes_of(test_cluster.state_dir) == []


def get(url: str, timeout: float = 2.0) -> dict[str, str]:
    import json

    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def wait_for(
    what: str, condition: object, cluster: LocalCluster, timeout_s: float = WAIT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(
        f"timed out after {timeout_s}s waiting for {what}\n{cluster.diagnostics()}"
    )


def ready_pods(cluster: LocalCluster) -> list[PodInfo]:
    return [p for p in cluster.list_pods() if p.ready and not p.deleting]


@dataclass
class Hit:
    started: float  # epoch seconds, the supervisor's clock too
    pod: str  # "" on failure
    error: str = ""


class Hammer:
    """Sequential new-connection requests to a URL from a thread, bounded in count and time."""

    def __init__(self, url: str, max_requests: int = 5000, max_s: float = 30.0) -> None:
        self.url, self.max_requests, self.max_s = url, max_requests, max_s
        self.hits: list[Hit] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        while (
            not self._stop.is_set()
            and time.monotonic() < deadline
            and len(self.hits) < self.max_requests
        ):
            started = time.time()
            try:
                self.hits.append(Hit(started, get(self.url + "/")["pod"]))
            except (OSError, urllib.error.URLError, ValueError) as exc:
                self.hits.append(Hit(started, "", f"{type(exc).__name__}: {exc}"))
            time.sleep(0.005)

    @property
    def failures(self) -> list[Hit]:
        return [h for h in self.hits if not h.pod]


def test_up_brings_two_ready_replicas_answering_through_the_node_port(
    running: RunningCluster,
) -> None:
    cluster = running.cluster
    pods = cluster.list_pods()
    assert len(pods) == 2 and all(p.ready and p.phase == "Running" for p in pods)
    assert running.url == f"http://127.0.0.1:{running.node_port}"
    for pod in pods:
        assert pod.name.startswith("rag-api-") and len(pod.name.split("-")[2]) == 10
        assert len(pod.name.split("-")[3]) == 5
    assert len({p.uid for p in pods}) == 2 and len({p.ip for p in pods}) == 2
    answered = {get(running.url + "/")["pod"] for _ in range(6)}
    assert answered == {p.name for p in pods}  # round-robin over both ready endpoints
    assert sorted(cluster.endpoints()) == sorted(f"{p.ip}:8000" for p in pods)
    assert get(cluster.pod_url(pods[0].name) + "/")["pod"] == pods[0].name
    assert cluster.desired_replicas() == 2
    secret_file = running.state_dir / "secrets.json"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert "serving on" in cluster.pod_logs(pods[0].name)


def test_a_deleted_pod_is_replaced_and_no_new_connection_reaches_it(
    running: RunningCluster,
) -> None:
    cluster = running.cluster
    original = {p.name for p in cluster.list_pods()}
    victim = cluster.list_pods()[0]
    with Hammer(running.url) as hammer:
        time.sleep(0.3)
        cluster.delete_pod(victim.name)
        wait_for(
            "a replacement pod ready and the victim gone",
            lambda: (
                len(ready_pods(cluster)) == 2
                and victim.name not in {p.name for p in cluster.list_pods()}
            ),
            cluster,
        )
        time.sleep(0.3)
    replacement = [p for p in ready_pods(cluster) if p.name not in original]
    assert len(replacement) == 1
    assert replacement[0].name != victim.name and replacement[0].uid != victim.uid
    events = cluster.status()["pods"]
    assert all(p["name"] != victim.name for p in events)
    # the deletion really happened in the real order: read the supervisor's record of it
    log = (running.state_dir / "supervisor.log").read_text()
    steps = [
        line.split(" INFO ")[1].split()[1]
        for line in log.splitlines()
        if f"INFO {victim.name} " in line
    ]
    assert (
        steps.index("Deleting")
        < steps.index("PreStop")
        < steps.index("SIGTERM")
        < steps.index("Deleted")
    )
    deletion_started = _deletion_started(running.state_dir, victim.name)
    assert hammer.failures == [], hammer.failures[:5]
    assert any(h.pod == victim.name for h in hammer.hits if h.started < deletion_started)
    late = [h for h in hammer.hits if h.pod == victim.name and h.started > deletion_started]
    assert late == [], f"{len(late)} new connections reached the terminating pod"
    assert any(h.pod == replacement[0].name for h in hammer.hits)


def _deletion_started(state_dir: Path, pod: str) -> float:
    import json

    state = json.loads((state_dir / "state.json").read_text())
    stamps = [e["at"] for e in state["events"] if e["object"] == pod and e["reason"] == "Deleting"]
    assert stamps, f"no Deleting event for {pod}"
    return float(stamps[0])


def test_a_crashed_container_restarts_in_the_same_pod_with_back_off(
    running: RunningCluster,
) -> None:
    cluster = running.cluster
    pod = cluster.list_pods()[0]
    cluster.kill_container(pod.name, "SIGKILL")
    wait_for(
        "the restarted container ready",
        lambda: any(
            p.name == pod.name and p.restarts == 1 and p.ready for p in cluster.list_pods()
        ),
        cluster,
    )
    again = next(p for p in cluster.list_pods() if p.name == pod.name)
    assert again.uid == pod.uid and again.last_termination_reason == "Error"
    assert next(p for p in cluster.pod_details() if p["name"] == pod.name)["last_exit_code"] == 137
    crashed_at = time.monotonic()
    cluster.kill_container(pod.name, "SIGKILL")
    wait_for(
        "the second restart",
        lambda: any(p.name == pod.name and p.restarts == 2 for p in cluster.list_pods()),
        cluster,
    )
    # the second restart waits the back-off base (0.3 s here; 10 s by default)
    assert time.monotonic() - crashed_at >= 0.3
    assert len(cluster.list_pods()) == 2  # restarted in place, not replaced


def test_scaling_to_three_and_back_to_two(running: RunningCluster) -> None:
    cluster = running.cluster
    cluster.scale("rag-api", 3)
    wait_for("3 ready pods", lambda: len(ready_pods(cluster)) == 3, cluster)
    assert cluster.desired_replicas() == 3
    assert len({get(running.url + "/")["pod"] for _ in range(9)}) == 3
    cluster.scale("rag-api", 2)
    wait_for("2 pods", lambda: len(cluster.list_pods()) == 2, cluster)
    assert len(ready_pods(cluster)) == 2


def test_a_rollout_restart_replaces_every_pod_without_a_refused_connection(
    running: RunningCluster,
) -> None:
    cluster = running.cluster
    before = {p.name for p in cluster.list_pods()}
    with Hammer(running.url) as hammer:
        time.sleep(0.2)
        cluster.rollout_restart("rag-api")
        wait_for(
            "all pods replaced and ready",
            lambda: (
                (pods := cluster.list_pods())
                and len(pods) == 2
                and all(p.ready for p in pods)
                and not before & {p.name for p in pods}
            ),
            cluster,
        )
        cluster.wait_rollout("rag-api", timeout_s=WAIT_S)
        time.sleep(0.2)
    assert len(hammer.hits) > 20
    assert hammer.failures == [], hammer.failures[:5]
    after = {p.name for p in cluster.list_pods()}
    assert {h.pod for h in hammer.hits} >= after  # the new pods served too
    assert len({name.split("-")[2] for name in after}) == 1  # one new template hash
    assert {name.split("-")[2] for name in after} != {name.split("-")[2] for name in before}


def test_watch_streams_pod_and_endpoint_changes(running: RunningCluster) -> None:
    cluster = running.cluster
    victim = cluster.list_pods()[0]
    events = []

    def collect() -> None:
        events.extend(cluster.watch(stop_after_s=4.0))

    watcher = threading.Thread(target=collect)
    watcher.start()
    time.sleep(0.3)
    cluster.delete_pod(victim.name, grace_period_s=1)
    watcher.join(timeout=10)
    pod_events = [(e.type, e.pod.name) for e in events if e.kind == "pod" and e.pod]
    assert ("ADDED", victim.name) in pod_events  # the initial listing
    assert ("DELETED", victim.name) in pod_events
    added_later = [n for t, n in pod_events if t == "ADDED" and n != victim.name]
    assert len(added_later) >= 2  # the other pod (listing) and the replacement
    endpoint_sets = [set(e.endpoints) for e in events if e.kind == "endpoints"]
    assert any(f"{victim.ip}:8000" not in s for s in endpoint_sets)
    monotonic = [e.monotonic for e in events]
    assert monotonic == sorted(monotonic)


def test_a_frozen_pod_leaves_the_endpoints_and_comes_back(running: RunningCluster) -> None:
    cluster = running.cluster
    pod = cluster.list_pods()[0]
    cluster.freeze_pod(pod.name, 3.0)
    wait_for(
        "the frozen pod not ready",
        lambda: not next(p for p in cluster.list_pods() if p.name == pod.name).ready,
        cluster,
        timeout_s=5,
    )
    assert f"{pod.ip}:8000" not in cluster.endpoints()
    wait_for(
        "the thawed pod ready again",
        lambda: next(p for p in cluster.list_pods() if p.name == pod.name).ready,
        cluster,
    )
    assert next(p for p in cluster.list_pods() if p.name == pod.name).uid == pod.uid


def test_down_leaves_no_process_behind(tmp_path: Path) -> None:
    test_cluster = make_cluster(tmp_path)
    test_cluster.cluster.up(replicas=2)
    running_before = processes_of(test_cluster.state_dir)
    assert len(running_before) >= 3  # the supervisor and two pods
    test_cluster.cluster.down(keep=True)
    assert processes_of(test_cluster.state_dir) == []
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in running_before)
    assert (test_cluster.state_dir / "logs").is_dir()  # kept for debugging
    assert not (test_cluster.state_dir / "supervisor.pid").exists()
    with socket.socket() as probe:  # the node port is free again
        probe.bind(("127.0.0.1", test_cluster.node_port))
    test_cluster.cluster.down()
    assert not test_cluster.state_dir.exists()


def test_a_taken_node_port_is_a_clear_error_and_starts_nothing(tmp_path: Path) -> None:
    test_cluster = make_cluster(tmp_path)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", test_cluster.node_port))
        squatter.listen()
        with pytest.raises(
            ClusterError, match=rf"127\.0\.0\.1:{test_cluster.node_port}.*pid {os.getpid()}"
        ):
            test_cluster.cluster.up(replicas=2)
    assert processes_of(test_cluster.state_dir) == []
    test_cluster.cluster.down()


def test_a_manifest_it_cannot_honour_is_refused_before_anything_starts(tmp_path: Path) -> None:
    def host_network(node_port: int) -> list[dict[str, object]]:
        objects = standin_manifest(node_port)
        objects[1]["spec"]["template"]["spec"]["hostNetwork"] = True  # type: ignore[index]
        return objects

    test_cluster = make_cluster(tmp_path, host_network)
    with pytest.raises(ManifestError, match="hostNetwork"):
        test_cluster.cluster.up(replicas=2)
    assert processes_of(test_cluster.state_dir) == []


def test_a_pod_that_never_becomes_ready_times_out_with_its_log_lines(tmp_path: Path) -> None:
    test_cluster = make_cluster(
        tmp_path,
        lambda port: standin_manifest(port, extra_env={"STANDIN_NEVER_READY": "1"}),
        up_timeout_s=2.0,
    )
    with pytest.raises(RolloutTimeout) as raised:
        test_cluster.cluster.up(replicas=1)
    message = str(raised.value)
    assert "rag-api" in message and "ready 0" in message
    assert "Unhealthy readiness probe failed: HTTP 503" in message
    assert "last log lines of rag-api-" in message and "serving on" in message
    assert processes_of(test_cluster.state_dir) == []
    test_cluster.cluster.down()


def test_a_statefulset_pod_keeps_its_name_and_its_volume(tmp_path: Path) -> None:
    def statefulset(node_port: int) -> list[dict[str, object]]:
        objects = standin_manifest(node_port, replicas=1)
        workload = objects[1]
        workload["kind"] = "StatefulSet"
        spec = workload["spec"]  # type: ignore[index]
        del spec["strategy"]  # type: ignore[attr-defined]
        spec["volumeClaimTemplates"] = [{"metadata": {"name": "data"}, "spec": {}}]  # type: ignore[index]
        container = spec["template"]["spec"]["containers"][0]  # type: ignore[index]
        container["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        container["env"].append({"name": "STANDIN_DATA_DIR", "value": "/data/store"})
        return objects

    test_cluster = make_cluster(tmp_path, statefulset)
    info = test_cluster.cluster.up(replicas=1)
    cluster = test_cluster.cluster
    try:
        first = cluster.list_pods()[0]
        assert first.name == "rag-api-0"
        data_dir = get(info.url + "/")["data_dir"]
        assert data_dir == str(test_cluster.state_dir / "volumes" / "data-rag-api-0" / "store")
        cluster.delete_pod("rag-api-0", grace_period_s=1)
        wait_for(
            "rag-api-0 back with a new uid",
            lambda: any(
                p.name == "rag-api-0" and p.uid != first.uid and p.ready
                for p in cluster.list_pods()
            ),
            cluster,
        )
        assert (test_cluster.state_dir / "volumes" / "data-rag-api-0").is_dir()
    finally:
        cluster.down()
    assert processes_of(test_cluster.state_dir) == []


def test_without_an_engine_docker_says_how_to_get_one_and_auto_picks_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker CLI: no engine answers
    ok, how_to = LocalCluster(tmp_path / "state", runtime="docker").reachable()
    assert ok is False and "scripts/prepare-docker.sh start" in how_to
    auto = LocalCluster(tmp_path / "state", runtime="auto")
    assert auto.runtime == "process" and "docker binary not found" in auto.runtime_reason


REAL_OVERLAY = LOCAL_OVERLAY


@pytest.mark.e2e
@pytest.mark.skipif(not REAL_OVERLAY.is_dir(), reason="k8s/overlays/local does not exist yet")
def test_the_real_overlay_comes_up_and_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HARNESS_LOCAL_PROBE_PERIOD_S")
    # a nodePort, chroma clusterIP and pod network of its own: the e2e session's cluster (or
    # one a person has up) may hold the overlay's
    node_port = free_node_port()
    cluster = LocalCluster(
        tmp_path / "state",
        overlay=overlay_beside_others(tmp_path),
        node_ports={"rag-api": node_port},
        pod_network="127.0.61.0/24",
    )
    try:
        info = cluster.up(replicas=2)
        assert info.url == f"http://127.0.0.1:{node_port}" and info.api_key
        assert len(ready_pods(cluster)) == 2
        import json

        request = urllib.request.Request(  # noqa: S310 - loopback
            info.url + "/query",
            data=json.dumps(
                {"question": "What is this knowledge base about?", "top_k": 2}
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            body = json.loads(response.read())
        assert body["sources"], body
    finally:
        cluster.down()
    assert processes_of(tmp_path / "state") == []
