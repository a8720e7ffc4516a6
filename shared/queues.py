"""The contract between the web tier and the workers: queues, actor names, arguments.

The web tier enqueues by name through ``Enqueuer`` and never imports worker code, so
web pods load no model or embedding code. Messages carry ids only: the database holds
the payloads, and a lost message is recovered from the database by the reconciler.
"""

from __future__ import annotations

from dataclasses import dataclass

import dramatiq
from dramatiq.broker import Broker
from opentelemetry.trace import SpanKind

from shared import telemetry

TURNS = "turns"
EMBEDDINGS = "embeddings"
MAINTENANCE = "maintenance"
CHAT_DELIVERY = "chat-delivery"
#: Searches from the web tier; the embedding worker runs them, so that web pods never
#: embed a query or call a reranker.
SEARCH = "search"
ALL_QUEUES = (TURNS, EMBEDDINGS, MAINTENANCE, CHAT_DELIVERY, SEARCH)


@dataclass(frozen=True)
class ActorRef:
    queue: str
    name: str


#: Wake a worker to run a session's queued turns. Argument: the session id.
RUN_SESSION = ActorRef(TURNS, "run_session")
#: Run a recorded maintenance job. Argument: the job run id (its parameters are stored).
RUN_JOB = ActorRef(MAINTENANCE, "run_job")
#: Send a turn's reply to a chat platform. Argument: the chat delivery id.
DELIVER_CHAT_REPLY = ActorRef(CHAT_DELIVERY, "deliver_chat_reply")
#: Index the workspace: a recorded job run on the embeddings queue. Argument: the run id.
INDEX_WORKSPACE = ActorRef(EMBEDDINGS, "index_workspace")
#: Embed a batch of index chunks. Arguments: the chunk ids.
EMBED_CHUNKS = ActorRef(EMBEDDINGS, "embed_chunks")
#: Run a search that a web process stored in the search exchange. Argument: its id.
RUN_SEARCH = ActorRef(SEARCH, "run_search")


class Enqueuer:
    """Send id-only messages to actors by name."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        for queue in ALL_QUEUES:
            broker.declare_queue(queue)

    def send(self, actor: ActorRef, *args: str, delay_ms: int | None = None) -> str:
        """Enqueue a message for ``actor``; return the message id.

        Raises the broker's connection error when the broker is unreachable.
        """
        message: dramatiq.Message[None] = dramatiq.Message(
            queue_name=actor.queue, actor_name=actor.name, args=args, kwargs={}, options={}
        )
        # The broker's TracingMiddleware writes this span's context into the message.
        attributes = telemetry.message_attributes(actor.queue, actor.name, "publish")
        attributes["messaging.message.id"] = message.message_id
        with telemetry.span(f"{actor.queue} publish", attributes, kind=SpanKind.PRODUCER):
            sent = self._broker.enqueue(message, delay=delay_ms)
        return sent.message_id

    def wake_session(self, session_id: str) -> str:
        return self.send(RUN_SESSION, session_id)
