"""A fake embedding and rerank server on loopback that tests can script.

``POST /v1/embeddings`` returns bag-of-words vectors: each lowercase word of an input
adds 1 to one of ``dimension`` slots (chosen by a stable hash), so texts that share
words get similar vectors. ``POST /v1/rerank`` scores each document by the share of
query words it contains. ``failures`` is a queue of scripted answers that come before
the normal ones: ``(status, headers)`` or ``("sleep", seconds)``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import LoopbackServer

_WORD = re.compile(r"[a-z0-9]+")


def bag_of_words(text: str, dimension: int) -> list[float]:
    vector = [0.0] * dimension
    for word in _WORD.findall(text.lower()):
        slot = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "big") % dimension
        vector[slot] += 1.0
    if not any(vector):
        vector[0] = 1.0
    return vector


class FakeEmbeddingServer(LoopbackServer):
    def __init__(self, dimension: int = 64) -> None:
        self.dimension = dimension
        #: Inputs embedded successfully, in order, across all requests.
        self.inputs: list[str] = []
        #: Every embeddings request's model name, including failed ones.
        self.requests: list[str] = []
        self.rerank_queries: list[str] = []
        self.failures: deque[tuple[Any, Any]] = deque()
        self.rerank_status = 200
        self._lock = threading.Lock()
        super().__init__(self._handler())

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    def embeddings(self, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self._lock:
            self.requests.append(str(body.get("model")))
            failure = self.failures.popleft() if self.failures else None
        if failure is not None and failure[0] == "sleep":
            time.sleep(float(failure[1]))
        elif failure is not None:
            return int(failure[0]), dict(failure[1]), {"error": {"message": "scripted"}}
        texts = body["input"]
        with self._lock:
            self.inputs.extend(texts)
        data = [
            {"object": "embedding", "index": i, "embedding": bag_of_words(t, self.dimension)}
            for i, t in enumerate(texts)
        ]
        return 200, {}, {"object": "list", "data": data, "model": body.get("model")}

    def rerank(self, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        self.rerank_queries.append(str(body["query"]))
        if self.rerank_status != 200:
            return self.rerank_status, {}, {"error": "scripted"}
        words = set(_WORD.findall(str(body["query"]).lower()))
        results = []
        for index, document in enumerate(body["documents"]):
            found = set(_WORD.findall(document.lower()))
            results.append({"index": index, "relevance_score": len(words & found) / len(words)})
        results.sort(key=lambda item: -item["relevance_score"])
        return 200, {}, {"results": results[: int(body.get("top_n", len(results)))]}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.endswith("/embeddings"):
                    status, headers, payload = server.embeddings(body)
                elif self.path.endswith("/rerank"):
                    status, headers, payload = server.rerank(body)
                else:
                    status, headers, payload = 404, {}, {"error": "not found"}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler
