"""ASGI entry point: ``gunicorn -k uvicorn_worker.UvicornWorker 'web.asgi:create()'``."""

from __future__ import annotations

from typing import Any

import falcon.asgi

from shared.logging import configure_logging
from shared.settings import SettingsError, load_settings
from shared.telemetry import configure_tracing
from web.app import build_context, create_app


def create() -> falcon.asgi.App[Any, Any]:
    try:
        settings = load_settings()
    except SettingsError as error:
        raise SystemExit(f"foxctl web: {error}") from None
    configure_logging(settings, process="web")
    # Before the engine is built, so that its statements are traced.
    configure_tracing(settings, process="web")
    try:
        return create_app(build_context(settings))
    except SettingsError as error:
        raise SystemExit(f"foxctl web: {error}") from None
