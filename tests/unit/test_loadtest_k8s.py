"""loadtest/k8s/: Locust master and workers as Kubernetes Jobs, rendered by kustomize and checked
offline with the same checks as k8s/ (schema, selectors, container hardening), plus the wiring
that only this pair has: workers find the master, the master waits for all of them, the
locustfile in the ConfigMap is the project's, and the load goes to the rag-api Service.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness import manifests_check as mc

REPO = Path(__file__).resolve().parents[2]
LOADTEST_K8S = REPO / "loadtest" / "k8s"
Objects = list[dict[str, Any]]


def render() -> Objects:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl renders kustomize; install kubectl >= 1.27")
    done = subprocess.run(
        [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(LOADTEST_K8S)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return mc.parse_yaml(done.stdout, str(LOADTEST_K8S))


def _args(obj: dict[str, Any]) -> dict[str, str]:
    """`--name=value` / `--name value` arguments of the first container, as a dict."""
    args = list(mc.containers_of(obj)[0].get("args") or [])
    parsed: dict[str, str] = {}
    for index, arg in enumerate(args):
        if not arg.startswith("-"):
            continue
        name, eq, value = arg.partition("=")
        following = args[index + 1] if index + 1 < len(args) else ""
        parsed[name] = value if eq else ("" if following.startswith("-") else following)
    return parsed


def wiring_problems(objects: Objects) -> list[str]:
    problems: list[str] = []
    master = mc.find_object(objects, "Job", "locust-master")
    worker = mc.find_object(objects, "Job", "locust-worker")
    service = mc.find_object(objects, "Service", "locust-master")
    master_args, worker_args = _args(master), _args(worker)
    if "--master" not in master_args or "--headless" not in master_args:
        problems.append("the master must run with --master --headless")
    expected = int(master_args.get("--expect-workers", "0"))
    for field in ("parallelism", "completions"):
        if worker["spec"].get(field) != expected:
            problems.append(
                f"worker Job {field} {worker['spec'].get(field)} != --expect-workers {expected}"
            )
    if worker_args.get("--master-host") != service["metadata"]["name"]:
        problems.append(f"workers look for master {worker_args.get('--master-host')!r}")
    port = int(master_args.get("--master-bind-port", "5557"))
    if int(worker_args.get("--master-port", "5557")) != port:
        problems.append("workers connect to another port than the master binds")
    if service["spec"]["ports"][0]["port"] != port:
        problems.append(f"Service port {service['spec']['ports'][0]['port']} != {port}")
    if not mc.selector_matches(service["spec"]["selector"], mc.pod_template(master)["metadata"]
                               ["labels"]):  # fmt: skip
        problems.append("the Service does not select the master's pod")
    if master_args.get("--host") != "http://rag-api":
        problems.append(f"load goes to {master_args.get('--host')!r}, not the rag-api Service")
    return problems


def test_renders_and_passes_the_manifest_checks() -> None:
    objects = render()
    kinds = sorted(mc.object_id(obj) for obj in objects)
    assert any(kind.startswith("ConfigMap/locustfile-") for kind in kinds), kinds
    findings = (
        mc.schema_findings(objects) + mc.selector_findings(objects) + mc.workload_findings(objects)
    )
    assert findings == [], mc.format_findings(findings)
    assert wiring_problems(objects) == []


def test_the_configmap_carries_the_projects_locustfile_and_golden_questions() -> None:
    configmap = next(obj for obj in render() if obj["kind"] == "ConfigMap")
    data = configmap["data"]
    assert data["locustfile.py"] == (REPO / "loadtest" / "locustfile.py").read_text()
    assert data["golden.yaml"] == (REPO / "tests" / "e2e" / "golden.yaml").read_text()
    # both Jobs mount the generated (hash-suffixed) name
    for job in (obj for obj in render() if obj["kind"] == "Job"):
        volumes = mc.pod_template(job)["spec"]["volumes"]
        assert configmap["metadata"]["name"] in {
            v.get("configMap", {}).get("name") for v in volumes
        }


def test_the_wiring_check_catches_a_mismatch() -> None:
    objects = copy.deepcopy(render())
    worker = mc.find_object(objects, "Job", "locust-worker")
    worker["spec"]["parallelism"] = 3
    args = mc.containers_of(worker)[0]["args"]
    args[args.index("--master-host=locust-master")] = "--master-host=locust"
    problems = "\n".join(wiring_problems(objects))
    assert "parallelism 3 != --expect-workers 2" in problems
    assert "workers look for master 'locust'" in problems
