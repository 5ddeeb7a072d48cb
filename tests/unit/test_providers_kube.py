"""Pure parts of the real-cluster provider: kubernetes client objects in, harness values out.

The V1* objects built here are plain data, exactly what the client deserialises from the API
server; nothing talks to a cluster.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from kubernetes import client

from harness.providers.base import ClusterError
from harness.providers.existing import ExistingCluster, node_address_order
from harness.providers.kube import (
    KubeTimeouts,
    container_id_of,
    endpoint_addresses_from_endpoints,
    endpoint_addresses_from_slices,
    new_namespace_name,
    node_port_of,
    pick_node_address,
    pod_info_from_v1,
    prepare_objects,
    restart_patch,
    rollout_status,
    scale_patch,
    signal_pid1_argv,
)

T0 = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


def make_pod(
    name: str = "rag-api-7d9c5-abcde",
    *,
    ready: bool = True,
    phase: str = "Running",
    restarts: tuple[int, ...] = (0,),
    deleting: bool = False,
    last_reason: str | None = None,
) -> client.V1Pod:
    statuses = [
        client.V1ContainerStatus(
            name="rag-api" if i == 0 else f"sidecar-{i}",
            image="rag-api:dev",
            image_id="",
            ready=ready,
            restart_count=count,
            container_id=f"containerd://cid{i}",
            state=client.V1ContainerState(running=client.V1ContainerStateRunning(started_at=T0)),
            last_state=client.V1ContainerState(
                terminated=client.V1ContainerStateTerminated(exit_code=137, reason=last_reason)
            )
            if last_reason and i == 0
            else client.V1ContainerState(),
        )
        for i, count in enumerate(restarts)
    ]
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=name,
            uid="0b7c1d2e-uid",
            labels={"app": "rag-api", "pod-template-hash": "7d9c5"},
            creation_timestamp=T0,
            deletion_timestamp=T0 + dt.timedelta(seconds=30) if deleting else None,
        ),
        spec=client.V1PodSpec(
            node_name="minikube",
            containers=[
                client.V1Container(
                    name="rag-api",
                    ports=[client.V1ContainerPort(container_port=8000, name="http")],
                )
            ],
        ),
        status=client.V1PodStatus(
            phase=phase,
            pod_ip="10.244.0.7",
            conditions=[
                client.V1PodCondition(
                    type="Ready",
                    status="True" if ready else "False",
                    last_transition_time=T0 + dt.timedelta(seconds=4),
                )
            ],
            container_statuses=statuses,
        ),
    )


def test_pod_info_from_a_ready_running_pod() -> None:
    info = pod_info_from_v1(make_pod())
    assert info.name == "rag-api-7d9c5-abcde"
    assert info.uid == "0b7c1d2e-uid"
    assert (info.phase, info.ready, info.deleting) == ("Running", True, False)
    assert info.created == T0.timestamp()
    assert info.ready_since == T0.timestamp() + 4
    assert (info.app, info.ip, info.node) == ("rag-api", "10.244.0.7", "minikube")
    assert info.restarts == 0
    assert info.last_termination_reason == ""


def test_pod_info_sums_restarts_and_reports_last_termination() -> None:
    info = pod_info_from_v1(make_pod(restarts=(2, 3), last_reason="OOMKilled"))
    assert info.restarts == 5
    assert info.last_termination_reason == "OOMKilled"


def test_pod_info_of_a_terminating_pod_is_not_ready() -> None:
    info = pod_info_from_v1(make_pod(deleting=True))
    assert info.deleting is True
    assert info.phase == "Terminating"
    assert info.ready is False
    assert info.ready_since is None


def test_pod_info_of_a_pending_pod_without_status_details() -> None:
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="rag-api-x", uid="u", creation_timestamp=T0),
        spec=client.V1PodSpec(containers=[client.V1Container(name="rag-api")]),
        status=client.V1PodStatus(phase="Pending"),
    )
    info = pod_info_from_v1(pod)
    assert (info.phase, info.ready, info.restarts, info.node) == ("Pending", False, 0, "")


def test_container_id_strips_the_runtime_scheme() -> None:
    assert container_id_of(make_pod()) == "cid0"
    pod = make_pod()
    pod.status.container_statuses[0].container_id = None
    assert container_id_of(pod) == ""


def make_deployment(
    *,
    replicas: int = 2,
    generation: int = 3,
    observed: int | None = 3,
    ready: int | None = 2,
    updated: int | None = 2,
    current: int | None = 2,
) -> client.V1Deployment:
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name="rag-api", generation=generation),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels={"app": "rag-api"}),
            template=client.V1PodTemplateSpec(),
        ),
        status=client.V1DeploymentStatus(
            observed_generation=observed,
            ready_replicas=ready,
            updated_replicas=updated,
            replicas=current,
        ),
    )


def test_rollout_complete_when_everything_matches() -> None:
    assert rollout_status(make_deployment()) == (True, "2/2 ready")


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"observed": 2}, "observedGeneration 2 < generation 3"),
        ({"observed": None}, "observedGeneration 0 < generation 3"),
        ({"ready": 1}, "readyReplicas 1 of 2"),
        ({"ready": None}, "readyReplicas 0 of 2"),
        ({"updated": 1}, "updatedReplicas 1 of 2"),
        ({"current": 3}, "3 replicas exist, 2 desired (old pods terminating)"),
    ],
)
def test_rollout_incomplete_says_why(fields: dict[str, int | None], why: str) -> None:
    assert rollout_status(make_deployment(**fields)) == (False, why)  # type: ignore[arg-type]


def test_rollout_of_a_statefulset_uses_the_same_rule() -> None:
    sts = client.V1StatefulSet(
        metadata=client.V1ObjectMeta(name="chroma", generation=1),
        spec=client.V1StatefulSetSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels={"app": "chroma"}),
            service_name="chroma",
            template=client.V1PodTemplateSpec(),
        ),
        status=client.V1StatefulSetStatus(
            observed_generation=1, ready_replicas=0, updated_replicas=1, replicas=1
        ),
    )
    assert rollout_status(sts) == (False, "readyReplicas 0 of 1")
    sts.status.ready_replicas = 1
    assert rollout_status(sts)[0] is True


def test_endpoint_slices_give_only_ready_addresses() -> None:
    def endpoint(ip: str, ready: bool | None) -> client.V1Endpoint:
        conditions = None if ready is None else client.V1EndpointConditions(ready=ready)
        return client.V1Endpoint(addresses=[ip], conditions=conditions)

    slices = [
        client.V1EndpointSlice(
            address_type="IPv4",
            endpoints=[endpoint("10.0.0.1", True), endpoint("10.0.0.2", False)],
            ports=[client.DiscoveryV1EndpointPort(port=8000, name="http")],
        ),
        client.V1EndpointSlice(
            address_type="IPv4",
            endpoints=[endpoint("10.0.0.3", None)],  # unset means ready
            ports=[client.DiscoveryV1EndpointPort(port=8000, name="http")],
        ),
        client.V1EndpointSlice(address_type="IPv4", endpoints=None, ports=None),
    ]
    assert endpoint_addresses_from_slices(slices) == ["10.0.0.1:8000", "10.0.0.3:8000"]


def test_endpoints_object_ignores_not_ready_addresses() -> None:
    endpoints = client.V1Endpoints(
        subsets=[
            client.V1EndpointSubset(
                addresses=[client.V1EndpointAddress(ip="10.0.0.9")],
                not_ready_addresses=[client.V1EndpointAddress(ip="10.0.0.8")],
                ports=[client.CoreV1EndpointPort(port=8000)],
            )
        ]
    )
    assert endpoint_addresses_from_endpoints(endpoints) == ["10.0.0.9:8000"]


def make_node(addresses: dict[str, str], ready: bool = True) -> client.V1Node:
    return client.V1Node(
        status=client.V1NodeStatus(
            addresses=[client.V1NodeAddress(type=t, address=a) for t, a in addresses.items()],
            conditions=[client.V1NodeCondition(type="Ready", status=str(ready))],
        )
    )


def test_node_address_prefers_internal_ip_on_ready_nodes() -> None:
    nodes = [
        make_node({"InternalIP": "192.168.49.3", "Hostname": "n2"}, ready=False),
        make_node({"InternalIP": "192.168.49.2", "ExternalIP": "203.0.113.7"}),
    ]
    assert pick_node_address(nodes, node_address_order("InternalIP")) == "192.168.49.2"
    assert pick_node_address(nodes, node_address_order("ExternalIP")) == "203.0.113.7"


def test_node_address_falls_back_to_the_other_type_then_none() -> None:
    nodes = [make_node({"ExternalIP": "203.0.113.7"})]
    assert pick_node_address(nodes, node_address_order("InternalIP")) == "203.0.113.7"
    assert pick_node_address([make_node({"Hostname": "h"})], ("InternalIP",)) is None
    with pytest.raises(ClusterError, match="InternalIP"):
        node_address_order("LoadBalancerIP")


def test_node_port_of_a_service() -> None:
    svc = client.V1Service(
        spec=client.V1ServiceSpec(
            type="NodePort",
            ports=[client.V1ServicePort(name="http", port=80, node_port=31859)],
        )
    )
    assert node_port_of(svc) == 31859
    assert node_port_of(svc, "metrics") is None


def test_prepare_objects_sets_namespace_replicas_and_images() -> None:
    rendered = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "rag"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rag-api-config"}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "rag-api", "namespace": "rag"},
            "spec": {
                "replicas": 2,
                "template": {"spec": {"containers": [{"name": "rag-api", "image": "rag-api:dev"}]}},
            },
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "r"},
        },
    ]
    out = prepare_objects(
        rendered, "rag-e2e-1234abcd", replicas={"rag-api": 3}, images={"rag-api:dev": "reg/rag:1"}
    )
    assert [o["kind"] for o in out] == ["ConfigMap", "Deployment", "ClusterRole"]
    assert out[0]["metadata"]["namespace"] == "rag-e2e-1234abcd"
    assert out[1]["metadata"]["namespace"] == "rag-e2e-1234abcd"
    assert out[1]["spec"]["replicas"] == 3
    assert out[1]["spec"]["template"]["spec"]["containers"][0]["image"] == "reg/rag:1"
    assert "namespace" not in out[2]["metadata"]
    assert rendered[2]["spec"]["replicas"] == 2  # the input is not modified


def test_patches_and_names() -> None:
    assert restart_patch(T0) == {
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {"kubectl.kubernetes.io/restartedAt": "2024-05-01T12:00:00Z"}
                }
            }
        }
    }
    assert scale_patch(4) == {"spec": {"replicas": 4}}
    with pytest.raises(ValueError, match="replicas"):
        scale_patch(-1)
    names = {new_namespace_name() for _ in range(20)}
    assert len(names) == 20
    assert all(re.fullmatch(r"rag-e2e-[0-9a-f]{8}", n) for n in names)


def test_signal_pid1_uses_python_and_validates_the_name() -> None:
    assert signal_pid1_argv("term") == [
        "python",
        "-c",
        "import os, signal; os.kill(1, signal.SIGTERM)",
    ]
    with pytest.raises(ValueError):
        signal_pid1_argv("TERM; rm -rf /")


def test_timeouts_from_env_reject_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_ROLLOUT_TIMEOUT_S", "45")
    assert KubeTimeouts.from_env().rollout_s == 45.0
    monkeypatch.setenv("HARNESS_ROLLOUT_TIMEOUT_S", "soon")
    with pytest.raises(ClusterError, match="HARNESS_ROLLOUT_TIMEOUT_S"):
        KubeTimeouts.from_env()
    monkeypatch.setenv("HARNESS_ROLLOUT_TIMEOUT_S", "0")
    with pytest.raises(ClusterError, match="> 0"):
        KubeTimeouts.from_env()


def test_state_outlives_the_provider_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`harness up` and `harness down` are separate processes: namespace and key persist."""
    monkeypatch.delenv("HARNESS_IMAGE", raising=False)
    first = ExistingCluster(state_dir=tmp_path, context="ctx-a")
    first.api_key = "k" * 48
    first._save_state()
    second = ExistingCluster(state_dir=tmp_path)
    assert second.namespace == first.namespace
    assert second.context == "ctx-a"
    assert second.api_key == "k" * 48
    assert (tmp_path / "existing.json").stat().st_mode & 0o077 == 0  # it holds the API key
    assert second.build_image is False
    assert second.image == "rag-api:dev"
