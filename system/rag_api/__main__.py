"""`python -m rag_api`: uvicorn, configured from the settings, with graceful shutdown.

On SIGTERM it stops accepting connections, drains keep-alive clients for up to RAG_DRAIN_S
(rag_api.lifecycle), then uvicorn lets in-flight requests finish for up to
RAG_SHUTDOWN_TIMEOUT_S, runs the app's shutdown and exits 0.
"""

from __future__ import annotations

import logging
import signal
import sys

from pydantic import ValidationError

from rag_api.logs import configure_logging
from rag_api.settings import Settings, describe_settings_error


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as error:
        print(describe_settings_error(error), file=sys.stderr)
        return 2
    configure_logging(settings.log_level)

    import uvicorn

    from rag_api.lifecycle import DrainingServer
    from rag_api.main import create_app

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,  # type: ignore[arg-type]
        log_config=None,  # our JSON logging, configured above
        access_log=False,  # the middleware writes one richer line per request
        server_header=False,
        lifespan="on",
    )
    # uvicorn re-raises the stop signal once it has shut down (so a default handler would
    # end the process "killed by SIGTERM"); a graceful stop is a success, so exit 0 instead
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _stopped_by_signal)
    DrainingServer(config, drain_s=settings.drain_s).run()
    return 0


def _stopped_by_signal(signum: int, frame: object) -> None:
    logging.getLogger("rag_api").info("stopped by signal", extra={"signal": signum})


if __name__ == "__main__":
    sys.exit(main())
