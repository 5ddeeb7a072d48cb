"""The chaos dashboard in a real headless browser, on a real local cluster, under real Locust.

A local cluster of its own (state dir, nodePort and pod network picked free, so it never meets
a cluster on 31859) runs two rag-api pods that are STAND-INS (tests/dashboard/rag_pod_standin.py:
the RAG API stand-in as a pod, no chroma needed). Locust runs the project's locustfile with its
web UI on a free loopback port, load started (--autostart). Debian's chromium, driven by
selenium through chromedriver, opens /chaos, clicks "Delete one pod", and waits until the
recovery row shows numbers; the page is saved as reports/dashboard-chaos.png (the copy in
docs/ is one such screenshot, committed by hand).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import cluster as clusters
from harness.providers.base import ClusterInfo
from harness.providers.local import ImageMapping, LocalCluster
from harness.settings import get_settings
from tests.standin_manifests import deployment_and_service
from tests.standins.rag_api_standin import SAMPLE_QUESTIONS, write_golden
from tests.unit.service_support import free_port

pytestmark = pytest.mark.browser

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LOCUSTFILE = REPO / "loadtest" / "locustfile.py"
SCREENSHOT = REPO / "reports" / "dashboard-chaos.png"
CHROMIUM = Path(os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
STANDIN_IMAGE = "dashboard-standin"
WAIT_S = float(os.environ.get("HARNESS_TEST_WAIT_S", "30"))
RECOVERY_ROW_WAIT_S = float(os.environ.get("HARNESS_DASHBOARD_ROW_WAIT_S", "60"))
INSTALL_HINT = (
    "needs Debian's chromium and chromedriver and the selenium package: "
    "`apt-get install -y chromium chromium-driver` and `.venv/bin/pip install selenium` "
    "(or set CHROMIUM_BINARY / CHROMEDRIVER)"
)


def _browser_tools_missing() -> str:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    return ", ".join(missing)


def free_node_port() -> int:
    start = 32000 + os.getpid() % 500
    for port in range(start, start + 200):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free nodePort in {start}..{start + 199}")


def free_pod_network() -> str:
    for offset in range(60):
        third = 180 + (os.getpid() + offset) % 60
        with socket.socket() as probe:
            try:
                probe.bind((f"127.0.{third}.2", 8000))
            except OSError:
                continue
        return f"127.0.{third}.0/24"
    raise RuntimeError("no free loopback /24 for the pods in 127.0.180-239.0")


def standin_objects(node_port: int, golden: Path) -> list[dict[str, Any]]:
    env = [
        {"name": "STANDIN_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "STANDIN_PORT", "value": "8000"},
        {"name": "STANDIN_GOLDEN", "value": str(golden)},
    ]
    container = {
        "name": "rag-api",
        "image": f"{STANDIN_IMAGE}:test",
        "command": ["python", "rag_pod_standin.py"],
        "ports": [{"containerPort": 8000, "name": "http"}],
        "env": env,
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
        "lifecycle": {"preStop": {"sleep": {"seconds": 0.3}}},
    }
    return deployment_and_service(container, node_port)


@dataclass
class Dashboard:
    url: str  # Locust's web UI
    cluster: LocalCluster
    log: Path


def _get_json(url: str, timeout: float = 3.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def _post(url: str, data: bytes, content_type: str) -> tuple[int, Any]:
    req = urllib.request.Request(  # noqa: S310 - loopback
        url, data=data, method="POST", headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


@pytest.fixture
def dashboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Dashboard]:
    missing = _browser_tools_missing()
    if missing:
        pytest.skip(f"browser test: missing {missing}; {INSTALL_HINT}")
    monkeypatch.setenv("HARNESS_LOCAL_PROBE_PERIOD_S", "0.2")
    state_dir = tmp_path / "state"
    monkeypatch.setenv("HARNESS_STATE_DIR", str(state_dir))
    get_settings.cache_clear()
    golden = write_golden(tmp_path / "golden.yaml", SAMPLE_QUESTIONS)
    node_port = free_node_port()
    overlay = tmp_path / "manifest.yaml"
    overlay.write_text(yaml.safe_dump_all(standin_objects(node_port, golden)))
    cli_dir = state_dir / "cli"
    cluster = LocalCluster(
        cli_dir / "local",  # where `harness up` keeps a local cluster, so load_current finds it
        overlay=overlay,
        pod_network=free_pod_network(),
        image_mappings={STANDIN_IMAGE: ImageMapping(None, HERE)},
    )
    locust: subprocess.Popen[bytes] | None = None
    log = tmp_path / "locust.log"
    try:
        info: ClusterInfo = cluster.up(replicas=2)
        # the record `harness up` writes: the dashboard acts on this cluster
        clusters.save_current(
            clusters.ClusterHandle("local", cluster, "dashboard browser test", cli_dir, info=info)
        )
        web_port = free_port()
        argv = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE),
            "--host", info.url,
            "--web-host", "127.0.0.1", "--web-port", str(web_port),
            "--autostart", "--users", "4", "--spawn-rate", "4", "--user-rps", "10",
            "--golden", str(golden),
            "--harness-state-dir", str(state_dir),
        ]  # fmt: skip
        with log.open("wb") as log_handle:
            locust = subprocess.Popen(
                argv,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        url = f"http://127.0.0.1:{web_port}"
        deadline = time.monotonic() + WAIT_S
        state: Any = None
        while time.monotonic() < deadline and locust.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                state = _get_json(f"{url}/chaos/api/state")
                ready = [pod for pod in state["pods"] if pod["ready"]]
                if len(ready) == 2 and state["requests_seen"] >= 20:
                    break
            time.sleep(0.2)
        else:
            raise AssertionError(
                f"waited {WAIT_S}s for the dashboard with 2 ready pods and 20 requests; last "
                f"state {state}; Locust {'exited' if locust.poll() is not None else 'running'}; "
                f"its log:\n{_tail(log)}"
            )
        yield Dashboard(url, cluster, log)
    finally:
        if locust is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(locust.pid, signal.SIGTERM)
            try:
                locust.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(locust.pid, signal.SIGKILL)
                locust.wait(timeout=5)
        cluster.down()
        get_settings.cache_clear()


def _chrome(profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1360,900",
    ):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


def test_kill_button_adds_a_measured_recovery_row(dashboard: Dashboard, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    # the server refuses what is not on its allow-list, and says why, as JSON
    status, body = _post(f"{dashboard.url}/chaos/api/actions", b'{"action": "rm -rf"}',
                         "application/json")  # fmt: skip
    assert status == 400 and "unknown action" in body["error"]
    status, body = _post(f"{dashboard.url}/chaos/api/actions", b"action=delete-pod",
                         "application/x-www-form-urlencoded")  # fmt: skip
    assert status == 415 and "JSON" in body["error"]
    # the React UI gets the Chaos tab and a link to the page
    with urllib.request.urlopen(dashboard.url + "/", timeout=5) as response:  # noqa: S310
        index = response.read().decode()
    assert '"extended_tabs"' in index and "./chaos" in index

    uids_before = {pod.uid for pod in dashboard.cluster.list_pods("rag-api")}
    driver = _chrome(tmp_path / "chromium-profile")
    try:
        driver.get(f"{dashboard.url}/chaos")
        wait = WebDriverWait(driver, WAIT_S)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#pods tbody tr")) == 2)
        button = wait.until(ec.element_to_be_clickable((By.ID, "action-delete-pod")))
        button.click()

        def finished_row(d: Any) -> Any:
            rows = d.find_elements(By.CSS_SELECTOR, "#recovery tbody tr")
            if rows and rows[0].get_attribute("data-status") in {"recovered", "NOT recovered",
                                                                  "failed"}:  # fmt: skip
                return rows[0]
            return False

        try:
            row = WebDriverWait(driver, RECOVERY_ROW_WAIT_S).until(finished_row)
        except Exception as exc:
            raise AssertionError(
                f"no finished recovery row within {RECOVERY_ROW_WAIT_S}s; page error "
                f"{driver.find_element(By.ID, 'error').text!r}; table "
                f"{driver.find_element(By.ID, 'recovery').text!r}\n"
                f"{dashboard.cluster.diagnostics()}\nLocust log:\n{_tail(dashboard.log)}"
            ) from exc
        cells = {
            key: row.find_element(By.CSS_SELECTOR, f"td.{key}").text
            for key in ("status", "target", "rescheduling_s", "readiness_s", "total_s",
                        "outage_s", "failures", "error")
        }  # fmt: skip
        # let the pods table catch up with the replacement before the picture is taken
        wait.until(
            lambda d: (
                sum("yes" in tr.text for tr in d.find_elements(By.CSS_SELECTOR, "#pods tbody tr"))
                == 2
            )
        )
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOT))
    finally:
        driver.quit()

    assert cells["status"] == "recovered", cells
    assert cells["target"].startswith("rag-api-"), cells
    total_s = float(cells["total_s"])
    assert 0 < total_s < RECOVERY_ROW_WAIT_S
    assert float(cells["rescheduling_s"]) <= total_s
    assert float(cells["readiness_s"]) >= 0
    failed, _, in_window = cells["failures"].partition(" / ")
    assert int(in_window) > 0 and 0 <= int(failed) <= int(in_window), cells
    assert cells["outage_s"] == "" or float(cells["outage_s"]) >= 0
    # the fault really happened: the deleted pod is gone, a new one took its place
    pods_after = dashboard.cluster.list_pods("rag-api")
    assert cells["target"] not in {pod.name for pod in pods_after}
    assert {pod.uid for pod in pods_after} - uids_before
    assert SCREENSHOT.stat().st_size > 10_000
