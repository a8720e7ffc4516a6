"""Split a file into chunks that keep their line numbers.

Python files split at top-level functions and classes, and at the methods of a class
too long for one chunk. Markdown and text files split at blank lines between
paragraphs, and anything else into fixed windows of lines. Small neighbouring pieces
are merged up to ``MAX_CHUNK_LINES`` and ``MAX_CHUNK_CHARS``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

MAX_CHUNK_LINES = 60
#: Roughly 400 word pieces (an estimate for code). all-MiniLM-L6-v2 reads at most 256,
#: so it embeds the start of a long chunk only, while full-text search indexes all of it.
MAX_CHUNK_CHARS = 1800
TEXT_SUFFIXES = (".md", ".rst", ".txt", ".adoc")


@dataclass(frozen=True)
class ChunkDraft:
    start_line: int
    end_line: int
    text: str


def chunk_file(path: str, text: str) -> list[ChunkDraft]:
    """Split ``text`` (the content of ``path``) into chunks with 1-based line ranges."""
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        return []
    if path.endswith(".py"):
        starts = _python_boundaries(text, len(lines))
    elif path.lower().endswith(TEXT_SUFFIXES):
        starts = _paragraph_boundaries(lines)
    else:
        starts = [0]
    return _pack(lines, starts)


def _python_boundaries(text: str, line_count: int) -> list[int]:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return [0]
    starts = {0}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        starts.add(_first_line(node))
        if isinstance(node, ast.ClassDef) and _length(node) > MAX_CHUNK_LINES:
            starts.update(
                _first_line(child)
                for child in node.body
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    return sorted(start for start in starts if start < line_count)


def _first_line(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> int:
    # Decorators belong to the definition they decorate; ast lines are 1-based.
    lines = [node.lineno] + [decorator.lineno for decorator in node.decorator_list]
    return min(lines) - 1


def _length(node: ast.ClassDef) -> int:
    return (node.end_lineno or node.lineno) - node.lineno + 1


def _paragraph_boundaries(lines: list[str]) -> list[int]:
    starts = [0]
    for number in range(1, len(lines)):
        if lines[number].strip() and not lines[number - 1].strip():
            starts.append(number)
    return starts


def _pack(lines: list[str], starts: list[int]) -> list[ChunkDraft]:
    """Merge pieces [start, next start) into chunks, splitting pieces that are too long."""
    pieces = [(start, end) for start, end in zip(starts, [*starts[1:], len(lines)], strict=True)]
    chunks: list[ChunkDraft] = []
    current: tuple[int, int] | None = None
    for start, end in _split_long(pieces, lines):
        if current is not None and _fits(lines, current[0], end):
            current = (current[0], end)
            continue
        if current is not None:
            _append(chunks, lines, *current)
        current = (start, end)
    if current is not None:
        _append(chunks, lines, *current)
    return chunks


def _split_long(pieces: list[tuple[int, int]], lines: list[str]) -> list[tuple[int, int]]:
    result: list[tuple[int, int]] = []
    for start, end in pieces:
        window_start = start
        while window_start < end:
            window_end = window_start + 1
            while window_end < end and _fits(lines, window_start, window_end + 1):
                window_end += 1
            result.append((window_start, window_end))
            window_start = window_end
    return result


def _fits(lines: list[str], start: int, end: int) -> bool:
    if end - start > MAX_CHUNK_LINES:
        return False
    return sum(len(line) + 1 for line in lines[start:end]) <= MAX_CHUNK_CHARS


def _append(chunks: list[ChunkDraft], lines: list[str], start: int, end: int) -> None:
    text = "\n".join(lines[start:end])
    if text.strip():
        chunks.append(ChunkDraft(start + 1, end, text))
