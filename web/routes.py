"""Every route, its resource, and its description in the OpenAPI document.

``create_app`` registers routes from ``ROUTES`` and ``openapi_document`` describes the
same table, so the served spec cannot drift from the served routes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from shared.agents.models import AgentCreate, AgentOut, AgentUpdate
from shared.cas.models import ArtifactOut, ArtifactPage
from shared.events.models import EventOut
from shared.jobs.models import JobRunOut
from shared.retrieval.models import IndexAccepted, IndexRequest, IndexStatus, SearchResults
from shared.sessions.models import (
    MessageAccepted,
    MessageCreate,
    MessageOut,
    SessionCreate,
    SessionOut,
)
from shared.turns.models import TurnOut
from web.console_tokens import ConsoleTokenOut


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    location: str = "query"


@dataclass(frozen=True)
class Operation:
    summary: str
    status: int
    response: type[BaseModel] | None = None
    request: type[BaseModel] | None = None
    paged: bool = False
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    public: bool = False
    # Media type of a raw (non-JSON) request body, such as an upload.
    raw_body: str | None = None
    # The response may also be a text/event-stream, chosen by the Accept header.
    event_stream: bool = False


@dataclass(frozen=True)
class Route:
    path: str
    resource: str
    operations: dict[str, Operation]


_PAGE = (
    Param("limit", "items per page, 1 to 500", {"type": "integer", "default": 100}),
    Param("cursor", "next_cursor from the previous page"),
)

ROUTES: tuple[Route, ...] = (
    Route(
        "/healthz",
        "health",
        {
            "get": Operation("Report that the process is alive", 200, public=True),
        },
    ),
    Route(
        "/readyz",
        "ready",
        {
            "get": Operation(
                "Report whether the database, migrations and broker are usable",
                200,
                errors=(503,),
                public=True,
            ),
        },
    ),
    Route(
        "/metrics",
        "metrics",
        {
            "get": Operation(
                "Return Prometheus metrics of this pod's web processes, queues and turns",
                200,
                public=True,
            ),
        },
    ),
    Route(
        "/api/openapi.json",
        "openapi",
        {
            "get": Operation("Return this OpenAPI document", 200),
        },
    ),
    Route(
        "/api/agents",
        "agents",
        {
            "get": Operation("List agents", 200, AgentOut, paged=True, params=_PAGE),
            "post": Operation("Create an agent", 201, AgentOut, AgentCreate, errors=(409,)),
        },
    ),
    Route(
        "/api/agents/{agent_id}",
        "agent",
        {
            "get": Operation("Get an agent", 200, AgentOut, errors=(404,)),
            "patch": Operation("Change an agent", 200, AgentOut, AgentUpdate, errors=(404, 409)),
            "delete": Operation("Delete an agent that has no sessions", 204, errors=(404, 409)),
        },
    ),
    Route(
        "/api/agents/{agent_id}/stop",
        "agent_stop",
        {
            "post": Operation(
                "Stop an agent: no more automatic turns, and its pending turns are cancelled",
                200,
                AgentOut,
                errors=(404,),
            ),
        },
    ),
    Route(
        "/api/agents/{agent_id}/start",
        "agent_start",
        {"post": Operation("Let a stopped agent run again", 200, AgentOut, errors=(404,))},
    ),
    Route(
        "/api/sessions",
        "sessions",
        {
            "get": Operation(
                "List sessions",
                200,
                SessionOut,
                paged=True,
                params=(
                    *_PAGE,
                    Param("agent_id", "only sessions of this agent"),
                ),
            ),
            "post": Operation(
                "Open a session with an agent", 201, SessionOut, SessionCreate, errors=(404,)
            ),
        },
    ),
    Route(
        "/api/sessions/{session_id}",
        "session",
        {
            "get": Operation("Get a session", 200, SessionOut, errors=(404,)),
            "delete": Operation(
                "Delete a session with its messages, turns and events", 204, errors=(404,)
            ),
        },
    ),
    Route(
        "/api/sessions/{session_id}/messages",
        "session_messages",
        {
            "get": Operation(
                "List a session's messages",
                200,
                MessageOut,
                paged=True,
                params=_PAGE,
                errors=(404,),
            ),
            "post": Operation(
                "Post a message; it is stored with a queued turn before the answer",
                202,
                MessageAccepted,
                MessageCreate,
                errors=(404, 409, 503),
                params=(
                    Param(
                        "Idempotency-Key",
                        "repeat a post safely: the same key and content "
                        "return the first post's ids",
                        location="header",
                    ),
                ),
            ),
        },
    ),
    Route(
        "/api/sessions/{session_id}/events",
        "session_events",
        {
            "get": Operation(
                "List a session's events, or stream them with Accept: text/event-stream",
                200,
                EventOut,
                paged=True,
                event_stream=True,
                errors=(404,),
                params=(
                    Param("limit", "items per page, 1 to 500", {"type": "integer", "default": 100}),
                    Param(
                        "after",
                        "only events after this sequence number (a stream without it or "
                        "Last-Event-ID starts with the next event)",
                        {"type": "integer"},
                    ),
                    Param(
                        "Last-Event-ID",
                        "stream: resume after this sequence number (the last id: received)",
                        location="header",
                    ),
                ),
            ),
        },
    ),
    Route(
        "/api/sessions/{session_id}/console-token",
        "console_token",
        {
            "post": Operation(
                "Issue a token, valid for 60 s, that opens this session's console WebSocket",
                201,
                ConsoleTokenOut,
                errors=(404,),
            ),
        },
    ),
    Route(
        "/ws/console/{session_id}",
        "console",
        {
            "get": Operation(
                "Open the console WebSocket: session events, ask, cancel and resume frames",
                101,
                params=(
                    Param("token", "console token, for clients that cannot send a header"),
                    Param(
                        "after",
                        "replay persisted events after this sequence number first",
                        {"type": "integer"},
                    ),
                ),
            ),
        },
    ),
    Route(
        "/api/turns/{turn_id}",
        "turn",
        {
            "get": Operation("Get a turn", 200, TurnOut, errors=(404,)),
        },
    ),
    Route(
        "/api/turns/{turn_id}/cancel",
        "turn_cancel",
        {
            "post": Operation(
                "Cancel a queued turn, or stop a running one at its next step",
                202,
                TurnOut,
                errors=(404, 409),
            ),
        },
    ),
    Route(
        "/api/cas",
        "artifacts",
        {
            "get": Operation(
                "List stored artifacts in digest order", 200, ArtifactPage, params=_PAGE
            ),
            "put": Operation(
                "Upload bytes; the answer gives their sha256 digest (201 new, 200 stored already)",
                201,
                ArtifactOut,
                errors=(413,),
                raw_body="application/octet-stream",
            ),
        },
    ),
    Route(
        "/api/cas/{digest}",
        "artifact",
        {
            "get": Operation("Download an artifact; one Range is honoured", 200, errors=(404, 416)),
            "head": Operation(
                "Read an artifact's size, media type and pinned flag", 200, errors=(404,)
            ),
        },
    ),
    Route(
        "/api/cas/{digest}/pin",
        "artifact_pin",
        {
            "post": Operation(
                "Keep an artifact from garbage collection", 200, ArtifactOut, errors=(404,)
            )
        },
    ),
    Route(
        "/api/cas/{digest}/unpin",
        "artifact_unpin",
        {
            "post": Operation(
                "Let garbage collection delete an unreferenced artifact",
                200,
                ArtifactOut,
                errors=(404,),
            )
        },
    ),
    Route(
        "/api/jobs",
        "jobs",
        {
            "get": Operation(
                "List recent maintenance job runs, newest first",
                200,
                JobRunOut,
                paged=True,
                params=(*_PAGE, Param("name", "only runs of this job")),
            ),
        },
    ),
    Route(
        "/api/index",
        "index",
        {
            "get": Operation("Report the workspace index: files, chunks, model", 200, IndexStatus),
            "post": Operation(
                "Enqueue an incremental (or, with full, a complete) index of the workspace",
                202,
                IndexAccepted,
                request=IndexRequest,
            ),
        },
    ),
    Route(
        "/api/search",
        "search",
        {
            "get": Operation(
                "Search the workspace index by meaning and by words",
                200,
                SearchResults,
                params=(
                    Param("q", "the text to search for"),
                    Param("limit", "results, 1 to 100", {"type": "integer", "default": 10}),
                    Param("path_prefix", "only files whose path starts with this"),
                    Param(
                        "rerank",
                        "rerank the candidates (default: when configured)",
                        {"type": "boolean"},
                    ),
                ),
                errors=(503,),
            ),
        },
    ),
    Route(
        "/api/events",
        "events",
        {
            "get": Operation(
                "List persisted events",
                200,
                EventOut,
                paged=True,
                params=(
                    Param("limit", "items per page, 1 to 500", {"type": "integer", "default": 100}),
                    Param(
                        "cursor",
                        "next_cursor from the previous page (a global event id)",
                        {"type": "integer"},
                    ),
                    Param("session_id", "only this session's events"),
                    Param("turn_id", "only this turn's events"),
                    Param("type", "comma-separated event types"),
                    Param(
                        "after",
                        "only events after this sequence number; needs session_id",
                        {"type": "integer"},
                    ),
                ),
            ),
        },
    ),
)


#: Chat webhooks verify their platform's signature instead of a bearer token. An
#: adapter that is not selected returns 404.
CHAT_ROUTES: tuple[Route, ...] = (
    Route(
        "/api/telegram/webhook",
        "telegram_webhook",
        {
            "post": Operation(
                "Receive a Telegram update (X-Telegram-Bot-Api-Secret-Token must match)",
                200,
                errors=(401, 404, 413),
                public=True,
                raw_body="application/json",
            ),
        },
    ),
    Route(
        "/api/discord/interactions",
        "discord_interactions",
        {
            "post": Operation(
                "Receive a Discord interaction (Ed25519-signed); /ask is answered deferred",
                200,
                errors=(401, 404, 413),
                public=True,
                raw_body="application/json",
            ),
        },
    ),
    Route(
        "/api/teams/messages",
        "teams_messages",
        {
            "post": Operation(
                "Receive a Bot Framework activity (Bearer JWT from the Bot Framework)",
                200,
                errors=(401, 404, 413),
                public=True,
                raw_body="application/json",
            ),
        },
    ),
)
ROUTES = ROUTES + CHAT_ROUTES
CHAT_PATHS = frozenset(route.path for route in CHAT_ROUTES)


def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": _ERROR_SCHEMA}
    paths: dict[str, Any] = {}
    for route in ROUTES:
        item: dict[str, Any] = {}
        for method, operation in route.operations.items():
            item[method] = _describe(route, method, operation, schemas)
        paths[route.path] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": "foxctl", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _describe(route: Route, method: str, operation: Operation, schemas: dict[str, Any]) -> Any:
    described: dict[str, Any] = {
        "summary": operation.summary,
        "operationId": f"{method}_{route.resource}",
        "parameters": _parameters(route, operation),
        "responses": {str(operation.status): _response(operation, schemas)},
    }
    for status in (*operation.errors, 400, 401, 413, 422):
        if operation.public and status in (401, 413, 422, 400):
            continue
        described["responses"].setdefault(
            str(status),
            {
                "description": "error",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
        )
    if operation.raw_body is not None:
        described["requestBody"] = {
            "required": True,
            "content": {operation.raw_body: {"schema": {"type": "string", "format": "binary"}}},
        }
    if operation.request is not None:
        described["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(operation.request, schemas)}},
        }
    if operation.public:
        described["security"] = []
    return described


def _parameters(route: Route, operation: Operation) -> list[dict[str, Any]]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_names(route.path)
    ]
    params += [
        {
            "name": p.name,
            "in": p.location,
            "required": False,
            "description": p.description,
            "schema": p.schema,
        }
        for p in operation.params
    ]
    return params


def _response(operation: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
    if operation.response is None:
        if operation.status == 204:
            return {"description": "done"}
        if operation.status == 101:
            return {"description": "switching protocols to a WebSocket"}
        return {
            "description": "ok",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    schema = _ref(operation.response, schemas)
    if operation.paged:
        schema = {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": schema},
                "next_cursor": {"type": ["string", "null"]},
            },
            "required": ["items", "next_cursor"],
        }
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if operation.event_stream:
        content["text/event-stream"] = {
            "schema": {"type": "string", "description": "id: <seq>, event: <type>, data: <JSON>"}
        }
    return {"description": "ok", "content": content}


def _ref(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        schemas[name] = definition
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}
