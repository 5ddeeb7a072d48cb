"""The CI pipeline users copy (.github/workflows/e2e-chaos.yml), checked without GitHub.

It cannot run here (no Docker for kind or minikube), so it is checked as far as can be offline:
- against GitHub's workflow JSON schema, with check-jsonschema's vendored copy
  (`--builtin-schema vendor.github-workflows`; actionlint's PyPI wrapper downloads its binary
  from GitHub at install time, which this network refuses);
- by closer checks the schema cannot make: `${{ matrix.X }}` names a matrix key, `needs`
  names a job, actions are pinned to a version, every `run:` script passes `bash -n`;
- for what the pipeline promises: kind and minikube, the e2e and chaos suites, artifacts on
  failure, the chaos summaries in $GITHUB_STEP_SUMMARY.
Two broken fixtures (tests/unit/fixtures/workflows/) prove each check can fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "e2e-chaos.yml"
FIXTURES = Path(__file__).parent / "fixtures" / "workflows"
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
MATRIX_REF = re.compile(r"\bmatrix\.([A-Za-z_][\w-]*)")
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@(v\d+(\.\d+)*|[0-9a-f]{40})$")


def schema_errors(path: Path) -> str:
    """check-jsonschema's verdict on a workflow file: "" when valid, else its report."""
    pytest.importorskip("check_jsonschema", reason="pip install check-jsonschema (dev extra)")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema",
         "vendor.github-workflows", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if result.returncode == 0:
        return ""
    return result.stdout + result.stderr


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps") or [])


def semantic_problems(workflow: dict[str, Any]) -> list[str]:
    """What the schema cannot see, in words a reviewer would use."""
    problems: list[str] = []
    jobs: dict[str, Any] = workflow.get("jobs") or {}
    bash = shutil.which("bash")
    for job_id, job in jobs.items():
        needs = job.get("needs") or []
        for needed in [needs] if isinstance(needs, str) else needs:
            if needed not in jobs:
                problems.append(f"{job_id}: needs unknown job {needed!r}")
        matrix = ((job.get("strategy") or {}).get("matrix")) or {}
        matrix_keys = set(matrix) - {"include", "exclude"}
        for entry in matrix.get("include") or []:
            matrix_keys |= set(entry)
        text = yaml.safe_dump(job)
        for expression in EXPRESSION.findall(text):
            for key in MATRIX_REF.findall(expression):
                if key not in matrix_keys:
                    problems.append(
                        f"{job_id}: matrix.{key} is not a matrix key {sorted(matrix_keys)}"
                    )
        for index, step in enumerate(steps(job)):
            uses = step.get("uses")
            if uses and not PINNED.match(uses):
                problems.append(
                    f"{job_id} step {index}: action {uses!r} is not pinned to a version"
                )
            script = step.get("run")
            if script and bash:
                # expressions are substituted by GitHub before the shell sees the script
                plain = EXPRESSION.sub("EXPR", script)
                checked = subprocess.run(
                    [bash, "-n"], input=plain, capture_output=True, text=True, timeout=10,
                    check=False,
                )  # fmt: skip
                if checked.returncode != 0:
                    problems.append(
                        f"{job_id} step {index} ({step.get('name', 'run')}): bash -n: "
                        f"{checked.stderr.strip()}"
                    )
    return problems


def test_the_workflow_is_valid_for_github() -> None:
    assert schema_errors(WORKFLOW) == ""
    assert semantic_problems(load(WORKFLOW)) == []


def test_the_schema_check_fails_on_a_broken_workflow() -> None:
    report = schema_errors(FIXTURES / "broken-schema.yml")
    assert "'runs-on' is a required property" in report
    assert "'soon' is not of type 'number'" in report


def test_the_closer_checks_fail_on_a_workflow_the_schema_accepts() -> None:
    broken = FIXTURES / "broken-semantics.yml"
    assert schema_errors(broken) == ""
    problems = "\n".join(semantic_problems(load(broken)))
    assert "needs unknown job 'unitt'" in problems
    assert "matrix.clutser is not a matrix key" in problems
    assert "'actions/checkout' is not pinned" in problems
    assert "bash -n" in problems


def test_the_pipeline_runs_both_suites_on_kind_and_minikube_and_keeps_the_evidence() -> None:
    jobs = load(WORKFLOW)["jobs"]
    cluster_job = jobs["cluster"]
    assert cluster_job["strategy"]["matrix"]["cluster"] == ["kind", "minikube"]
    assert cluster_job["strategy"]["fail-fast"] is False
    scripts = "\n".join(str(step.get("run", "")) for step in steps(cluster_job))
    assert "-m e2e tests/e2e" in scripts and "-m chaos tests/chaos" in scripts
    assert "--cluster ${{ matrix.cluster }}" in scripts
    # the tools are installed the way their projects document
    assert "https://kind.sigs.k8s.io/dl/" in scripts
    assert "storage.googleapis.com/minikube/releases/" in scripts
    assert "dl.k8s.io/release/" in scripts and "sha256sum --check" in scripts

    uploads = [s for s in steps(cluster_job) if str(s.get("uses", "")).startswith(
        "actions/upload-artifact@")]  # fmt: skip
    assert uploads and all(s.get("if") == "failure()" for s in uploads)
    paths = str(uploads[0]["with"]["path"])
    assert "reports/" in paths and "logs" in paths
    collect = next(s for s in steps(cluster_job) if "kubectl logs" in str(s.get("run", "")))
    assert collect.get("if") == "failure()"
    summary = next(s for s in steps(cluster_job) if "GITHUB_STEP_SUMMARY" in str(s.get("run")))
    assert summary.get("if") == "always()" and "report.md" in summary["run"]
    # the browser test runs in CI too
    unit_scripts = "\n".join(str(step.get("run", "")) for step in steps(jobs["unit"]))
    assert "-m browser tests/dashboard" in unit_scripts
