"""Workspace tools: list, read, search and write files under one root directory.

Every path is resolved (symlinks included) and must stay inside the root, so absolute
paths, ``..`` and symlinks that point outside are refused with a tool error the model
can read.
"""

from __future__ import annotations

import itertools
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workers.tools import ToolError

#: Bytes read to decide whether a file is binary (a NUL byte means binary).
SNIFF_BYTES = 8192
MAX_LIST_ENTRIES = 500
MAX_GREP_RESULTS = 200
#: code_grep skips files larger than this.
MAX_GREP_FILE_BYTES = 2 * 1024 * 1024
MAX_WRITE_BYTES = 1024 * 1024
#: Most fs_read_file returns at once. Output over 64 KiB reaches the model truncated,
#: and whole in the artifact store.
MAX_READ_BYTES = 4 * 1024 * 1024
SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv"})


class Workspace:
    """A directory tree that tools may touch, and nothing outside it."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def resolve(self, path: str) -> Path:
        """Return the real path of ``path`` inside the root; raise ToolError otherwise."""
        if not isinstance(path, str) or not path.strip():
            raise ToolError("path must be a non-empty string relative to the workspace root")
        if os.path.isabs(path) or path.startswith("~"):
            raise ToolError(
                f"absolute path {path!r} is not allowed; use a path relative to the workspace root"
            )
        resolved = (self.root / path).resolve()
        if not resolved.is_relative_to(self.root):
            raise ToolError(f"path {path!r} leaves the workspace; stay inside the workspace root")
        return resolved

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() or "."


class ListDirTool:
    name = "fs_list_dir"

    def __init__(self, workspace: Workspace) -> None:
        self._workspace = workspace

    def spec(self) -> dict[str, Any]:
        return _spec(
            self.name,
            "List the entries of a workspace directory.",
            {
                "path": {
                    "type": "string",
                    "description": "directory relative to the root",
                    "default": ".",
                },
            },
            required=[],
        )

    def run(self, arguments: dict[str, Any]) -> str:
        directory = self._workspace.resolve(str(arguments.get("path", ".")))
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except NotADirectoryError:
            raise ToolError(f"{arguments.get('path')!r} is a file, not a directory") from None
        except FileNotFoundError:
            raise ToolError(f"directory {arguments.get('path')!r} does not exist") from None
        except PermissionError:
            raise ToolError(f"directory {arguments.get('path')!r} is not readable") from None

        lines = [_describe_entry(entry) for entry in entries[:MAX_LIST_ENTRIES]]
        if len(entries) > MAX_LIST_ENTRIES:
            lines.append(f"[{len(entries) - MAX_LIST_ENTRIES} more entries not shown]")
        return "\n".join(lines) or "(empty directory)"


class ReadFileTool:
    name = "fs_read_file"

    def __init__(self, workspace: Workspace) -> None:
        self._workspace = workspace

    def spec(self) -> dict[str, Any]:
        return _spec(
            self.name,
            "Read lines of a text file in the workspace.",
            {
                "path": {"type": "string", "description": "file relative to the root"},
                "start_line": {"type": "integer", "minimum": 1, "default": 1},
                "end_line": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "last line to read, inclusive (default: to the end)",
                },
            },
            required=["path"],
        )

    def run(self, arguments: dict[str, Any]) -> str:
        path_text = str(arguments.get("path", ""))
        path = self._workspace.resolve(path_text)
        start = _positive_int(arguments.get("start_line", 1), "start_line")
        end = arguments.get("end_line")
        end_line = _positive_int(end, "end_line") if end is not None else None
        if end_line is not None and end_line < start:
            raise ToolError(f"end_line {end_line} is before start_line {start}")

        try:
            return _read_lines(path, start, end_line)
        except FileNotFoundError:
            raise ToolError(
                f"file {path_text!r} does not exist (it may have been removed)"
            ) from None
        except IsADirectoryError:
            raise ToolError(f"{path_text!r} is a directory; use fs_list_dir") from None
        except PermissionError:
            raise ToolError(f"file {path_text!r} is not readable") from None
        except OSError as error:
            raise ToolError(f"reading {path_text!r} failed: {error.strerror}") from None


class GrepTool:
    name = "code_grep"

    def __init__(self, workspace: Workspace) -> None:
        self._workspace = workspace

    def spec(self) -> dict[str, Any]:
        return _spec(
            self.name,
            "Search text files in the workspace with a regular expression.",
            {
                "pattern": {"type": "string", "description": "Python regular expression"},
                "path": {
                    "type": "string",
                    "description": "directory or file to search",
                    "default": ".",
                },
                "max_results": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_GREP_RESULTS,
                    "default": 50,
                },
            },
            required=["pattern"],
        )

    def run(self, arguments: dict[str, Any]) -> str:
        try:
            pattern = re.compile(str(arguments.get("pattern", "")))
        except re.error as error:
            raise ToolError(f"invalid regular expression: {error}") from None
        start = self._workspace.resolve(str(arguments.get("path", ".")))
        limit = min(
            _positive_int(arguments.get("max_results", 50), "max_results"), MAX_GREP_RESULTS
        )

        hits = list(itertools.islice(self._matches(start, pattern), limit + 1))
        lines = [f"{path}:{number}: {text}" for path, number, text in hits[:limit]]
        if len(hits) > limit:
            lines.append(f"[more matches not shown; limit {limit}]")
        return "\n".join(lines) or "no matches"

    def _matches(self, start: Path, pattern: re.Pattern[str]) -> Iterator[tuple[str, int, str]]:
        for path in _walk_files(start, self._workspace.root):
            try:
                if path.stat().st_size > MAX_GREP_FILE_BYTES or _is_binary(path):
                    continue
                with path.open(encoding="utf-8", errors="replace") as handle:
                    for number, line in enumerate(handle, start=1):
                        if pattern.search(line):
                            yield self._workspace.relative(path), number, line.rstrip()[:300]
            except OSError:
                continue  # removed or unreadable since the walk listed it


class WriteFileTool:
    name = "fs_write_file"

    def __init__(self, workspace: Workspace) -> None:
        self._workspace = workspace

    def spec(self) -> dict[str, Any]:
        return _spec(
            self.name,
            "Create or replace a text file in the workspace.",
            {
                "path": {"type": "string", "description": "file relative to the root"},
                "content": {"type": "string"},
            },
            required=["path", "content"],
        )

    def run(self, arguments: dict[str, Any]) -> str:
        path_text = str(arguments.get("path", ""))
        content = arguments.get("content")
        if not isinstance(content, str):
            raise ToolError("content must be a string")
        data = content.encode()
        if len(data) > MAX_WRITE_BYTES:
            raise ToolError(f"content is {len(data)} bytes; the limit is {MAX_WRITE_BYTES}")
        path = self._workspace.resolve(path_text)
        if path.is_dir():
            raise ToolError(f"{path_text!r} is a directory")

        path.parent.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a symlink put in place after resolve() is refused, not followed.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        try:
            descriptor = os.open(path, flags, 0o644)
        except OSError as error:
            raise ToolError(f"writing {path_text!r} failed: {error.strerror}") from None
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        return f"wrote {len(data)} bytes to {self._workspace.relative(path)}"


def workspace_tools(root: Path) -> list[Any]:
    workspace = Workspace(root)
    return [
        ListDirTool(workspace),
        ReadFileTool(workspace),
        GrepTool(workspace),
        WriteFileTool(workspace),
    ]


def _read_lines(path: Path, start: int, end: int | None) -> str:
    if _is_binary(path):
        raise ToolError(f"{path.name} is a binary file; only text files can be read")
    lines: list[str] = []
    size = 0
    last = start - 1
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if number < start:
                continue
            if end is not None and number > end:
                break
            entry = f"{number}: {line}"
            size += len(entry.encode())
            if size > MAX_READ_BYTES:
                lines.append(
                    f"[output truncated at line {number}; read from there with "
                    f"start_line={number}]\n"
                )
                break
            lines.append(entry)
            last = number
    if not lines:
        return f"(no lines from {start}; the file has {last} lines)"
    return "".join(lines)


def _is_binary(path: Path) -> bool:
    with path.open("rb") as handle:
        return b"\0" in handle.read(SNIFF_BYTES)


def _walk_files(start: Path, root: Path) -> Iterator[Path]:
    if start.is_file():
        yield start
        return
    for directory, subdirs, files in os.walk(start):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            path = Path(directory, name)
            # os.walk does not follow directory symlinks; file symlinks are checked here.
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                continue
            yield path


def _describe_entry(entry: os.DirEntry[str]) -> str:
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return f"{entry.name} (unreadable)"
    if entry.is_symlink():
        return f"{entry.name}@"
    if stat.S_ISDIR(info.st_mode):
        return f"{entry.name}/"
    return f"{entry.name} ({info.st_size} bytes)"


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ToolError(f"{name} must be a positive integer, got {value!r}")
    return value


def _spec(
    name: str, description: str, properties: dict[str, Any], *, required: list[str]
) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        },
    }
