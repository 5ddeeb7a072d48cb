"""Command construction, URL discovery and error messages of the real-cluster providers.

Where a command is run, the executable is a tiny shell script in a temporary directory that
records its arguments and prints what the real tool prints; no cluster, no network.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from harness.providers.base import ClusterError, ClusterUnavailable
from harness.providers.images import (
    build_image,
    context_digest,
    docker_build_argv,
    load_image_argv,
    require_binary,
)
from harness.providers.k3d import K3dCluster, k3d_port_option, parse_k3d_cluster_list
from harness.providers.kind import KindCluster, kind_config, kind_config_yaml, parse_kind_clusters
from harness.providers.kube import (
    PortForward,
    crictl_stop_argv,
    kubectl_argv,
    parse_forwarding_port,
    port_forward_args,
)
from harness.providers.managed import manager_cluster_name, parse_docker_port
from harness.providers.minikube import (
    MinikubeCluster,
    minikube_ip_argv,
    minikube_running,
    parse_minikube_ip,
    parse_minikube_status,
)


def fake_tool(bin_dir: Path, name: str, body: str) -> Path:
    """An executable shell script standing in for a CLI tool."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


# --- argv construction ------------------------------------------------------------------------


def test_docker_build_argv() -> None:
    assert docker_build_argv(Path("/src/system"), "rag-api:dev", digest="abc") == [
        "docker",
        "build",
        "--tag",
        "rag-api:dev",
        "--file",
        "/src/system/Dockerfile",
        "--label",
        "org.rag-harness.context-digest=abc",
        "/src/system",
    ]


@pytest.mark.parametrize(
    ("provider", "argv"),
    [
        ("minikube", ["minikube", "image", "load", "rag-api:dev", "--profile", "pytest-c"]),
        ("kind", ["kind", "load", "docker-image", "rag-api:dev", "--name", "pytest-c"]),
        ("k3d", ["k3d", "image", "import", "rag-api:dev", "-c", "pytest-c"]),
    ],
)
def test_load_image_argv(provider: str, argv: list[str]) -> None:
    assert load_image_argv(provider, "rag-api:dev", "pytest-c") == argv


def test_load_image_argv_for_an_unknown_provider() -> None:
    with pytest.raises(ClusterError, match="no image load command for provider 'existing'"):
        load_image_argv("existing", "rag-api:dev", "c")


def test_kubectl_and_port_forward_argv() -> None:
    argv = kubectl_argv(
        port_forward_args("service/rag-api", 80),
        kubeconfig=Path("/s/kind.kubeconfig"),
        context="kind-x",
        namespace="rag-e2e-0123abcd",
    )
    assert argv == [
        "kubectl",
        "--kubeconfig",
        "/s/kind.kubeconfig",
        "--context",
        "kind-x",
        "--namespace",
        "rag-e2e-0123abcd",
        "port-forward",
        "--address",
        "127.0.0.1",
        "service/rag-api",
        ":80",
    ]
    assert kubectl_argv(["get", "pods"]) == ["kubectl", "get", "pods"]


def test_node_exec_argv_per_provider(tmp_path: Path) -> None:
    stop = crictl_stop_argv("abc123")
    assert stop == ["crictl", "stop", "--timeout", "0", "abc123"]
    mk = MinikubeCluster(state_dir=tmp_path, cluster_name="rag")
    assert mk.cluster_name == "pytest-rag"
    assert mk._node_exec_argv("pytest-rag", stop) == [
        "minikube",
        "ssh",
        "--profile",
        "pytest-rag",
        "--",
        "sudo",
        *stop,
    ]
    assert mk._node_exec_argv("pytest-rag-m02", stop)[:6] == [
        "minikube",
        "ssh",
        "--profile",
        "pytest-rag",
        "--node",
        "m02",
    ]
    kind = KindCluster(state_dir=tmp_path)
    assert kind._node_exec_argv("pytest-rag-harness-control-plane", stop) == [
        "docker",
        "exec",
        "pytest-rag-harness-control-plane",
        *stop,
    ]


def test_cluster_names_follow_pytest_kubernetes() -> None:
    assert manager_cluster_name("rag-harness") == "pytest-rag-harness"
    assert manager_cluster_name("pytest-x") == "pytest-x"


# --- cluster configs --------------------------------------------------------------------------


def test_kind_config_maps_the_node_port_on_loopback() -> None:
    config = yaml.safe_load(kind_config_yaml("pytest-rag-harness"))
    assert config == kind_config("pytest-rag-harness")
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["name"] == "pytest-rag-harness"
    (node,) = config["nodes"]
    assert node["role"] == "control-plane"
    assert node["extraPortMappings"] == [
        {"containerPort": 31859, "hostPort": 31859, "listenAddress": "127.0.0.1", "protocol": "TCP"}
    ]
    assert "image" not in node
    pinned = kind_config("c", node_image="kindest/node:v1.30.0")
    assert pinned["nodes"][0]["image"] == "kindest/node:v1.30.0"


def test_kind_provider_writes_its_config_for_the_manager(tmp_path: Path) -> None:
    kind = KindCluster(state_dir=tmp_path, k8s_version="1.29.2")
    path = kind._provider_config()
    assert path is not None
    config = yaml.safe_load(path.read_text())
    assert config["name"] == kind.cluster_name  # pytest-kubernetes takes the name from here
    assert config["nodes"][0]["image"] == "kindest/node:v1.29.2"


def test_k3d_create_options() -> None:
    assert k3d_port_option() == ["--port", "127.0.0.1:31859:31859@server:0"]
    assert K3dCluster(state_dir=Path("/nonexistent"))._create_kwargs() == {
        "options": ["--port", "127.0.0.1:31859:31859@server:0"]
    }


# --- parsing what the tools print -------------------------------------------------------------


def test_parse_minikube_ip() -> None:
    assert parse_minikube_ip("192.168.49.2\n") == "192.168.49.2"
    noisy = '! Executing "docker container inspect" took an unusually long time\n192.168.58.2\n'
    assert parse_minikube_ip(noisy) == "192.168.58.2"
    with pytest.raises(ClusterError, match="no IP address"):
        parse_minikube_ip('* Profile "x" not found.\n')
    assert minikube_ip_argv("p") == ["minikube", "ip", "--profile", "p"]


def test_parse_minikube_status() -> None:
    running = (
        '{"Name":"pytest-rag-harness","Host":"Running","Kubelet":"Running",'
        '"APIServer":"Running","Kubeconfig":"Configured","Worker":false}'
    )
    assert minikube_running(parse_minikube_status(running)) is True
    stopped = '{"Name":"p","Host":"Stopped","Kubelet":"Stopped","APIServer":"Stopped"}'
    assert minikube_running(parse_minikube_status(stopped)) is False
    assert minikube_running(parse_minikube_status(f"[{running}]")) is True  # multi-node
    assert parse_minikube_status('* Profile "p" not found.') is None


def test_parse_docker_port_and_cluster_lists() -> None:
    assert parse_docker_port("127.0.0.1:31859\n") == "127.0.0.1:31859"
    assert parse_docker_port("0.0.0.0:31859\n[::]:31859\n") == "127.0.0.1:31859"
    assert parse_docker_port("[::]:31859\n") is None
    assert parse_docker_port("") is None
    assert parse_kind_clusters("kind\npytest-rag-harness\n") == ["kind", "pytest-rag-harness"]
    assert parse_kind_clusters("") == []
    listed = '[{"name":"pytest-rag-harness","servers":[]},{"name":"dev"}]'
    assert parse_k3d_cluster_list(listed) == ["pytest-rag-harness", "dev"]
    assert parse_k3d_cluster_list("not json") == []


def test_parse_forwarding_port() -> None:
    assert parse_forwarding_port("Forwarding from 127.0.0.1:41235 -> 8000\n") == 41235
    assert parse_forwarding_port("Forwarding from [::1]:41235 -> 8000") is None
    assert parse_forwarding_port("Handling connection for 41235") is None


# --- running commands -------------------------------------------------------------------------


def test_missing_binary_names_it_and_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ClusterUnavailable) as caught:
        require_binary("minikube", "run a minikube cluster")
    message = str(caught.value)
    assert "`minikube` not found on PATH" in message
    assert "run a minikube cluster" in message
    assert "https://minikube.sigs.k8s.io/docs/start/" in message
    with pytest.raises(ClusterUnavailable, match=r"`docker` not found.*docs\.docker\.com"):
        build_image(tmp_path, "rag-api:dev")


def test_a_missing_tool_stops_cluster_creation_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ClusterUnavailable, match=r"`kind` not found on PATH.*kind\.sigs\.k8s\.io"):
        KindCluster(state_dir=tmp_path)._ensure_cluster()
    fake_tool(tmp_path / "empty", "kind", "exit 0")
    with pytest.raises(ClusterUnavailable, match="`docker` not found on PATH"):
        KindCluster(state_dir=tmp_path)._ensure_cluster()


def test_build_skips_an_image_that_holds_the_same_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = tmp_path / "system"
    (context / "rag_api").mkdir(parents=True)
    (context / "Dockerfile").write_text("FROM python:3.11-slim\n")
    (context / "rag_api" / "app.py").write_text("print('hi')\n")
    (context / "rag_api" / "__pycache__").mkdir()
    (context / "rag_api" / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    digest = context_digest(context)
    calls = tmp_path / "calls.log"
    label = tmp_path / "label"
    label.write_text("")
    bin_dir = tmp_path / "bin"
    fake_tool(
        bin_dir,
        "docker",
        f'echo "$@" >> "{calls}"\n'
        f'if [ "$1" = image ]; then while read -r l; do echo "$l"; done < "{label}"; fi\n'
        "exit 0",
    )
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")

    build_image(context, "rag-api:dev", timeout_s=30)
    first = calls.read_text().splitlines()
    assert first[0].startswith("image inspect --format")
    assert first[1] == (
        f"build --tag rag-api:dev --file {context}/Dockerfile "
        f"--label org.rag-harness.context-digest={digest} {context}"
    )

    label.write_text(digest + "\n")  # the image now carries this context's digest
    calls.write_text("")
    build_image(context, "rag-api:dev", timeout_s=30)
    assert [c.split()[0] for c in calls.read_text().splitlines()] == ["image"]

    (context / "rag_api" / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\1")
    assert context_digest(context) == digest  # caches are not part of the image
    (context / "rag_api" / "app.py").write_text("print('changed')\n")
    assert context_digest(context) != digest


def test_build_failure_carries_dockers_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    bin_dir = tmp_path / "bin"
    fake_tool(
        bin_dir,
        "docker",
        'if [ "$1" = build ]; then echo "ERROR: failed to solve: no such file" >&2; exit 1; fi\n'
        "exit 1",
    )
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    with pytest.raises(ClusterError, match=r"exited 1:\nERROR: failed to solve: no such file"):
        build_image(tmp_path, "rag-api:dev", timeout_s=30)


def test_port_forward_reads_the_port_and_is_closed(tmp_path: Path) -> None:
    script = fake_tool(
        tmp_path,
        "kubectl",
        'echo "Forwarding from 127.0.0.1:45123 -> 8000"\n'
        'echo "Forwarding from [::1]:45123 -> 8000"\n'
        "exec sleep 60",
    )
    forward = PortForward.start([str(script), "port-forward"], "pod/rag-api-x", timeout_s=10)
    try:
        assert forward.local_port == 45123
        assert forward.url == "http://127.0.0.1:45123"
        assert forward.alive()
    finally:
        forward.close()
    assert not forward.alive()
    assert forward.process.returncode is not None


def test_port_forward_failure_says_what_kubectl_said(tmp_path: Path) -> None:
    script = fake_tool(tmp_path, "kubectl", 'echo "error: pods \\"nope\\" not found" >&2; exit 1')
    with pytest.raises(ClusterError) as caught:
        PortForward.start([str(script)], "pod/nope", timeout_s=10)
    assert 'pods "nope" not found' in str(caught.value)
    assert "exit code 1" in str(caught.value)


def test_port_forward_that_never_listens_times_out_and_is_ended(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = fake_tool(tmp_path, "kubectl", f'echo $$ > "{pid_file}"\necho starting\nexec sleep 60')
    with pytest.raises(ClusterError, match=r"did not report a local port within 0.5s.*starting"):
        PortForward.start([str(script)], "service/rag-api", timeout_s=0.5)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # terminated and reaped, not left running
        os.kill(pid, 0)
