"""A STAND-IN rag-api container for the dashboard test: the RAG API stand-in as a pod process.

The real service takes tens of seconds and a chroma server to start; the dashboard test only
needs pods that answer `/query` with the agreed schema, pass their probes and shut down like a
well-made server. This runs tests/standins/rag_api_standin.py on the pod's IP and port.

Env: STANDIN_HOST (the pod IP), STANDIN_PORT (8000), STANDIN_GOLDEN (a golden YAML file whose
questions it answers correctly).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo, for tests.standins

from tests.standins.rag_api_standin import RagApiStandIn


def main() -> None:
    golden = Path(os.environ["STANDIN_GOLDEN"])
    questions = yaml.safe_load(golden.read_text(encoding="utf-8"))["questions"]
    standin = RagApiStandIn(questions, host=os.environ.get("STANDIN_HOST", "127.0.0.1"))
    standin.port = int(os.environ.get("STANDIN_PORT", "8000"))
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    standin.start()
    print(f"rag-api stand-in pod {os.environ.get('POD_NAME', '?')} on {standin.url}", flush=True)
    stopping.wait()
    standin.stop()
    print("stand-in pod stopped", flush=True)


if __name__ == "__main__":
    main()
