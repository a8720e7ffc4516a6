"""Rerankers: the common ``POST {base}/rerank`` shape (query, documents, top_n)."""

from __future__ import annotations

from typing import Any, Protocol

from shared.retrieval.errors import EmbeddingError, EmbeddingUnavailableError
from shared.retrieval.http import ProviderEndpoint
from shared.settings import Settings


class RerankError(Exception):
    """The reranker failed; search falls back to its own order."""


class Reranker(Protocol):
    def rerank(self, query: str, documents: list[str], top_n: int) -> dict[int, float]:
        """Return relevance scores by document index; raise RerankError on failure."""
        ...


class HttpReranker:
    """A reranking server that takes ``query``, ``documents`` and ``top_n`` and returns
    ``results`` with ``index`` and ``relevance_score`` (Cohere, Jina, TEI and others)."""

    def __init__(self, *, base_url: str, model: str, api_key: str | None, timeout_s: float) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._model = model
        # One attempt: a slow reranker should not hold a search request up.
        self._endpoint = ProviderEndpoint(
            url=base_url.rstrip("/") + "/rerank",
            headers=headers,
            timeout_s=timeout_s,
            max_attempts=1,
        )

    def rerank(self, query: str, documents: list[str], top_n: int) -> dict[int, float]:
        body = {"model": self._model, "query": query, "documents": documents, "top_n": top_n}
        try:
            payload = self._endpoint.post_json(body)
        except (EmbeddingError, EmbeddingUnavailableError) as error:
            raise RerankError(error.message) from error
        return _scores(payload, len(documents), self._endpoint.url)


def _scores(payload: dict[str, Any], count: int, url: str) -> dict[int, float]:
    results = payload.get("results")
    if not isinstance(results, list):
        raise RerankError(f"{url} returned no results list")
    scores: dict[int, float] = {}
    for item in results:
        try:
            index = int(item["index"])
            score = float(item["relevance_score"])
        except (KeyError, TypeError, ValueError) as error:
            raise RerankError(f"{url} returned a result without index and score") from error
        if not 0 <= index < count:
            raise RerankError(f"{url} returned index {index} for {count} documents")
        scores[index] = score
    return scores


def make_reranker(settings: Settings) -> Reranker | None:
    """Build the reranker FOXCTL_RERANK_PROVIDER names, or None when it is off."""
    if settings.rerank_provider == "none" or not settings.rerank_base_url:
        return None
    api_key = settings.rerank_api_key
    return HttpReranker(
        base_url=settings.rerank_base_url,
        model=settings.rerank_model,
        api_key=api_key.get_secret_value() if api_key else None,
        timeout_s=settings.embedding_timeout_s,
    )
