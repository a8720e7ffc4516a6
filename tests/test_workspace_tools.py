"""Workspace tools: what they return, and that nothing outside the root is touched."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from workers.llm.base import ToolCall
from workers.tools import ToolRegistry, allowed_tools
from workers.tools.workspace import MAX_READ_BYTES, Workspace, workspace_tools

SECRET = "outside-secret-7f3a"
ALL = frozenset({"fs_list_dir", "fs_read_file", "code_grep", "fs_write_file"})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    workspace = tmp_path / "repo"
    (workspace / "pkg").mkdir(parents=True)
    (workspace / "pkg" / "retry.py").write_text(
        "def backoff(attempt):\n    return 2 ** attempt\n\n\nclass Retry:\n    pass\n"
    )
    (workspace / "README.md").write_text("# Demo\nA small repository.\n")
    (tmp_path / "secret.txt").write_text(SECRET)
    return workspace


@pytest.fixture
def registry(root: Path) -> ToolRegistry:
    return ToolRegistry(workspace_tools(root))


def call(registry: ToolRegistry, name: str, allowed: frozenset[str] = ALL, **arguments: object):
    return registry.run(allowed, ToolCall("call_1", name, json.dumps(arguments)))


def test_read_file_returns_numbered_lines(registry: ToolRegistry) -> None:
    result = call(registry, "fs_read_file", path="pkg/retry.py", start_line=1, end_line=2)

    assert result.ok
    assert result.output == "1: def backoff(attempt):\n2:     return 2 ** attempt\n"


def test_list_dir_shows_kinds_and_sizes(registry: ToolRegistry) -> None:
    result = call(registry, "fs_list_dir", path=".")

    assert result.output.splitlines() == ["README.md (27 bytes)", "pkg/"]


def test_grep_finds_identifier_with_line(registry: ToolRegistry) -> None:
    result = call(registry, "code_grep", pattern=r"class \w+")

    assert result.output == "pkg/retry.py:5: class Retry:"


def test_grep_results_are_bounded(root: Path, registry: ToolRegistry) -> None:
    (root / "many.txt").write_text("hit\n" * 500)

    result = call(registry, "code_grep", pattern="hit", max_results=10)

    assert len(result.output.splitlines()) == 11
    assert result.output.endswith("[more matches not shown; limit 10]")


def test_write_creates_file_inside_root(root: Path, registry: ToolRegistry) -> None:
    result = call(registry, "fs_write_file", path="notes/todo.md", content="- ship\n")

    assert result.ok
    assert (root / "notes" / "todo.md").read_text() == "- ship\n"


# -- escapes: refused with a tool error, and nothing outside is read or written ----------


@pytest.mark.parametrize("tool", ["fs_read_file", "fs_list_dir", "code_grep", "fs_write_file"])
@pytest.mark.parametrize("path", ["/etc/passwd", "../secret.txt", "pkg/../../secret.txt", "~"])
def test_escaping_path_is_refused(
    registry: ToolRegistry, tmp_path: Path, tool: str, path: str
) -> None:
    arguments: dict[str, object] = {"path": path}
    if tool == "code_grep":
        arguments["pattern"] = "."
    if tool == "fs_write_file":
        arguments["content"] = "overwritten"

    result = call(registry, tool, **arguments)

    assert not result.ok
    assert "workspace" in result.output
    assert SECRET not in result.output
    assert (tmp_path / "secret.txt").read_text() == SECRET


def test_symlink_to_outside_file_is_refused(
    root: Path, tmp_path: Path, registry: ToolRegistry
) -> None:
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")

    read = call(registry, "fs_read_file", path="link.txt")
    write = call(registry, "fs_write_file", path="link.txt", content="x")
    grep = call(registry, "code_grep", pattern="secret")

    assert not read.ok
    assert "leaves the workspace" in read.output
    assert not write.ok
    assert SECRET not in grep.output
    assert (tmp_path / "secret.txt").read_text() == SECRET


def test_symlinked_directory_to_outside_is_refused(
    root: Path, tmp_path: Path, registry: ToolRegistry
) -> None:
    (root / "escape").symlink_to(tmp_path)

    listed = call(registry, "fs_list_dir", path="escape")
    written = call(registry, "fs_write_file", path="escape/new.txt", content="x")
    grep = call(registry, "code_grep", pattern=SECRET)

    assert not listed.ok
    assert not written.ok
    assert not (tmp_path / "new.txt").exists()
    assert grep.output == "no matches"


def test_file_removed_mid_read_is_a_tool_error(root: Path) -> None:
    class VanishingWorkspace(Workspace):
        def resolve(self, path: str) -> Path:
            resolved = super().resolve(path)
            resolved.unlink()
            return resolved

    tools = workspace_tools(root)
    tools[1]._workspace = VanishingWorkspace(root)
    registry = ToolRegistry(tools)

    result = call(registry, "fs_read_file", path="README.md")

    assert not result.ok
    assert "does not exist (it may have been removed)" in result.output


def test_fifty_megabyte_file_is_read_in_bounded_pieces(root: Path, registry: ToolRegistry) -> None:
    line = "x" * 99 + "\n"
    with (root / "big.log").open("w") as handle:
        for _ in range(500_000):
            handle.write(line)
    assert (root / "big.log").stat().st_size == 50_000_000

    head = call(registry, "fs_read_file", path="big.log", start_line=1, end_line=3)
    whole = call(registry, "fs_read_file", path="big.log")
    tail = call(registry, "fs_read_file", path="big.log", start_line=499_999)

    assert head.output.count("\n") == 3
    assert len(whole.output.encode()) < MAX_READ_BYTES + 200
    assert "[output truncated at line" in whole.output
    assert tail.output.startswith("499999: ")


def test_binary_file_is_refused(root: Path, registry: ToolRegistry) -> None:
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")

    result = call(registry, "fs_read_file", path="image.png")

    assert not result.ok
    assert "binary file" in result.output


def test_grep_skips_binary_files(root: Path, registry: ToolRegistry) -> None:
    (root / "blob.bin").write_bytes(b"Retry\0\0\0")

    result = call(registry, "code_grep", pattern="Retry")

    assert "blob.bin" not in result.output


def test_long_listing_is_cut_with_marker(root: Path, registry: ToolRegistry) -> None:
    for index in range(3000):
        (root / f"f{index:04}.txt").write_text("")

    result = call(registry, "fs_list_dir", path=".")

    assert result.output.endswith("[2502 more entries not shown]")


def test_bad_arguments_are_tool_errors(registry: ToolRegistry) -> None:
    bad_json = registry.run(ALL, ToolCall("c", "fs_read_file", "{not json"))
    bad_range = call(registry, "fs_read_file", path="README.md", start_line=0)
    bad_regex = call(registry, "code_grep", pattern="(")

    assert "not valid JSON" in bad_json.output
    assert "start_line must be a positive integer" in bad_range.output
    assert "invalid regular expression" in bad_regex.output


# -- profiles ------------------------------------------------------------------------------


def test_tool_outside_profile_is_refused(registry: ToolRegistry, root: Path) -> None:
    allowed = allowed_tools("reviewer", "default", None)

    result = call(registry, "fs_write_file", allowed, path="x.txt", content="x")

    assert not result.ok
    assert "'fs_write_file' is not available" in result.output
    assert not (root / "x.txt").exists()


@pytest.mark.parametrize(
    ("role", "profile", "allowlist", "expected"),
    [
        ("coder", "default", None, ALL | {"semantic_search"}),
        ("reviewer", "default", None, ALL - {"fs_write_file"} | {"semantic_search"}),
        ("coder", "read-only", None, ALL - {"fs_write_file"} | {"semantic_search"}),
        ("coder", "none", None, frozenset()),
        ("researcher", "default", ["fs_write_file", "code_grep"], frozenset({"code_grep"})),
        ("coder", "none", ["fs_read_file"], frozenset({"fs_read_file"})),
    ],
)
def test_allowed_tools_by_role_and_profile(
    role: str, profile: str, allowlist: list[str] | None, expected: frozenset[str]
) -> None:
    assert allowed_tools(role, profile, allowlist) == expected


def test_relative_root_is_resolved(tmp_path: Path) -> None:
    os.chdir(tmp_path)

    assert Workspace(Path(".")).root == tmp_path.resolve()
