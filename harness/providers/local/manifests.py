"""Reading manifests for the local cluster: render, parse, and refuse what cannot be honoured.

The local cluster gives Kubernetes semantics to a subset of the API. Everything outside
that subset is refused here, before any process starts, with a message that names the
object, the field and what to change. Nothing in this module starts processes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.providers.base import ClusterError

REPO_ROOT = Path(__file__).resolve().parents[3]
KUSTOMIZE_TIMEOUT_S = 60.0
# the generated Secret the harness owns (docs/contracts.md)
API_SECRET_NAME = "rag-api-secret"  # noqa: S105 - a name, not a secret
API_SECRET_KEY = "api-key"  # noqa: S105 - a key name
# Kubernetes' alphabet for generated name parts (no vowels, no look-alike characters)
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
# kinds that carry nothing the local cluster acts on; applied as no-ops and listed in status
IGNORED_KINDS = frozenset(
    {"Namespace", "ServiceAccount", "PodDisruptionBudget", "NetworkPolicy", "Role", "RoleBinding"}
)


class ManifestError(ClusterError):
    """A manifest asks for something the local cluster cannot honour."""


@dataclass(frozen=True)
class ImageMapping:
    """How an image runs on the host: its WORKDIR maps to a host directory.

    host_dir None means the pod runs in its own scratch directory (images whose entrypoint
    needs no files of ours, such as chroma's server).
    """

    image_workdir: str | None
    host_dir: Path | None
    default_command: tuple[str, ...] = ()


# Image repository (the part before ":tag") -> how to run it. rag-api's image copies
# system/ to /app and starts `python -m rag_api` there (system/Dockerfile).
DEFAULT_IMAGE_MAPPINGS: dict[str, ImageMapping] = {
    "rag-api": ImageMapping("/app", REPO_ROOT / "system", ("python", "-m", "rag_api")),
    "chromadb/chroma": ImageMapping(None, None),
    "ghcr.io/chroma-core/chroma": ImageMapping(None, None),
}


def image_repository(image: str) -> str:
    """`rag-api:dev` -> `rag-api`; `host:5000/x/y:tag` -> `host:5000/x/y` (digest dropped)."""
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)
    if ":" in last[-1]:
        image = image[: image.rfind(":")]
    return image


@dataclass(frozen=True)
class ProbeSpec:
    kind: str  # readiness | liveness | startup
    handler: str  # http | tcp
    port: int
    path: str = "/"
    initial_delay_s: float = 0.0
    period_s: float = 10.0
    timeout_s: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True)
class VolumeMountSpec:
    volume: str
    mount_path: str
    sub_path: str = ""


@dataclass(frozen=True)
class PodTemplate:
    """The parts of a pod template the local cluster acts on."""

    labels: dict[str, str]
    container_name: str
    image: str
    mapping: ImageMapping
    command: tuple[str, ...]
    args: tuple[str, ...]
    env: tuple[dict[str, Any], ...]
    env_from: tuple[dict[str, Any], ...]
    ports: dict[str, int]  # name (or str(number)) -> containerPort
    probes: tuple[ProbeSpec, ...]
    pre_stop: dict[str, Any] | None  # {"exec": [...]} | {"sleep": seconds}
    grace_s: float
    volumes: dict[str, dict[str, Any]]  # name -> {"emptyDir": {}} | {"claim": name}
    mounts: tuple[VolumeMountSpec, ...]
    resources: dict[str, Any]
    working_dir: str
    template_hash: str
    # the pod's securityContext overlaid by the container's (the docker runtime applies it)
    security: dict[str, Any] = field(default_factory=dict)

    def probe(self, kind: str) -> ProbeSpec | None:
        return next((p for p in self.probes if p.kind == kind), None)

    def resolve_port(self, port: int | str) -> int | None:
        if isinstance(port, int):
            return port
        if port.isdigit():
            return int(port)
        return self.ports.get(port)


@dataclass
class WorkloadSpec:
    kind: str  # Deployment | StatefulSet
    name: str
    replicas: int
    selector: dict[str, str]
    template: PodTemplate
    max_surge: int = 1
    max_unavailable: int = 0
    parallel: bool = False  # StatefulSet podManagementPolicy Parallel
    claim_templates: tuple[str, ...] = ()
    raw_template: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServicePortSpec:
    name: str
    port: int
    target_port: int | str
    node_port: int | None


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    type: str
    selector: dict[str, str]
    ports: tuple[ServicePortSpec, ...]
    cluster_ip: str  # "" when none or not on loopback (then it is not proxied)


@dataclass
class ClusterSpec:
    workloads: dict[str, WorkloadSpec] = field(default_factory=dict)
    services: dict[str, ServiceSpec] = field(default_factory=dict)
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    claims: set[str] = field(default_factory=set)
    ignored: list[str] = field(default_factory=list)


def render_overlay(overlay: Path) -> list[dict[str, Any]]:
    """Objects of a kustomize overlay (`kubectl kustomize`), or of one YAML file."""
    overlay = Path(overlay)
    if overlay.is_file():
        text = overlay.read_text()
    elif overlay.is_dir():
        kubectl = shutil.which("kubectl")
        kustomize = shutil.which("kustomize")
        if kubectl:
            argv = [kubectl, "kustomize", str(overlay)]
        elif kustomize:
            argv = [kustomize, "build", str(overlay)]
        else:
            raise ClusterError(
                f"cannot render {overlay}: neither kubectl nor kustomize is on PATH; "
                "install kubectl (it bundles kustomize)"
            )
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=KUSTOMIZE_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(
                f"{' '.join(argv)} did not finish in {KUSTOMIZE_TIMEOUT_S}s"
            ) from exc
        if done.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        text = done.stdout
    else:
        raise ClusterError(f"overlay {overlay} does not exist; pass a kustomize directory")
    return [doc for doc in yaml.safe_load_all(text) if doc]


def generated_name_part(seed: str, length: int) -> str:
    digest = int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big")
    chars = []
    for _ in range(length):
        digest, index = divmod(digest, len(NAME_ALPHABET))
        chars.append(NAME_ALPHABET[index])
    return "".join(chars)


def template_hash(raw_template: Mapping[str, Any]) -> str:
    """10 characters from the pod template, like the pod-template-hash label."""
    return generated_name_part(json.dumps(raw_template, sort_keys=True), 10)


def parse_objects(
    objects: list[dict[str, Any]],
    image_mappings: Mapping[str, ImageMapping] | None = None,
    generated_secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> ClusterSpec:
    """Turn rendered objects into a ClusterSpec, refusing what cannot be honoured."""
    mappings = dict(DEFAULT_IMAGE_MAPPINGS)
    mappings.update(image_mappings or {})
    spec = ClusterSpec()
    for name, data in (generated_secrets or {}).items():
        spec.secrets[name] = dict(data)
    workload_objects: list[dict[str, Any]] = []
    for obj in objects:
        kind = obj.get("kind", "")
        name = (obj.get("metadata") or {}).get("name", "")
        where = f"{kind}/{name}"
        if kind == "ConfigMap":
            spec.config_maps[name] = {k: str(v) for k, v in (obj.get("data") or {}).items()}
        elif kind == "Secret":
            import base64

            data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
            data.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
            spec.secrets[name] = data
        elif kind == "PersistentVolumeClaim":
            spec.claims.add(name)
        elif kind == "Service":
            spec.services[name] = _parse_service(obj, where)
        elif kind in ("Deployment", "StatefulSet"):
            workload_objects.append(obj)
        elif kind in IGNORED_KINDS:
            spec.ignored.append(where)
        else:
            raise ManifestError(
                f"{where}: kind {kind!r} is not supported by the local cluster (it runs "
                "Deployments, StatefulSets, Services, ConfigMaps, Secrets and PVCs); "
                "remove it in the local overlay (a `$patch: delete` patch)"
            )
    for obj in workload_objects:
        workload = _parse_workload(obj, mappings, spec)
        spec.workloads[workload.name] = workload
    for service in spec.services.values():
        _check_service_ports(service, spec)
    return spec


def _parse_service(obj: dict[str, Any], where: str) -> ServiceSpec:
    body = obj.get("spec") or {}
    service_type = body.get("type", "ClusterIP")
    if service_type not in ("ClusterIP", "NodePort"):
        raise ManifestError(
            f"{where}: spec.type {service_type} is not supported locally; use NodePort (proxied "
            "on 127.0.0.1:<nodePort>) or ClusterIP with a loopback spec.clusterIP"
        )
    cluster_ip = str(body.get("clusterIP") or "")
    if cluster_ip and cluster_ip != "None":
        try:
            is_loopback = ipaddress.ip_address(cluster_ip).is_loopback
        except ValueError as exc:
            raise ManifestError(f"{where}: spec.clusterIP {cluster_ip!r} is not an IP") from exc
        if not is_loopback:
            cluster_ip = ""  # kept as a name only: not reachable from this machine
    else:
        cluster_ip = ""
    ports = []
    for index, port in enumerate(body.get("ports") or []):
        if port.get("protocol", "TCP") != "TCP":
            raise ManifestError(f"{where}: spec.ports[{index}].protocol must be TCP locally")
        node_port = port.get("nodePort")
        if service_type == "NodePort":
            if node_port is None:
                raise ManifestError(
                    f"{where}: spec.ports[{index}].nodePort is not set; the local cluster does "
                    "not allocate node ports, set one explicitly (30000-32767)"
                )
            if not 30000 <= int(node_port) <= 32767:
                raise ManifestError(
                    f"{where}: spec.ports[{index}].nodePort {node_port} is outside 30000-32767"
                )
        ports.append(
            ServicePortSpec(
                name=str(port.get("name", "")),
                port=int(port["port"]),
                target_port=port.get("targetPort", port["port"]),
                node_port=int(node_port) if node_port is not None else None,
            )
        )
    return ServiceSpec(
        name=(obj.get("metadata") or {}).get("name", ""),
        type=service_type,
        selector={k: str(v) for k, v in (body.get("selector") or {}).items()},
        ports=tuple(ports),
        cluster_ip=cluster_ip,
    )


def _check_service_ports(service: ServiceSpec, spec: ClusterSpec) -> None:
    """A named targetPort must exist on every workload the selector picks."""
    for workload in spec.workloads.values():
        labels = workload.template.labels
        if not service.selector or any(labels.get(k) != v for k, v in service.selector.items()):
            continue
        for port in service.ports:
            if workload.template.resolve_port(port.target_port) is None:
                raise ManifestError(
                    f"Service/{service.name}: targetPort {port.target_port!r} is not a "
                    f"containerPort name of {workload.kind}/{workload.name}; declare it"
                )


def _parse_workload(
    obj: dict[str, Any], mappings: Mapping[str, ImageMapping], spec: ClusterSpec
) -> WorkloadSpec:
    kind = obj["kind"]
    name = obj["metadata"]["name"]
    where = f"{kind}/{name}"
    body = obj.get("spec") or {}
    raw_template = body.get("template") or {}
    selector = {
        k: str(v) for k, v in ((body.get("selector") or {}).get("matchLabels") or {}).items()
    }
    if (body.get("selector") or {}).get("matchExpressions"):
        raise ManifestError(
            f"{where}: spec.selector.matchExpressions is not supported; use matchLabels"
        )
    claim_templates = tuple(t["metadata"]["name"] for t in body.get("volumeClaimTemplates") or [])
    template = parse_pod_template(raw_template, where, mappings, spec, claim_templates)
    if any(template.labels.get(k) != v for k, v in selector.items()):
        raise ManifestError(f"{where}: spec.selector does not match the pod template's labels")
    replicas = int(body.get("replicas", 1))
    workload = WorkloadSpec(
        kind=kind,
        name=name,
        replicas=replicas,
        selector=selector,
        template=template,
        claim_templates=claim_templates,
        raw_template=raw_template,
    )
    if kind == "Deployment":
        strategy = body.get("strategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            raise ManifestError(
                f"{where}: strategy {strategy.get('type')} is not supported; use RollingUpdate"
            )
        rolling = strategy.get("rollingUpdate") or {}
        workload.max_surge = _int_or_percent(
            rolling.get("maxSurge", "25%"), replicas, round_up=True
        )
        workload.max_unavailable = _int_or_percent(
            rolling.get("maxUnavailable", "25%"), replicas, round_up=False
        )
        if workload.max_surge == 0 and workload.max_unavailable == 0:
            workload.max_unavailable = 1  # the API server refuses both zero; be lenient
    else:
        workload.parallel = body.get("podManagementPolicy", "OrderedReady") == "Parallel"
    return workload


def _int_or_percent(value: int | str, replicas: int, round_up: bool) -> int:
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.endswith("%"):
        fraction = int(text[:-1]) * replicas
        return -(-fraction // 100) if round_up else fraction // 100
    return int(text)


SUPPORTED_FIELD_REFS = frozenset(
    {
        "status.podIP",
        "metadata.name",
        "metadata.namespace",
        "metadata.uid",
        "spec.nodeName",
        "status.hostIP",
    }
)
UNSUPPORTED_POD_FIELDS = (
    "hostNetwork",
    "hostPID",
    "hostIPC",
    "initContainers",
    "ephemeralContainers",
    "hostAliases",
)


def parse_pod_template(
    raw_template: dict[str, Any],
    where: str,
    mappings: Mapping[str, ImageMapping],
    spec: ClusterSpec,
    claim_templates: tuple[str, ...] = (),
) -> PodTemplate:
    metadata = raw_template.get("metadata") or {}
    pod = raw_template.get("spec") or {}
    for unsupported in UNSUPPORTED_POD_FIELDS:
        if pod.get(unsupported):
            raise ManifestError(
                f"{where}: spec.template.spec.{unsupported} is not supported by the local "
                "cluster (pods are processes on this machine); remove it in the local overlay"
            )
    if pod.get("restartPolicy", "Always") != "Always":
        raise ManifestError(f"{where}: restartPolicy must be Always for a workload")
    containers = pod.get("containers") or []
    if len(containers) != 1:
        raise ManifestError(
            f"{where}: {len(containers)} containers; the local cluster runs exactly one "
            "container per pod (drop sidecars in the local overlay)"
        )
    container = containers[0]
    cwhere = f"{where} container {container.get('name', '?')}"
    image = str(container.get("image", ""))
    repository = image_repository(image)
    mapping = mappings.get(repository)
    if mapping is None:
        raise ManifestError(
            f"{cwhere}: image {image!r} has no local mapping (known: "
            f"{', '.join(sorted(mappings))}); the local cluster runs processes, not images: "
            "add a mapping (LocalCluster(image_mappings=...)) or use a mapped image"
        )
    command = tuple(str(c) for c in container.get("command") or mapping.default_command)
    if not command:
        raise ManifestError(
            f"{cwhere}: no command and image {image!r} has no known entrypoint; set command"
        )
    args = tuple(str(a) for a in container.get("args") or ())
    ports: dict[str, int] = {}
    for port in container.get("ports") or []:
        number = int(port["containerPort"])
        if port.get("protocol", "TCP") != "TCP":
            raise ManifestError(f"{cwhere}: only TCP containerPorts are supported")
        if port.get("hostPort"):
            raise ManifestError(f"{cwhere}: hostPort is not supported; use a Service nodePort")
        ports[str(number)] = number
        if port.get("name"):
            ports[str(port["name"])] = number
    probes = []
    for kind in ("readiness", "liveness", "startup"):
        raw = container.get(f"{kind}Probe")
        if raw:
            probes.append(_parse_probe(kind, raw, ports, cwhere))
    pre_stop: dict[str, Any] | None = None
    lifecycle = container.get("lifecycle") or {}
    if lifecycle.get("postStart"):
        raise ManifestError(f"{cwhere}: lifecycle.postStart is not supported locally")
    raw_pre_stop = lifecycle.get("preStop")
    if raw_pre_stop:
        if "exec" in raw_pre_stop:
            pre_stop = {"exec": [str(c) for c in raw_pre_stop["exec"].get("command") or []]}
        elif "sleep" in raw_pre_stop:
            pre_stop = {"sleep": float(raw_pre_stop["sleep"]["seconds"])}
        else:
            raise ManifestError(
                f"{cwhere}: lifecycle.preStop {sorted(raw_pre_stop)} is not supported; use "
                "exec or sleep"
            )
    volumes: dict[str, dict[str, Any]] = {}
    for volume in pod.get("volumes") or []:
        vname = volume["name"]
        if "emptyDir" in volume:
            volumes[vname] = {"emptyDir": {}}
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if claim not in spec.claims:
                raise ManifestError(
                    f"{where}: volume {vname} uses PersistentVolumeClaim {claim!r}, which the "
                    "manifests do not define"
                )
            volumes[vname] = {"claim": claim}
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise ManifestError(
                f"{where}: volume {vname} of type {kinds} is not supported; use emptyDir or a "
                "PersistentVolumeClaim"
            )
    for claim_template in claim_templates:
        volumes.setdefault(claim_template, {"claimTemplate": claim_template})
    mounts = []
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in volumes:
            raise ManifestError(f"{cwhere}: volumeMount {mount['name']!r} names no volume")
        mounts.append(
            VolumeMountSpec(
                mount["name"],
                str(mount["mountPath"]).rstrip("/") or "/",
                str(mount.get("subPath", "")),
            )
        )
    env = tuple(container.get("env") or ())
    for entry in env:
        _check_env_entry(entry, cwhere, spec)
    env_from = tuple(container.get("envFrom") or ())
    for source in env_from:
        if "configMapRef" in source:
            ref = source["configMapRef"]["name"]
            if ref not in spec.config_maps and not source["configMapRef"].get("optional"):
                raise ManifestError(f"{cwhere}: envFrom ConfigMap {ref!r} is not defined")
        elif "secretRef" in source:
            ref = source["secretRef"]["name"]
            if ref not in spec.secrets and not source["secretRef"].get("optional"):
                raise ManifestError(f"{cwhere}: envFrom Secret {ref!r} is not defined")
        else:
            raise ManifestError(f"{cwhere}: envFrom {sorted(source)} is not supported")
    working_dir = str(container.get("workingDir") or "")
    if working_dir and working_dir != mapping.image_workdir:
        raise ManifestError(
            f"{cwhere}: workingDir {working_dir!r} has no host directory (only the image's "
            f"WORKDIR {mapping.image_workdir!r} is mapped)"
        )
    grace = float(pod.get("terminationGracePeriodSeconds", 30))
    security = {**(pod.get("securityContext") or {}), **(container.get("securityContext") or {})}
    return PodTemplate(
        labels={k: str(v) for k, v in (metadata.get("labels") or {}).items()},
        container_name=str(container.get("name", "")),
        image=image,
        mapping=mapping,
        command=command,
        args=args,
        env=env,
        env_from=env_from,
        ports=ports,
        probes=tuple(probes),
        pre_stop=pre_stop,
        grace_s=grace,
        volumes=volumes,
        mounts=tuple(mounts),
        resources=dict(container.get("resources") or {}),
        working_dir=working_dir,
        template_hash=template_hash(raw_template),
        security=security,
    )


def _parse_probe(kind: str, raw: dict[str, Any], ports: dict[str, int], where: str) -> ProbeSpec:
    if "httpGet" in raw:
        get = raw["httpGet"]
        if get.get("host"):
            raise ManifestError(f"{where}: {kind}Probe.httpGet.host is not supported; drop it")
        if str(get.get("scheme", "HTTP")).upper() != "HTTP":
            raise ManifestError(f"{where}: {kind}Probe.httpGet.scheme must be HTTP locally")
        handler, raw_port, path = "http", get.get("port"), str(get.get("path", "/"))
    elif "tcpSocket" in raw:
        handler, raw_port, path = "tcp", raw["tcpSocket"].get("port"), ""
    else:
        raise ManifestError(
            f"{where}: {kind}Probe {sorted(k for k in raw if k in ('exec', 'grpc'))} "
            "is not supported; use httpGet or tcpSocket"
        )
    port = ports.get(str(raw_port))
    if port is None:
        raise ManifestError(
            f"{where}: {kind}Probe port {raw_port!r} is not a declared containerPort "
            f"(declared: {sorted(ports)}); declare it under ports"
        )
    success_threshold = int(raw.get("successThreshold", 1))
    if kind != "readiness" and success_threshold != 1:
        raise ManifestError(f"{where}: {kind}Probe.successThreshold must be 1")
    return ProbeSpec(
        kind=kind,
        handler=handler,
        port=port,
        path=path,
        initial_delay_s=float(raw.get("initialDelaySeconds", 0)),
        period_s=float(raw.get("periodSeconds", 10)),
        timeout_s=float(raw.get("timeoutSeconds", 1)),
        success_threshold=success_threshold,
        failure_threshold=int(raw.get("failureThreshold", 3)),
    )


def _check_env_entry(entry: dict[str, Any], where: str, spec: ClusterSpec) -> None:
    name = entry.get("name", "?")
    source = entry.get("valueFrom")
    if not source:
        return
    if "configMapKeyRef" in source:
        ref = source["configMapKeyRef"]
        if ref.get("optional"):
            return
        if ref["key"] not in spec.config_maps.get(ref["name"], {}):
            raise ManifestError(
                f"{where}: env {name} reads ConfigMap {ref['name']!r} key {ref['key']!r}, "
                "which the manifests do not define"
            )
    elif "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        if ref.get("optional"):
            return
        if ref["key"] not in spec.secrets.get(ref["name"], {}):
            raise ManifestError(
                f"{where}: env {name} reads Secret {ref['name']!r} key {ref['key']!r}, which "
                f"is neither in the manifests nor generated (the harness generates "
                f"{API_SECRET_NAME}/{API_SECRET_KEY})"
            )
    elif "fieldRef" in source:
        path = source["fieldRef"].get("fieldPath", "")
        if path not in SUPPORTED_FIELD_REFS:
            raise ManifestError(
                f"{where}: env {name} fieldRef {path!r} is not supported (supported: "
                f"{', '.join(sorted(SUPPORTED_FIELD_REFS))})"
            )
    else:
        raise ManifestError(f"{where}: env {name} valueFrom {sorted(source)} is not supported")
