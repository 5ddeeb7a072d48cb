"""The docker runtime of the local cluster: each pod's container is a Docker container.

A container is started like the kubelet would start it, from the manifest: host networking
(the pod binds its own loopback IP, 127.0.1.N, as with the process runtime), the image's
entrypoint replaced by the manifest's command, the manifest's env (passed in a 0600 env file,
never on a command line), `resources.limits` as `--memory`/`--cpus` (converted from Kubernetes
quantities: Docker refuses `Mi`), the securityContext as `--user`, `--read-only`,
`--cap-drop`, `no-new-privileges`, and volumes as bind mounts of host directories (an emptyDir
lives as long as the pod, across container restarts; a PVC outlives the pod).

`docker run` runs attached (not `-d`): the CLI process is the supervisor's handle on the
container, its exit is the container's exit (no polling), and it streams the container's
output into the pod's log file. Exit details (exit code, OOMKilled) come from one
`docker inspect` afterwards, in a thread, so the supervisor's loop never waits on docker.
Every container carries the label `rag-harness.state-dir=<state dir>`: `down` removes them
by that label and checks none is left, even when the supervisor died.

Images: the manifest's image is run as named, except images that cannot be pulled here and
whose program ships in the service image: chroma's server (`chromadb/chroma:<v>`) runs from
`rag-api:dev`, which has the `chroma` CLI of the same chromadb release in its venv.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.providers.local.layout import read_json, write_json_atomic
from harness.providers.local.manifests import REPO_ROOT, image_repository
from harness.providers.local.runtime import (
    ContainerHandle,
    ContainerLaunch,
    ContainerRuntime,
    cpu_cores,
    die_with_supervisor,
    exit_code_of,
    memory_bytes,
)

SERVICE_IMAGE = os.environ.get("RAG_IMAGE", "rag-api:dev")
# image repository -> the local image that runs it (see the module docstring)
DEFAULT_IMAGE_SUBSTITUTES = {
    "chromadb/chroma": SERVICE_IMAGE,
    "ghcr.io/chroma-core/chroma": SERVICE_IMAGE,
}
LABEL_STATE_DIR = "rag-harness.state-dir"
LABEL_POD = "rag-harness.pod"
LABEL_POD_UID = "rag-harness.pod-uid"
DOCKER_CALL_TIMEOUT_S = float(os.environ.get("HARNESS_DOCKER_CALL_TIMEOUT_S", "30"))
CREATE_RETRY_S = 5.0  # a signal right after start may reach docker before the container exists
OOM_HEADROOM_BYTES = 16 * 1024 * 1024
OOM_PUSH_TIMEOUT_S = 30.0
# the container's own memory usage, as it sees its cgroup: v2, then v1
CGROUP_USAGE_FILES = (
    "/sys/fs/cgroup/memory.current",
    "/sys/fs/cgroup/memory/memory.usage_in_bytes",
)
_USAGE_IN_ERROR = re.compile(r"current usage: (\d+)")
# a process inside the container that asks for memory page by page until the cgroup is full;
# the kernel's OOM killer then picks the largest process in the cgroup: the service
_OOM_PUSH = (
    "import time\n"
    "chunks = []\n"
    "for _ in range({mib}):\n"
    "    chunks.append(bytearray(1 << 20))\n"
    "    time.sleep(0.001)\n"
    "time.sleep(10)\n"
)


class DockerError(RuntimeError):
    """A docker call failed or timed out; the message says which and what docker answered."""


def docker_binary() -> str:
    found = shutil.which("docker")
    if found is None:
        raise DockerError(
            "no `docker` on PATH; the docker runtime needs a Docker engine "
            "(scripts/prepare-docker.sh start), or use --runtime process"
        )
    return found


def run_docker(
    args: Sequence[str], what: str, timeout_s: float = DOCKER_CALL_TIMEOUT_S, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [docker_binary(), *args]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, check=False, close_fds=True
        )
    except subprocess.TimeoutExpired as exc:
        raise DockerError(
            f"{what}: `docker {' '.join(args)}` did not finish within {timeout_s:g}s"
        ) from exc
    if check and proc.returncode != 0:
        raise DockerError(
            f"{what}: `docker {' '.join(args)}` exited {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()[-1500:]}"
        )
    return proc


def state_dir_tag(state_root: Path) -> str:
    return hashlib.sha256(str(state_root).encode()).hexdigest()[:8]


def container_name(state_root: Path, pod: str, attempt: int) -> str:
    """Unique per cluster, pod and restart: a restart is a new container, as in Kubernetes."""
    return f"harness-{state_dir_tag(state_root)}-{pod}-{attempt}"


def security_flags(security: Mapping[str, Any]) -> list[str]:
    """The securityContext as `docker run` flags (what the kubelet asks the runtime for)."""
    flags: list[str] = []
    user, group = security.get("runAsUser"), security.get("runAsGroup")
    if security.get("runAsNonRoot") and user is not None and int(user) == 0:
        raise RuntimeError("securityContext: runAsNonRoot with runAsUser 0 cannot start")
    if user is not None:
        flags += ["--user", f"{int(user)}:{int(group)}" if group is not None else str(int(user))]
    if security.get("fsGroup") is not None:
        flags += ["--group-add", str(int(security["fsGroup"]))]
    if security.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    capabilities = security.get("capabilities") or {}
    for cap in capabilities.get("drop") or ():
        flags += ["--cap-drop", str(cap)]
    for cap in capabilities.get("add") or ():
        flags += ["--cap-add", str(cap)]
    if security.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    return flags


def resource_flags(resources: Mapping[str, Any]) -> list[str]:
    """limits -> hard limits (no swap, as on a kubelet node); requests -> reservation/shares."""
    flags: list[str] = []
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    if "memory" in limits:
        limit = str(memory_bytes(limits["memory"]))
        flags += ["--memory", limit, "--memory-swap", limit]
    if "memory" in requests:
        flags += ["--memory-reservation", str(memory_bytes(requests["memory"]))]
    if "cpu" in limits:
        flags += ["--cpus", f"{cpu_cores(limits['cpu']):g}"]
    if "cpu" in requests:
        flags += ["--cpu-shares", str(max(2, int(cpu_cores(requests["cpu"]) * 1024)))]
    return flags


def docker_run_argv(
    launch: ContainerLaunch, name: str, image: str, state_root: Path, env_file: Path
) -> list[str]:
    """`docker run` (attached) for one container of a pod; the docker binary not included."""
    argv = [
        "run",
        "--name",
        name,
        "--pull",
        "never",  # a missing image is an error here, never a pull from a registry
        "--sig-proxy=false",  # signals reach the container through `docker kill` only
        "--network",
        "host",
        "--label",
        f"{LABEL_STATE_DIR}={state_root}",
        "--label",
        f"{LABEL_POD}={launch.pod}",
        "--label",
        f"{LABEL_POD_UID}={launch.pod_uid}",
        "--env-file",
        str(env_file),
        *security_flags(launch.security),
        *resource_flags(launch.resources),
    ]
    for host_dir, mount_path in launch.mounts:
        argv += ["--mount", f"type=bind,source={host_dir},target={mount_path}"]
    if launch.working_dir:
        argv += ["--workdir", launch.working_dir]
    # the manifest's command replaces the entrypoint, its args follow (Kubernetes' rule)
    argv += ["--entrypoint", launch.argv[0], image, *launch.argv[1:]]
    return argv


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    lines = []
    for key, value in env.items():
        if "\n" in value or "\r" in value:
            raise RuntimeError(f"env {key}: a value with a line break cannot be passed to docker")
        lines.append(f"{key}={value}\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.writelines(lines)


def inspect_state(name: str) -> dict[str, Any] | None:
    """`State` of a container, None when docker does not know it."""
    proc = run_docker(
        ["inspect", "--format", "{{json .State}}", name], f"inspect container {name}", check=False
    )
    if proc.returncode != 0:
        if "No such" in proc.stderr:
            return None
        raise DockerError(f"inspect container {name}: {proc.stderr.strip()}")
    state: dict[str, Any] = json.loads(proc.stdout)
    return state


class DockerContainer(ContainerHandle):
    def __init__(self, name: str, proc: subprocess.Popen[bytes], pod_dir: Path) -> None:
        self.name = name
        self.proc = proc
        self._pod_dir = pod_dir
        self._inspector: threading.Thread | None = None
        self._done = threading.Event()
        self.detail = ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    @property
    def description(self) -> str:
        return f"container {self.name}"

    def exited(self) -> bool:
        if self._done.is_set():
            return True
        if self.proc.poll() is None:
            return False
        if self._inspector is None:
            self._inspector = threading.Thread(
                target=self._read_exit, name=f"inspect-{self.name}", daemon=True
            )
            self._inspector.start()
        return False

    def _read_exit(self) -> None:
        cli_code = exit_code_of(self.proc.returncode if self.proc.returncode is not None else -9)
        try:
            state = inspect_state(self.name)
        except (DockerError, ValueError) as exc:
            state, self.detail = None, str(exc)
        if state is None:
            # never created (bad flags, missing image: the CLI says why in the pod log)
            self.exit_code, self.reason = cli_code, "Error"
        elif state.get("Running") or state.get("Paused"):
            # the attached CLI died, the container did not: end it, the kubelet lost it
            self.detail = "docker CLI exited while the container ran; container removed"
            run_docker(["rm", "--force", self.name], f"remove {self.name}", check=False)
            self.exit_code, self.reason = 137, "Error"
        else:
            self.exit_code = int(state.get("ExitCode", cli_code))
            if state.get("OOMKilled"):
                self.reason = "OOMKilled"
            else:
                self.reason = "Completed" if self.exit_code == 0 else "Error"
            self.detail = str(state.get("Error") or "")
        self._done.set()

    def wait_exit_details(self, timeout_s: float) -> bool:
        """For callers outside the loop (tests): block until exited() would be True."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.exited():
                return True
            time.sleep(0.02)
        return False

    def _call_running(self, args: list[str], what: str) -> None:
        """A call that needs the container to exist: retried while `docker run` creates it."""
        deadline = time.monotonic() + CREATE_RETRY_S
        while True:
            proc = run_docker(args, what, check=False)
            if proc.returncode == 0:
                return
            error = proc.stderr.strip()
            if "is not running" in error or "is not paused" in error:
                return  # it ended meanwhile (exited() will say how) or needs nothing
            if "No such container" in error:
                if self.proc.poll() is not None:
                    return  # gone: it exited and was removed
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
            raise DockerError(f"{what}: `docker {' '.join(args)}`: {error}")

    def signal(self, sig: signal.Signals) -> None:
        self._call_running(
            ["kill", "--signal", sig.name, self.name], f"{sig.name} to container {self.name}"
        )

    def freeze(self) -> None:
        self._call_running(["pause", self.name], f"pause container {self.name}")

    def thaw(self) -> None:
        self._call_running(["unpause", self.name], f"unpause container {self.name}")

    def exec_command(self, argv: Sequence[str]) -> tuple[list[str], dict[str, str] | None, str]:
        return [docker_binary(), "exec", self.name, *argv], None, str(self._pod_dir)

    def release(self) -> None:
        run_docker(["rm", "--force", self.name], f"remove container {self.name}", check=False)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class DockerRuntime(ContainerRuntime):
    name = "docker"

    def __init__(self, state_root: Path, image_substitutes: Mapping[str, str] | None = None):
        self.state_root = state_root
        self.image_substitutes = {**DEFAULT_IMAGE_SUBSTITUTES, **dict(image_substitutes or {})}

    def image_for(self, image: str) -> str:
        return self.image_substitutes.get(image_repository(image), image)

    def start(self, launch: ContainerLaunch) -> ContainerHandle:
        name = container_name(self.state_root, launch.pod, launch.attempt)
        env_file = launch.pod_dir / "container.env"
        write_env_file(env_file, launch.env)
        argv = [
            docker_binary(),
            *docker_run_argv(launch, name, self.image_for(launch.image), self.state_root, env_file),
        ]
        with open(launch.log_path, "ab") as log_file:
            proc = subprocess.Popen(
                argv,
                cwd=str(launch.pod_dir),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                preexec_fn=die_with_supervisor,
            )
        return DockerContainer(name, proc, launch.pod_dir)

    def prepare_volume(self, path: Path, security: dict[str, Any]) -> None:
        """Owned by runAsUser:fsGroup like a kubelet-prepared volume (the image's user cannot
        write a root-owned host directory); changed only when the top is not already theirs."""
        uid = int(security.get("runAsUser", 0) or 0)
        gid = security.get("fsGroup", security.get("runAsGroup"))
        gid = int(gid) if gid is not None else uid
        stat = path.stat()
        if (stat.st_uid, stat.st_gid) == (uid, gid):
            return
        for root, dirs, files in os.walk(path):
            for entry in (root, *(os.path.join(root, n) for n in (*dirs, *files))):
                os.lchown(entry, uid, gid)
        path.chmod(0o770)

    def freeze_all(self, handles: Sequence[ContainerHandle]) -> None:
        names = [h.name for h in handles if isinstance(h, DockerContainer)]
        if names:  # one call: every pod stops within the same few milliseconds
            run_docker(["pause", *names], f"pause {', '.join(names)}")

    def breach_memory_limit(self, handle: ContainerHandle, pod: str) -> dict[str, Any]:
        """Lower the running container's memory limit to just above what it uses, then let a
        process in the container ask for more: the cgroup is full, the kernel's OOM killer
        ends the largest process in it, the service, and Docker records OOMKilled.

        Why not only lower the limit below the usage: on cgroup v1 the kernel refuses that
        (EBUSY, "unable to set memory limit ... current usage"); on cgroup v2 it would OOM-kill
        at once. The extra process is what a `kubectl exec` of a hungry tool does in a pod."""
        if not isinstance(handle, DockerContainer):
            raise RuntimeError(f"pod {pod}: not a docker container")
        usage = self._memory_usage(handle.name)
        limit = usage + OOM_HEADROOM_BYTES
        for _ in range(3):
            proc = run_docker(
                ["update", "--memory", str(limit), "--memory-swap", str(limit), handle.name],
                f"lower the memory limit of {handle.name}",
                check=False,
            )
            if proc.returncode == 0:
                break
            seen = _USAGE_IN_ERROR.search(proc.stderr)
            if not seen:
                raise DockerError(f"docker update of {handle.name}: {proc.stderr.strip()}")
            usage = int(seen.group(1))  # it grew meanwhile: the kernel says by how much
            limit = usage + OOM_HEADROOM_BYTES
        else:
            raise DockerError(f"{handle.name}: the memory limit could not be lowered to {limit}")
        push_mib = 2 * OOM_HEADROOM_BYTES // (1024 * 1024) + 64
        push = run_docker(
            ["exec", handle.name, "python", "-c", _OOM_PUSH.format(mib=push_mib)],
            f"allocate memory in {handle.name}",
            timeout_s=OOM_PUSH_TIMEOUT_S,
            check=False,
        )
        return {
            "container": handle.name,
            "usage_bytes": usage,
            "limit_bytes": limit,
            "push_exit_code": push.returncode,  # 137: killed with the container
        }

    @staticmethod
    def _memory_usage(name: str) -> int:
        for path in (
            "/sys/fs/cgroup/memory.current",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ):
            proc = run_docker(["exec", name, "cat", path], f"memory usage of {name}", check=False)
            if proc.returncode == 0 and proc.stdout.strip().isdigit():
                return int(proc.stdout.strip())
        raise DockerError(f"cannot read the memory usage of {name} from its cgroup")

    def list_containers(self) -> list[str]:
        proc = run_docker(
            ["ps", "--all", "--filter", f"label={LABEL_STATE_DIR}={self.state_root}",
             "--format", "{{.Names}}"],
            "list this cluster's containers",
        )  # fmt: skip
        return [line for line in proc.stdout.split() if line]

    def remove_leftovers(self) -> list[str]:
        names = self.list_containers()
        if names:
            run_docker(["rm", "--force", *names], f"remove {', '.join(names)}", check=False)
            still = self.list_containers()
            if still:
                raise DockerError(f"containers of {self.state_root} not removed: {still}")
        return names


# ------------------------------------------------------------------ the image, built when stale
PREPARE_SCRIPT = REPO_ROOT / "scripts" / "prepare-docker.sh"
BUILD_TIMEOUT_S = float(os.environ.get("BUILD_TIMEOUT", "1500")) + 120  # the script's + engine
_SYSTEM_DIR = REPO_ROOT / "system"


def _cache_dir() -> Path:
    default = Path(os.environ.get("HOME", "/root")) / ".cache" / "rag-harness"
    return Path(os.environ.get("RAG_HARNESS_CACHE", str(default)))


def image_id(image: str) -> str:
    proc = run_docker(
        ["image", "inspect", "--format", "{{.Id}}", image], f"look for image {image}", check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


def ensure_service_image(
    image: str = SERVICE_IMAGE, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Build `image` from system/ unless it exists and was built from this very context.

    The check costs one `docker image inspect` and a digest of system/ (the same digest the
    image builder of the real providers uses); the record of what was built lives in the
    cache dir of scripts/prepare-docker.sh, which does the build (BuildKit CLI, base image
    without a registry, pip CA as a build secret: see docs/docker.md)."""
    from harness.providers.images import context_digest  # lazy: it pulls in the k8s client

    digest = context_digest(_SYSTEM_DIR)
    record_path = _cache_dir() / f"built-{re.sub(r'[^A-Za-z0-9_.-]', '_', image)}.json"
    record = read_json(record_path) or {}
    current = image_id(image)
    if current and record.get("image_id") == current and record.get("context_digest") == digest:
        return {"image": image, "built": False, "image_id": current, "build_s": 0.0}
    why = "missing" if not current else "older than system/ (or built elsewhere)"
    if progress:
        progress(f"image {image} {why}: building with {PREPARE_SCRIPT.name} build")
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [str(PREPARE_SCRIPT), "build"],
            env={**os.environ, "RAG_IMAGE": image},
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DockerError(f"building {image} did not finish within {BUILD_TIMEOUT_S:g}s") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-25:])
        raise DockerError(f"`{PREPARE_SCRIPT} build` failed ({proc.returncode}):\n{tail}")
    built = image_id(image)
    if not built:
        raise DockerError(f"`{PREPARE_SCRIPT} build` succeeded but there is no image {image}")
    record_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record_path, {"image_id": built, "context_digest": digest})
    return {
        "image": image,
        "built": True,
        "image_id": built,
        "build_s": round(time.monotonic() - started, 1),
    }
