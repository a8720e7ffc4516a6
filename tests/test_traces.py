"""Traces across real processes: gunicorn web and a dramatiq worker export over OTLP/HTTP
to a receiver in the test, which decodes the protobuf requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.test_e2e import Cluster

pytestmark = pytest.mark.slow

MESSAGES_ROUTE = "/api/sessions/{session_id}/messages"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver().start()
    yield server
    server.stop()


@pytest.fixture
def traced_cluster(
    sqlite_env: dict[str, str],
    redis_url: str,
    fake_model: FakeOpenAI,
    receiver: OtlpReceiver,
    tmp_path: Path,
) -> Iterator[Cluster]:
    env = {
        **sqlite_env,
        "FOXCTL_BROKER_URL": redis_url,
        "FOXCTL_LLM_BASE_URL": fake_model.base_url,
        "FOXCTL_LOG_FORMAT": "json",
        "FOXCTL_WORKER_SHUTDOWN_TIMEOUT_S": "10",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        # Export every 100 ms, so that spans arrive while the processes run.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    running = Cluster(env, tmp_path)
    yield running
    running.stop()


def test_turn_is_one_trace_from_request_to_tool(
    traced_cluster: Cluster, receiver: OtlpReceiver
) -> None:
    traced_cluster.start_web()
    traced_cluster.start_worker("worker")
    session_id = traced_cluster.session()

    accepted = traced_cluster.post(session_id, "tool:fs_list_dir list the files")
    [turn] = traced_cluster.wait_for_turns([accepted["turn_id"]])
    spans = receiver.wait_for(lambda got: _count(got, "turn") == 1 and _has_tool(got))

    assert turn.status == "succeeded"
    [request] = [s for s in spans if s.attributes.get("http.route") == MESSAGES_ROUTE]
    trace = [s for s in spans if s.trace_id == request.trace_id]
    by_id = {s.span_id: s for s in trace}
    [producer] = [s for s in trace if s.kind == "producer"]
    [consumer] = [s for s in trace if s.kind == "consumer"]
    [turn_span] = [s for s in trace if s.name == "turn"]
    models = [s for s in trace if s.name.startswith("chat ")]
    [tool] = [s for s in trace if s.name == "execute_tool fs_list_dir"]
    database = [s for s in trace if "db.system" in s.attributes or "db.system.name" in s.attributes]
    assert request.service == "foxctl-web"
    assert request.kind == "server"
    assert producer.service == "foxctl-web"
    assert producer.parent_span_id == request.span_id
    assert producer.attributes["messaging.destination.name"] == "turns"
    assert consumer.service == "foxctl-worker"
    assert consumer.parent_span_id == producer.span_id
    assert turn_span.parent_span_id == consumer.span_id
    assert turn_span.attributes["foxctl.turn_id"] == turn.id
    assert len(models) == 2
    assert all(m.parent_span_id == turn_span.span_id for m in models)
    assert all(m.kind == "client" for m in models)
    assert tool.parent_span_id == turn_span.span_id
    web_database = [s for s in database if s.service == "foxctl-web"]
    worker_database = [s for s in database if s.service == "foxctl-worker"]
    assert any(s.parent_span_id == request.span_id for s in web_database)
    assert all(_descends_from(s, request, by_id) for s in web_database)
    assert any(s.parent_span_id == turn_span.span_id for s in worker_database)
    assert all(_descends_from(s, consumer, by_id) for s in worker_database)


def test_spans_flushed_when_processes_get_sigterm(
    sqlite_env: dict[str, str],
    redis_url: str,
    fake_model: FakeOpenAI,
    receiver: OtlpReceiver,
    tmp_path: Path,
) -> None:
    env = {
        **sqlite_env,
        "FOXCTL_BROKER_URL": redis_url,
        "FOXCTL_LLM_BASE_URL": fake_model.base_url,
        "FOXCTL_WORKER_SHUTDOWN_TIMEOUT_S": "10",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        # Ten minutes between exports: only the flush at exit can deliver the spans.
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }
    cluster = Cluster(env, tmp_path)
    try:
        cluster.start_web()
        cluster.start_worker("worker")
        session_id = cluster.session()
        [turn] = cluster.wait_for_turns([cluster.post(session_id, "hello")["turn_id"]])
        before_stop = receiver.received()
    finally:
        codes = cluster.stop()

    spans = receiver.wait_for(lambda got: _count(got, "turn") == 1)
    worker_spans = {s.name for s in spans if s.service == "foxctl-worker"}
    web_spans = {s.attributes.get("http.route") for s in spans if s.service == "foxctl-web"}
    assert turn.status == "succeeded"
    assert codes == {"web": 0, "worker": 0}
    assert before_stop == []
    assert {"turns process", "turn", "chat gpt-4o-mini"} <= worker_spans
    assert MESSAGES_ROUTE in web_spans


def test_traceparent_trusted_only_from_authenticated_callers(
    traced_cluster: Cluster, receiver: OtlpReceiver
) -> None:
    traced_cluster.start_web()
    inbound_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    inbound_span = "00f067aa0ba902b7"
    header = {"traceparent": f"00-{inbound_trace}-{inbound_span}-01"}

    anonymous = httpx.get(traced_cluster.url + "/api/agents", headers=header, timeout=10)
    authenticated = traced_cluster.http.get("/api/agents", headers=header)
    spans = receiver.wait_for(lambda got: _count_path(got, "/api/agents") == 2)

    [authenticated_span, anonymous_span] = sorted(
        (s for s in spans if s.attributes.get("url.path") == "/api/agents"),
        key=lambda s: s.attributes["http.response.status_code"],
    )
    assert anonymous.status_code == 401
    assert authenticated.status_code == 200
    assert anonymous_span.attributes["http.response.status_code"] == 401
    assert anonymous_span.trace_id != inbound_trace
    assert anonymous_span.parent_span_id == ""
    assert authenticated_span.trace_id == inbound_trace
    assert authenticated_span.parent_span_id == inbound_span


def _count(spans: list[ReceivedSpan], name: str) -> int:
    return sum(1 for s in spans if s.name == name)


def _count_path(spans: list[ReceivedSpan], path: str) -> int:
    return sum(1 for s in spans if s.attributes.get("url.path") == path)


def _has_tool(spans: list[ReceivedSpan]) -> bool:
    return any(s.name.startswith("execute_tool ") for s in spans)


def _descends_from(
    span: ReceivedSpan, ancestor: ReceivedSpan, by_id: dict[str, ReceivedSpan]
) -> bool:
    current: ReceivedSpan | None = span
    while current is not None:
        if current.parent_span_id == ancestor.span_id:
            return True
        current = by_id.get(current.parent_span_id)
    return False
