"""The ``semantic_search`` tool: the workspace index, searched by meaning and by words."""

from __future__ import annotations

from typing import Any

from shared.errors import InvalidInputError
from shared.retrieval.search import SearchOptions, SearchService
from workers.tools import ToolError

MAX_TOOL_RESULTS = 20


class SemanticSearchTool:
    name = "semantic_search"

    def __init__(self, search: SearchService) -> None:
        self._search = search

    def spec(self) -> dict[str, Any]:
        properties = {
            "query": {"type": "string", "description": "what to look for, in words or code"},
            "limit": {"type": "integer", "description": "results, 1 to 20", "default": 5},
            "path_prefix": {"type": "string", "description": "only paths starting with this"},
        }
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": (
                    "Search the indexed workspace by meaning and by exact words; returns "
                    "file paths, line ranges and the matching text."
                ),
                "parameters": {
                    "type": "object",
                    "properties": properties,
                    "required": ["query"],
                    "additionalProperties": False,
                },
            },
        }

    def run(self, arguments: dict[str, Any]) -> str:
        limit = arguments.get("limit", 5)
        if not isinstance(limit, int) or not 1 <= limit <= MAX_TOOL_RESULTS:
            raise ToolError(f"limit={limit!r} is invalid; use an integer from 1 to 20")
        options = SearchOptions(limit=limit, path_prefix=arguments.get("path_prefix") or None)
        try:
            results = self._search.search(str(arguments.get("query", "")), options)
        except InvalidInputError as error:
            raise ToolError(error.message) from error
        if not results.items:
            return "no results; the index may be empty (run `foxctl index`) or nothing matched"
        blocks = [
            f"{hit.path}:{hit.start_line}-{hit.end_line} (score {hit.score:.3f})\n{hit.snippet}"
            for hit in results.items
        ]
        return "\n\n".join(blocks)
