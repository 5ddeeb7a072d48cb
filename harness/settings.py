"""The harness's one settings object.

Every timeout and default is a named field here, overridable by an environment variable
(prefix ``HARNESS_``), so a slow machine can stretch a wait without a code change.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_CHOICES = ("auto", "local", "minikube", "kind", "k3d", "existing")
RUNTIME_CHOICES = ("process", "docker", "auto")  # how the local cluster runs a pod's container


class HarnessSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HARNESS_", extra="ignore")

    cluster: str = Field(
        default="auto", description="provider: auto|local|minikube|kind|k3d|existing"
    )
    replicas: int = Field(default=2, ge=1, le=10, description="rag-api replicas to deploy")
    state_dir: Path = Field(default=REPO_ROOT / ".state", description="state and pod logs")
    reports_dir: Path = Field(
        default=REPO_ROOT / "reports", description="where reports are written"
    )
    k8s_dir: Path = Field(default=REPO_ROOT / "k8s", description="kustomize base and overlays")
    overlay: str = Field(default="", description="overlay name; empty = the provider's own")
    context: str = Field(default="", description="kubeconfig context for --cluster existing")
    runtime: str = Field(default="process", description="local cluster pods: process|docker|auto")
    rollout_timeout_s: float = Field(default=180.0, gt=0, le=3600)
    up_timeout_s: float = Field(default=600.0, gt=0, le=7200)
    request_timeout_s: float = Field(default=10.0, gt=0, le=300)
    load_users: int = Field(default=10, ge=1, le=200)
    load_rate_per_s: float = Field(default=50.0, gt=0, le=2000, description="target requests/s")
    experiment_duration_s: float = Field(default=25.0, gt=0, le=600)
    fault_at_s: float = Field(
        default=6.0, ge=1, le=300, description="fault this long after load starts"
    )

    @field_validator("cluster")
    @classmethod
    def _known_cluster(cls, value: str) -> str:
        if value not in CLUSTER_CHOICES:
            raise ValueError(
                f"unknown cluster {value!r}; choose one of {', '.join(CLUSTER_CHOICES)}"
            )
        return value

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, value: str) -> str:
        if value not in RUNTIME_CHOICES:
            raise ValueError(
                f"unknown runtime {value!r}; choose one of {', '.join(RUNTIME_CHOICES)}"
            )
        return value


@lru_cache(maxsize=1)
def get_settings() -> HarnessSettings:
    return HarnessSettings()
