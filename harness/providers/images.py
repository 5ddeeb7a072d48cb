"""Build the service image with docker and make it available to a cluster's nodes.

The build is cache-friendly twice over: docker's layer cache does the usual work, and before
building we compare a digest of the build context with the label the last build stamped on
the image, so an unchanged ``system/`` costs one ``docker image inspect``, not a build.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from harness.providers.base import ClusterError, ClusterUnavailable
from harness.providers.kube import APP_IMAGE, REPO_ROOT, run_command

log = logging.getLogger(__name__)

SYSTEM_DIR = REPO_ROOT / "system"
CONTEXT_DIGEST_LABEL = "org.rag-harness.context-digest"

INSTALL_HINTS = {
    "docker": "install Docker Engine (https://docs.docker.com/engine/install/) and start it",
    "kubectl": "install kubectl (https://kubernetes.io/docs/tasks/tools/)",
    "minikube": "install minikube (https://minikube.sigs.k8s.io/docs/start/)",
    "kind": "install kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation, "
    "e.g. `go install sigs.k8s.io/kind@latest`)",
    "k3d": "install k3d (https://k3d.io/#installation)",
}

# Load commands, as documented by each tool; {image} and {cluster} are filled in.
_LOAD_COMMANDS = {
    "minikube": ["minikube", "image", "load", "{image}", "--profile", "{cluster}"],
    "kind": ["kind", "load", "docker-image", "{image}", "--name", "{cluster}"],
    "k3d": ["k3d", "image", "import", "{image}", "-c", "{cluster}"],
}

# Not part of the image: caches, local data, virtualenvs.
_IGNORED_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".venv", "data"}


def require_binary(name: str, needed_for: str = "") -> str:
    """The path of an executable, or ClusterUnavailable naming it and how to install it."""
    path = shutil.which(name)
    if path is None:
        purpose = f" (needed to {needed_for})" if needed_for else ""
        hint = INSTALL_HINTS.get(name, f"install {name} and put it on PATH")
        raise ClusterUnavailable(f"`{name}` not found on PATH{purpose}; {hint}")
    return path


def docker_build_argv(
    context_dir: Path, tag: str = APP_IMAGE, dockerfile: Path | None = None, digest: str = ""
) -> list[str]:
    argv = [
        "docker",
        "build",
        "--tag",
        tag,
        "--file",
        str(dockerfile or context_dir / "Dockerfile"),
    ]
    if digest:
        argv += ["--label", f"{CONTEXT_DIGEST_LABEL}={digest}"]
    return [*argv, str(context_dir)]


def image_label_argv(image: str, label: str = CONTEXT_DIGEST_LABEL) -> list[str]:
    return [
        "docker",
        "image",
        "inspect",
        "--format",
        f'{{{{index .Config.Labels "{label}"}}}}',
        image,
    ]


def load_image_argv(provider: str, image: str, cluster: str) -> list[str]:
    """The provider's own command that copies a local docker image onto its nodes."""
    try:
        template = _LOAD_COMMANDS[provider]
    except KeyError:
        raise ClusterError(
            f"no image load command for provider {provider!r}; known: {sorted(_LOAD_COMMANDS)}"
        ) from None
    return [part.format(image=image, cluster=cluster) for part in template]


def _context_files(context_dir: Path) -> Iterator[Path]:
    for path in sorted(context_dir.rglob("*")):
        rel = path.relative_to(context_dir)
        if path.is_file() and not (_IGNORED_PARTS & set(rel.parts)) and path.suffix != ".pyc":
            yield path


def context_digest(context_dir: Path) -> str:
    """sha256 over the relative path and bytes of every file in the build context."""
    digest = hashlib.sha256()
    for path in _context_files(context_dir):
        digest.update(str(path.relative_to(context_dir)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def build_image(
    context_dir: Path = SYSTEM_DIR,
    tag: str = APP_IMAGE,
    *,
    dockerfile: Path | None = None,
    timeout_s: float = 1200.0,
    force: bool = False,
) -> str:
    """Build ``tag`` from ``context_dir`` unless the image already holds this exact context."""
    require_binary("docker", "build the rag-api image")
    dockerfile = dockerfile or context_dir / "Dockerfile"
    if not dockerfile.is_file():
        raise ClusterError(
            f"no Dockerfile at {dockerfile}; the image is built from system/Dockerfile"
        )
    digest = context_digest(context_dir)
    if not force:
        inspect = run_command(image_label_argv(tag), 30, f"inspect image {tag}", check=False)
        if inspect.returncode == 0 and inspect.stdout.strip() == digest:
            log.info("image %s is up to date with %s (digest %s)", tag, context_dir, digest[:12])
            return tag
    log.info("building %s from %s", tag, context_dir)
    run_command(
        docker_build_argv(context_dir, tag, dockerfile, digest), timeout_s, f"docker build {tag}"
    )
    return tag


def load_image_into(provider: str, image: str, cluster: str, timeout_s: float = 600.0) -> None:
    argv = load_image_argv(provider, image, cluster)
    require_binary(argv[0], f"load {image} into the {provider} cluster")
    run_command(argv, timeout_s, f"load {image} into {provider} cluster {cluster}")


def docker_engine_answers(timeout_s: float = 5.0) -> tuple[bool, str]:
    """(True, server version) when a Docker engine answers; else (False, why not)."""
    if shutil.which("docker") is None:
        return False, "docker binary not found"
    try:
        proc = run_command(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            timeout_s,
            "ask the Docker engine its version",
            check=False,
        )
    except ClusterError as exc:
        return False, str(exc)
    version = proc.stdout.strip()
    if proc.returncode != 0 or not version:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        return False, f"no Docker engine answers ({detail[-1] if detail else 'no output'})"
    return True, version
