"""Configure structured logging once per process.

JSON lines on stdout in production, readable lines in development. Ids (request,
session, turn, message) are bound through ``structlog.contextvars`` and appear on every
line logged while they are bound, including lines from the standard ``logging`` module.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from shared.settings import Settings

_configured = False


def configure_logging(settings: Settings, *, process: str, stream: TextIO | None = None) -> None:
    """Send all logs to ``stream`` (stdout) in the configured format; later calls do nothing.

    Commands whose stdout is their result pass stderr.
    """
    global _configured
    if _configured:
        return
    _configured = True
    shared_processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_process(process),
    ]
    renderer: structlog.types.Processor
    if settings.log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        shared_processors.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)

    structlog.configure(
        processors=[*shared_processors, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared_processors,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Access logs repeat what the request-logging middleware records.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def _add_process(process: str) -> structlog.types.Processor:
    def processor(
        _logger: object, _method: str, event: structlog.types.EventDict
    ) -> structlog.types.EventDict:
        event.setdefault("process", process)
        return event

    return processor
