"""The harness's pytest plugin: options, markers and the session cluster fixtures.

Loaded from the root ``conftest.py``. Behaviour lives in the harness modules; this file
only wires pytest. Cluster fixtures are requested by the ``e2e`` and ``chaos`` suites
alone, so the default (unit) run never starts a cluster.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.settings import CLUSTER_CHOICES, RUNTIME_CHOICES, get_settings

MARKERS = (
    "e2e: end-to-end checks through the Service's NodePort (needs a cluster; see --cluster)",
    "chaos(scenario=None, **slo): a fault injected under Locust load; keyword arguments "
    "override the scenario's SLO limits (e.g. max_failed_requests=0, max_total_s=5)",
    "docker: needs a Docker engine (pods as containers)",
)

_FAILED_KEY = pytest.StashKey[bool]()


@dataclass(frozen=True, kw_only=True)
class HarnessOptions:
    cluster: str
    keep_cluster: bool
    replicas: int
    context: str
    reports_dir: Path
    runtime: str = "process"


def pytest_addoption(parser: pytest.Parser) -> None:
    settings = get_settings()
    group = parser.getgroup("harness", "RAG API end-to-end and chaos harness")
    group.addoption(
        "--cluster",
        default=os.environ.get("HARNESS_CLUSTER", "auto"),
        choices=CLUSTER_CHOICES,
        help="cluster provider for the e2e/chaos suites (default: auto; env HARNESS_CLUSTER)",
    )
    group.addoption(
        "--keep-cluster",
        action="store_true",
        default=False,
        help="leave the cluster (and its state/logs) up after the session",
    )
    group.addoption(
        "--replicas",
        type=int,
        default=settings.replicas,
        help="rag-api replicas to deploy (default 2; env HARNESS_REPLICAS)",
    )
    group.addoption(
        "--context",
        default=settings.context,
        help="kubeconfig context, with --cluster existing",
    )
    group.addoption(
        "--runtime",
        default=settings.runtime,
        choices=RUNTIME_CHOICES,
        help="local cluster: pods as processes or Docker containers (auto: docker when an "
        "engine answers; default process; env HARNESS_RUNTIME)",
    )
    group.addoption(
        "--reports-dir",
        default=str(settings.reports_dir),
        help="where chaos reports are written (default: reports/)",
    )


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    replicas = config.getoption("--replicas")
    if replicas < 1 or replicas > 10:
        raise pytest.UsageError(f"--replicas must be between 1 and 10, got {replicas}")
    cluster = config.getoption("--cluster")
    if config.getoption("--context") and cluster not in ("existing", "auto"):
        raise pytest.UsageError(
            f"--context only applies to --cluster existing (got --cluster {cluster})"
        )
    runtime = config.getoption("--runtime")
    if runtime == "docker" and cluster not in ("local", "auto"):
        raise pytest.UsageError(
            f"--runtime docker only applies to the local cluster (got --cluster {cluster})"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    if report.failed and ("cluster" in getattr(item, "fixturenames", ())):
        item.session.stash[_FAILED_KEY] = True
    return report


@pytest.fixture(scope="session")
def harness_options(pytestconfig: pytest.Config) -> HarnessOptions:
    return HarnessOptions(
        cluster=pytestconfig.getoption("--cluster"),
        keep_cluster=pytestconfig.getoption("--keep-cluster"),
        replicas=pytestconfig.getoption("--replicas"),
        context=pytestconfig.getoption("--context"),
        reports_dir=Path(pytestconfig.getoption("--reports-dir")),
        runtime=pytestconfig.getoption("--runtime"),
    )


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, harness_options: HarnessOptions) -> Iterator[Any]:
    """The session's cluster, up and deployed; a clear skip when it cannot be reached."""
    from harness.cluster import open_cluster, preflight

    handle = open_cluster(
        harness_options.cluster,
        context=harness_options.context,
        purpose="pytest",
        runtime=harness_options.runtime,
    )
    ok, how_to = preflight(handle)
    if not ok:
        pytest.skip(f"cluster {handle.name!r} is not reachable: {how_to}")
    info = handle.provider.up(replicas=harness_options.replicas)
    handle.info = info
    try:
        yield handle
    finally:
        failed = request.session.stash.get(_FAILED_KEY, False)
        keep = harness_options.keep_cluster or failed
        try:
            handle.provider.down(keep=keep)
        except Exception as exc:  # teardown never hides the test's own failure
            print(f"harness: teardown of {handle.name} failed: {exc!r}")
        if failed:
            print(f"harness: a cluster test failed; state kept for debugging: {handle.where}")


@pytest.fixture(scope="session")
def service_url(cluster: Any) -> str:
    return str(cluster.info.url)


@pytest.fixture(scope="session")
def api_key(cluster: Any) -> str:
    return str(cluster.info.api_key)


@pytest.fixture
def http_client(service_url: str) -> Iterator[httpx.Client]:
    """An httpx client on the Service URL; a fresh connection pool per test."""
    with httpx.Client(base_url=service_url, timeout=get_settings().request_timeout_s) as client:
        yield client
