"""The Kubernetes manifests under k8s/: they render, validate, and say what we promise.

Rendering uses the real `kubectl kustomize`; schemas come from `kubernetes-validate`
(offline). The policy scan with checkov is in test_manifests_policy.py.
"""

from __future__ import annotations

import copy
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import manifests_check as mc

FIXTURES = Path(__file__).parent / "fixtures" / "manifests"
Objects = list[dict[str, Any]]


@pytest.fixture(scope="module")
def rendered() -> dict[str, Objects]:
    """Every overlay rendered once for the module (kubectl kustomize, ~0.1 s each)."""
    if shutil.which("kubectl") is None:
        pytest.fail(
            "kubectl is not on PATH; the manifest tests render the overlays with "
            "`kubectl kustomize`. Install kubectl >= 1.27 (https://kubernetes.io/docs/tasks/tools/)"
        )
    return {name: mc.render_overlay(mc.OVERLAYS_DIR / name) for name in mc.ALL_OVERLAYS}


def container(objects: Objects, kind: str, name: str, container_name: str) -> dict[str, Any]:
    workload = mc.find_object(objects, kind, name)
    matches = [c for c in mc.containers_of(workload) if c["name"] == container_name]
    assert matches, f"{kind}/{name} has no container {container_name}"
    return matches[0]


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in c.get("env", [])}


def ids(objects: Objects) -> set[str]:
    return {mc.object_id(obj) for obj in objects}


# --- rendering and schemas -------------------------------------------------------------------


def test_overlay_directories_are_the_ones_we_test() -> None:
    on_disk = {p.name for p in mc.OVERLAYS_DIR.iterdir() if (p / "kustomization.yaml").is_file()}
    assert on_disk == set(mc.ALL_OVERLAYS)


@pytest.mark.parametrize("overlay", mc.ALL_OVERLAYS)
def test_every_overlay_renders_the_app_and_its_store(
    rendered: dict[str, Objects], overlay: str
) -> None:
    objects = rendered[overlay]
    assert {
        "ConfigMap/rag-api-config",
        "Deployment/rag-api",
        "Service/rag-api",
        "StatefulSet/chroma",
        "Service/chroma",
    } <= ids(objects)


@pytest.mark.parametrize("version", ["1.30", "1.32"])
@pytest.mark.parametrize("overlay", mc.ALL_OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schema(
    rendered: dict[str, Objects], overlay: str, version: str
) -> None:
    findings = mc.schema_findings(rendered[overlay], version=version, strict=True)
    assert not findings, mc.format_findings(findings)


@pytest.mark.parametrize("overlay", mc.PRODUCTION_OVERLAYS)
def test_production_overlays_pass_every_check(rendered: dict[str, Objects], overlay: str) -> None:
    findings = mc.all_findings(rendered[overlay])
    assert not findings, f"{overlay}:\n{mc.format_findings(findings)}"


def test_render_without_kubectl_fails_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(mc.ManifestCheckError, match="kubectl is not on PATH"):
        mc.render_overlay(mc.OVERLAYS_DIR / "minikube")


def test_render_of_a_broken_overlay_reports_kustomize_error(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - does-not-exist.yaml\n")
    with pytest.raises(mc.ManifestCheckError, match=r"failed \(exit \d+\).*does-not-exist"):
        mc.render_overlay(tmp_path)


# --- the rag-api Deployment, Service and PDB ---------------------------------------------------


@pytest.mark.parametrize("overlay", mc.PRODUCTION_OVERLAYS)
def test_rag_api_deployment_properties(rendered: dict[str, Objects], overlay: str) -> None:
    objects = rendered[overlay]
    deployment = mc.find_object(objects, "Deployment", "rag-api")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    app = container(objects, "Deployment", "rag-api", "rag-api")

    assert spec["replicas"] == 2
    assert spec["selector"] == {"matchLabels": {"app": "rag-api"}}
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert app["image"] == "rag-api:dev"
    assert app["command"] == ["python", "-m", "rag_api"]
    assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in app["ports"]

    assert app["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert app["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert app["startupProbe"]["httpGet"]["path"] == "/healthz"
    # startup budget: long enough for model + knowledge load
    startup = app["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60

    pre_stop = app["lifecycle"]["preStop"]
    pause = mc.pre_stop_seconds(pre_stop)
    assert pause is not None and 3 <= pause <= 5, pre_stop
    assert pod["terminationGracePeriodSeconds"] == 30

    resources = app["resources"]
    for section in ("requests", "limits"):
        assert set(resources[section]) == {"cpu", "memory"}

    security = app["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    # writable places under a read-only root: /tmp and the embedded-store directory
    mounts = {m["mountPath"]: m["name"] for m in app["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]]
    assert env_of(app)["RAG_CHROMA_PATH"]["value"].startswith("/var/lib/rag-api/")
    assert "emptyDir" in volumes[mounts["/var/lib/rag-api"]]

    spread = pod["topologySpreadConstraints"]
    assert spread == [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app": "rag-api"}},
        }
    ]


@pytest.mark.parametrize("overlay", mc.PRODUCTION_OVERLAYS)
def test_rag_api_settings_come_from_configmap_and_secret(
    rendered: dict[str, Objects], overlay: str
) -> None:
    objects = rendered[overlay]
    env = env_of(container(objects, "Deployment", "rag-api", "rag-api"))
    config = mc.find_object(objects, "ConfigMap", "rag-api-config")["data"]
    assert env["RAG_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "rag-api-secret", "key": "api-key"}
    }
    for name in ("RAG_STORE", "RAG_CHROMA_HOST", "RAG_CHROMA_PORT", "RAG_OLLAMA_HOST",
                 "RAG_OLLAMA_MODEL", "RAG_SHUTDOWN_TIMEOUT_S"):  # fmt: skip
        assert env[name]["valueFrom"]["configMapKeyRef"] == {
            "name": "rag-api-config",
            "key": name,
        }
        assert name in config
    assert env["RAG_PORT"]["value"] == "8000"
    assert config["RAG_STORE"] == "http"
    assert config["RAG_CHROMA_PORT"] == "8000"
    assert config["RAG_OLLAMA_MODEL"] == "smollm2:135m"
    # the key is generated at deploy time, never committed
    assert not [obj for obj in objects if obj["kind"] == "Secret"]


@pytest.mark.parametrize("overlay", ["minikube", "kind", "k3d"])
def test_real_cluster_overlays_use_the_base_wiring_and_the_loaded_image(
    rendered: dict[str, Objects], overlay: str
) -> None:
    objects = rendered[overlay]
    app = container(objects, "Deployment", "rag-api", "rag-api")
    assert app["imagePullPolicy"] == "Never"
    config = mc.find_object(objects, "ConfigMap", "rag-api-config")["data"]
    assert config["RAG_HOST"] == "0.0.0.0"
    assert config["RAG_CHROMA_HOST"] == "chroma"
    assert config["RAG_OLLAMA_HOST"] == "http://ollama:11434"
    assert env_of(app)["RAG_HOST"]["valueFrom"]["configMapKeyRef"]["key"] == "RAG_HOST"
    chroma = container(objects, "StatefulSet", "chroma", "chroma")
    assert env_of(chroma)["CHROMA_BIND_HOST"] == {"name": "CHROMA_BIND_HOST", "value": "0.0.0.0"}
    # the public images keep pulling when absent
    assert chroma["imagePullPolicy"] == "IfNotPresent"


@pytest.mark.parametrize("overlay", mc.ALL_OVERLAYS)
def test_rag_api_service_is_nodeport_31859(rendered: dict[str, Objects], overlay: str) -> None:
    service = mc.find_object(rendered[overlay], "Service", "rag-api")
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["selector"] == {"app": "rag-api"}
    assert service["spec"]["ports"] == [
        {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http", "nodePort": 31859}
    ]


@pytest.mark.parametrize("overlay", mc.PRODUCTION_OVERLAYS)
def test_rag_api_has_a_disruption_budget(rendered: dict[str, Objects], overlay: str) -> None:
    budget = mc.find_object(rendered[overlay], "PodDisruptionBudget", "rag-api")
    assert budget["spec"] == {"minAvailable": 1, "selector": {"matchLabels": {"app": "rag-api"}}}


@pytest.mark.parametrize("overlay", mc.ALL_OVERLAYS)
def test_no_namespace_and_common_labels_only_outside_selectors(
    rendered: dict[str, Objects], overlay: str
) -> None:
    for obj in rendered[overlay]:
        where = mc.object_id(obj)
        assert "namespace" not in obj["metadata"], where
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "rag-chaos-harness", where
        selector = (obj.get("spec") or {}).get("selector") or {}
        assert "app.kubernetes.io/part-of" not in str(selector), where
        template = (obj.get("spec") or {}).get("template")
        if template:
            assert template["metadata"]["labels"]["app.kubernetes.io/part-of"], where


# --- chroma, ollama, network policies ----------------------------------------------------------


@pytest.mark.parametrize("overlay", mc.ALL_OVERLAYS)
def test_chroma_statefulset_follows_the_contract(
    rendered: dict[str, Objects], overlay: str
) -> None:
    objects = rendered[overlay]
    statefulset = mc.find_object(objects, "StatefulSet", "chroma")
    spec = statefulset["spec"]
    chroma = container(objects, "StatefulSet", "chroma", "chroma")
    assert spec["replicas"] == 1
    assert spec["template"]["metadata"]["labels"]["app"] == "chroma"
    assert chroma["command"] == [
        "chroma", "run", "--path", "/data", "--host", "$(CHROMA_BIND_HOST)", "--port", "8000",
    ]  # fmt: skip
    image, _, tag = chroma["image"].partition(":")
    assert image == "chromadb/chroma" and tag and tag != "latest"
    assert chroma["readinessProbe"]["httpGet"]["path"] == "/api/v2/heartbeat"
    assert {"name": "data", "mountPath": "/data"} in chroma["volumeMounts"]
    claim = spec["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    service = mc.find_object(objects, "Service", "chroma")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["port"] == 8000


@pytest.mark.parametrize("overlay", ["minikube", "kind", "k3d"])
def test_ollama_objects_and_the_pull_job(rendered: dict[str, Objects], overlay: str) -> None:
    objects = rendered[overlay]
    assert {
        "Deployment/ollama",
        "Service/ollama",
        "PersistentVolumeClaim/ollama-models",
        "Job/ollama-pull",
    } <= ids(objects)
    service = mc.find_object(objects, "Service", "ollama")
    assert service["spec"]["ports"][0]["port"] == 11434
    ollama = container(objects, "Deployment", "ollama", "ollama")
    assert env_of(ollama)["OLLAMA_MODELS"]["value"] == "/models"
    pull = container(objects, "Job", "ollama-pull", "pull")
    # the Job pulls exactly the model the API will ask for: both read the same ConfigMap key
    assert env_of(pull)["RAG_OLLAMA_MODEL"]["valueFrom"]["configMapKeyRef"] == {
        "name": "rag-api-config",
        "key": "RAG_OLLAMA_MODEL",
    }
    assert any("$(RAG_OLLAMA_MODEL)" in arg for arg in pull["args"])
    assert pull["args"][-1] == "http://ollama:11434/api/pull"
    job = mc.find_object(objects, "Job", "ollama-pull")["spec"]
    assert job["backoffLimit"] >= 1 and job["activeDeadlineSeconds"] > 0


# who may reach whom, evaluated with Kubernetes' NetworkPolicy semantics
REACHABILITY = [
    ("rag-api", "chroma", 8000, True),
    ("ollama", "chroma", 8000, False),
    ("ollama-pull", "chroma", 8000, False),
    ("rag-api", "ollama", 11434, True),
    ("ollama-pull", "ollama", 11434, True),
    ("chroma", "ollama", 11434, False),
    ("anything", "rag-api", 8000, True),
    ("anything", "rag-api", 9000, False),
    ("rag-api", "chroma", 9000, False),
]


@pytest.mark.parametrize(("source", "target", "port", "allowed"), REACHABILITY)
def test_network_policies_let_only_rag_api_reach_its_backends(
    rendered: dict[str, Objects], source: str, target: str, port: int, allowed: bool
) -> None:
    objects = rendered["minikube"]
    assert mc.network_policy_allows(objects, {"app": source}, {"app": target}, port) is allowed


# --- the local and tutorial overlays -----------------------------------------------------------


@pytest.mark.parametrize("overlay", ["local", "tutorial"])
def test_local_overlay_binds_pod_ips_and_drops_ollama(
    rendered: dict[str, Objects], overlay: str
) -> None:
    objects = rendered[overlay]
    pod_ip = {"fieldRef": {"fieldPath": "status.podIP"}}
    app_env = env_of(container(objects, "Deployment", "rag-api", "rag-api"))
    assert app_env["RAG_HOST"] == {"name": "RAG_HOST", "valueFrom": pod_ip}
    chroma_env = env_of(container(objects, "StatefulSet", "chroma", "chroma"))
    assert chroma_env["CHROMA_BIND_HOST"] == {"name": "CHROMA_BIND_HOST", "valueFrom": pod_ip}
    service = mc.find_object(objects, "Service", "chroma")
    assert service["spec"]["clusterIP"] == "127.0.2.10"
    config = mc.find_object(objects, "ConfigMap", "rag-api-config")["data"]
    assert config["RAG_CHROMA_HOST"] == "127.0.2.10"
    assert config["RAG_OLLAMA_HOST"] == "http://127.0.0.1:11434"
    assert not [i for i in ids(objects) if "ollama" in i]
    # no policy left that guards pods which do not exist
    assert not mc.selector_findings(objects)


def test_tutorial_overlay_is_the_fragile_original(rendered: dict[str, Objects]) -> None:
    objects = rendered["tutorial"]
    deployment = mc.find_object(objects, "Deployment", "rag-api")
    app = container(objects, "Deployment", "rag-api", "rag-api")
    assert deployment["spec"]["replicas"] == 1
    for absent in ("readinessProbe", "livenessProbe", "startupProbe", "lifecycle", "resources"):
        assert absent not in app, absent
    assert "PodDisruptionBudget/rag-api" not in ids(objects)
    # everything else as in local: same command, port, Service and store
    assert app["command"] == ["python", "-m", "rag_api"]
    local = rendered["local"]
    assert (
        mc.find_object(objects, "Service", "rag-api")["spec"]
        == (mc.find_object(local, "Service", "rag-api")["spec"])
    )
    assert (
        mc.find_object(objects, "StatefulSet", "chroma")["spec"]
        == (mc.find_object(local, "StatefulSet", "chroma")["spec"])
    )
    # the checks see exactly the missing resilience, nothing else
    rules = {f.rule for f in mc.all_findings(objects)}
    assert rules == {"probe", "resources", "replicas", "rollout", "prestop", "pdb"}


# --- regressions are caught: mutate the real render, expect the named rule ---------------------


def _app(objects: Objects) -> dict[str, Any]:
    return container(objects, "Deployment", "rag-api", "rag-api")


def _deployment(objects: Objects) -> dict[str, Any]:
    return next(o for o in objects if mc.object_id(o) == "Deployment/rag-api")


def _service(objects: Objects) -> dict[str, Any]:
    return next(o for o in objects if mc.object_id(o) == "Service/rag-api")


def _drop_pdb(objects: Objects) -> None:
    objects[:] = [o for o in objects if o["kind"] != "PodDisruptionBudget"]


MUTATIONS: dict[str, tuple[Callable[[Objects], None], str, str]] = {
    "no preStop": (lambda o: _app(o).pop("lifecycle"), "prestop", "no lifecycle.preStop"),
    "short grace": (
        lambda o: _deployment(o)["spec"]["template"]["spec"].update(
            terminationGracePeriodSeconds=10
        ),
        "prestop",
        "terminationGracePeriodSeconds 10",
    ),
    "maxUnavailable 1": (
        lambda o: _deployment(o)["spec"]["strategy"]["rollingUpdate"].update(maxUnavailable=1),
        "rollout",
        "maxUnavailable 0",
    ),
    "one replica": (lambda o: _deployment(o)["spec"].update(replicas=1), "replicas", "replicas 1"),
    "no readiness": (lambda o: _app(o).pop("readinessProbe"), "probe", "no readinessProbe"),
    "readiness on healthz": (
        lambda o: _app(o)["readinessProbe"]["httpGet"].update(path="/healthz"),
        "probe",
        "readinessProbe must be httpGet /readyz",
    ),
    "no limits": (lambda o: _app(o)["resources"].pop("limits"), "resources", "limits.memory"),
    "writable root": (
        lambda o: _app(o)["securityContext"].update(readOnlyRootFilesystem=False),
        "security",
        "readOnlyRootFilesystem must be true",
    ),
    "capabilities kept": (
        lambda o: _app(o)["securityContext"].pop("capabilities"),
        "security",
        "capabilities.drop must contain ALL",
    ),
    "wrong nodePort": (
        lambda o: _service(o)["spec"]["ports"][0].update(nodePort=30080),
        "service",
        "nodePort 31859",
    ),
    "service selector typo": (
        lambda o: _service(o)["spec"].update(selector={"app": "rag-ap"}),
        "selector",
        "matches no pod template",
    ),
    "no PDB": (_drop_pdb, "pdb", "no PodDisruptionBudget"),
    "namespace hard-coded": (
        lambda o: _service(o)["metadata"].update(namespace="default"),
        "namespace",
        "hard-coded namespace 'default'",
    ),
    "secret committed": (
        lambda o: o.append(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rag-api-secret"}}
        ),
        "secret",
        "never committed",
    ),
    "command changed": (
        lambda o: _app(o).update(command=["uvicorn", "rag_api:app"]),
        "contract",
        "command",
    ),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_regression_in_the_manifests_is_reported(
    rendered: dict[str, Objects], mutation: str
) -> None:
    mutate, rule, text = MUTATIONS[mutation]
    objects = copy.deepcopy(rendered["minikube"])
    mutate(objects)
    # schema validation is covered above and is the slow part; not needed here
    findings = [
        *mc.selector_findings(objects),
        *mc.workload_findings(objects),
        *mc.rag_api_findings(objects),
    ]
    hits = [f for f in findings if f.rule == rule and text in f.message]
    assert hits, f"{mutation}: expected a [{rule}] finding with {text!r}, got:\n" + (
        mc.format_findings(findings)
    )


# --- bad input fixtures ------------------------------------------------------------------------


def fixture_objects(name: str) -> Objects:
    return mc.load_manifests(FIXTURES / name)


def test_valid_fixture_has_no_findings() -> None:
    objects = fixture_objects("valid-minimal.yaml")
    findings = [
        *mc.schema_findings(objects),
        *mc.selector_findings(objects),
        *mc.workload_findings(objects),
    ]
    assert not findings, mc.format_findings(findings)


def test_service_selector_matching_no_pod_is_reported() -> None:
    findings = mc.selector_findings(fixture_objects("wrong-service-selector.yaml"))
    assert [str(f) for f in findings] == [
        "Service/web: selector {app: wbe} matches no pod template in these manifests "
        "(pod templates: Deployment/web {app: web}); the Service would have no endpoints "
        "[selector]"
    ]


def test_deployment_selector_not_matching_its_template_is_reported() -> None:
    findings = mc.selector_findings(fixture_objects("wrong-deployment-selector.yaml"))
    messages = [str(f) for f in findings]
    assert (
        "Deployment/web: spec.selector {app: web} does not match its own pod template labels "
        "{app: web-v2}; the API server rejects it (`selector` does not match template "
        "`labels`) [selector]"
    ) in messages
    # and its Service, which selects app=web, now selects nothing either
    assert any(m.startswith("Service/web: selector {app: web} matches no pod") for m in messages)


def test_missing_probe_is_reported() -> None:
    findings = mc.workload_findings(fixture_objects("missing-readiness-probe.yaml"))
    assert [str(f) for f in findings] == [
        "Deployment/web container web: no readinessProbe: the Service would send traffic to a "
        "pod that cannot answer yet (or any more) [probe]"
    ]


def test_schema_errors_name_the_field() -> None:
    findings = mc.schema_findings(fixture_objects("schema-typo.yaml"))
    assert len(findings) == 1, mc.format_findings(findings)
    finding = findings[0]
    assert finding.obj == "Deployment/web" and finding.rule == "schema"
    # strict schema: the first error jsonschema meets is one of the two planted ones
    assert "replicas" in finding.message or "readinessprobe" in finding.message


def test_schema_error_for_an_unknown_api_is_readable() -> None:
    bogus = [{"apiVersion": "apps/v1beta9", "kind": "Deployment", "metadata": {"name": "x"}}]
    (finding,) = mc.schema_findings(bogus)
    assert "no schema for apiVersion 'apps/v1beta9'" in finding.message


def test_pre_stop_seconds_reads_every_form() -> None:
    assert mc.pre_stop_seconds({"sleep": {"seconds": 4}}) == 4
    assert mc.pre_stop_seconds({"exec": {"command": ["sleep", "3"]}}) == 3
    assert (
        mc.pre_stop_seconds({"exec": {"command": ["python", "-c", "import time; time.sleep(5)"]}})
        == 5
    )
    assert mc.pre_stop_seconds({"exec": {"command": ["/bin/true"]}}) is None


def test_command_line_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert mc.main([str(FIXTURES / "valid-minimal.yaml")]) == 1  # not a rag-api deployment
    assert "Deployment/rag-api is not among: Deployment/web, Service/web" in (
        capsys.readouterr().out
    )
    assert mc.main([str(mc.OVERLAYS_DIR / "minikube")]) == 0
    assert mc.main([str(mc.OVERLAYS_DIR / "tutorial")]) == 1
    assert "no lifecycle.preStop" in capsys.readouterr().out


def test_readme_tells_how_to_create_the_secret_and_apply() -> None:
    readme = (mc.K8S_DIR / "README.md").read_text()
    assert re.search(r"kubectl (-n \S+ )?create secret generic rag-api-secret", readme)
    assert "secrets.token_hex" in readme  # a generated key, not one written down
    assert re.search(r"kubectl (-n \S+ )?apply -k k8s/overlays/minikube", readme)
    assert "31859" in readme
