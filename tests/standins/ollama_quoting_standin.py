"""A stand-in for an Ollama server (none can run on our machines), run as its own process.

It answers ``POST /api/chat`` the way a very literal model would: it quotes the context the
service sent, so its answers carry the facts of the retrieved passages and are judged
correct. ``GET /api/tags`` and ``GET /`` answer like Ollama's. The chaos suite starts it on
127.0.0.1:11434 (where the local overlay points ``RAG_OLLAMA_HOST``) and kills it with
SIGKILL to inject an "LLM backend died" fault.

    python tests/standins/ollama_quoting_standin.py --host 127.0.0.1 --port 11434
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "standin-quoting-model"
MAX_BODY_BYTES = 4 * 1024 * 1024


class QuotingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        if self.path == "/api/tags":
            self._reply(200, {"models": [{"name": MODEL, "model": MODEL}]})
        else:
            self._reply(200, {"status": "Ollama stand-in is running"})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY_BYTES:
            self._reply(413, {"error": "request too large"})
            return
        try:
            request = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._reply(400, {"error": "invalid JSON"})
            return
        if self.path != "/api/chat":
            self._reply(404, {"error": f"the stand-in only serves /api/chat, not {self.path}"})
            return
        messages = request.get("messages") or []
        user = next(
            (m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), ""
        )
        context = user.split("Question:", 1)[0].removeprefix("Context:").strip()
        self._reply(
            200,
            {
                "model": request.get("model", MODEL),
                "message": {"role": "assistant", "content": context or "I do not know."},
                "done": True,
                "done_reason": "stop",
            },
        )

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the suite reads no logs
        return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    args = parser.parse_args()
    if not args.host.startswith("127."):
        parser.error("the stand-in listens on loopback only")
    server = ThreadingHTTPServer((args.host, args.port), QuotingHandler)
    server.daemon_threads = True
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
