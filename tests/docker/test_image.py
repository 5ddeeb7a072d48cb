"""The service image as Kubernetes runs it: non-root, read-only root, SIGTERM, baked model.

Needs a Docker engine and the built image (`scripts/prepare-docker.sh build`); without them
every test here is skipped with that advice. Run with `pytest -m docker tests/docker`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from harness.golden import judge, load_golden
from tests.docker.containers import STOP_GRACE_S, ContainerFactory, docker
from tests.standins.ollama_standin import HangingOllamaStandIn

pytestmark = pytest.mark.docker

SERVICE_UID = "10001"
# a /query that waits on a hanging LLM lasts this long, then answers extractively (degraded)
SLOW_LLM_TIMEOUT_S = 6.0
IN_FLIGHT_WAIT_S = 20.0


def test_runs_as_non_root_on_a_read_only_root_and_answers_correctly(
    containers: ContainerFactory,
) -> None:
    container = containers.run_service()
    container.wait_ready()

    details = container.inspect()
    assert details["Config"]["User"].split(":")[0] == SERVICE_UID, details["Config"]["User"]
    assert details["HostConfig"]["ReadonlyRootfs"] is True
    assert "HF_HUB_OFFLINE=1" in details["Config"]["Env"]

    uid = docker("exec", container.name, "id", "-u", what="uid inside the container")
    assert uid.stdout.strip() == SERVICE_UID

    # the root filesystem refuses writes, even where the image put the code
    write = docker(
        "exec",
        container.name,
        "python",
        "-c",
        "open('/app/rag_api/written-at-run-time', 'w')",
        what="try a write under /app",
        check=False,
    )
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr, write.stderr

    golden = load_golden()
    question = golden.questions[0]
    with httpx.Client(base_url=container.url, timeout=30.0) as client:
        response = client.post(
            "/query", json={"question": question.question, "top_k": golden.top_k}
        )
    assert response.status_code == 200, response.text
    verdict = judge(question, response.json())
    assert verdict.hit, verdict.explain() + "\n" + container.diagnostics()


def test_sigterm_during_a_slow_request_finishes_it_and_exits_zero(
    containers: ContainerFactory,
) -> None:
    with HangingOllamaStandIn() as hanging_llm:
        container = containers.run_service(
            env={
                "RAG_OLLAMA_HOST": hanging_llm.url,
                "RAG_LLM_TIMEOUT_S": str(SLOW_LLM_TIMEOUT_S),
                "RAG_SHUTDOWN_TIMEOUT_S": "20",
            }
        )
        container.wait_ready()

        outcome: dict[str, Any] = {}

        def ask_slow_question() -> None:
            try:
                with httpx.Client(base_url=container.url, timeout=60.0) as client:
                    response = client.post(
                        "/query", json={"question": "What is a readiness probe?", "top_k": 2}
                    )
                outcome["status"] = response.status_code
                outcome["body"] = response.json() if response.status_code == 200 else None
                outcome["text"] = response.text[:500]
            except Exception as exc:  # reported by the main thread's asserts
                outcome["error"] = repr(exc)

        asker = threading.Thread(target=ask_slow_question, daemon=True)
        asker.start()
        # in flight means: the service is inside the request, waiting on the LLM
        deadline = time.monotonic() + IN_FLIGHT_WAIT_S
        while hanging_llm.accepted == 0 and time.monotonic() < deadline and asker.is_alive():
            time.sleep(0.05)
        assert hanging_llm.accepted > 0, (
            f"the query never reached the LLM within {IN_FLIGHT_WAIT_S:g}s: {outcome}\n"
            + container.diagnostics()
        )

        stop_started = time.monotonic()
        # -t, not --time/--timeout: the flag's long name differs between docker CLI versions
        docker(
            "stop",
            "-t",
            str(STOP_GRACE_S),
            container.name,
            timeout_s=STOP_GRACE_S + 30,
            what=f"stop {container.name} (SIGTERM, {STOP_GRACE_S}s grace)",
        )
        stop_s = time.monotonic() - stop_started
        asker.join(timeout=30)

    state = container.inspect()["State"]
    assert not asker.is_alive(), "the in-flight request did not end after the container stopped"
    assert outcome.get("status") == 200, f"in-flight request: {outcome}\n{container.diagnostics()}"
    assert outcome["body"]["answer"].strip(), outcome
    assert outcome["body"]["degraded"] is True, outcome  # the hanging LLM timed out
    assert state["ExitCode"] == 0, f"exit code {state['ExitCode']}\n{container.diagnostics()}"
    assert state["OOMKilled"] is False
    # SIGKILL would come at the grace period; a graceful stop ends well before it
    assert stop_s < STOP_GRACE_S / 2, f"stop took {stop_s:.1f}s of {STOP_GRACE_S}s grace"
    assert "stopped by signal" in container.logs_tail(50)


def test_image_holds_the_model_and_embeds_without_a_network(service_image: str) -> None:
    # --network none: any download attempt would fail, so an embedding proves the files are here
    probe = (
        "from rag_api.embeddings import MiniLMEmbedder, default_model_path, "
        "default_tokenizer_path\n"
        "model, tokenizer = default_model_path(), default_tokenizer_path()\n"
        "assert model.is_file() and model.stat().st_size > 1_000_000, model\n"
        "assert tokenizer.is_file(), tokenizer\n"
        "vectors = MiniLMEmbedder().embed(['pods are replaced when deleted'])\n"
        "print(model, tokenizer, len(vectors[0]))\n"
    )
    proc = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--env",
        "HF_HUB_OFFLINE=1",
        service_image,
        "python",
        "-c",
        probe,
        timeout_s=60,
        what="embed a sentence inside the image without a network",
    )
    model_path, tokenizer_path, dimensions = proc.stdout.split()
    # the model prepared at build time (integer arithmetic), not the shipped fallback
    assert model_path == "/opt/venv/share/rag-api/all-MiniLM-L6-v2.int8-dynamic.onnx", model_path
    assert tokenizer_path.startswith("/opt/venv/"), tokenizer_path
    assert dimensions == "384"


def test_final_stage_has_no_build_tools(service_image: str) -> None:
    # compilers: none in either base; pip: not in the venv (python:3.11-slim keeps its own
    # pip in /usr/local/bin, outside the venv the service runs from)
    probe = (
        "import importlib.util, shutil\n"
        "tools = ['gcc', 'cc', 'c++', 'make', 'ld', '/opt/venv/bin/pip']\n"
        "print([t for t in tools if shutil.which(t)], importlib.util.find_spec('pip'),\n"
        "      importlib.util.find_spec('onnx'))\n"
    )
    proc = docker(
        "run",
        "--rm",
        "--network",
        "none",
        service_image,
        "python",
        "-c",
        probe,
        timeout_s=60,
        what="look for build tools in the final image",
    )
    # onnx was only there to prepare the model
    assert proc.stdout.strip() == "[] None None", proc.stdout
