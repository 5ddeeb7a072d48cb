"""Provider selection by name and `auto`, and the pytest-kubernetes wrapper.

The tools auto-selection probes (minikube, kind, k3d, docker) are tiny shell scripts on a
temporary PATH printing what the real ones print; the one network probe (a kubeconfig
context) points at a closed loopback port.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
import yaml

from harness.providers.base import PROVIDER_NAMES, ClusterError
from harness.providers.existing import ExistingCluster
from harness.providers.k3d import K3dCluster
from harness.providers.kind import KindCluster
from harness.providers.kube import call_with_environ_restored, shell_safe
from harness.providers.minikube import MinikubeCluster
from harness.providers.select import (
    VALID_CLUSTER_NAMES,
    UnknownProvider,
    check_provider_name,
    create_provider,
    select_provider,
)

MINIKUBE_RUNNING = (
    '{"Name":"pytest-rag-harness","Host":"Running","Kubelet":"Running",'
    '"APIServer":"Running","Kubeconfig":"Configured","Worker":false}'
)
MINIKUBE_STOPPED = (
    '{"Name":"pytest-rag-harness","Host":"Stopped","Kubelet":"Stopped",'
    '"APIServer":"Stopped","Kubeconfig":"Stopped","Worker":false}'
)


def fake_tool(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def bare_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with none of the tools and no kubeconfig; returns the PATH directory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.delenv("HARNESS_CLUSTER_NAME", raising=False)
    monkeypatch.setenv("HARNESS_PROBE_TIMEOUT_S", "5")
    return bin_dir


def test_auto_with_nothing_installed_picks_local_and_says_why(
    bare_env: Path, tmp_path: Path
) -> None:
    name, reason = select_provider("auto")
    assert name == "local"
    assert reason == (
        "minikube: binary not found; kind: binary not found; k3d: binary not found; "
        f"existing: no kubeconfig ({tmp_path / 'no-such-kubeconfig'} missing); "
        "picked local: no Kubernetes reachable"
    )


def test_auto_picks_a_running_minikube_profile(bare_env: Path) -> None:
    fake_tool(bare_env, "minikube", f"echo '{MINIKUBE_RUNNING}'")
    assert select_provider("auto") == (
        "minikube",
        "minikube: profile pytest-rag-harness running; picked minikube",
    )


def test_a_stopped_minikube_without_docker_is_skipped(bare_env: Path) -> None:
    # minikube status exits 7 for a stopped profile while still printing JSON
    fake_tool(bare_env, "minikube", f"echo '{MINIKUBE_STOPPED}'; exit 7")
    fake_tool(
        bare_env,
        "docker",
        "echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock.' >&2; exit 1",
    )
    name, reason = select_provider("auto")
    assert name == "local"
    assert reason.startswith(
        "minikube: profile pytest-rag-harness not running and no Docker engine answers "
        "(Cannot connect to the Docker daemon at unix:///var/run/docker.sock.); "
        "kind: binary not found;"
    )


def test_kind_is_picked_when_docker_can_create_its_cluster(bare_env: Path) -> None:
    fake_tool(bare_env, "kind", 'echo "No kind clusters found." >&2')
    fake_tool(bare_env, "docker", 'if [ "$1" = version ]; then echo 27.1.1; fi')
    assert select_provider("auto") == (
        "kind",
        "minikube: binary not found; "
        "kind: no cluster pytest-rag-harness; docker 27.1.1 can create it; picked kind",
    )


def test_an_existing_k3d_cluster_is_found_by_name(
    bare_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_CLUSTER_NAME", "mine")  # -> pytest-mine, as pytest-kubernetes
    fake_tool(bare_env, "k3d", """echo '[{"name":"pytest-mine","servers":[]}]'""")
    name, reason = select_provider("auto")
    assert name == "k3d"
    assert reason.endswith("k3d: cluster pytest-mine exists; picked k3d")


def test_unreachable_kubeconfig_context_is_reported(
    bare_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": f"https://127.0.0.1:{closed_port}"}}
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "dev",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    name, reason = select_provider("auto", timeout_s=2)
    assert name == "local"
    assert f"existing: context dev (https://127.0.0.1:{closed_port}) not reachable within 2s" in (
        reason
    )


def test_named_providers_are_not_probed(bare_env: Path) -> None:
    assert select_provider("Kind") == ("kind", "kind: requested")


def test_unknown_provider_lists_the_valid_names() -> None:
    with pytest.raises(UnknownProvider) as caught:
        check_provider_name("minikub")
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, ClusterError)
    assert str(caught.value) == (
        "unknown cluster provider 'minikub'; "
        "valid names: auto, local, minikube, kind, k3d, existing"
    )
    assert set(VALID_CLUSTER_NAMES) == {"auto", *PROVIDER_NAMES}
    with pytest.raises(UnknownProvider):
        create_provider("auto")


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("minikube", MinikubeCluster),
        ("kind", KindCluster),
        ("k3d", K3dCluster),
        ("existing", ExistingCluster),
    ],
)
def test_factory_builds_each_real_provider(name: str, cls: type, tmp_path: Path) -> None:
    provider = create_provider(name, state_dir=tmp_path)
    assert type(provider) is cls
    assert provider.name == name
    assert provider.state_dir == tmp_path  # type: ignore[attr-defined]


# --- pytest-kubernetes wrapper ----------------------------------------------------------------


def test_environ_is_restored_after_a_pytest_kubernetes_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_kubernetes.providers import select_provider_manager

    fake_tool(tmp_path, "kind", 'echo "$KUBECONFIG"')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HARNESS_SENTINEL", "before")
    manager = select_provider_manager("kind")(cluster_name="rag")
    extra = {"KUBECONFIG": str(tmp_path / "k.yaml")}

    # the quirk we wrap: the manager's _exec leaves KUBECONFIG in our own environment
    manager._exec(["get", "clusters"], additional_env=dict(extra))
    assert os.environ.get("KUBECONFIG") == extra["KUBECONFIG"]
    del os.environ["KUBECONFIG"]

    before = dict(os.environ)
    proc = call_with_environ_restored(manager._exec, ["get", "clusters"], additional_env=extra)
    assert proc.stdout.decode().strip() == extra["KUBECONFIG"]  # the child did get it
    assert dict(os.environ) == before
    assert "KUBECONFIG" not in os.environ


def test_environ_is_restored_and_errors_explained_when_the_call_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_kubernetes.providers import select_provider_manager

    fake_tool(
        tmp_path,
        "kind",
        'echo "ERROR: failed to create cluster: node(s) already exist" >&2\nexit 1',
    )
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    manager = select_provider_manager("kind")(cluster_name="rag")
    before = dict(os.environ)
    with pytest.raises(ClusterError, match=r"(?s)exit 1.*node\(s\) already exist"):
        call_with_environ_restored(
            manager._exec, ["create", "cluster"], additional_env={"KUBECONFIG": "/tmp/x"}
        )
    assert dict(os.environ) == before


def test_only_shell_safe_tokens_reach_pytest_kubernetes() -> None:
    assert shell_safe("/var/tmp/.harness/kind-pytest-rag.kubeconfig", "path")
    for bad in ("a b", "x;rm -rf /", "$(id)", "`id`", "a|b", "a>b", "'q'"):
        with pytest.raises(ClusterError, match="shell would interpret"):
            shell_safe(bad, "cluster name")
