"""List the workspace files to index: text files under a size limit, .gitignore applied."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pathspec

#: Directories never indexed, whatever .gitignore says.
SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv"})
#: Bytes read to decide whether a file is binary (a NUL byte means binary).
SNIFF_BYTES = 8192


@dataclass(frozen=True)
class WorkspaceFile:
    path: str
    text: str
    size_bytes: int


def walk_workspace(root: Path, *, max_file_bytes: int) -> Iterator[WorkspaceFile]:
    """Yield the text files under ``root`` in path order, with POSIX relative paths.

    Applies every .gitignore on the way down (each relative to its own directory), skips
    symlinks, binary files and files over ``max_file_bytes``.
    """
    root = root.resolve()
    ignores: list[tuple[str, pathspec.GitIgnoreSpec]] = []
    for directory, subdirs, names in os.walk(root):
        relative_dir = Path(directory).relative_to(root).as_posix()
        prefix = "" if relative_dir == "." else relative_dir + "/"
        ignores = [(base, spec) for base, spec in ignores if prefix.startswith(base)]
        spec = _read_gitignore(Path(directory))
        if spec is not None:
            ignores.append((prefix, spec))

        subdirs[:] = sorted(
            name
            for name in subdirs
            if name not in SKIPPED_DIRS
            and not _ignored(ignores, prefix + name + "/")
            and not Path(directory, name).is_symlink()
        )
        for name in sorted(names):
            relative = prefix + name
            if _ignored(ignores, relative):
                continue
            found = _read_text(Path(directory, name), relative, max_file_bytes)
            if found is not None:
                yield found


def _read_gitignore(directory: Path) -> pathspec.GitIgnoreSpec | None:
    try:
        lines = (directory / ".gitignore").read_text(errors="replace").splitlines()
    except OSError:
        return None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _ignored(ignores: list[tuple[str, pathspec.GitIgnoreSpec]], relative: str) -> bool:
    return any(spec.match_file(relative[len(base) :]) for base, spec in ignores)


def _read_text(path: Path, relative: str, max_file_bytes: int) -> WorkspaceFile | None:
    try:
        if path.is_symlink() or not path.is_file():
            return None
        size = path.stat().st_size
        if size > max_file_bytes:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:SNIFF_BYTES]:
        return None
    return WorkspaceFile(relative, data.decode("utf-8", errors="replace"), size)
