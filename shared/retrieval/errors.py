"""Errors of the workspace index, its embedding providers and its rerankers."""

from __future__ import annotations

from shared.errors import FoxctlError, InvalidInputError, UnavailableError


class RetrievalError(FoxctlError):
    code = "retrieval_error"


class EmbeddingError(RetrievalError):
    """The embedding provider returned something unusable; retrying will not help."""

    code = "embedding_error"


class EmbeddingUnavailableError(UnavailableError):
    """The embedding provider failed or rate-limited us; try again later.

    ``retry_after_s`` is the provider's Retry-After, when it sent one.
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class VectorSupportMissingError(UnavailableError):
    """PostgreSQL lacks pgvector while FOXCTL_POSTGRES_REQUIRE_VECTOR=true."""


class InvalidQueryError(InvalidInputError):
    pass
