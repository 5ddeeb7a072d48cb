"""Container runtimes of the local cluster: a pod's container is a process or a Docker container.

The supervisor (the kubelet's part of it) only talks to `ContainerRuntime.start` and to the
`ContainerHandle` it returns; one handle is one container instance, so a restart is a new
handle, as a restarted container in Kubernetes is a new container.

- `ProcessRuntime`: the container is a process group on this machine (the original runtime).
- `DockerRuntime` (in `docker_runtime.py`): the container is a Docker container of the
  image the manifest names, with the manifest's limits and security context applied.

Handles are driven from the supervisor's asyncio loop: `exited()` must not block, the other
methods may (a docker call takes ~0.1 s), so the supervisor runs those in a thread.
"""

from __future__ import annotations

import abc
import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.providers.local.layout import kill_group

RUNTIME_NAMES = ("process", "docker")

_libc: Any = None
PR_SET_PDEATHSIG = 1


def die_with_supervisor() -> None:  # runs in the forked child before exec
    # if the supervisor dies (even SIGKILL) its pods die too: no orphans
    import ctypes

    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def host_command(command: str) -> str:
    """`python` is the harness's interpreter, `chroma` the CLI beside it (process runtime)."""
    venv_bin = Path(sys.executable).parent
    if command in ("python", "python3"):
        return sys.executable
    if "/" not in command:
        beside = venv_bin / command
        if beside.exists():
            return str(beside)
        found = shutil.which(command)
        return found or command
    return command


def exit_code_of(returncode: int) -> int:
    """Popen's returncode (-N for a signal) as a container exit code (128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


# ------------------------------------------------------------------ Kubernetes quantities
_MEMORY_SUFFIXES = {
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
    "k": 1000,
    "K": 1000,  # not a Kubernetes suffix, but what people write (and Docker's k)
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "E": 1000**6,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)([A-Za-z]*)$")


def memory_bytes(quantity: str | int | float) -> int:
    """A Kubernetes memory quantity (`1Gi`, `384Mi`, `500M`, `128974848`, `1e9`) in bytes.

    Docker refuses Kubernetes suffixes (`--memory 384Mi`: "invalid suffix"), so every limit
    goes to it in bytes."""
    text = str(quantity).strip()
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"memory quantity {quantity!r} is not a number with a unit (e.g. 512Mi)")
    number, suffix = match.groups()
    if suffix and suffix not in _MEMORY_SUFFIXES:
        raise ValueError(
            f"memory quantity {quantity!r}: unknown suffix {suffix!r} "
            f"(use one of {', '.join(_MEMORY_SUFFIXES)})"
        )
    value = float(number) * _MEMORY_SUFFIXES.get(suffix, 1)
    if value < 1:
        raise ValueError(f"memory quantity {quantity!r} is less than one byte")
    return int(value)


def cpu_cores(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity (`1`, `0.5`, `250m`) in cores (Docker's `--cpus`)."""
    text = str(quantity).strip()
    try:
        cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        raise ValueError(
            f"cpu quantity {quantity!r} is not cores (1, 0.5) or millicores (250m)"
        ) from None
    if cores <= 0:
        raise ValueError(f"cpu quantity {quantity!r} must be more than 0")
    return cores


# ------------------------------------------------------------------ launch and handles
@dataclass
class ContainerLaunch:
    """Everything a runtime needs to start one container of a pod."""

    pod: str
    pod_uid: str
    attempt: int  # 1 for the first container of the pod, +1 per restart
    image: str
    argv: list[str]  # command + args as the container sees them ($(VAR) expanded)
    env: dict[str, str]  # the container's environment from the manifest
    mounts: list[tuple[str, str]]  # (host directory, mountPath)
    resources: dict[str, Any]
    security: dict[str, Any]  # the merged pod + container securityContext
    working_dir: str
    log_path: Path
    pod_dir: Path
    # the process runtime: paths rewritten to host directories, host interpreter, cwd
    host_argv: list[str] = field(default_factory=list)
    host_env: dict[str, str] = field(default_factory=dict)
    host_cwd: str = ""


class ContainerHandle(abc.ABC):
    """One container instance. A restarted container is a new handle."""

    exit_code: int | None = None
    reason: str = ""  # Completed | Error | OOMKilled, known once exited() is True

    @property
    @abc.abstractmethod
    def pid(self) -> int | None:
        """A host pid for status output (the process, or the docker CLI attached to it)."""

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """What the events say: `pid 123` or `container harness-...`."""

    @abc.abstractmethod
    def exited(self) -> bool:
        """True once the container has ended and exit_code and reason are known. Never blocks."""

    @abc.abstractmethod
    def signal(self, sig: signal.Signals) -> None:
        """Send a signal to the container's main process (its group, for a process)."""

    @abc.abstractmethod
    def freeze(self) -> None:
        """Stop every process of the container (SIGSTOP / cgroup freezer)."""

    @abc.abstractmethod
    def thaw(self) -> None:
        """Undo freeze."""

    @abc.abstractmethod
    def exec_command(self, argv: Sequence[str]) -> tuple[list[str], dict[str, str] | None, str]:
        """(argv, env, cwd) that runs `argv` inside the container (a preStop exec hook)."""

    @abc.abstractmethod
    def release(self) -> None:
        """After the container ended: nothing of it is left (process group, container)."""


class ContainerRuntime(abc.ABC):
    name: str = ""

    @abc.abstractmethod
    def start(self, launch: ContainerLaunch) -> ContainerHandle:
        """Start the container; OSError or RuntimeError when it cannot even be started."""

    def prepare_volume(self, path: Path, security: dict[str, Any]) -> None:  # noqa: B027
        """Make a volume directory usable by the container's user (fsGroup, runAsUser)."""

    def freeze_all(self, handles: Sequence[ContainerHandle]) -> None:
        for handle in handles:
            handle.freeze()

    def breach_memory_limit(self, handle: ContainerHandle, pod: str) -> dict[str, Any]:
        raise RuntimeError(
            f"pod {pod}: a memory limit can only be breached with the docker runtime (a "
            f"process has no cgroup limit here); start the cluster with `--runtime docker`"
        )

    def remove_leftovers(self) -> list[str]:
        """Containers of this cluster still present (down and a fresh up remove them)."""
        return []


class ProcessContainer(ContainerHandle):
    def __init__(self, proc: subprocess.Popen[bytes], launch: ContainerLaunch) -> None:
        self.proc = proc
        self._launch = launch

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    @property
    def description(self) -> str:
        return f"process group {self.proc.pid}"

    def exited(self) -> bool:
        code = self.proc.poll()
        if code is None:
            return False
        if self.exit_code is None:
            self.exit_code = exit_code_of(code)
            self.reason = "Completed" if self.exit_code == 0 else "Error"
        return True

    def signal(self, sig: signal.Signals) -> None:
        kill_group(self.proc.pid, sig)

    def freeze(self) -> None:
        kill_group(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        kill_group(self.proc.pid, signal.SIGCONT)

    def exec_command(self, argv: Sequence[str]) -> tuple[list[str], dict[str, str] | None, str]:
        return (
            [host_command(argv[0]), *argv[1:]],
            self._launch.host_env,
            self._launch.host_cwd,
        )

    def release(self) -> None:
        kill_group(self.proc.pid, signal.SIGKILL)  # the container's other processes go with it
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


class ProcessRuntime(ContainerRuntime):
    name = "process"

    def start(self, launch: ContainerLaunch) -> ContainerHandle:
        with open(launch.log_path, "ab") as log_file:
            proc = subprocess.Popen(
                launch.host_argv,
                cwd=launch.host_cwd,
                env=launch.host_env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                preexec_fn=die_with_supervisor,
            )
        return ProcessContainer(proc, launch)


def make_runtime(name: str, state_root: Path, config: dict[str, Any]) -> ContainerRuntime:
    if name == "process":
        return ProcessRuntime()
    if name == "docker":
        from harness.providers.local.docker_runtime import DockerRuntime

        return DockerRuntime(state_root, image_substitutes=config.get("docker_images") or {})
    raise ValueError(f"unknown container runtime {name!r}; choose one of {RUNTIME_NAMES}")
