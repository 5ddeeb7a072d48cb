"""The local cluster's manifest reading: what it honours, what it refuses (no processes)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from harness.providers.local.manifests import (
    ImageMapping,
    ManifestError,
    image_repository,
    parse_objects,
    template_hash,
)
from harness.providers.local.supervisor import expand_vars, rewrite_paths

STANDIN = {"local-standin": ImageMapping(None, Path(__file__).parent)}


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "rag-api"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "rag-api"}},
            "template": {
                "metadata": {"labels": {"app": "rag-api"}},
                "spec": {
                    "containers": [
                        {
                            "name": "rag-api",
                            "image": "local-standin:test",
                            "command": ["python", "standin_pod_server.py"],
                            "ports": [{"containerPort": 8000, "name": "http"}],
                            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
                        }
                    ]
                },
            },
        },
    }


def service(**spec: Any) -> dict[str, Any]:
    body = {
        "type": "NodePort",
        "selector": {"app": "rag-api"},
        "ports": [{"port": 80, "targetPort": "http", "nodePort": 31871}],
    }
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "rag-api"}, "spec": body}


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return objects[0]["spec"]["template"]["spec"]["containers"][0]


def test_a_valid_deployment_and_service_are_understood() -> None:
    spec = parse_objects([deployment(), service()], STANDIN)
    workload = spec.workloads["rag-api"]
    assert workload.replicas == 2
    assert workload.template.resolve_port("http") == 8000
    readiness = workload.template.probe("readiness")
    assert readiness is not None and readiness.port == 8000 and readiness.path == "/readyz"
    assert spec.services["rag-api"].ports[0].node_port == 31871
    assert len(workload.template.template_hash) == 10


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda o: o[0]["spec"]["template"]["spec"].update(hostNetwork=True), "hostNetwork"),
        (
            lambda o: o[0]["spec"]["template"]["spec"].update(
                initContainers=[{"name": "init", "image": "busybox"}]
            ),
            "initContainers",
        ),
        (
            lambda o: container(o).update(image="nginx:1.27"),
            "image 'nginx:1.27' has no local mapping",
        ),
        (
            lambda o: container(o).update(
                livenessProbe={"httpGet": {"path": "/healthz", "port": 9090}}
            ),
            "livenessProbe port 9090 is not a declared containerPort",
        ),
        (
            lambda o: container(o).update(readinessProbe={"exec": {"command": ["true"]}}),
            "readinessProbe",
        ),
        (lambda o: o[1]["spec"].update(type="LoadBalancer"), "spec.type LoadBalancer"),
        (
            lambda o: o[1]["spec"]["ports"][0].pop("nodePort"),
            "nodePort is not set",
        ),
        (
            lambda o: container(o).update(
                env=[{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}]
            ),
            "ConfigMap 'nope'",
        ),
        (
            lambda o: container(o).update(
                env=[{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels"}}}]
            ),
            "fieldRef 'metadata.labels'",
        ),
        (lambda o: o.append({"kind": "Job", "metadata": {"name": "pull"}}), "kind 'Job'"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_field(mutate: Any, expected: str) -> None:
    objects = [deployment(), service()]
    mutate(objects)
    with pytest.raises(ManifestError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        parse_objects(objects, STANDIN)


def test_the_generated_api_secret_satisfies_a_secret_key_ref() -> None:
    objects = [deployment(), service()]
    ref = {"secretKeyRef": {"name": "rag-api-secret", "key": "api-key"}}
    container(objects)["env"] = [{"name": "RAG_API_KEY", "valueFrom": ref}]
    with pytest.raises(ManifestError, match="rag-api-secret"):
        parse_objects(objects, STANDIN)
    spec = parse_objects(objects, STANDIN, {"rag-api-secret": {"api-key": "k"}})
    assert spec.secrets["rag-api-secret"]["api-key"] == "k"


def test_template_hash_changes_with_the_template_only() -> None:
    template = deployment()["spec"]["template"]
    changed = copy.deepcopy(template)
    changed["metadata"]["annotations"] = {"kubectl.kubernetes.io/restartedAt": "now"}
    assert template_hash(template) == template_hash(copy.deepcopy(template))
    assert template_hash(template) != template_hash(changed)


def test_image_repository_drops_tag_and_digest_but_not_a_registry_port() -> None:
    assert image_repository("rag-api:dev") == "rag-api"
    assert image_repository("localhost:5000/team/rag-api:1.2") == "localhost:5000/team/rag-api"
    assert image_repository("chromadb/chroma@sha256:abc") == "chromadb/chroma"


def test_var_expansion_follows_kubernetes_rules() -> None:
    env = {"CHROMA_BIND_HOST": "127.0.1.7"}
    assert expand_vars("--host=$(CHROMA_BIND_HOST)", env) == "--host=127.0.1.7"
    assert expand_vars("$(UNKNOWN)", env) == "$(UNKNOWN)"  # left as written
    assert expand_vars("$$(CHROMA_BIND_HOST)", env) == "$(CHROMA_BIND_HOST)"  # escaped


def test_mount_paths_are_rewritten_at_path_boundaries_only() -> None:
    prefixes = [("/data/sub", "/host/sub"), ("/data", "/host/data"), ("/app", "/repo/system")]
    assert rewrite_paths("/data", prefixes) == "/host/data"
    assert rewrite_paths("/data/chroma", prefixes) == "/host/data/chroma"
    assert rewrite_paths("/data/sub/x", prefixes) == "/host/sub/x"
    assert rewrite_paths("/database", prefixes) == "/database"
    assert rewrite_paths("--path=/data", prefixes) == "--path=/host/data"
    assert rewrite_paths("/app/knowledge", prefixes) == "/repo/system/knowledge"
