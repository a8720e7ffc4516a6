"""Run the searches that web processes hand over through the search exchange."""

from __future__ import annotations

from typing import Any

import structlog

from shared import telemetry
from shared.errors import FoxctlError
from shared.metrics import SEARCH_REQUESTS
from shared.retrieval.exchange import SearchExchange
from shared.retrieval.search import SearchOptions, SearchService

log = structlog.get_logger(__name__)


class SearchRunner:
    def __init__(self, search: SearchService, exchange: SearchExchange) -> None:
        self._search = search
        self._exchange = exchange

    def run(self, request_id: str) -> None:
        """Run one stored search and send its response. Idempotent: a request is taken once."""
        request = self._exchange.take(request_id)
        if request is None:
            # The web process stopped waiting (and fell back to full text) or another
            # delivery of this message already took it.
            SEARCH_REQUESTS.labels(outcome="expired").inc()
            log.info("search request expired before a worker took it", request_id=request_id)
            return
        with telemetry.span("search", {"foxctl.search.limit": request.get("limit", 0)}) as span:
            response = self._result(request)
            if "error" in response:
                span.set_attribute("foxctl.search.error", response["error"]["code"])
        self._exchange.respond(request_id, response)

    def _result(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            options = SearchOptions(
                limit=int(request["limit"]),
                path_prefix=request.get("path_prefix"),
                rerank=request.get("rerank"),
            )
            results = self._search.search(str(request["q"]), options)
        except FoxctlError as error:
            SEARCH_REQUESTS.labels(outcome="error").inc()
            log.warning("search failed", error=error.message, code=error.code)
            return {"error": {"code": error.code, "message": error.message}}
        except Exception as error:
            SEARCH_REQUESTS.labels(outcome="error").inc()
            log.exception("search failed unexpectedly")
            message = f"the search failed on the embedding worker: {type(error).__name__}"
            return {"error": {"code": "error", "message": message}}
        SEARCH_REQUESTS.labels(outcome="ok").inc()
        return {"results": results.model_dump(mode="json")}
