"""Indexed files, their chunks, and the embedding space the vectors belong to."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Column, Integer, LargeBinary, Text
from sqlmodel import Field, SQLModel

from shared.clock import utcnow
from shared.timestamps import UtcDateTime


class IndexedFile(SQLModel, table=True):
    """A workspace file as last indexed; ``content_sha256`` decides re-chunking."""

    __tablename__ = "index_files"

    path: str = Field(primary_key=True, max_length=1000)
    content_sha256: str = Field(max_length=64)
    size_bytes: int
    chunk_count: int = 0
    indexed_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class Chunk(SQLModel, table=True):
    """A run of lines from one file, and its embedding once a worker made it.

    ``embedding`` holds float32 values in little-endian order (every database);
    PostgreSQL with pgvector also keeps them in a ``vector`` column named
    ``embedding_vector`` that the migration adds, for the HNSW index.
    """

    __tablename__ = "index_chunks"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    path: str = Field(max_length=1000, index=True)
    start_line: int
    end_line: int
    text: str = Field(sa_column=Column(Text, nullable=False))
    # sha256 of the path and text: equal hashes embed to equal vectors under one model.
    content_sha256: str = Field(max_length=64, index=True)
    # The embedding space key (provider:model) of ``embedding``; None while pending.
    model: str | None = Field(default=None, max_length=300, index=True)
    dimension: int | None = None
    embedding: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))


class EmbeddingSpace(SQLModel, table=True):
    """The one active embedding model of the index and its learned dimension."""

    __tablename__ = "index_state"

    id: int = Field(default=1, primary_key=True)
    model: str | None = Field(default=None, max_length=300)
    dimension: int | None = None
    last_indexed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class IndexStatus(BaseModel):
    files: int
    chunks: int
    embedded: int
    pending: int
    model: str | None
    dimension: int | None
    vector_search: str
    last_run_id: str | None
    last_run_status: str | None
    last_indexed_at: datetime | None
    last_error: str | None


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Re-chunk and re-embed every file instead of only the changed ones.
    full: bool = False


class IndexAccepted(BaseModel):
    job_id: str
    full: bool


class SearchHit(BaseModel):
    path: str
    start_line: int
    end_line: int
    snippet: str
    score: float


class SearchResults(BaseModel):
    query: str
    items: list[SearchHit]
    mode: str
    reranked: bool
    #: Why the results are less than asked for, such as full text only after a timeout.
    warnings: list[str] = []
