"""Lint, type checks and schema drift run with the tests, so CI enforces them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command

from shared.db import Database
from shared.migrate import alembic_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "args",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_is_clean(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_migrations_match_models(database: Database) -> None:
    command.check(alembic_config(database.engine))


def test_web_never_imports_worker_or_scheduler_code() -> None:
    code = (
        "import sys, web.app, web.asgi; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('workers', 'apscheduler')))"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


def test_web_builds_no_embedder_or_reranker() -> None:
    """Query embedding and reranking run on the search queue's worker (invariant 5)."""
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "web").rglob("*.py"))
        for name in ("make_embedder", "make_reranker", "LocalEmbedder", "OpenAICompatEmbedder")
        if name in path.read_text()
    ]

    assert offenders == []
