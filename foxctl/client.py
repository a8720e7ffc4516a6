"""A small HTTP client for the foxctl API, used by ``foxctl send``."""

from __future__ import annotations

import time
from typing import Any

import httpx

from shared.errors import FoxctlError
from shared.settings import Settings

FINAL = ("succeeded", "failed", "cancelled")


class ApiError(FoxctlError):
    code = "api_error"


class ApiClient:
    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout_s: float = 10.0,
        search_timeout_s: float = 30.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)
        self._search_timeout_s = search_timeout_s

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiClient:
        url = settings.api_url or f"http://127.0.0.1:{settings.port}"
        token = settings.api_token.get_secret_value() if settings.api_token else None
        # The server waits up to FOXCTL_SEARCH_TIMEOUT_S for a worker and then still
        # returns full-text results, so wait longer than that.
        return cls(url, token, search_timeout_s=settings.search_timeout_s + 20)

    def post_message(self, session_id: str, text: str) -> dict[str, Any]:
        return self._call("POST", f"/api/sessions/{session_id}/messages", json={"content": text})

    def get_turn(self, turn_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/turns/{turn_id}")

    def wait_for_turn(self, turn_id: str, *, timeout_s: float) -> dict[str, Any]:
        """Poll the turn until it ends; raise ApiError after ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        delay_s = 0.05
        while True:
            turn = self.get_turn(turn_id)
            if turn["status"] in FINAL:
                return turn
            if time.monotonic() > deadline:
                raise ApiError(f"turn {turn_id} still {turn['status']} after {timeout_s} s")
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 1.0)

    def start_index(self, *, full: bool) -> dict[str, Any]:
        return self._call("POST", "/api/index", json={"full": full})

    def index_status(self) -> dict[str, Any]:
        return self._call("GET", "/api/index")

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        page = self._call("GET", "/api/jobs", params={"name": "index_workspace", "limit": 50})
        return next((run for run in page["items"] if run["id"] == job_id), None)

    def search(self, query: str, **params: Any) -> dict[str, Any]:
        given = {key: value for key, value in params.items() if value is not None}
        params = {"q": query, **given}
        return self._call("GET", "/api/search", params=params, timeout=self._search_timeout_s)

    def reply_text(self, session_id: str, turn: dict[str, Any]) -> str:
        cursor: str | None = None
        while True:
            params = {"limit": 500, **({"cursor": cursor} if cursor else {})}
            page = self._call("GET", f"/api/sessions/{session_id}/messages", params=params)
            for message in page["items"]:
                if message["id"] == turn["reply_message_id"]:
                    return str(message["content"])
            cursor = page["next_cursor"]
            if cursor is None:
                raise ApiError(f"reply {turn['reply_message_id']} not found in the session")

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                # One line: an HTML error page from a proxy spans many.
                message = " ".join(response.text.split())[:200]
            hint = ""
            if response.status_code == 401:
                hint = " (set FOXCTL_API_TOKEN to a token from `foxctl tokens create --name NAME`)"
            raise ApiError(
                f"{method} {path} failed with HTTP {response.status_code}: {message}{hint}"
            )
        body: dict[str, Any] = response.json()
        return body
