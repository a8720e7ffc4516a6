"""Find the workspace files most related to a message, for context injection.

``LexicalSearch`` scores files by how often the message's words and identifiers occur
in them, weighting rare words higher, and returns the best window of lines from each
top file. ``IndexedSearch`` asks the workspace index (the same search as the
``semantic_search`` tool and ``GET /api/search``) and falls back to the lexical search
while the index is empty.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import structlog

from shared.errors import FoxctlError
from shared.retrieval.search import SearchOptions, SearchService
from workers.tools.workspace import SKIPPED_DIRS, SNIFF_BYTES

log = structlog.get_logger(__name__)

MAX_FILES = 5000
MAX_FILE_BYTES = 512 * 1024
WINDOW_LINES = 40
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")
_CAMEL = re.compile(r"[a-z0-9]+|[A-Z][a-z0-9]*")
STOPWORDS = frozenset(
    {
        "the",
        "and",
        "for",
        "are",
        "but",
        "not",
        "you",
        "all",
        "any",
        "can",
        "had",
        "her",
        "was",
        "one",
        "our",
        "out",
        "has",
        "him",
        "his",
        "how",
        "man",
        "new",
        "now",
        "old",
        "see",
        "two",
        "way",
        "who",
        "did",
        "its",
        "let",
        "put",
        "say",
        "she",
        "too",
        "use",
        "what",
        "where",
        "when",
        "which",
        "with",
        "this",
        "that",
        "from",
        "they",
        "will",
        "would",
        "there",
        "their",
        "been",
        "have",
        "into",
        "more",
        "some",
        "than",
        "then",
        "them",
        "these",
        "does",
        "about",
        "should",
        "could",
        "explain",
        "show",
        "tell",
        "find",
        "give",
        "code",
        "file",
        "files",
        "work",
        "works",
    }
)


@dataclass(frozen=True)
class Snippet:
    path: str
    start_line: int
    end_line: int
    text: str
    score: float


def query_terms(text: str) -> list[str]:
    """Split text into lowercase search terms, including the parts of identifiers."""
    terms: set[str] = set()
    for word in _WORD.findall(text):
        lowered = word.lower()
        if lowered not in STOPWORDS:
            terms.add(lowered)
        for part in re.split(r"_+", word):
            for piece in _CAMEL.findall(part):
                if len(piece) >= 3 and piece.lower() not in STOPWORDS:
                    terms.add(piece.lower())
    return sorted(terms)


class LexicalSearch:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def search(self, query: str, *, limit: int = 3) -> list[Snippet]:
        """Return up to ``limit`` snippets from the files that best match ``query``."""
        terms = query_terms(query)
        if not terms:
            return []
        counts = self._count_terms(terms)
        if not counts:
            return []
        scores = _score(counts, terms)
        best = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:limit]
        return [self._snippet(path, score, terms) for path, score in best if score > 0]

    def _count_terms(self, terms: list[str]) -> dict[Path, Counter[str]]:
        counts: dict[Path, Counter[str]] = {}
        for path in self._files():
            text = _read_text(path)
            if text is None:
                continue
            lowered = text.lower()
            relative = path.relative_to(self.root).as_posix().lower()
            found = Counter({t: lowered.count(t) + 3 * relative.count(t) for t in terms})
            found = +found  # drop zero counts
            if found:
                counts[path] = found
        return counts

    def _files(self) -> list[Path]:
        files: list[Path] = []
        for directory, subdirs, names in os.walk(self.root):
            subdirs[:] = sorted(
                d for d in subdirs if d not in SKIPPED_DIRS and not d.startswith(".")
            )
            for name in sorted(names):
                files.append(Path(directory, name))
                if len(files) >= MAX_FILES:
                    return files
        return files

    def _snippet(self, path: Path, score: float, terms: list[str]) -> Snippet:
        lines = (_read_text(path) or "").splitlines()
        hits = [sum(line.lower().count(t) for t in terms) for line in lines]
        start = _best_window(hits, WINDOW_LINES)
        end = min(start + WINDOW_LINES, len(lines))
        return Snippet(
            path=path.relative_to(self.root).as_posix(),
            start_line=start + 1,
            end_line=end,
            text="\n".join(lines[start:end]),
            score=round(score, 3),
        )


class IndexedSearch:
    """Search the workspace index; use ``fallback`` until the index is complete or on no hits.

    A half-embedded index ranks the embedded chunks above the rest, so injection waits
    for the embedding backlog to drain.
    """

    def __init__(self, search: SearchService, fallback: LexicalSearch) -> None:
        self._search = search
        self._fallback = fallback

    def search(self, query: str, *, limit: int = 3) -> list[Snippet]:
        try:
            if not self._search.is_complete():
                return self._fallback.search(query, limit=limit)
            results = self._search.search(query[:2000], SearchOptions(limit=limit))
        except FoxctlError as error:
            log.warning("index search failed; using the lexical search", error=error.message)
            return self._fallback.search(query, limit=limit)
        if not results.items:
            return self._fallback.search(query, limit=limit)
        return [
            Snippet(hit.path, hit.start_line, hit.end_line, hit.snippet, hit.score)
            for hit in results.items
        ]


def _score(counts: dict[Path, Counter[str]], terms: list[str]) -> dict[Path, float]:
    files = len(counts)
    document_frequency = Counter(t for found in counts.values() for t in found)
    weights = {t: math.log(1 + files / document_frequency[t]) for t in document_frequency}
    return {
        path: sum(weights[t] * (1 + math.log(n)) for t, n in found.items())
        for path, found in counts.items()
    }


def _best_window(hits: list[int], size: int) -> int:
    if len(hits) <= size:
        return 0
    window = sum(hits[:size])
    best, best_start = window, 0
    for start in range(1, len(hits) - size + 1):
        window += hits[start + size - 1] - hits[start - 1]
        if window > best:
            best, best_start = window, start
    return best_start


def _read_text(path: Path) -> str | None:
    try:
        if path.is_symlink() or path.stat().st_size > MAX_FILE_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:SNIFF_BYTES]:
        return None
    return data.decode("utf-8", errors="replace")


def format_snippets(snippets: list[Snippet]) -> str:
    """Render snippets as a system message the model can cite."""
    blocks = [f"File {s.path}, lines {s.start_line}-{s.end_line}:\n{s.text}" for s in snippets]
    return "Workspace excerpts that may help answer the next message:\n\n" + "\n\n".join(blocks)
