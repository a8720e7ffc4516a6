"""System prompts by role, and the conversation a turn sends to the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.agents.models import Agent

ROLE_PROMPTS = {
    "overseer": (
        "You are an overseer agent. You keep track of goals and progress, decide what to do "
        "next, and report status plainly."
    ),
    "researcher": (
        "You are a researcher agent. You find facts in the workspace and answer with the "
        "files and lines that support each claim."
    ),
    "coder": (
        "You are a coding agent. You read the code before changing it, make small correct "
        "changes, and say which files you changed."
    ),
    "planner": (
        "You are a planning agent. You break work into small ordered steps with clear outcomes."
    ),
    "reviewer": (
        "You are a code reviewer. You point out bugs, risks and unclear code, citing files "
        "and lines, and you do not change files."
    ),
}

TOOL_HINT = (
    "Tools work on the workspace, a source checkout; paths are relative to its root. "
    "Use them when the answer depends on the code."
)


def system_prompt(agent: Agent, *, has_tools: bool) -> str:
    """Combine the role's prompt with the agent's own prompt."""
    parts = [ROLE_PROMPTS.get(agent.role, "")]
    if has_tools:
        parts.append(TOOL_HINT)
    if agent.system_prompt:
        parts.append(agent.system_prompt)
    return "\n\n".join(part for part in parts if part)


def estimate_tokens(text: str) -> int:
    # An estimate of about four characters per token for English and code. It only
    # needs to keep the prompt under the budget with some margin.
    return len(text) // 4 + 4


def fit_history(history: Sequence[dict[str, Any]], budget_tokens: int) -> list[dict[str, Any]]:
    """Keep the newest messages whose estimated size fits ``budget_tokens``.

    The newest message is always kept, cut to the budget when it alone is larger.
    """
    kept: list[dict[str, Any]] = []
    used = 0
    for message in reversed(history):
        size = estimate_tokens(str(message.get("content") or ""))
        if kept and used + size > budget_tokens:
            break
        if not kept and size > budget_tokens:
            limit = budget_tokens * 4
            message = {**message, "content": str(message["content"])[-limit:]}
            size = budget_tokens
        kept.append(message)
        used += size
    return list(reversed(kept))
