"""Store embedding vectors and find the nearest ones: pgvector HNSW or exact search.

Every database stores each vector as float32 bytes in ``index_chunks.embedding``.
PostgreSQL with pgvector also stores it in the untyped ``embedding_vector`` column and
searches it through one partial HNSW index per dimension, created the first time a
model of that dimension is seen. Elsewhere, search is exact: a matrix product in numpy
over the vectors of the active model, cached per process until the index changes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from shared.retrieval.errors import VectorSupportMissingError

#: HNSW candidates per query; pgvector's default is 40, which limits recall at k > 40.
HNSW_EF_SEARCH = 100


def to_unit_bytes(vector: list[float]) -> tuple[bytes, NDArray[np.float32]]:
    """Return ``vector`` scaled to unit length, as float32 bytes and as an array."""
    array = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(array))
    if norm > 0:
        array = array / norm
    return array.astype("<f4").tobytes(), array


def has_vector_column(connection: Connection) -> bool:
    """Tell whether this database has pgvector and the ``embedding_vector`` column."""
    if connection.dialect.name != "postgresql":
        return False
    query = text(
        "SELECT 1 FROM information_schema.columns "
        "WHERE table_name = 'index_chunks' AND column_name = 'embedding_vector'"
    )
    return connection.execute(query).first() is not None


def check_vector_support(connection: Connection, *, required: bool) -> str:
    """Return the search mode, ``hnsw`` or ``exact``.

    Raises VectorSupportMissingError when ``required`` and PostgreSQL lacks pgvector.
    """
    if connection.dialect.name != "postgresql":
        return "exact"
    if has_vector_column(connection):
        return "hnsw"
    if required:
        raise VectorSupportMissingError(
            "FOXCTL_POSTGRES_REQUIRE_VECTOR=true but PostgreSQL has no pgvector extension "
            "(no vector column on index_chunks); install pgvector on the server and run "
            "`foxctl migrate`, or set FOXCTL_POSTGRES_REQUIRE_VECTOR=false to use exact search"
        )
    return "exact"


def verify_vector_support(engine: Engine, *, required: bool) -> str:
    """Check pgvector at process start; raise VectorSupportMissingError as above."""
    if not required or engine.dialect.name != "postgresql":
        return "exact" if engine.dialect.name != "postgresql" else "unchecked"
    with engine.connect() as connection:
        return check_vector_support(connection, required=True)


def ensure_hnsw_index(session: Session, dimension: int) -> None:
    """Create the partial HNSW index for ``dimension`` if it does not exist yet."""
    connection = session.connection()
    if not has_vector_column(connection):
        return
    dimension = int(dimension)
    connection.execute(
        text(
            f"CREATE INDEX IF NOT EXISTS ix_index_chunks_hnsw_{dimension} ON index_chunks "
            f"USING hnsw ((embedding_vector::vector({dimension})) vector_cosine_ops) "
            f"WHERE dimension = {dimension}"
        )
    )


def store_vectors(session: Session, model: str, rows: list[tuple[int, str, list[float]]]) -> int:
    """Write vectors for (chunk id, content hash, vector) rows; return rows written.

    A row whose chunk was deleted or whose content changed since it was read is left
    alone, so a late batch cannot attach a stale vector.
    """
    if not rows:
        return 0
    connection = session.connection()
    with_vector = has_vector_column(connection)
    statement = (
        "UPDATE index_chunks SET model = :model, dimension = :dimension, embedding = :embedding"
        + (", embedding_vector = :vector" if with_vector else "")
        + " WHERE id = :id AND content_sha256 = :sha"
    )
    query = text(statement)
    if with_vector:
        query = query.bindparams(bindparam("vector", type_=VECTOR()))
    written = 0
    for chunk_id, sha, vector in rows:
        data, array = to_unit_bytes(vector)
        params: dict[str, object] = {
            "model": model,
            "dimension": len(vector),
            "embedding": data,
            "id": chunk_id,
            "sha": sha,
        }
        if with_vector:
            params["vector"] = array
        result = connection.execute(query, params)
        written += result.rowcount or 0
    return written


@dataclass(frozen=True)
class VectorHit:
    chunk_id: int
    score: float


def search_hnsw(
    session: Session,
    query: NDArray[np.float32],
    *,
    model: str,
    limit: int,
    path_prefix: str | None,
) -> list[VectorHit]:
    """Find the nearest chunks through the HNSW index; scores are cosine similarity."""
    connection = session.connection()
    dimension = len(query)
    connection.execute(text(f"SET LOCAL hnsw.ef_search = {max(HNSW_EF_SEARCH, limit)}"))
    cast = f"embedding_vector::vector({dimension})"
    where = "dimension = :dimension AND model = :model"
    if path_prefix:
        where += " AND path LIKE :prefix ESCAPE '\\'"
    statement = text(
        f"SELECT id, {cast} <=> CAST(:query AS vector({dimension})) AS distance "
        f"FROM index_chunks WHERE {where} ORDER BY distance LIMIT :limit"
    ).bindparams(bindparam("query", type_=VECTOR()))
    params: dict[str, object] = {
        "query": query,
        "dimension": dimension,
        "model": model,
        "limit": limit,
    }
    if path_prefix:
        params["prefix"] = like_prefix(path_prefix)
    rows = connection.execute(statement, params).all()
    return [VectorHit(int(row[0]), 1.0 - float(row[1])) for row in rows]


def like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


class ExactVectorSearch:
    """Exact cosine search over every vector of one model, held in memory.

    The matrix is reloaded when the count or the largest id of the model's chunks
    changes. Both come from the index on ``model`` alone, so the check stays cheap at
    100,000 chunks.

    NOTE: deleting one embedded chunk while an older pending chunk gets its vector keeps
    both numbers equal, so that chunk stays out of vector results until the next change.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[object, ...] | None = None
        self._ids: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._paths: list[str] = []
        self._matrix: NDArray[np.float32] = np.zeros((0, 0), dtype=np.float32)

    def search(
        self,
        session: Session,
        query: NDArray[np.float32],
        *,
        model: str,
        limit: int,
        path_prefix: str | None,
    ) -> list[VectorHit]:
        ids, paths, matrix = self._load(session, model, len(query))
        if len(ids) == 0:
            return []
        scores = matrix @ query
        if path_prefix:
            mask = np.fromiter((p.startswith(path_prefix) for p in paths), dtype=bool)
            scores = np.where(mask, scores, -np.inf)
        count = min(limit, len(ids))
        top = np.argpartition(-scores, count - 1)[:count]
        top = top[np.argsort(-scores[top])]
        return [VectorHit(int(ids[i]), float(scores[i])) for i in top if np.isfinite(scores[i])]

    def _load(
        self, session: Session, model: str, dimension: int
    ) -> tuple[NDArray[np.int64], list[str], NDArray[np.float32]]:
        connection = session.connection()
        stamp = connection.execute(
            text("SELECT count(*), max(id) FROM index_chunks WHERE model = :model"),
            {"model": model},
        ).one()
        key = (model, dimension, *stamp)
        with self._lock:
            if key == self._key:
                return self._ids, self._paths, self._matrix
        rows = connection.execute(
            text(
                "SELECT id, path, embedding FROM index_chunks "
                "WHERE model = :model AND dimension = :dimension ORDER BY id"
            ),
            {"model": model, "dimension": dimension},
        ).all()
        ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        paths = [str(row[1]) for row in rows]
        matrix = np.frombuffer(b"".join(row[2] for row in rows), dtype="<f4").reshape(
            len(rows), dimension
        )
        with self._lock:
            self._key, self._ids, self._paths, self._matrix = key, ids, paths, matrix
        return ids, paths, matrix
