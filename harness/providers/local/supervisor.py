"""The local cluster's daemon: kubelet, controllers, kube-proxy and API server in one process.

Started detached by `LocalCluster.up` (``python -m harness.providers.local.supervisor
--state-dir DIR``); it outlives the command that started it. One asyncio loop does all the
work, so cluster state has a single writer:

- a reconcile loop (every 100 ms) that keeps `replicas` pods per Deployment/StatefulSet,
  restarts exited containers with the kubelet's back-off, runs probes and keeps Service
  endpoints to the ready pods;
- one TCP proxy per Service port (`proxy.ServiceProxy`);
- a control API: JSON lines on a unix socket, one request per connection;
- state persisted atomically to ``state.json`` (what a later `status`/`down` or a person
  debugging needs when the daemon is gone).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.providers.local.layout import (
    BACKOFF_BASE_ENV,
    BACKOFF_CAP_S,
    BACKOFF_RESET_AFTER_S,
    POD_MARKER_ENV,
    PROBE_PERIOD_CAP_ENV,
    RECONCILE_PERIOD_S,
    StateLayout,
    bind_error,
    env_float,
    iter_pod_addresses,
    kill_group,
    read_json,
    tail_lines,
    write_json_atomic,
)
from harness.providers.local.manifests import (
    NAME_ALPHABET,
    ClusterSpec,
    ImageMapping,
    PodTemplate,
    ProbeSpec,
    ServiceSpec,
    WorkloadSpec,
    parse_objects,
    template_hash,
)
from harness.providers.local.proxy import ServiceProxy
from harness.providers.local.runtime import (
    ContainerHandle,
    ContainerLaunch,
    die_with_supervisor,
    host_command,
    make_runtime,
)

log = logging.getLogger("harness.local.supervisor")

WATCH_RING_SIZE = 10_000
DIAG_RING_SIZE = 2_000
STATE_SAVE_INTERVAL_S = 0.25
MAX_CREATIONS_PER_TICK = 10
PRESTOP_POLL_S = 0.02
STOP_POLL_S = 0.02
VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: unknown references stay as written, `$$` is `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return VAR_REF.sub(replace, text)


def rewrite_paths(value: str, prefixes: list[tuple[str, str]]) -> str:
    """Replace in-container paths (mountPaths, the image WORKDIR) by their host directories.

    A whole value or the right side of `key=value` is rewritten when it is a prefix path.
    """
    key, sep, rest = value.partition("=")
    if sep and not key.startswith("/"):
        return key + sep + rewrite_paths(rest, prefixes)
    for prefix, host in prefixes:
        if value == prefix or value.startswith(prefix + "/"):
            return host + value[len(prefix) :]
    return value


@dataclasses.dataclass
class ProbeState:
    successes: int = 0
    failures: int = 0
    next_at: float = 0.0
    in_flight: bool = False


@dataclasses.dataclass
class Pod:
    name: str
    uid: str
    owner_kind: str
    owner: str
    template: PodTemplate
    ip: str
    created: float
    ordinal: int | None = None
    phase: str = "Pending"
    ready: bool = False
    ready_since: float | None = None
    restarts: int = 0
    last_termination_reason: str = ""
    last_exit_code: int | None = None
    container_state: str = "Waiting"  # Waiting | Running | CrashLoopBackOff | Terminated
    container: ContainerHandle | None = None
    container_id: int = 0
    container_started_mono: float = 0.0
    container_started_at: float | None = None
    next_start_mono: float = 0.0
    backoff_s: float | None = None
    startup_done: bool = False
    probes: dict[str, ProbeState] = dataclasses.field(default_factory=dict)
    deleting: bool = False
    deletion_started: float | None = None
    killing: bool = False  # a liveness/startup kill is in progress
    frozen_until_mono: float | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    argv: list[str] = dataclasses.field(default_factory=list)
    cwd: str = ""
    # as the container sees them (the docker runtime): no host paths, no host interpreter
    container_env: dict[str, str] = dataclasses.field(default_factory=dict)
    container_argv: list[str] = dataclasses.field(default_factory=list)
    mounts: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    pod_dir: Path = Path()

    @property
    def app(self) -> str:
        return self.template.labels.get("app", "")

    def info(self) -> dict[str, Any]:
        """Fields of base.PodInfo, plus what status and diagnostics show."""
        return {
            "name": self.name,
            "uid": self.uid,
            "phase": "Terminating" if self.deleting else self.phase,
            "ready": self.ready,
            "restarts": self.restarts,
            "created": self.created,
            "app": self.app,
            "ip": self.ip,
            "node": "local",
            "ready_since": self.ready_since,
            "deleting": self.deleting,
            "last_termination_reason": self.last_termination_reason,
            # extras (not in PodInfo)
            "owner": f"{self.owner_kind}/{self.owner}",
            "template_hash": self.template.template_hash,
            "container_state": self.container_state,
            "last_exit_code": self.last_exit_code,
            "pid": self.container.pid if self.container else None,
            "container": self.container.description if self.container else None,
            "deletion_started": self.deletion_started,
            "frozen": self.frozen_until_mono is not None,
        }


@dataclasses.dataclass
class Workload:
    spec: WorkloadSpec
    replicas: int
    template: PodTemplate
    restarted_at: str = ""


class Supervisor:
    def __init__(self, layout: StateLayout, config: dict[str, Any]) -> None:
        self.layout = layout
        self.config = config
        self.pod_network = str(config.get("pod_network", "127.0.1.0/24"))
        self.namespace = str(config.get("namespace", "default"))
        self.image_mappings = {
            repo: ImageMapping(
                m.get("image_workdir"),
                Path(m["host_dir"]) if m.get("host_dir") else None,
                tuple(m.get("default_command") or ()),
            )
            for repo, m in (config.get("image_mappings") or {}).items()
        }
        self.runtime = make_runtime(str(config.get("runtime", "process")), layout.root, config)
        self.backoff_base_s = env_float(BACKOFF_BASE_ENV, 10.0)
        self.probe_period_cap_s = env_float(PROBE_PERIOD_CAP_ENV, 0.0)
        self.epoch = uuid.uuid4().hex
        self.spec = ClusterSpec()
        self.workloads: dict[str, Workload] = {}
        self.pods: dict[str, Pod] = {}
        self.proxies: dict[str, list[ServiceProxy]] = {}
        self.watch_ring: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=WATCH_RING_SIZE
        )
        self.diag_ring: collections.deque[dict[str, Any]] = collections.deque(maxlen=DIAG_RING_SIZE)
        self.seq = 0
        self._new_event = asyncio.Event()
        self._endpoints_seen: dict[str, tuple[str, ...]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dirty = True
        self._last_save = 0.0
        self._stopping = False
        self._stopped = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._warned: set[str] = set()
        self.started_at = time.time()

    # ---------------------------------------------------------------- events
    def _publish(self, event: dict[str, Any]) -> None:
        self.seq += 1
        event["seq"] = self.seq
        event.setdefault("at", time.time())
        self.watch_ring.append(event)
        self._new_event.set()
        self._new_event = asyncio.Event()
        self._dirty = True

    def _pod_event(self, pod: Pod, event_type: str) -> None:
        self._publish({"kind": "pod", "type": event_type, "app": pod.app, "pod": pod.info()})

    def _diag(self, pod: str, reason: str, message: str = "") -> None:
        entry = {"at": time.time(), "object": pod, "reason": reason, "message": message}
        self.diag_ring.append(entry)
        log.info("%s %s %s", pod, reason, message)
        self._dirty = True

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # ---------------------------------------------------------------- apply
    async def apply(
        self, objects: list[dict[str, Any]], replicas: dict[str, int]
    ) -> dict[str, Any]:
        generated = read_json(self.layout.secrets_file) or {}
        spec = parse_objects(objects, self.image_mappings, generated)
        await self._apply_services(spec.services)
        for name, workload_spec in spec.workloads.items():
            wanted = replicas.get(name, workload_spec.replicas)
            current = self.workloads.get(name)
            restarted_at = current.restarted_at if current else ""
            template = self._template_with_restart(workload_spec, restarted_at)
            if current is None:
                self.workloads[name] = Workload(workload_spec, wanted, template)
            else:
                current.spec, current.replicas, current.template = workload_spec, wanted, template
        for name in [n for n in self.workloads if n not in spec.workloads]:
            del self.workloads[name]
            for pod in [p for p in self.pods.values() if p.owner == name]:
                self._start_deletion(pod, None, "workload removed")
        self.spec = spec
        self._dirty = True
        return {"workloads": sorted(self.workloads), "ignored": spec.ignored}

    def _template_with_restart(self, spec: WorkloadSpec, restarted_at: str) -> PodTemplate:
        if not restarted_at:
            return spec.template
        raw = json.loads(json.dumps(spec.raw_template))
        raw.setdefault("metadata", {}).setdefault("annotations", {})[RESTARTED_AT] = restarted_at
        return dataclasses.replace(spec.template, template_hash=template_hash(raw))

    async def _apply_services(self, services: dict[str, ServiceSpec]) -> None:
        for name in list(self.proxies):
            old = self.spec.services.get(name)
            if services.get(name) != old or name not in services:
                for proxy in self.proxies.pop(name):
                    await proxy.close()
        for name, service in services.items():
            if name in self.proxies:
                continue
            started: list[ServiceProxy] = []
            for port in service.ports:
                listeners = []
                if service.type == "NodePort" and port.node_port is not None:
                    listeners.append(("127.0.0.1", port.node_port))
                if service.cluster_ip:
                    listeners.append((service.cluster_ip, port.port))
                for host, number in listeners:
                    proxy = ServiceProxy(
                        name, host, number, self._backends_getter(service, port.target_port)
                    )
                    try:
                        await proxy.start()
                    except OSError as exc:
                        for done in started:
                            await done.close()
                        why = bind_error(host, number) or f"{host}:{number}: {exc}"
                        raise RuntimeError(
                            f"Service/{name}: cannot listen on {host}:{number}: {why}; stop "
                            "that process or choose another port in the overlay"
                        ) from exc
                    started.append(proxy)
            self.proxies[name] = started

    def _backends_getter(
        self, service: ServiceSpec, target_port: int | str
    ) -> Callable[[], list[tuple[str, int]]]:
        def ready_backends() -> list[tuple[str, int]]:
            return self.service_backends(service, target_port)

        return ready_backends

    def service_backends(
        self, service: ServiceSpec, target_port: int | str
    ) -> list[tuple[str, int]]:
        backends = []
        # called from the proxies' threads too: list() copies the pods in one step (no Python
        # code runs inside it, so the loop thread cannot change the dict halfway)
        for pod in sorted(list(self.pods.values()), key=lambda p: p.name):
            if not pod.ready or pod.deleting or not service.selector:
                continue
            if any(pod.template.labels.get(k) != v for k, v in service.selector.items()):
                continue
            port = pod.template.resolve_port(target_port)
            if port is not None:
                backends.append((pod.ip, port))
        return backends

    def endpoints(self, service_name: str) -> list[str]:
        service = self.spec.services.get(service_name)
        if service is None or not service.ports:
            return []
        return [
            f"{ip}:{port}"
            for ip, port in self.service_backends(service, service.ports[0].target_port)
        ]

    def _sync_endpoints(self) -> None:
        for name, service in self.spec.services.items():
            current = tuple(self.endpoints(name))
            if self._endpoints_seen.get(name) != current:
                self._endpoints_seen[name] = current
                self._publish(
                    {
                        "kind": "endpoints",
                        "type": "MODIFIED",
                        "service": name,
                        "app": service.selector.get("app", ""),
                        "endpoints": list(current),
                    }
                )

    # ---------------------------------------------------------------- reconcile
    async def run(self) -> None:
        while not self._stopped.is_set():
            started = time.monotonic()
            try:
                self.reconcile_once()
            except Exception:
                log.exception("reconcile failed")
            if self._dirty and time.monotonic() - self._last_save >= STATE_SAVE_INTERVAL_S:
                self.save_state()
            elapsed = time.monotonic() - started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), max(0.0, RECONCILE_PERIOD_S - elapsed))

    def reconcile_once(self) -> None:
        now = time.monotonic()
        for pod in list(self.pods.values()):
            if pod.frozen_until_mono is not None and now >= pod.frozen_until_mono:
                self._thaw([pod])
            if pod.deleting:
                continue
            if pod.container is not None and pod.container.exited():
                self._container_exited(pod, now)
            if pod.container is None and now >= pod.next_start_mono and not self._stopping:
                self._start_container(pod, now)
            if pod.container is not None:
                self._run_probes(pod, now)
        if not self._stopping:
            for workload in list(self.workloads.values()):
                if workload.spec.kind == "Deployment":
                    self._reconcile_deployment(workload)
                else:
                    self._reconcile_statefulset(workload)
        self._sync_endpoints()

    def _reconcile_deployment(self, workload: Workload) -> None:
        name, replicas = workload.spec.name, workload.replicas
        live = [p for p in self.pods.values() if p.owner == name and not p.deleting]
        current_hash = workload.template.template_hash
        new = [p for p in live if p.template.template_hash == current_hash]
        old = [p for p in live if p.template.template_hash != current_hash]
        if not old:
            if len(new) < replicas:
                for _ in range(min(replicas - len(new), MAX_CREATIONS_PER_TICK)):
                    self._create_pod(workload)
            elif len(new) > replicas:
                for victim in _scale_down_order(new)[: len(new) - replicas]:
                    self._start_deletion(victim, None, "scaled down")
            return
        # rolling update: surge new pods, retire old ones while availability allows
        max_total = replicas + workload.spec.max_surge
        min_available = replicas - workload.spec.max_unavailable
        creatable = min(replicas - len(new), max_total - len(live), MAX_CREATIONS_PER_TICK)
        for _ in range(max(0, creatable)):
            self._create_pod(workload)
        available = sum(1 for p in live if p.ready)
        for victim in _scale_down_order(old):
            if not victim.ready:  # costs no availability
                self._start_deletion(victim, None, "rolling update (old pod not ready)")
            elif available - 1 >= min_available:
                self._start_deletion(victim, None, "rolling update")
                available -= 1

    def _reconcile_statefulset(self, workload: Workload) -> None:
        name, replicas = workload.spec.name, workload.replicas
        mine = {p.ordinal: p for p in self.pods.values() if p.owner == name}
        for ordinal in range(replicas):
            if ordinal in mine:
                continue  # a terminating pod blocks its name until it is gone
            if not workload.spec.parallel and not all(
                (p := mine.get(i)) is not None and p.ready and not p.deleting
                for i in range(ordinal)
            ):
                break  # OrderedReady: the next ordinal waits for its predecessors
            created = self._create_pod(workload, ordinal)
            if created is None or not workload.spec.parallel:
                break
            mine[ordinal] = created
        if any(p.deleting for p in mine.values()):
            return
        surplus = sorted((o for o in mine if o is not None and o >= replicas), reverse=True)
        if surplus:
            self._start_deletion(mine[surplus[0]], None, "scaled down")
            return
        current_hash = workload.template.template_hash
        if len(mine) == replicas and all(p.ready for p in mine.values()):
            stale = sorted(
                (
                    o
                    for o, p in mine.items()
                    if o is not None and p.template.template_hash != current_hash
                ),
                reverse=True,
            )
            if stale:
                self._start_deletion(mine[stale[0]], None, "rolling update")

    # ---------------------------------------------------------------- pods
    def _allocate_ip(self, template: PodTemplate) -> str | None:
        taken = {p.ip for p in self.pods.values()}
        ports = sorted(set(template.ports.values()))
        for address in iter_pod_addresses(self.pod_network):
            if address in taken:
                continue
            if all(bind_error(address, port) is None for port in ports):
                return address
        return None

    def _create_pod(self, workload: Workload, ordinal: int | None = None) -> Pod | None:
        spec = workload.spec
        template = workload.template
        if spec.kind == "StatefulSet":
            name = f"{spec.name}-{ordinal}"
        else:
            suffix = "".join(secrets.choice(NAME_ALPHABET) for _ in range(5))
            name = f"{spec.name}-{template.template_hash}-{suffix}"
            if name in self.pods:
                return None
        ip = self._allocate_ip(template)
        if ip is None:
            key = f"noip/{spec.name}"
            if key not in self._warned:
                self._warned.add(key)
                self._diag(
                    f"{spec.kind}/{spec.name}",
                    "FailedCreate",
                    f"no free pod IP in {self.pod_network}",
                )
            return None
        self._warned.discard(f"noip/{spec.name}")
        pod = Pod(
            name=name,
            uid=str(uuid.uuid4()),
            owner_kind=spec.kind,
            owner=spec.name,
            template=template,
            ip=ip,
            created=time.time(),
            ordinal=ordinal,
        )
        pod.pod_dir = self.layout.pods_dir / f"{name}-{pod.uid[:8]}"
        pod.pod_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._prepare_container(pod)
        except Exception as exc:  # a bad reference slipped past validation: a visible event
            self._diag(name, "FailedCreate", str(exc))
            shutil.rmtree(pod.pod_dir, ignore_errors=True)
            return None
        self.pods[name] = pod
        self._diag(name, "Scheduled", f"ip {ip}, uid {pod.uid}")
        self._pod_event(pod, "ADDED")
        self._start_container(pod, time.monotonic())
        return pod

    def _volume_dir(self, pod: Pod, volume: str) -> Path:
        source = pod.template.volumes[volume]
        if "claim" in source:
            path = self.layout.volumes_dir / source["claim"]
        elif "claimTemplate" in source:
            path = self.layout.volumes_dir / f"{source['claimTemplate']}-{pod.name}"
        else:
            path = pod.pod_dir / "volumes" / volume
        path.mkdir(parents=True, exist_ok=True)
        self.runtime.prepare_volume(path, pod.template.security)
        return path

    def _prepare_container(self, pod: Pod) -> None:
        """Resolve env, argv and cwd once per pod (fieldRefs are fixed for its life)."""
        template = pod.template
        prefixes: list[tuple[str, str]] = []
        for mount in template.mounts:
            host = self._volume_dir(pod, mount.volume)
            if mount.sub_path:
                host = host / mount.sub_path
                host.mkdir(parents=True, exist_ok=True)
                self.runtime.prepare_volume(host, template.security)
            prefixes.append((mount.mount_path, str(host)))
        pod.mounts = [(host, path) for path, host in prefixes]
        mapping = template.mapping
        if mapping.image_workdir and mapping.host_dir:
            prefixes.append((mapping.image_workdir.rstrip("/"), str(mapping.host_dir)))
        prefixes.sort(key=lambda item: len(item[0]), reverse=True)
        container_env: dict[str, str] = {}
        unmapped_env: dict[str, str] = {}
        for source in template.env_from:
            if "configMapRef" in source:
                data = self.spec.config_maps.get(source["configMapRef"]["name"], {})
            else:
                data = self.spec.secrets.get(source["secretRef"]["name"], {})
            prefix = source.get("prefix", "")
            container_env.update({prefix + k: v for k, v in data.items()})
        unmapped_env.update(container_env)
        for entry in template.env:
            value = self._env_value(pod, entry, unmapped_env)
            if value is not None:
                unmapped_env[entry["name"]] = value
                container_env[entry["name"]] = rewrite_paths(value, prefixes)
        venv_bin = str(Path(sys.executable).parent)
        env = {
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": os.environ.get("HOME", str(pod.pod_dir)),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONUNBUFFERED": "1",
            "ORT_DISABLE_TELEMETRY": "1",
            "ANONYMIZED_TELEMETRY": "False",
            "HOSTNAME": pod.name,
            POD_MARKER_ENV: str(self.layout.root),
            "HARNESS_LOCAL_POD": pod.name,
        }
        tmp_mount = next((host for path, host in prefixes if path == "/tmp"), None)  # noqa: S108
        if tmp_mount:  # a /tmp emptyDir: the process's temp files go there, as in the pod
            env["TMPDIR"] = tmp_mount
        env.update(container_env)
        argv = [
            rewrite_paths(expand_vars(part, container_env), prefixes)
            for part in (*template.command, *template.args)
        ]
        argv[0] = host_command(argv[0])
        # Kubernetes sets HOSTNAME to the pod name; host networking would give the host's
        pod.container_env = {**unmapped_env, "HOSTNAME": pod.name}
        pod.container_argv = [
            expand_vars(part, unmapped_env) for part in (*template.command, *template.args)
        ]
        if mapping.host_dir is not None:
            cwd = mapping.host_dir
        else:
            cwd = pod.pod_dir / "work"
            cwd.mkdir(parents=True, exist_ok=True)
        pod.env, pod.argv, pod.cwd = env, argv, str(cwd)

    def _env_value(self, pod: Pod, entry: dict[str, Any], known: dict[str, str]) -> str | None:
        if "value" in entry:
            return expand_vars(str(entry["value"]), known)
        source = entry.get("valueFrom") or {}
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return self.spec.config_maps.get(ref["name"], {}).get(ref["key"])
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            return self.spec.secrets.get(ref["name"], {}).get(ref["key"])
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            return {
                "status.podIP": pod.ip,
                "metadata.name": pod.name,
                "metadata.namespace": self.namespace,
                "metadata.uid": pod.uid,
                "spec.nodeName": "local",
                "status.hostIP": "127.0.0.1",
            }[path]
        return ""

    def _start_container(self, pod: Pod, now: float) -> None:
        self.layout.logs_dir.mkdir(parents=True, exist_ok=True)
        restarting = pod.container_id > 0
        launch = ContainerLaunch(
            pod=pod.name,
            pod_uid=pod.uid,
            attempt=pod.container_id + 1,
            image=pod.template.image,
            argv=pod.container_argv,
            env=pod.container_env,
            mounts=pod.mounts,
            resources=pod.template.resources,
            security=pod.template.security,
            working_dir=pod.template.working_dir,
            log_path=self.layout.pod_log(pod.name),
            pod_dir=pod.pod_dir,
            host_argv=pod.argv,
            host_env=pod.env,
            host_cwd=pod.cwd,
        )
        try:
            pod.container = self.runtime.start(launch)
        except (OSError, RuntimeError, ValueError) as exc:
            pod.container = None
            pod.last_termination_reason, pod.last_exit_code = "StartError", 128
            self._diag(pod.name, "Failed", f"cannot start {launch.argv[0]}: {exc}")
            self._schedule_restart(pod, now)
            return
        if restarting:
            pod.restarts += 1
        pod.container_id += 1
        pod.container_started_mono = now
        pod.container_started_at = time.time()
        pod.phase = "Running"
        pod.container_state = "Running"
        pod.startup_done = pod.template.probe("startup") is None
        pod.probes = {}
        for probe in pod.template.probes:
            pod.probes[probe.kind] = ProbeState(next_at=now + probe.initial_delay_s)
        pod.killing = False
        argv = launch.host_argv if self.runtime.name == "process" else launch.argv
        self._diag(
            pod.name,
            "Started",
            f"{pod.container.description} ({self.runtime.name}): {' '.join(argv)}",
        )
        self._pod_event(pod, "MODIFIED")

    def _release(self, container: ContainerHandle) -> None:
        """The ended container's leftovers go, in a thread: a docker call must not hold the
        loop (probes, proxies) for its ~0.1 s."""
        self._spawn(asyncio.to_thread(container.release))

    def _container_exited(self, pod: Pod, now: float) -> None:
        container = pod.container
        assert container is not None and container.exit_code is not None
        exit_code = container.exit_code
        pod.last_exit_code = exit_code
        pod.last_termination_reason = container.reason
        self._release(container)
        pod.container = None
        self._set_ready(pod, False)
        self._diag(pod.name, "Exited", f"exit code {exit_code} ({pod.last_termination_reason})")
        if now - pod.container_started_mono >= BACKOFF_RESET_AFTER_S:
            pod.backoff_s = None
        self._schedule_restart(pod, now)
        self._pod_event(pod, "MODIFIED")

    def _schedule_restart(self, pod: Pod, now: float) -> None:
        # first restart at once, then base, doubling, capped (the kubelet's CrashLoopBackOff)
        delay = 0.0 if pod.backoff_s is None else pod.backoff_s
        pod.backoff_s = (
            self.backoff_base_s if pod.backoff_s is None else min(pod.backoff_s * 2, BACKOFF_CAP_S)
        )
        pod.next_start_mono = now + delay
        pod.container_state = "CrashLoopBackOff" if delay > 0 else "Waiting"
        if delay > 0:
            self._diag(pod.name, "BackOff", f"restarting in {delay:.1f}s")

    def _set_ready(self, pod: Pod, ready: bool) -> None:
        if pod.ready == ready:
            return
        pod.ready = ready
        pod.ready_since = time.time() if ready else None
        self._diag(pod.name, "Ready" if ready else "NotReady")
        self._pod_event(pod, "MODIFIED")
        self._sync_endpoints()

    # ---------------------------------------------------------------- probes
    def _period(self, probe: ProbeSpec) -> float:
        if self.probe_period_cap_s > 0:
            return min(probe.period_s, self.probe_period_cap_s)
        return probe.period_s

    def _run_probes(self, pod: Pod, now: float) -> None:
        if pod.killing:
            return
        kinds = ["startup"] if not pod.startup_done else ["readiness", "liveness"]
        for kind in kinds:
            probe = pod.template.probe(kind)
            state = pod.probes.get(kind)
            if probe is None or state is None or state.in_flight or now < state.next_at:
                continue
            state.in_flight = True
            state.next_at = now + self._period(probe)
            self._spawn(self._probe(pod, probe, state, pod.container_id))
        if pod.startup_done and pod.template.probe("readiness") is None and not pod.ready:
            self._set_ready(pod, True)

    async def _probe(
        self, pod: Pod, probe: ProbeSpec, state: ProbeState, container_id: int
    ) -> None:
        try:
            ok, detail = await check_probe(pod.ip, probe)
        finally:
            state.in_flight = False
        if self.pods.get(pod.name) is not pod or pod.container_id != container_id or pod.deleting:
            return
        if pod.container is None or pod.killing:
            return
        if ok:
            state.successes += 1
            state.failures = 0
        else:
            state.failures += 1
            state.successes = 0
            self._diag(pod.name, "Unhealthy", f"{probe.kind} probe failed: {detail}")
        if probe.kind == "readiness":
            if ok and state.successes >= probe.success_threshold:
                self._set_ready(pod, True)
            elif not ok and (state.failures >= probe.failure_threshold or not pod.ready):
                self._set_ready(pod, False)
        elif probe.kind == "startup":
            if ok:
                pod.startup_done = True
                now = time.monotonic()
                for kind in ("readiness", "liveness"):
                    if kind in pod.probes:
                        pod.probes[kind].next_at = now
            elif state.failures >= probe.failure_threshold:
                self._kill_for_restart(pod, "startup probe failed")
        elif not ok and state.failures >= probe.failure_threshold:
            self._kill_for_restart(pod, "liveness probe failed")

    def _kill_for_restart(self, pod: Pod, reason: str) -> None:
        pod.killing = True
        self._set_ready(pod, False)
        self._diag(pod.name, "Killing", f"{reason}; container will be restarted")
        self._spawn(self._stop_container(pod, pod.template.grace_s, run_pre_stop=True))

    # ---------------------------------------------------------------- deletion
    def _start_deletion(self, pod: Pod, grace_s: float | None, reason: str) -> bool:
        if pod.deleting:
            return False
        pod.deleting = True
        pod.deletion_started = time.time()
        pod.ready = False
        pod.ready_since = None
        self._diag(pod.name, "Deleting", f"{reason}; removed from endpoints")
        self._pod_event(pod, "MODIFIED")
        self._sync_endpoints()
        grace = pod.template.grace_s if grace_s is None else float(grace_s)
        self._spawn(self._finish_deletion(pod, grace))
        return True

    async def _finish_deletion(self, pod: Pod, grace: float) -> None:
        try:
            await self._stop_container(pod, grace, run_pre_stop=True)
        finally:
            self.pods.pop(pod.name, None)
            shutil.rmtree(pod.pod_dir, ignore_errors=True)  # emptyDirs; PVC dirs live elsewhere
            self._diag(pod.name, "Deleted", f"uid {pod.uid}")
            self._pod_event(pod, "DELETED")
            self._sync_endpoints()

    async def _stop_container(self, pod: Pod, grace: float, run_pre_stop: bool) -> None:
        """preStop (bounded by the grace period), SIGTERM, the rest of the grace, SIGKILL."""
        container = pod.container
        if container is None or container.exited():
            if container is not None and pod.deleting:
                await asyncio.to_thread(container.release)
            return
        started = time.monotonic()
        if grace <= 0:
            self._diag(pod.name, "SIGKILL", "grace period 0")
            await self._signal(pod, container, signal.SIGKILL)
        else:
            if run_pre_stop and pod.template.pre_stop:
                await self._run_pre_stop(pod, container, grace)
            remaining = grace - (time.monotonic() - started)
            if remaining <= 0:
                remaining = 2.0  # the kubelet's one-time extension when preStop used it all
            self._diag(pod.name, "SIGTERM", f"to {container.description}; {remaining:.1f}s left")
            await self._signal(pod, container, signal.SIGTERM)
            deadline = time.monotonic() + remaining
            while not container.exited() and time.monotonic() < deadline:
                await asyncio.sleep(STOP_POLL_S)
            if not container.exited():
                self._diag(pod.name, "SIGKILL", "grace period over")
                await self._signal(pod, container, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while not container.exited() and time.monotonic() < deadline:
            await asyncio.sleep(STOP_POLL_S)
        if not pod.deleting:
            return  # a liveness kill: the reconcile loop sees the exit and restarts
        await asyncio.to_thread(container.release)  # children left in the group, the container
        pod.last_exit_code = container.exit_code if container.exit_code is not None else 137
        pod.last_termination_reason = container.reason or "Error"
        self._diag(
            pod.name,
            "Stopped",
            f"exit code {pod.last_exit_code} ({pod.last_termination_reason}) after "
            f"{time.monotonic() - started:.2f}s",
        )

    async def _signal(self, pod: Pod, container: ContainerHandle, sig: signal.Signals) -> None:
        try:
            await asyncio.to_thread(container.signal, sig)
        except RuntimeError as exc:  # docker refused: say so, the stop goes on to SIGKILL
            self._diag(pod.name, "FailedKill", f"{sig.name}: {exc}")

    async def _run_pre_stop(self, pod: Pod, container: ContainerHandle, grace: float) -> None:
        hook = pod.template.pre_stop or {}
        started = time.monotonic()
        if "sleep" in hook:
            self._diag(pod.name, "PreStop", f"sleep {hook['sleep']}s")
            await asyncio.sleep(min(float(hook["sleep"]), grace))
        else:
            argv, env, cwd = container.exec_command(hook["exec"])
            self._diag(pod.name, "PreStop", f"exec {' '.join(argv)}")
            try:
                hook_proc = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    preexec_fn=die_with_supervisor,
                )
            except OSError as exc:
                self._diag(pod.name, "FailedPreStopHook", str(exc))
                return
            deadline = started + grace
            while hook_proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(PRESTOP_POLL_S)
            if hook_proc.poll() is None:
                kill_group(hook_proc.pid, signal.SIGKILL)
                hook_proc.wait(timeout=5)
                self._diag(pod.name, "FailedPreStopHook", "did not finish within the grace period")
            elif hook_proc.returncode != 0:
                self._diag(pod.name, "FailedPreStopHook", f"exit code {hook_proc.returncode}")
        self._diag(pod.name, "PreStopDone", f"after {time.monotonic() - started:.2f}s")

    # ---------------------------------------------------------------- actions
    def _pod(self, name: str) -> Pod:
        pod = self.pods.get(name)
        if pod is None:
            raise KeyError(
                f"pod {name!r} not found (pods: {', '.join(sorted(self.pods)) or 'none'})"
            )
        return pod

    def _workload(self, name: str) -> Workload:
        workload = self.workloads.get(name)
        if workload is None:
            raise KeyError(
                f"no Deployment or StatefulSet {name!r} "
                f"(have: {', '.join(sorted(self.workloads)) or 'none'})"
            )
        return workload

    def delete_pod(self, name: str, grace_s: float | None) -> dict[str, Any]:
        pod = self._pod(name)
        started = self._start_deletion(pod, grace_s, "delete requested")
        return {"uid": pod.uid, "already_terminating": not started}

    def _running_container(self, pod: Pod) -> ContainerHandle:
        if pod.container is None or pod.container.exited():
            raise KeyError(f"pod {pod.name}: container is not running ({pod.container_state})")
        return pod.container

    async def kill_container(self, name: str, signal_name: str) -> dict[str, Any]:
        pod = self._pod(name)
        container = self._running_container(pod)
        sig = signal.Signals[signal_name]
        self._diag(name, "Kill", f"{signal_name} to {container.description}")
        await asyncio.to_thread(container.signal, sig)
        return {"pid": container.pid, "container": container.description}

    async def breach_memory_limit(self, name: str) -> dict[str, Any]:
        pod = self._pod(name)
        container = self._running_container(pod)
        self._diag(name, "MemoryLimitLowered", f"{container.description}: limit set near usage")
        result = await asyncio.to_thread(self.runtime.breach_memory_limit, container, name)
        self._diag(name, "MemoryPushed", json.dumps(result))
        return result

    async def freeze_pods(self, names: list[str], seconds: float) -> dict[str, Any]:
        """Stop every named pod at once (SIGSTOP, or the cgroup freezer for containers); thaw
        exactly `seconds` after they stopped (a timer, not the reconcile tick, so a known
        outage is known to the millisecond)."""
        pods = [self._pod(name) for name in names]
        containers = [self._running_container(pod) for pod in pods]
        await asyncio.to_thread(self.runtime.freeze_all, containers)
        stopped_at = time.time()
        thaw_at = time.monotonic() + float(seconds)
        for pod in pods:
            pod.frozen_until_mono = thaw_at
        asyncio.get_running_loop().call_later(float(seconds), self._thaw, pods)
        for pod in pods:
            self._diag(pod.name, "Frozen", f"{self.runtime.name} freeze for {seconds}s")
        return {"stopped_at": stopped_at, "seconds": float(seconds), "pods": [p.name for p in pods]}

    def _thaw(self, pods: list[Pod]) -> None:
        for pod in pods:
            if pod.frozen_until_mono is None:
                continue  # already thawed (or the pod went away)
            pod.frozen_until_mono = None
            if pod.container is not None:
                self._spawn(asyncio.to_thread(pod.container.thaw))
            self._diag(pod.name, "Thawed", f"{self.runtime.name} thaw")

    def scale(self, name: str, replicas: int) -> dict[str, Any]:
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        workload = self._workload(name)
        workload.replicas = int(replicas)
        self._diag(f"{workload.spec.kind}/{name}", "Scaled", f"replicas {replicas}")
        return {"replicas": workload.replicas}

    def rollout_restart(self, name: str) -> dict[str, Any]:
        workload = self._workload(name)
        workload.restarted_at = time.strftime("%Y-%m-%dT%H:%M:%S%z") + f".{time.time_ns() % 10**9}"
        workload.template = self._template_with_restart(workload.spec, workload.restarted_at)
        self._diag(
            f"{workload.spec.kind}/{name}",
            "RolloutRestart",
            f"template {workload.template.template_hash}",
        )
        return {"template_hash": workload.template.template_hash}

    def rollout_status(self, name: str) -> dict[str, Any]:
        workload = self._workload(name)
        live = [p for p in self.pods.values() if p.owner == name and not p.deleting]
        updated = [p for p in live if p.template.template_hash == workload.template.template_hash]
        ready_updated = [p for p in updated if p.ready]
        return {
            "kind": workload.spec.kind,
            "desired": workload.replicas,
            "current": len(live),
            "updated": len(updated),
            "ready": sum(1 for p in live if p.ready),
            "complete": len(updated) == workload.replicas
            and len(live) == workload.replicas
            and len(ready_updated) == workload.replicas,
            "terminating": sum(1 for p in self.pods.values() if p.owner == name and p.deleting),
        }

    def pods_info(self, app: str | None) -> list[dict[str, Any]]:
        return [
            p.info()
            for p in sorted(self.pods.values(), key=lambda p: p.created)
            if app is None or p.app == app
        ]

    def services_info(self) -> dict[str, Any]:
        info = {}
        for name, service in self.spec.services.items():
            info[name] = {
                "type": service.type,
                "selector": service.selector,
                "ports": [dataclasses.asdict(p) for p in service.ports],
                "cluster_ip": service.cluster_ip,
                "listeners": [p.address for p in self.proxies.get(name, [])],
                "endpoints": self.endpoints(name),
                "proxy": [dataclasses.asdict(p.stats) for p in self.proxies.get(name, [])],
            }
        return info

    def diagnostics(self, app: str | None) -> str:
        lines = [f"local cluster {self.layout.root} (supervisor pid {os.getpid()})", "pods:"]
        pods = [p for p in self.pods.values() if app is None or p.app == app]
        for pod in sorted(pods, key=lambda p: p.created):
            lines.append(
                f"  {pod.name} ip={pod.ip} phase={pod.info()['phase']} ready={pod.ready} "
                f"container={pod.container_state} restarts={pod.restarts} "
                f"last={pod.last_termination_reason or '-'}({pod.last_exit_code})"
            )
        if not pods:
            lines.append("  (none)")
        for name in sorted(self.workloads):
            lines.append(f"{self.workloads[name].spec.kind}/{name}: {self.rollout_status(name)}")
        names = {p.name for p in pods}
        recent = [
            e for e in self.diag_ring if app is None or e["object"] in names or "/" in e["object"]
        ][-25:]
        lines.append("recent events:")
        for event in recent:
            stamp = (
                time.strftime("%H:%M:%S", time.localtime(event["at"]))
                + f".{int(event['at'] % 1 * 1000):03d}"
            )
            lines.append(f"  {stamp} {event['object']} {event['reason']} {event['message']}")
        for pod in pods:
            if pod.ready:
                continue
            lines.append(f"last log lines of {pod.name} (not ready):")
            lines.extend("  | " + line for line in tail_lines(self.layout.pod_log(pod.name), 20))
        return "\n".join(lines)

    # ---------------------------------------------------------------- state
    def save_state(self) -> None:
        self._dirty = False
        self._last_save = time.monotonic()
        state = {
            "epoch": self.epoch,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "saved_at": time.time(),
            "stopping": self._stopping,
            "workloads": {
                n: {
                    "kind": w.spec.kind,
                    "replicas": w.replicas,
                    "template_hash": w.template.template_hash,
                }
                for n, w in self.workloads.items()
            },
            "services": self.services_info(),
            "pods": self.pods_info(None),
            "events": list(self.diag_ring)[-300:],
            "ignored": self.spec.ignored,
        }
        try:
            write_json_atomic(self.layout.state_file, state)
        except OSError:
            log.exception("cannot write state")

    # ---------------------------------------------------------------- shutdown
    async def shutdown(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._diag("cluster", "Shutdown", f"deleting {len(self.pods)} pods")
        for pod in list(self.pods.values()):
            self._start_deletion(pod, None, "cluster shutting down")
        deadline = (
            time.monotonic() + max((p.template.grace_s for p in self.pods.values()), default=0) + 10
        )
        while self.pods and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        try:
            leftovers = await asyncio.to_thread(self.runtime.remove_leftovers)
            if leftovers:
                self._diag("cluster", "RemovedLeftovers", ", ".join(leftovers))
        except RuntimeError as exc:
            self._diag("cluster", "FailedCleanup", str(exc))
        for proxies in self.proxies.values():
            for proxy in proxies:
                await proxy.close()
        self.proxies.clear()
        self.save_state()
        self._stopped.set()

    # ---------------------------------------------------------------- control API
    async def serve(self) -> None:
        path = self.layout.socket_path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._server = await asyncio.start_unix_server(
            self._handle, path=str(path), limit=64 * 1024 * 1024
        )
        os.chmod(path, 0o600)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            request = json.loads(line)
            try:
                result = await self.dispatch(request)
                response: dict[str, Any] = {"ok": True, "result": result}
            except (KeyError, ValueError, RuntimeError) as exc:
                message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
                response = {"ok": False, "error": str(message), "type": type(exc).__name__}
            except Exception as exc:
                log.exception("request failed: %s", request.get("op"))
                response = {
                    "ok": False,
                    "error": f"{type(exc).__name__}: {exc}",
                    "type": "internal",
                }
            writer.write(json.dumps(response, default=str).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def dispatch(self, request: dict[str, Any]) -> Any:
        op = request.get("op")
        if op == "ping":
            return {"pid": os.getpid(), "epoch": self.epoch, "stopping": self._stopping}
        if self._stopping and op not in ("pods", "status", "diagnostics", "watch", "endpoints"):
            raise RuntimeError("the local cluster is shutting down")
        if op == "apply":
            return await self.apply(request["objects"], request.get("replicas") or {})
        if op == "pods":
            return self.pods_info(request.get("app"))
        if op == "endpoints":
            return self.endpoints(request["service"])
        if op == "services":
            return self.services_info()
        if op == "rollout_status":
            names = request.get("names") or sorted(self.workloads)
            return {name: self.rollout_status(name) for name in names}
        if op == "desired":
            return self._workload(request["name"]).replicas
        if op == "delete_pod":
            return self.delete_pod(request["name"], request.get("grace_s"))
        if op == "kill_container":
            return await self.kill_container(request["name"], request.get("signal", "SIGKILL"))
        if op == "breach_memory_limit":
            return await self.breach_memory_limit(request["name"])
        if op == "freeze":
            names = request.get("names") or [request["name"]]
            return await self.freeze_pods(list(names), request["seconds"])
        if op == "scale":
            return self.scale(request["name"], int(request["replicas"]))
        if op == "rollout_restart":
            return self.rollout_restart(request["name"])
        if op == "diagnostics":
            return self.diagnostics(request.get("app"))
        if op == "watch":
            return await self.watch(
                request.get("since"), request.get("epoch"), float(request.get("wait_s", 1.0))
            )
        if op == "status":
            return self.status()
        if op == "shutdown":
            self._spawn(self.shutdown())
            return {"pid": os.getpid()}
        raise ValueError(f"unknown op {op!r}")

    async def watch(self, since: int | None, epoch: str | None, timeout_s: float) -> dict[str, Any]:
        if since is None:
            # a new watch: like the API server, the current pods first as ADDED
            return {
                "epoch": self.epoch,
                "next": self.seq,
                "events": [
                    {
                        "kind": "pod",
                        "type": "ADDED",
                        "app": p.app,
                        "at": time.time(),
                        "pod": p.info(),
                        "seq": self.seq,
                    }
                    for p in sorted(self.pods.values(), key=lambda p: p.created)
                ],
                "lost": 0,
            }
        if epoch != self.epoch:
            since = 0
        if self.seq <= since:
            waiter = self._new_event
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), max(0.0, min(timeout_s, 30.0)))
        events = [e for e in self.watch_ring if e["seq"] > since]
        oldest = self.watch_ring[0]["seq"] if self.watch_ring else self.seq + 1
        return {
            "epoch": self.epoch,
            "next": self.seq,
            "events": events,
            "lost": max(0, oldest - since - 1),
        }

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "state_dir": str(self.layout.root),
            "epoch": self.epoch,
            "started_at": self.started_at,
            "pod_network": self.pod_network,
            "workloads": {n: self.rollout_status(n) for n in sorted(self.workloads)},
            "services": self.services_info(),
            "pods": self.pods_info(None),
            "ignored": self.spec.ignored,
            "runtime": self.runtime.name,
            "backoff_base_s": self.backoff_base_s,
            "probe_period_cap_s": self.probe_period_cap_s or None,
        }


def _scale_down_order(pods: list[Pod]) -> list[Pod]:
    """Not-ready first, then the most restarted, then the newest (the ReplicaSet's ranking)."""
    return sorted(pods, key=lambda p: (p.ready, -p.restarts, -p.created))


async def check_probe(ip: str, probe: ProbeSpec) -> tuple[bool, str]:
    """One probe against ip:port: HTTP 200-399 (httpGet) or a TCP connect (tcpSocket)."""
    writer = None
    try:
        async with asyncio.timeout(probe.timeout_s):
            reader, writer = await asyncio.open_connection(ip, probe.port)
            if probe.handler == "tcp":
                return True, "connected"
            request = (
                f"GET {probe.path} HTTP/1.1\r\nHost: {ip}:{probe.port}\r\n"
                "User-Agent: kube-probe/local\r\nAccept: */*\r\nConnection: close\r\n\r\n"
            )
            writer.write(request.encode())
            await writer.drain()
            status_line = await reader.readline()
        parts = status_line.decode("latin-1").split()
        code = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
        return 200 <= code < 400, f"HTTP {code}" if code else "no HTTP status line"
    except TimeoutError:
        return False, f"timeout after {probe.timeout_s}s"
    except OSError as exc:
        return False, f"{type(exc).__name__}: {exc.strerror or exc}"
    finally:
        if writer is not None:
            writer.close()


async def _main_async(layout: StateLayout) -> None:
    config = read_json(layout.config_file) or {}
    supervisor = Supervisor(layout, config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: supervisor._spawn(supervisor.shutdown()))
    await supervisor.serve()
    log.info("supervisor %s listening on %s", os.getpid(), layout.socket_path)
    try:
        await supervisor.run()
    finally:
        if supervisor._server is not None:
            supervisor._server.close()
        with contextlib.suppress(FileNotFoundError):
            layout.socket_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            layout.pidfile.unlink()
        log.info("supervisor %s stopped", os.getpid())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="local cluster supervisor (started by LocalCluster.up)"
    )
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    layout = StateLayout(args.state_dir.resolve())
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s"
    )
    layout.pidfile.write_text(f"{os.getpid()}\n")
    # the stdlib loop on purpose: uvloop crashed (double free) here mixing subprocess.Popen,
    # aborted transports and pseudo-sockets; correctness first
    asyncio.run(_main_async(layout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
