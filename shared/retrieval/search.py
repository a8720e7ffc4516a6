"""Hybrid search over the workspace index: vectors and full text, fused, then reranked.

Vector hits (pgvector HNSW, or exact search) and full-text hits (PostgreSQL tsvector
or SQLite FTS5, both with English stemming) are fused by reciprocal rank, so that an
exact identifier the embedding misses still ranks. With a reranker, the top candidates
are rescored and the final score blends the rerank score with the fused score.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import structlog
from numpy.typing import NDArray
from sqlalchemy import text
from sqlmodel import Session, col, select

from shared.db import Database
from shared.retrieval.embedders import DisabledEmbedder, Embedder
from shared.retrieval.errors import (
    EmbeddingError,
    EmbeddingUnavailableError,
    InvalidQueryError,
)
from shared.retrieval.models import Chunk, EmbeddingSpace, SearchHit, SearchResults
from shared.retrieval.rerank import Reranker, RerankError
from shared.retrieval.service import embedding_input
from shared.retrieval.vectors import (
    ExactVectorSearch,
    VectorHit,
    check_vector_support,
    like_prefix,
    search_hnsw,
)

log = structlog.get_logger(__name__)

#: Reciprocal rank fusion constant: a hit at rank r adds 1 / (RRF_K + r).
RRF_K = 60
MAX_LIMIT = 100
#: Chunks of one file in one result list, so that a large file cannot fill it alone.
MAX_CHUNKS_PER_FILE = 2
MAX_QUERY_CHARS = 2000
_TERM = re.compile(r"[A-Za-z0-9_]+")
#: Words too common to help full-text search (English stemming drops most others).
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "in",
        "is",
        "it",
        "of",
        "on",
        "or",
        "the",
        "this",
        "to",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "with",
    ]
)


@dataclass(frozen=True)
class SearchOptions:
    limit: int = 10
    path_prefix: str | None = None
    # None: rerank when a reranker is configured.
    rerank: bool | None = None


class SearchService:
    """Search the index; share one instance per process (it caches exact-search vectors)."""

    def __init__(
        self,
        db: Database,
        embedder: Embedder,
        reranker: Reranker | None = None,
        *,
        require_vector: bool = False,
        rerank_candidates: int = 30,
        rerank_weight: float = 0.7,
    ) -> None:
        self._db = db
        self._embedder = embedder
        self._reranker = reranker
        self._require_vector = require_vector
        self._rerank_candidates = rerank_candidates
        self._rerank_weight = rerank_weight
        self._exact = ExactVectorSearch()
        self._mode: str | None = None

    def search(self, query: str, options: SearchOptions | None = None) -> SearchResults:
        """Return the best chunks for ``query``. Raises InvalidQueryError on bad input."""
        options = options or SearchOptions()
        query = check_query(query, options)
        want_rerank = self._reranker is not None and options.rerank is not False
        pool = max(options.limit, self._rerank_candidates if want_rerank else 0) * 2

        vector, model, mode = self._query_vector(query)
        vector_hits: list[VectorHit] = []
        with self._db.read() as session:
            if vector is not None and model is not None:
                vector_hits = self._nearest(session, vector, model, mode, pool, options)
            text_hits = _text_hits(session, query, pool, options.path_prefix)
        fused = _fuse(vector_hits, text_hits)
        if mode == "off":
            mode = "text"
        elif text_hits:
            mode = f"hybrid:{mode}"

        reranked = False
        warnings: list[str] = []
        if want_rerank and fused:
            fused, reranked = self._rerank(query, fused)
        elif options.rerank and self._reranker is None:
            warnings.append(
                "rerank=true was requested, but no reranker is configured "
                "(FOXCTL_RERANK_PROVIDER=none), so the results are not reranked"
            )
        items = self._hits(fused, options.limit)
        return SearchResults(
            query=query, items=items, mode=mode, reranked=reranked, warnings=warnings
        )

    def is_complete(self) -> bool:
        """Tell whether the index has chunks and, with an embedder, none left to embed."""
        with self._db.read() as session:
            any_chunk = session.exec(select(Chunk.id).limit(1)).first()
            if any_chunk is None:
                return False
            if isinstance(self._embedder, DisabledEmbedder):
                return True
            pending = session.exec(
                select(Chunk.id).where(col(Chunk.model).is_(None)).limit(1)
            ).first()
        return pending is None

    def _query_vector(self, query: str) -> tuple[NDArray[np.float32] | None, str | None, str]:
        """Embed the query; return (unit vector, model, vector mode), or None and ``off``."""
        if isinstance(self._embedder, DisabledEmbedder):
            return None, None, "off"
        with self._db.read() as session:
            space = session.get(EmbeddingSpace, 1)
            mode = self._vector_mode(session)
        if space is None or space.model != self._embedder.key or space.dimension is None:
            return None, None, "off"
        try:
            vector = self._embedder.embed([embedding_input("", query)])[0]
        except (EmbeddingError, EmbeddingUnavailableError) as error:
            log.warning("query embedding failed; searching full text only", error=str(error))
            return None, None, "off"
        array = np.asarray(vector, dtype=np.float32)
        array /= max(float(np.linalg.norm(array)), 1e-12)
        if len(array) != space.dimension:
            log.warning("query vector has the wrong dimension", dimension=len(array))
            return None, None, "off"
        return array, space.model, mode

    def _vector_mode(self, session: Session) -> str:
        # The vector column only appears through a migration, so a process checks once;
        # a required but missing pgvector raises on every search until it appears.
        if self._mode is None:
            self._mode = check_vector_support(session.connection(), required=self._require_vector)
        return self._mode

    def _nearest(
        self,
        session: Session,
        vector: NDArray[np.float32],
        model: str,
        mode: str,
        limit: int,
        options: SearchOptions,
    ) -> list[VectorHit]:
        prefix = options.path_prefix
        if mode == "hnsw":
            return search_hnsw(session, vector, model=model, limit=limit, path_prefix=prefix)
        return self._exact.search(session, vector, model=model, limit=limit, path_prefix=prefix)

    def _rerank(
        self, query: str, fused: list[tuple[int, float]]
    ) -> tuple[list[tuple[int, float]], bool]:
        assert self._reranker is not None
        candidates = fused[: self._rerank_candidates]
        chunks = self._chunks([chunk_id for chunk_id, _ in candidates])
        documents = [
            f"{chunks[i].path}\n{chunks[i].text}" if i in chunks else "" for i, _ in candidates
        ]
        try:
            scores = self._reranker.rerank(query, documents, len(documents))
        except RerankError as error:
            log.warning("reranker failed; keeping search order", error=str(error))
            return fused, False
        best = max(score for _, score in candidates) or 1.0
        weight = self._rerank_weight
        blended = [
            (chunk_id, weight * scores.get(i, 0.0) + (1 - weight) * score / best)
            for i, (chunk_id, score) in enumerate(candidates)
        ]
        blended.sort(key=lambda item: -item[1])
        return blended + fused[len(candidates) :], True

    def _hits(self, ranked: list[tuple[int, float]], limit: int) -> list[SearchHit]:
        """Return the first ``limit`` hits, at most MAX_CHUNKS_PER_FILE from one file."""
        chunks = self._chunks([chunk_id for chunk_id, _ in ranked])
        per_file: dict[str, int] = {}
        hits: list[SearchHit] = []
        for chunk_id, score in ranked:
            chunk = chunks.get(chunk_id)
            if chunk is None or per_file.get(chunk.path, 0) >= MAX_CHUNKS_PER_FILE:
                continue
            per_file[chunk.path] = per_file.get(chunk.path, 0) + 1
            hits.append(
                SearchHit(
                    path=chunk.path,
                    start_line=chunk.start_line,
                    end_line=chunk.end_line,
                    snippet=chunk.text,
                    score=round(score, 6),
                )
            )
            if len(hits) == limit:
                break
        return hits

    def _chunks(self, ids: list[int]) -> dict[int, Chunk]:
        if not ids:
            return {}
        with self._db.read() as session:
            rows = session.exec(select(Chunk).where(col(Chunk.id).in_(ids))).all()
        return {row.id: row for row in rows if row.id is not None}


def check_query(query: str, options: SearchOptions) -> str:
    """Return the stripped query; raise InvalidQueryError when it or the limit is bad."""
    query = (query or "").strip()
    if not query:
        raise InvalidQueryError("query is empty; pass the text to search for in q")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidQueryError(
            f"query is {len(query)} characters long; the maximum is {MAX_QUERY_CHARS}"
        )
    if not 1 <= options.limit <= MAX_LIMIT:
        raise InvalidQueryError(f"limit={options.limit} is out of range; use 1 to {MAX_LIMIT}")
    return query


def query_terms(query: str) -> list[str]:
    """Split a query into full-text terms: words and identifiers minus stopwords."""
    terms: list[str] = []
    for word in _TERM.findall(query):
        lowered = word.lower()
        if lowered not in _STOPWORDS and lowered not in terms:
            terms.append(lowered)
    return terms


def _text_hits(
    session: Session, query: str, limit: int, path_prefix: str | None
) -> list[tuple[int, float]]:
    terms = query_terms(query)
    if not terms:
        return []
    connection = session.connection()
    params: dict[str, object] = {"limit": limit}
    prefix_filter = ""
    if path_prefix:
        params["prefix"] = like_prefix(path_prefix)
        prefix_filter = " AND c.path LIKE :prefix ESCAPE '\\'"
    if connection.dialect.name == "postgresql":
        params["query"] = " | ".join(terms)
        statement = (
            # Normalization 1 divides by 1 + log(length), so long chunks that repeat
            # common words do not crowd out short ones; FTS5's bm25 does the same.
            "SELECT c.id, ts_rank_cd(c.text_search, q, 1) AS rank "
            "FROM index_chunks c, to_tsquery('english', :query) q "
            f"WHERE c.text_search @@ q{prefix_filter} ORDER BY rank DESC, c.id LIMIT :limit"
        )
    else:
        params["query"] = " OR ".join('"' + term.replace('"', "") + '"' for term in terms)
        statement = (
            "SELECT c.id, -bm25(index_chunks_fts) AS rank FROM index_chunks_fts "
            "JOIN index_chunks c ON c.id = index_chunks_fts.rowid "
            f"WHERE index_chunks_fts MATCH :query{prefix_filter} "
            "ORDER BY rank DESC, c.id LIMIT :limit"
        )
    rows = connection.execute(text(statement), params).all()
    return [(int(row[0]), float(row[1])) for row in rows]


def _fuse(
    vector_hits: list[VectorHit], text_hits: list[tuple[int, float]]
) -> list[tuple[int, float]]:
    """Combine two rankings by reciprocal rank; return (chunk id, score), best first."""
    scores: dict[int, float] = {}
    for rank, hit in enumerate(vector_hits, start=1):
        scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (RRF_K + rank)
    for rank, (chunk_id, _) in enumerate(text_hits, start=1):
        scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))
