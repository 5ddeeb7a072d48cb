"""A STAND-IN for the rag-api container in local-cluster tests (the real one is slow to start).

A stdlib HTTP server that behaves like a well-made pod: binds the pod IP it is given,
answers `/` with its pod name and uid, `/healthz` always, `/readyz` once ready, and on
SIGTERM stops accepting, finishes in-flight requests and exits 0.

Env: STANDIN_HOST, STANDIN_PORT (8000), POD_NAME, POD_UID, STANDIN_READY_AFTER_S (0),
STANDIN_NEVER_READY (set: /readyz is always 503), STANDIN_SHUTDOWN_DELAY_S (0: pause after
SIGTERM before closing the listener, like a real server draining).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.monotonic()
READY_AFTER_S = float(os.environ.get("STANDIN_READY_AFTER_S", "0"))
NEVER_READY = bool(os.environ.get("STANDIN_NEVER_READY"))
POD = os.environ.get("POD_NAME", "?")
UID = os.environ.get("POD_UID", "?")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._reply(200, {"ok": True})
        elif path == "/readyz":
            ready = not NEVER_READY and time.monotonic() - STARTED >= READY_AFTER_S
            self._reply(200 if ready else 503, {"ready": ready})
        elif path == "/slow":
            time.sleep(float(self.path.partition("s=")[2] or "1"))
            self._reply(200, {"pod": POD, "uid": UID, "slow": True})
        else:
            self._reply(
                200, {"pod": POD, "uid": UID, "data_dir": os.environ.get("STANDIN_DATA_DIR")}
            )

    def _reply(self, code: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        sys.stdout.write(f"{POD} {self.address_string()} {format % args}\n")


def main() -> None:
    host = os.environ.get("STANDIN_HOST", "127.0.0.1")
    port = int(os.environ.get("STANDIN_PORT", "8000"))
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = False  # in-flight requests finish before exit
    print(f"stand-in pod {POD} serving on {host}:{port}", flush=True)

    def on_sigterm(signum: int, frame: object) -> None:
        print(f"{POD} got SIGTERM, draining", flush=True)
        delay = float(os.environ.get("STANDIN_SHUTDOWN_DELAY_S", "0"))
        threading.Thread(target=lambda: (time.sleep(delay), server.shutdown()), daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    server.serve_forever(poll_interval=0.05)
    server.server_close()  # joins request threads: in-flight requests complete
    print(f"{POD} exited cleanly", flush=True)


if __name__ == "__main__":
    main()
