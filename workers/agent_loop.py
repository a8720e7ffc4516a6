"""The agent loop of one turn: prompt, model calls, tool calls, final reply.

The loop reads through the database but writes only through its ``TurnScope``, which
checks the session lease on every write.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry.trace import SpanKind
from sqlmodel import col, select

from shared import telemetry
from shared.agents.models import Agent, AgentMode
from shared.cas.service import store_upload
from shared.cas.stores.base import ArtifactStore
from shared.db import Database
from shared.events.models import EventType
from shared.metrics import MODEL_SECONDS, observe_model_call
from shared.sessions.models import AgentSession, Message
from shared.turns.models import Turn
from workers.context import IndexedSearch, LexicalSearch, format_snippets
from workers.llm.base import ChatModel, ModelError, ModelReply, ToolCall
from workers.llm.think import ThinkFilter, strip_think
from workers.prompts import estimate_tokens, fit_history, system_prompt
from workers.tools import MAX_OUTPUT_BYTES, ToolRegistry, ToolResult, allowed_tools, truncate

#: How many earlier messages a turn reads before the token budget trims them.
HISTORY_LIMIT = 200
END_TICK = "end_tick"
END_TICK_SPEC = {
    "type": "function",
    "function": {
        "name": END_TICK,
        "description": "End your tick loop: no more ticks run until someone restarts you.",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
}


class TurnScope(Protocol):
    """Fenced writes and checks for one running turn."""

    def checkpoint(self) -> None:
        """Raise if the turn must stop here: cancelled, lease lost or worker stopping."""
        ...

    def record(
        self, event: EventType, data: dict[str, Any], *, artifacts: tuple[str, ...] = ()
    ) -> None:
        """Append an event, and reference ``artifacts`` from the turn, in one write."""
        ...

    def record_model_call(self, reply: ModelReply, model_name: str) -> None: ...

    def finish(self, content: str, reply: ModelReply, model_name: str) -> None: ...

    def fail(self, error: str) -> None: ...

    def end_tick(self) -> None: ...

    def publish_delta(self, text: str) -> None: ...


@dataclass(frozen=True)
class LoopSettings:
    context_tokens: int = 6000
    inject_limit: int = 3
    # Reply pieces that arrive within this time go out as one live event.
    delta_interval_s: float = 0.05


class DeltaBuffer:
    """Join reply pieces into fewer live events: at most one per ``interval_s``.

    The first piece goes out at once, so the first words show without delay. A fast
    stream otherwise sends one event per token to every viewer; joining them cuts the
    events that every web process fans out. ``flush`` sends what is left.
    """

    def __init__(
        self,
        publish: Callable[[str], None],
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publish = publish
        self._interval_s = interval_s
        self._clock = clock
        self._parts: list[str] = []
        self._sent_at = float("-inf")

    def add(self, text: str) -> None:
        self._parts.append(text)
        if self._clock() - self._sent_at >= self._interval_s:
            self.flush()

    def flush(self) -> None:
        if not self._parts:
            return
        text = "".join(self._parts)
        self._parts.clear()
        self._sent_at = self._clock()
        self._publish(text)


class AgentLoop:
    def __init__(
        self,
        db: Database,
        model_for: Callable[[Agent], ChatModel],
        tools: ToolRegistry,
        search: LexicalSearch | IndexedSearch | None,
        settings: LoopSettings,
        artifacts: ArtifactStore | None = None,
    ) -> None:
        self._db = db
        self._artifacts = artifacts
        self._model_for = model_for
        self._tools = tools
        self._search = search
        self._settings = settings

    def run(self, turn: Turn, scope: TurnScope) -> None:
        """Run the turn to a reply, a failure or a stop at a checkpoint."""
        agent, history = self._load(turn)
        model = self._model_for(agent)
        allowed = allowed_tools(agent.role, agent.tool_profile, agent.tools)
        specs = self._tools.specs(allowed)
        if agent.mode == AgentMode.tick:
            allowed |= {END_TICK}
            specs.append(END_TICK_SPEC)

        conversation = self._prompt(agent, model, history, has_tools=bool(specs), scope=scope)
        for _ in range(agent.max_iterations):
            scope.checkpoint()
            reply = self._call(model, conversation, specs, scope)
            if reply is None:
                return
            if not reply.tool_calls:
                scope.finish(strip_think(reply.content), reply, model.name)
                return

            scope.record_model_call(reply, model.name)
            conversation.append(_assistant_tool_message(reply))
            for call in reply.tool_calls:
                scope.checkpoint()
                result = self._run_tool(call, allowed, scope)
                conversation.append(
                    {"role": "tool", "tool_call_id": result.call_id, "content": result.output}
                )

        scope.fail(
            f"no final reply after max_iterations={agent.max_iterations} model calls; "
            "raise the agent's max_iterations or simplify the request"
        )

    def _call(
        self,
        model: ChatModel,
        conversation: list[dict[str, Any]],
        specs: list[dict[str, Any]],
        scope: TurnScope,
    ) -> ModelReply | None:
        visible = ThinkFilter()
        buffer = DeltaBuffer(scope.publish_delta, self._settings.delta_interval_s)

        def on_delta(piece: str) -> None:
            text = visible.feed(piece)
            if text:
                buffer.add(text)

        provider = getattr(model, "provider", "unknown")
        attributes = {"gen_ai.system": provider, "gen_ai.request.model": model.name}
        began = time.perf_counter()
        with telemetry.span(f"chat {model.name}", attributes, kind=SpanKind.CLIENT) as current:
            try:
                reply = model.complete(conversation, specs, on_delta=on_delta)
            except ModelError as error:
                MODEL_SECONDS.labels(provider, model.name, "error").observe(
                    time.perf_counter() - began
                )
                telemetry.record_error(current, error)
                buffer.flush()
                scope.fail(f"model {model.name!r} failed: {error.message}")
                return None
            # Sent before any event of this call is stored, so it follows the same sequence.
            buffer.flush()
            current.set_attribute("gen_ai.usage.input_tokens", reply.prompt_tokens)
            current.set_attribute("gen_ai.usage.output_tokens", reply.completion_tokens)
        observe_model_call(
            provider,
            model.name,
            time.perf_counter() - began,
            reply.prompt_tokens,
            reply.completion_tokens,
        )
        return reply

    def _run_tool(self, call: ToolCall, allowed: frozenset[str], scope: TurnScope) -> ToolResult:
        scope.record(
            EventType.tool_called,
            {"call_id": call.id, "name": call.name, "arguments": call.arguments},
        )
        attributes = {"gen_ai.tool.name": call.name, "gen_ai.tool.call.id": call.id}
        with telemetry.span(f"execute_tool {call.name}", attributes) as current:
            if call.name == END_TICK and END_TICK in allowed:
                scope.end_tick()
                result = ToolResult(call.id, call.name, "tick loop ended", ok=True)
            else:
                result = self._tools.run(allowed, call)
            current.set_attribute("foxctl.tool.ok", result.ok)
        data: dict[str, Any] = {"call_id": result.call_id, "name": result.name, "ok": result.ok}
        output = result.output
        artifacts: tuple[str, ...] = ()
        size_bytes = len(output.encode())
        if size_bytes > MAX_OUTPUT_BYTES:
            # The model and the event get a truncated copy. The whole output goes to
            # the artifact store, referenced by the turn, for the API and console.
            output = truncate(output)
            if self._artifacts is not None:
                digest = self._store_output(result.output)
                output += f"\n[full output: {size_bytes} bytes, stored as artifact {digest}]"
                data.update(output_digest=digest, output_bytes=size_bytes)
                artifacts = (digest,)
        data["output"] = output
        scope.record(EventType.tool_result, data, artifacts=artifacts)
        return ToolResult(result.call_id, result.name, output, result.ok)

    def _store_output(self, output: str) -> str:
        assert self._artifacts is not None
        with self._db.write() as db:
            stored = store_upload(
                db, self._artifacts, [output.encode()], media_type="text/plain; charset=utf-8"
            )
        return stored.artifact.digest

    def _load(self, turn: Turn) -> tuple[Agent, list[dict[str, Any]]]:
        with self._db.read() as db:
            session = db.get(AgentSession, turn.session_id)
            assert session is not None
            agent = db.get(Agent, session.agent_id)
            assert agent is not None
            # Earlier turns with their replies, then this turn's own message; messages of
            # turns queued after this one are left out.
            rows = db.exec(
                select(Message)
                .where(Message.session_id == turn.session_id)
                .where(col(Message.position) <= 2 * turn.number - 1)
                .order_by(col(Message.position).desc())
                .limit(HISTORY_LIMIT)
            ).all()
        history = [{"role": m.role, "content": m.content} for m in reversed(rows)]
        return agent, history

    def _prompt(
        self,
        agent: Agent,
        model: ChatModel,
        history: list[dict[str, Any]],
        *,
        has_tools: bool,
        scope: TurnScope,
    ) -> list[dict[str, Any]]:
        system = system_prompt(agent, has_tools=has_tools)
        messages = [{"role": "system", "content": system}]
        if self._should_inject(agent, model) and history:
            excerpts = self._inject(str(history[-1]["content"]), scope)
            if excerpts:
                messages.append({"role": "system", "content": excerpts})
        budget = min(
            self._settings.context_tokens,
            int(getattr(model, "context_tokens", self._settings.context_tokens)),
        )
        used = sum(estimate_tokens(str(m["content"])) for m in messages)
        # Leave a quarter of the budget for the reply.
        remaining = max(budget * 3 // 4 - used, 64)
        return messages + fit_history(history, remaining)

    def _should_inject(self, agent: Agent, model: ChatModel) -> bool:
        if self._search is None:
            return False
        if agent.inject_context is not None:
            return agent.inject_context
        return not bool(getattr(model, "supports_tools", True))

    def _inject(self, question: str, scope: TurnScope) -> str:
        assert self._search is not None
        snippets = self._search.search(question, limit=self._settings.inject_limit)
        if not snippets:
            return ""
        scope.record(
            EventType.context_injected,
            {
                "sources": [
                    {
                        "path": s.path,
                        "start_line": s.start_line,
                        "end_line": s.end_line,
                        "score": s.score,
                    }
                    for s in snippets
                ]
            },
        )
        return format_snippets(snippets)


def _assistant_tool_message(reply: ModelReply) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": reply.content or None,
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in reply.tool_calls
        ],
    }
