"""The local cluster's container runtimes, without an engine: quantities, flags, choices.

What a container actually does under these flags is tested against a real engine in
tests/docker/test_local_cluster_docker.py (`pytest -m docker tests/docker`).
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from harness.providers.base import ClusterError
from harness.providers.local import LocalCluster
from harness.providers.local.docker_runtime import (
    DockerRuntime,
    container_name,
    docker_run_argv,
    resource_flags,
    security_flags,
    write_env_file,
)
from harness.providers.local.manifests import parse_objects, render_overlay
from harness.providers.local.runtime import ContainerLaunch, cpu_cores, memory_bytes

REAL_OVERLAY = Path(__file__).resolve().parents[2] / "k8s" / "overlays" / "local"


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("1Gi", 1024**3),
        ("384Mi", 384 * 1024**2),
        ("64Ki", 65536),
        ("500M", 500_000_000),
        ("1G", 1_000_000_000),
        ("2k", 2000),
        ("128974848", 128974848),
        ("1e9", 1_000_000_000),
        ("1.5Gi", int(1.5 * 1024**3)),
        (268435456, 268435456),
    ],
)
def test_memory_quantities_become_bytes(quantity: str | int, expected: int) -> None:
    assert memory_bytes(quantity) == expected


@pytest.mark.parametrize("bad", ["", "Gi", "1Zi", "1 Gi", "-1Mi", "0.1"])
def test_a_bad_memory_quantity_is_refused_with_its_value(bad: str) -> None:
    with pytest.raises(ValueError, match="memory quantity"):
        memory_bytes(bad)


@pytest.mark.parametrize(
    ("quantity", "expected"), [("1", 1.0), ("250m", 0.25), ("0.5", 0.5), ("1500m", 1.5), (2, 2.0)]
)
def test_cpu_quantities_become_cores(quantity: str | int, expected: float) -> None:
    assert cpu_cores(quantity) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["", "m", "abc", "0", "-1"])
def test_a_bad_cpu_quantity_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="cpu quantity"):
        cpu_cores(bad)


def test_resources_map_to_docker_flags_in_bytes_and_cores() -> None:
    flags = resource_flags(
        {"limits": {"memory": "1Gi", "cpu": "1"}, "requests": {"memory": "384Mi", "cpu": "250m"}}
    )
    assert flags == [
        "--memory", str(1024**3), "--memory-swap", str(1024**3),  # no swap, as on a node
        "--memory-reservation", str(384 * 1024**2),
        "--cpus", "1",
        "--cpu-shares", "256",
    ]  # fmt: skip
    assert resource_flags({}) == []


def test_security_context_maps_to_docker_flags() -> None:
    flags = security_flags(
        {
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }
    )
    assert flags == [
        "--user", "10001:10001",
        "--group-add", "10001",
        "--read-only",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
    ]  # fmt: skip
    with pytest.raises(RuntimeError, match="runAsNonRoot"):
        security_flags({"runAsNonRoot": True, "runAsUser": 0})


def _rag_api_launch(tmp_path: Path) -> ContainerLaunch:
    spec = parse_objects(render_overlay(REAL_OVERLAY), None, {"rag-api-secret": {"api-key": "k"}})
    template = spec.workloads["rag-api"].template
    return ContainerLaunch(
        pod="rag-api-abc-xyz",
        pod_uid="uid-1",
        attempt=2,
        image=template.image,
        argv=[*template.command, *template.args],
        env={"RAG_HOST": "127.0.1.2"},
        mounts=[(str(tmp_path / "tmp"), "/tmp"), (str(tmp_path / "data"), "/var/lib/rag-api")],
        resources=template.resources,
        security=template.security,
        working_dir="",
        log_path=tmp_path / "pod.log",
        pod_dir=tmp_path,
    )


def test_the_rag_api_manifest_becomes_a_hardened_limited_docker_run(tmp_path: Path) -> None:
    launch = _rag_api_launch(tmp_path)
    argv = docker_run_argv(launch, "harness-x-pod-2", "rag-api:dev", tmp_path, tmp_path / "env")
    joined = " ".join(argv)
    for expected in (
        "--network host",
        "--pull never",
        "--user 10001:10001",
        "--read-only",
        "--cap-drop ALL",
        "--security-opt no-new-privileges",
        f"--memory {1024**3} --memory-swap {1024**3}",
        "--cpus 1",
        f"--label rag-harness.state-dir={tmp_path}",
        f"--mount type=bind,source={tmp_path / 'data'},target=/var/lib/rag-api",
        f"--env-file {tmp_path / 'env'}",
    ):
        assert expected in joined, f"{expected!r} not in {joined}"
    # the manifest's command replaces the entrypoint; no env value on the command line
    assert argv[-4:] == ["python", "rag-api:dev", "-m", "rag_api"]
    assert argv[argv.index("--entrypoint") + 1] == "python"
    assert "127.0.1.2" not in joined


def test_chroma_runs_from_the_service_image_which_has_its_cli(tmp_path: Path) -> None:
    runtime = DockerRuntime(tmp_path)
    assert runtime.image_for("chromadb/chroma:1.5.9") == "rag-api:dev"
    assert runtime.image_for("rag-api:dev") == "rag-api:dev"
    assert runtime.image_for("busybox:1") == "busybox:1"


def test_container_names_differ_per_restart_and_per_cluster(tmp_path: Path) -> None:
    first = container_name(tmp_path / "a", "chroma-0", 1)
    assert first != container_name(tmp_path / "a", "chroma-0", 2)
    assert first != container_name(tmp_path / "b", "chroma-0", 1)
    assert first.startswith("harness-") and first.endswith("-chroma-0-1")


def test_the_env_file_is_private_and_refuses_line_breaks(tmp_path: Path) -> None:
    path = tmp_path / "container.env"
    write_env_file(path, {"RAG_API_KEY": "secret", "EMPTY": ""})
    assert path.read_text() == "RAG_API_KEY=secret\nEMPTY=\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(RuntimeError, match="line break"):
        write_env_file(path, {"BAD": "a\nb"})


def test_an_unknown_runtime_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="unknown local runtime 'podman'"):
        LocalCluster(tmp_path, runtime="podman")


def test_a_memory_limit_breach_needs_the_docker_runtime(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, runtime="process")
    with pytest.raises(ClusterError, match="only be breached with the docker runtime"):
        cluster.breach_memory_limit("rag-api-abc-xyz")
