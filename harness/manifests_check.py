"""Checks on rendered Kubernetes manifests, with findings a person can act on.

Used by the unit tests on every overlay under ``k8s/`` and on broken fixtures, and on its
own before an apply: ``python -m harness.manifests_check [OVERLAY_DIR_OR_YAML ...]``.

Four families, each a function from rendered objects to a list of :class:`Finding`:
- :func:`schema_findings`: every object against the Kubernetes JSON schema, offline
  (``kubernetes-validate`` ships the schemas), strict so a misspelt field is an error;
- :func:`selector_findings`: selectors that select nothing (a Service with no endpoints,
  a workload whose selector misses its own template, a PDB or NetworkPolicy guarding nothing);
- :func:`workload_findings`: what every long-running container needs here (probes, requests
  and limits, a locked-down securityContext);
- :func:`rag_api_findings`: the RAG API's deployment contract (docs/contracts.md) and the
  properties that make a pod kill cost users nothing (replicas, preStop, grace, PDB, ...).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = REPO_ROOT / "k8s"
OVERLAYS_DIR = K8S_DIR / "overlays"
#: overlays that must pass every check; `tutorial` is the deliberately fragile comparison
PRODUCTION_OVERLAYS = ("minikube", "kind", "k3d", "local")
ALL_OVERLAYS = (*PRODUCTION_OVERLAYS, "tutorial")

KUSTOMIZE_TIMEOUT_S = float(os.environ.get("RAG_KUSTOMIZE_TIMEOUT_S", "60"))
#: schema version the manifests must satisfy: the oldest Kubernetes we expect to meet
SCHEMA_VERSION = os.environ.get("RAG_K8S_SCHEMA_VERSION", "1.30")

# the contract (docs/contracts.md)
APP_NAME = "rag-api"
APP_COMMAND = ["python", "-m", "rag_api"]
APP_PORT_NAME = "http"
APP_CONTAINER_PORT = 8000
APP_SERVICE_PORT = 80
APP_NODE_PORT = 31859
APP_CONFIGMAP = "rag-api-config"
APP_SECRET = "rag-api-secret"  # noqa: S105 - the Secret object's name, not a value
APP_SECRET_KEY = "api-key"  # noqa: S105 - the key's name in that Secret
MIN_REPLICAS = 2
# the service's default drain time when the ConfigMap does not say (rag_api.settings)
DEFAULT_SHUTDOWN_TIMEOUT_S = 20.0

LONG_RUNNING_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"})
POD_TEMPLATE_KINDS = LONG_RUNNING_KINDS | {"Job"}


class ManifestCheckError(RuntimeError):
    """Manifests could not be rendered or read; the message names the cause and the fix."""


@dataclass(frozen=True)
class Finding:
    """One problem in one object. ``rule`` is a short stable id tests can match on."""

    obj: str  # "Kind/name"
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.obj}: {self.message} [{self.rule}]"


def format_findings(findings: Iterable[Finding]) -> str:
    return "\n".join(f"- {finding}" for finding in findings) or "(no findings)"


# --------------------------------------------------------------------------------------------
# reading manifests


def render_overlay(overlay: Path, timeout_s: float = KUSTOMIZE_TIMEOUT_S) -> list[dict[str, Any]]:
    """Objects rendered by ``kubectl kustomize OVERLAY`` (bounded by ``timeout_s``)."""
    overlay = Path(overlay)
    if not (overlay / "kustomization.yaml").is_file():
        raise ManifestCheckError(f"{overlay} is not a kustomize directory (no kustomization.yaml)")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise ManifestCheckError(
            "kubectl is not on PATH: it renders the overlays (`kubectl kustomize`, kustomize "
            "v5 is built in). Install kubectl >= 1.27: https://kubernetes.io/docs/tasks/tools/"
        )
    argv = [kubectl, "kustomize", str(overlay)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ManifestCheckError(
            f"`kubectl kustomize {overlay}` did not finish in {timeout_s:.0f} s "
            f"(stderr so far: {(exc.stderr or b'')[-500:]!r}); a remote base or a hung "
            "plugin? raise RAG_KUSTOMIZE_TIMEOUT_S if the machine is just slow"
        ) from exc
    if done.returncode != 0:
        raise ManifestCheckError(
            f"`kubectl kustomize {overlay}` failed (exit {done.returncode}): "
            f"{done.stderr.strip()[-2000:]}"
        )
    return parse_yaml(done.stdout, str(overlay))


def parse_yaml(text: str, source: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML text; anything but mappings is an error."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestCheckError(f"{source}: not valid YAML: {exc}") from exc
    objects: list[dict[str, Any]] = []
    for index, document in enumerate(documents):
        if document is None:
            continue
        if not isinstance(document, dict) or "kind" not in document:
            raise ManifestCheckError(
                f"{source}: document {index} is not a Kubernetes object (no `kind`)"
            )
        objects.append(document)
    return objects


def load_manifests(path: Path) -> list[dict[str, Any]]:
    """Objects of a kustomize directory (rendered) or of a YAML file (read as is)."""
    path = Path(path)
    if path.is_dir():
        return render_overlay(path)
    if path.is_file():
        return parse_yaml(path.read_text(), str(path))
    raise ManifestCheckError(f"{path} does not exist; pass an overlay directory or a YAML file")


def object_id(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"


def find_object(objects: Sequence[Mapping[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj.get("kind") == kind and (obj.get("metadata") or {}).get("name") == name:
            return dict(obj)
    raise KeyError(f"{kind}/{name} is not among: {', '.join(object_id(o) for o in objects)}")


def pod_template(obj: Mapping[str, Any]) -> dict[str, Any]:
    template = (obj.get("spec") or {}).get("template") or {}
    return dict(template)


def containers_of(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((pod_template(obj).get("spec") or {}).get("containers") or [])


# --------------------------------------------------------------------------------------------
# schema


def schema_findings(
    objects: Iterable[Mapping[str, Any]], version: str = SCHEMA_VERSION, strict: bool = True
) -> list[Finding]:
    """Each object against the bundled JSON schema for ``version``; no network involved."""
    import kubernetes_validate  # a dev tool, imported only where schemas are checked

    findings = []
    for obj in objects:
        try:
            kubernetes_validate.validate(dict(obj), version, strict=strict)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path) or "(top level)"
            findings.append(
                Finding(object_id(obj), "schema", f"{where}: {exc.message} (Kubernetes {version})")
            )
        except kubernetes_validate.SchemaNotFoundError:
            findings.append(
                Finding(
                    object_id(obj),
                    "schema",
                    f"no schema for apiVersion {obj.get('apiVersion')!r} kind "
                    f"{obj.get('kind')!r} in Kubernetes {version}: misspelt or removed API",
                )
            )
    return findings


# --------------------------------------------------------------------------------------------
# selectors


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    """A LabelSelector (matchLabels + matchExpressions) against labels, as the API does.

    An empty selector matches everything (how NetworkPolicy's `podSelector: {}` reads).
    """
    for key, value in (selector.get("matchLabels") or {}).items():
        if key not in labels or str(labels[key]) != str(value):
            return False
    for expression in selector.get("matchExpressions") or []:
        key = expression.get("key")
        operator = expression.get("operator")
        values = {str(v) for v in expression.get("values") or []}
        present = key in labels
        if operator == "In" and not (present and str(labels[key]) in values):
            return False
        if operator == "NotIn" and present and str(labels[key]) in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _labels_text(labels: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(labels.items())) + "}"


def _selector_text(selector: Mapping[str, Any]) -> str:
    parts = [f"{k}: {v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    parts += [
        f"{e.get('key')} {e.get('operator')} {e.get('values', [])}"
        for e in selector.get("matchExpressions") or []
    ]
    return "{" + ", ".join(parts) + "}"


def selector_findings(objects: Sequence[Mapping[str, Any]]) -> list[Finding]:
    """Selectors that select nothing, or select the wrong thing."""
    templates = [
        (object_id(obj), (pod_template(obj).get("metadata") or {}).get("labels") or {}, obj)
        for obj in objects
        if obj.get("kind") in POD_TEMPLATE_KINDS
    ]
    known = "; ".join(f"{where} {_labels_text(labels)}" for where, labels, _ in templates)
    known = known or "none"
    services = {
        (obj.get("metadata") or {}).get("name"): obj
        for obj in objects
        if obj.get("kind") == "Service"
    }
    findings: list[Finding] = []

    def matching(selector: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any], Any]]:
        return [entry for entry in templates if selector_matches(selector, entry[1])]

    for obj in objects:
        kind = obj.get("kind")
        where = object_id(obj)
        spec = obj.get("spec") or {}
        if kind in LONG_RUNNING_KINDS:
            selector = spec.get("selector") or {}
            labels = (pod_template(obj).get("metadata") or {}).get("labels") or {}
            if not selector.get("matchLabels") and not selector.get("matchExpressions"):
                findings.append(
                    Finding(where, "selector", "spec.selector is empty; it must select the pods")
                )
            elif not selector_matches(selector, labels):
                findings.append(
                    Finding(
                        where,
                        "selector",
                        f"spec.selector {_selector_text(selector)} does not match its own pod "
                        f"template labels {_labels_text(labels)}; the API server rejects it "
                        "(`selector` does not match template `labels`)",
                    )
                )
            if kind == "StatefulSet" and spec.get("serviceName") not in services:
                findings.append(
                    Finding(
                        where,
                        "selector",
                        f"serviceName {spec.get('serviceName')!r} names no Service in these "
                        "manifests",
                    )
                )
        elif kind == "Service" and spec.get("selector"):
            selector = {"matchLabels": spec["selector"]}
            selected = matching(selector)
            if not selected:
                findings.append(
                    Finding(
                        where,
                        "selector",
                        f"selector {_selector_text(selector)} matches no pod template in these "
                        f"manifests (pod templates: {known}); the Service would have no "
                        "endpoints",
                    )
                )
            for port in spec.get("ports") or []:
                target = port.get("targetPort")
                if not isinstance(target, str):
                    continue
                for template_where, _, workload in selected:
                    names = {
                        p.get("name") for c in containers_of(workload) for p in c.get("ports") or []
                    }
                    if target not in names:
                        findings.append(
                            Finding(
                                where,
                                "selector",
                                f"targetPort {target!r} is not a named containerPort of "
                                f"{template_where} (its ports: {sorted(n for n in names if n)})",
                            )
                        )
        elif kind == "PodDisruptionBudget":
            selector = spec.get("selector") or {}
            if not matching(selector):
                findings.append(
                    Finding(
                        where,
                        "selector",
                        f"selector {_selector_text(selector)} matches no pod template "
                        f"(pod templates: {known}); the budget protects nothing",
                    )
                )
        elif kind == "NetworkPolicy":
            selector = spec.get("podSelector") or {}
            if selector and not matching(selector):
                findings.append(
                    Finding(
                        where,
                        "selector",
                        f"podSelector {_selector_text(selector)} matches no pod template "
                        f"(pod templates: {known}); the policy applies to nothing",
                    )
                )
    return findings


# --------------------------------------------------------------------------------------------
# what every long-running container needs


def _effective(container: Mapping[str, Any], pod_spec: Mapping[str, Any], key: str) -> Any:
    """A securityContext field as the kubelet resolves it: container first, then pod."""
    container_value = (container.get("securityContext") or {}).get(key)
    if container_value is not None:
        return container_value
    return (pod_spec.get("securityContext") or {}).get(key)


def workload_findings(objects: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """Probes, requests/limits and a locked-down securityContext on every container.

    Jobs run to completion: they need no probes, the rest applies to them too.
    """
    findings: list[Finding] = []
    for obj in objects:
        kind = obj.get("kind")
        if kind not in POD_TEMPLATE_KINDS:
            continue
        pod_spec = pod_template(obj).get("spec") or {}
        for container in pod_spec.get("containers") or []:
            where = f"{object_id(obj)} container {container.get('name', '?')}"

            def add(rule: str, message: str, where: str = where) -> None:
                findings.append(Finding(where, rule, message))

            if kind in LONG_RUNNING_KINDS:
                if not container.get("readinessProbe"):
                    add(
                        "probe",
                        "no readinessProbe: the Service would send traffic to a pod that "
                        "cannot answer yet (or any more)",
                    )
                if not container.get("livenessProbe"):
                    add(
                        "probe",
                        "no livenessProbe: a hung process would never be restarted",
                    )
            resources = container.get("resources") or {}
            for section in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(section) or {}):
                        add("resources", f"resources.{section}.{resource} is not set")
            security = container.get("securityContext") or {}
            if security.get("allowPrivilegeEscalation") is not False:
                add("security", "securityContext.allowPrivilegeEscalation must be false")
            if security.get("readOnlyRootFilesystem") is not True:
                add("security", "securityContext.readOnlyRootFilesystem must be true")
            if security.get("privileged"):
                add("security", "securityContext.privileged must not be set")
            dropped = (security.get("capabilities") or {}).get("drop") or []
            if "ALL" not in dropped:
                add("security", "securityContext.capabilities.drop must contain ALL")
            if _effective(container, pod_spec, "runAsNonRoot") is not True:
                add("security", "runAsNonRoot must be true (container or pod securityContext)")
            user = _effective(container, pod_spec, "runAsUser")
            if user is not None and int(user) < 10000:
                add("security", f"runAsUser {user} may collide with a host user; use >= 10000")
            seccomp = _effective(container, pod_spec, "seccompProfile") or {}
            if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
                add("security", "seccompProfile.type must be RuntimeDefault (or Localhost)")
    return findings


# --------------------------------------------------------------------------------------------
# the RAG API's deployment contract and resilience


_SLEEP_PATTERNS = (
    re.compile(r"time\.sleep\(\s*(\d+(?:\.\d+)?)\s*\)"),  # python -c "...time.sleep(5)"
    re.compile(r"^(\d+(?:\.\d+)?)s?$"),  # sleep 5
)


def pre_stop_seconds(pre_stop: Mapping[str, Any]) -> float | None:
    """How long a preStop hook pauses: the sleep action, or an exec'd sleep; None if unknown."""
    if "sleep" in pre_stop:
        return float((pre_stop["sleep"] or {}).get("seconds", 0))
    command = [str(part) for part in (pre_stop.get("exec") or {}).get("command") or []]
    if not command:
        return None
    if Path(command[0]).name == "sleep" and len(command) == 2:
        match = _SLEEP_PATTERNS[1].match(command[1])
        return float(match.group(1)) if match else None
    for part in command:
        match = _SLEEP_PATTERNS[0].search(part)
        if match:
            return float(match.group(1))
    return None


def _env_entry(container: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    for entry in container.get("env") or []:
        if entry.get("name") == name:
            return dict(entry)
    return None


def _is_zero(value: Any) -> bool:
    return value in (0, "0", "0%")


def rag_api_findings(objects: Sequence[Mapping[str, Any]]) -> list[Finding]:
    """The RAG API's contract and the properties that keep a pod kill invisible to users."""
    findings: list[Finding] = []
    try:
        deployment = find_object(objects, "Deployment", APP_NAME)
    except KeyError as exc:
        return [Finding(f"Deployment/{APP_NAME}", "contract", str(exc).strip("'\""))]
    where = object_id(deployment)

    def add(rule: str, message: str, obj: str = where) -> None:
        findings.append(Finding(obj, rule, message))

    spec = deployment.get("spec") or {}
    pod_spec = pod_template(deployment).get("spec") or {}
    labels = (pod_template(deployment).get("metadata") or {}).get("labels") or {}
    if labels.get("app") != APP_NAME:
        add("contract", f"pod template label app={labels.get('app')!r}, want {APP_NAME!r}")
    if int(spec.get("replicas", 1)) < MIN_REPLICAS:
        add(
            "replicas",
            f"replicas {spec.get('replicas', 1)} < {MIN_REPLICAS}: one pod's death is an outage",
        )
    strategy = spec.get("strategy") or {}
    rolling = strategy.get("rollingUpdate") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate" or not _is_zero(
        rolling.get("maxUnavailable")
    ):
        add(
            "rollout",
            "strategy must be RollingUpdate with maxUnavailable 0 (got "
            f"{strategy.get('type', 'RollingUpdate')}, maxUnavailable "
            f"{rolling.get('maxUnavailable', '25% (default)')}): a rollout must never run "
            "below the desired ready pods",
        )
    spread = pod_spec.get("topologySpreadConstraints") or []
    anti = ((pod_spec.get("affinity") or {}).get("podAntiAffinity") or {}).get(
        "preferredDuringSchedulingIgnoredDuringExecution"
    )
    if not anti and not any(c.get("whenUnsatisfiable") == "ScheduleAnyway" for c in spread):
        add(
            "spread",
            "no soft spreading (topologySpreadConstraints with ScheduleAnyway or preferred "
            "podAntiAffinity): replicas may share a node and die together",
        )

    containers = {c.get("name"): c for c in pod_spec.get("containers") or []}
    container = containers.get(APP_NAME)
    if container is None:
        add("contract", f"no container named {APP_NAME!r} (have {sorted(containers)})")
        return findings
    cwhere = f"{where} container {APP_NAME}"
    if container.get("command") != APP_COMMAND:
        add("contract", f"command {container.get('command')!r}, want {APP_COMMAND!r}", cwhere)
    ports = {p.get("name"): p for p in container.get("ports") or []}
    if (ports.get(APP_PORT_NAME) or {}).get("containerPort") != APP_CONTAINER_PORT:
        add(
            "contract",
            f"containerPort {APP_CONTAINER_PORT} named {APP_PORT_NAME!r} missing (ports: "
            f"{[(p.get('name'), p.get('containerPort')) for p in ports.values()]})",
            cwhere,
        )

    for probe_name, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        probe = container.get(probe_name)
        if not probe:
            add("probe", f"no {probe_name} (want httpGet {path} on {APP_PORT_NAME})", cwhere)
        elif (probe.get("httpGet") or {}).get("path") != path:
            add("probe", f"{probe_name} must be httpGet {path}, got {probe}", cwhere)
    if not container.get("startupProbe"):
        add(
            "probe",
            "no startupProbe: a slow start (model and knowledge loading) would be killed by "
            "liveness",
            cwhere,
        )

    pre_stop = (container.get("lifecycle") or {}).get("preStop")
    grace = float(pod_spec.get("terminationGracePeriodSeconds", 30))
    if not pre_stop:
        add(
            "prestop",
            "no lifecycle.preStop: SIGTERM arrives while kube-proxy still routes to the pod",
            cwhere,
        )
    else:
        pause = pre_stop_seconds(pre_stop)
        if pause is None or not 1 <= pause <= 15:
            add("prestop", f"preStop should pause 1-15 s, found {pre_stop} ({pause})", cwhere)
        else:
            drain = _shutdown_timeout_s(objects)
            if grace <= pause + drain:
                add(
                    "prestop",
                    f"terminationGracePeriodSeconds {grace:g} <= preStop {pause:g} s + drain "
                    f"{drain:g} s (RAG_SHUTDOWN_TIMEOUT_S): in-flight requests would be "
                    "SIGKILLed",
                    where,
                )

    key_env = _env_entry(container, "RAG_API_KEY") or {}
    secret_ref = (key_env.get("valueFrom") or {}).get("secretKeyRef") or {}
    if secret_ref.get("name") != APP_SECRET or secret_ref.get("key") != APP_SECRET_KEY:
        add(
            "secret",
            f"RAG_API_KEY must come from secretKeyRef {APP_SECRET}/{APP_SECRET_KEY}, "
            f"got {key_env or 'nothing'}",
            cwhere,
        )
    for obj in objects:
        if obj.get("kind") == "Secret":
            add(
                "secret",
                "a Secret is in the manifests; the API key is generated at deploy time and "
                "never committed",
                object_id(obj),
            )
        if (obj.get("metadata") or {}).get("namespace"):
            add(
                "namespace",
                f"hard-coded namespace {obj['metadata']['namespace']!r}; the harness sets it "
                "at apply time",
                object_id(obj),
            )

    findings += _service_findings(objects)
    findings += _pdb_findings(objects, labels)
    return findings


def _shutdown_timeout_s(objects: Sequence[Mapping[str, Any]]) -> float:
    try:
        config = find_object(objects, "ConfigMap", APP_CONFIGMAP)
    except KeyError:
        return DEFAULT_SHUTDOWN_TIMEOUT_S
    value = (config.get("data") or {}).get("RAG_SHUTDOWN_TIMEOUT_S")
    return float(value) if value is not None else DEFAULT_SHUTDOWN_TIMEOUT_S


def _service_findings(objects: Sequence[Mapping[str, Any]]) -> list[Finding]:
    try:
        service = find_object(objects, "Service", APP_NAME)
    except KeyError as exc:
        return [Finding(f"Service/{APP_NAME}", "service", str(exc).strip("'\""))]
    where = object_id(service)
    spec = service.get("spec") or {}
    findings = []
    if spec.get("type") != "NodePort":
        findings.append(Finding(where, "service", f"type {spec.get('type')!r}, want NodePort"))
    ports = spec.get("ports") or []
    wanted = [
        p
        for p in ports
        if p.get("port") == APP_SERVICE_PORT
        and p.get("targetPort") == APP_PORT_NAME
        and p.get("nodePort") == APP_NODE_PORT
    ]
    if not wanted:
        findings.append(
            Finding(
                where,
                "service",
                f"no port {APP_SERVICE_PORT} -> targetPort {APP_PORT_NAME!r} with nodePort "
                f"{APP_NODE_PORT} (ports: {ports})",
            )
        )
    return findings


def _pdb_findings(
    objects: Sequence[Mapping[str, Any]], pod_labels: Mapping[str, Any]
) -> list[Finding]:
    budgets = [
        obj
        for obj in objects
        if obj.get("kind") == "PodDisruptionBudget"
        and selector_matches((obj.get("spec") or {}).get("selector") or {}, pod_labels)
    ]
    if not budgets:
        return [
            Finding(
                f"Deployment/{APP_NAME}",
                "pdb",
                "no PodDisruptionBudget selects the rag-api pods: a drain may evict them all",
            )
        ]
    findings = []
    for budget in budgets:
        spec = budget.get("spec") or {}
        if "minAvailable" not in spec and "maxUnavailable" not in spec:
            findings.append(
                Finding(object_id(budget), "pdb", "neither minAvailable nor maxUnavailable set")
            )
        elif _is_zero(spec.get("minAvailable", 1)):
            findings.append(Finding(object_id(budget), "pdb", "minAvailable 0 protects nothing"))
    return findings


def network_policy_allows(
    objects: Iterable[Mapping[str, Any]],
    source_labels: Mapping[str, Any],
    target_labels: Mapping[str, Any],
    port: int,
) -> bool:
    """Whether ingress from a pod with ``source_labels`` to one with ``target_labels`` on
    ``port`` (TCP) is allowed by the NetworkPolicies, within one namespace.

    The Kubernetes rule: no policy selects the target -> allowed; otherwise allowed if any
    selecting policy has an ingress rule whose peers and ports both admit the traffic. Named
    ports and ipBlock/namespaceSelector peers are outside what these manifests use and
    count as not matching.
    """
    selecting = [
        obj
        for obj in objects
        if obj.get("kind") == "NetworkPolicy"
        and "Ingress" in ((obj.get("spec") or {}).get("policyTypes") or ["Ingress"])
        and selector_matches((obj.get("spec") or {}).get("podSelector") or {}, target_labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in (policy.get("spec") or {}).get("ingress") or []:
            peers = rule.get("from")
            peer_ok = not peers or any(
                "podSelector" in peer
                and "namespaceSelector" not in peer
                and selector_matches(peer["podSelector"] or {}, source_labels)
                for peer in peers
            )
            rule_ports = rule.get("ports")
            port_ok = not rule_ports or any(
                p.get("protocol", "TCP") == "TCP" and p.get("port") in (None, port)
                for p in rule_ports
            )
            if peer_ok and port_ok:
                return True
    return False


def all_findings(objects: Sequence[Mapping[str, Any]]) -> list[Finding]:
    """Every check; an empty list means the manifests are fit to deploy."""
    return [
        *schema_findings(objects),
        *selector_findings(objects),
        *workload_findings(objects),
        *rag_api_findings(objects),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Check overlays (default: the production ones); exit 1 if anything is found."""
    targets = list(sys.argv[1:] if argv is None else argv)
    paths = [Path(t) for t in targets] or [OVERLAYS_DIR / name for name in PRODUCTION_OVERLAYS]
    failed = False
    for path in paths:
        try:
            findings = all_findings(load_manifests(path))
        except ManifestCheckError as exc:
            print(f"{path}: {exc}")
            failed = True
            continue
        print(f"{path}: {'ok' if not findings else f'{len(findings)} finding(s)'}")
        if findings:
            print(format_findings(findings))
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
