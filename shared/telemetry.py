"""Traces: the OpenTelemetry SDK configured from the standard ``OTEL_*`` variables.

Tracing is off unless ``OTEL_TRACES_EXPORTER`` names an exporter or an OTLP endpoint is
set. While it is off, the global tracer provider is OpenTelemetry's no-op one: spans
cost a function call and carry no ids, and nothing is injected into messages.

The trace context crosses the queue in the Dramatiq message's ``options``
(``trace_context``, W3C ``traceparent``/``tracestate``), so a worker's consumer span is
a child of the producer span that the web request opened when it enqueued.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from dramatiq.broker import Broker, MessageProxy
from dramatiq.message import Message
from dramatiq.middleware import Middleware
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from sqlalchemy.engine import Engine

from shared.settings import Settings

log = structlog.get_logger(__name__)

#: Key of the W3C trace context in a Dramatiq message's options.
TRACE_OPTION = "trace_context"
TRACER_NAME = "foxctl"

_provider: TracerProvider | None = None
_lock = threading.Lock()


def tracing_mode(settings: Settings) -> str:
    """Return the exporter tracing uses: ``otlp``, ``console`` or ``none``."""
    if settings.otel_sdk_disabled:
        return "none"
    if settings.otel_traces_exporter is not None:
        return settings.otel_traces_exporter
    if settings.otel_exporter_otlp_endpoint or settings.otel_exporter_otlp_traces_endpoint:
        return "otlp"
    return "none"


def configure_tracing(settings: Settings, *, process: str) -> str:
    """Install the SDK tracer provider for this process; return the mode.

    Call once per process after any fork, because the batch exporter's thread does not
    survive one. Later calls return the mode and change nothing.
    """
    global _provider
    mode = tracing_mode(settings)
    with _lock:
        if _provider is not None:
            return mode
        if mode == "none":
            log.info("tracing configured", mode=mode)
            return mode
        resource = Resource.create(
            {SERVICE_NAME: settings.otel_service_name or f"foxctl-{process}"}
        )
        _provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        _provider.add_span_processor(BatchSpanProcessor(_exporter(settings, mode)))
        trace.set_tracer_provider(_provider)
    log.info("tracing configured", mode=mode, endpoint=_traces_endpoint(settings))
    return mode


def _exporter(settings: Settings, mode: str) -> SpanExporter:
    if mode == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # Headers, timeout and compression come from the OTEL_EXPORTER_OTLP_* variables,
    # which the exporter reads itself.
    return OTLPSpanExporter(endpoint=_traces_endpoint(settings))


def _traces_endpoint(settings: Settings) -> str:
    """Return the OTLP/HTTP traces URL, following the OTLP exporter specification."""
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    base = settings.otel_exporter_otlp_endpoint or "http://localhost:4318"
    return base.rstrip("/") + "/v1/traces"


def shutdown_tracing(timeout_ms: int = 5_000) -> None:
    """Export the spans still buffered, then stop the exporter; safe to call twice."""
    global _provider
    with _lock:
        provider, _provider = _provider, None
    if provider is None:
        return
    provider.force_flush(timeout_ms)
    provider.shutdown()
    log.info("tracing flushed")


def flush_tracing(timeout_ms: int = 5_000) -> None:
    """Export the spans still buffered and keep tracing on."""
    provider = _provider
    if provider is not None:
        provider.force_flush(timeout_ms)
        log.info("tracing flushed")


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def instrument_engine(engine: Engine) -> None:
    """Add a span for every statement ``engine`` runs, when tracing is on."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().instrument(engine=engine, tracer_provider=_provider)


@contextmanager
def span(
    name: str, attributes: dict[str, Any] | None = None, *, kind: SpanKind = SpanKind.INTERNAL
) -> Iterator[Span]:
    """Run the block in a child span of the current one; an exception marks it failed."""
    with tracer().start_as_current_span(name, kind=kind, attributes=attributes) as current:
        yield current


def record_error(current: Span, error: BaseException) -> None:
    current.record_exception(error)
    current.set_status(Status(StatusCode.ERROR, type(error).__name__))


class TracingMiddleware(Middleware):
    """Carry the trace context through Dramatiq messages.

    On enqueue, the current context (the producer span that ``Enqueuer.send`` opens) is
    written into the message options. On processing, a CONSUMER span starts as its
    child and stays current while the actor runs, in the worker thread that runs it.
    """

    def __init__(self) -> None:
        self._consuming: dict[str, tuple[Span, object]] = {}
        self._guard = threading.Lock()

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        if _provider is None or TRACE_OPTION in message.options:
            # A retried message keeps the context of its first enqueue, so its attempts
            # share one trace.
            return
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if carrier:
            message.options[TRACE_OPTION] = carrier

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        if _provider is None:
            return
        parent = propagate.extract(message.options.get(TRACE_OPTION) or {})
        consumer = tracer().start_span(
            f"{message.queue_name} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                **message_attributes(message.queue_name, message.actor_name, "process"),
                "messaging.message.id": message.message_id,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(consumer))
        with self._guard:
            self._consuming[message.message_id] = (consumer, token)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._end(message.message_id, exception)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._end(message.message_id)

    def _end(self, message_id: str, error: BaseException | None = None) -> None:
        with self._guard:
            entry = self._consuming.pop(message_id, None)
        if entry is None:
            return
        current, token = entry
        if error is not None:
            record_error(current, error)
        current.end()
        otel_context.detach(token)  # type: ignore[arg-type]


def message_attributes(queue: str, actor: str, operation: str) -> dict[str, Any]:
    """Return the messaging span attributes of a Dramatiq message."""
    return {
        "messaging.system": "dramatiq",
        "messaging.operation.type": operation,
        "messaging.destination.name": queue,
        "foxctl.actor": actor,
    }


def trace_ids() -> tuple[str, str] | None:
    """Return the current trace id and span id in hex, or None outside a recorded span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
