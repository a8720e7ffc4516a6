"""Configure structured logging once per process.

JSON lines on stdout in production, readable lines in development. Ids (request,
session, turn, message) are bound through ``structlog.contextvars`` and appear on every
line logged while they are bound, including lines from the standard ``logging`` module,
with the trace id and span id of the current span when tracing is on. With
``FOXCTL_OBS_DIR`` set, the same lines also go, as JSON, to rotating files there.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from typing import TextIO

import structlog

from shared.settings import Settings
from shared.telemetry import trace_ids

#: Keys whose text values are replaced with "***" on every log line, as a second guard:
#: callers must not log secrets or message bodies in the first place.
REDACTED_KEYS = frozenset(
    {
        "api_key",
        "authorization",
        "body",
        "content",
        "password",
        "secret",
        "token",
    }
)

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
        _add_trace_ids,
        _redact,
    ]
    renderer: structlog.types.Processor
    if settings.log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        shared_processors.append(structlog.processors.format_exc_info)
    else:
        # The plain traceback: structlog's default with rich installed prints every
        # frame's local variables, which can hold tokens and secrets.
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )

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
    if settings.obs_dir is not None:
        root.addHandler(_file_handler(settings, process, shared_processors))
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


def _file_handler(
    settings: Settings, process: str, shared_processors: list[structlog.types.Processor]
) -> logging.Handler:
    """Write JSON lines to ``<obs_dir>/<process>-<pid>.ndjson``, rotated by size.

    One file per process, because rotation by several processes of one file loses
    lines. Each process keeps at most ``obs_max_bytes * (obs_files + 1)`` bytes.
    """
    assert settings.obs_dir is not None
    settings.obs_dir.mkdir(parents=True, exist_ok=True)
    path = settings.obs_dir / f"{process}-{os.getpid()}.ndjson"
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=settings.obs_max_bytes, backupCount=settings.obs_files, encoding="utf-8"
    )
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared_processors,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    return handler


def _add_trace_ids(
    _logger: object, _method: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    ids = trace_ids()
    if ids is not None:
        event.setdefault("trace_id", ids[0])
        event.setdefault("span_id", ids[1])
    return event


def _redact(
    _logger: object, _method: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    for key in REDACTED_KEYS.intersection(event):
        if isinstance(event[key], str):
            event[key] = "***"
    return event
