"""Helpers for the workspace index tests: source trees and a pipeline run in process."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shared.db import Database
from shared.retrieval.embedders import Embedder
from shared.retrieval.service import (
    EmbedReport,
    IndexReport,
    embed_chunks,
    index_workspace,
)


def python_function(name: str, topic: str, lines: int = 34) -> str:
    """Return a function long enough to be a chunk of its own."""
    body = "".join(f"    step_{i} = '{topic} {i}'\n" for i in range(lines))
    return f'def {name}():\n    """Handle {topic}."""\n{body}    return None\n'


def write_tree(root: Path, files: dict[str, str]) -> None:
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


@dataclass
class Pipeline:
    """Run index jobs and embed every batch they send, as one worker would."""

    db: Database
    root: Path
    embedder: Embedder
    batch_size: int = 4
    batches: list[list[int]] = field(default_factory=list)

    def index(self, *, full: bool = False) -> IndexReport:
        self.batches = []
        return index_workspace(
            self.db,
            self.root,
            model=self.embedder.key,
            max_file_bytes=256 * 1024,
            batch_size=self.batch_size,
            send_batch=self.batches.append,
            full=full,
        )

    def embed_all(self) -> list[EmbedReport]:
        return [embed_chunks(self.db, self.embedder, batch) for batch in self.batches]

    def run(self, *, full: bool = False) -> IndexReport:
        report = self.index(full=full)
        self.embed_all()
        return report
