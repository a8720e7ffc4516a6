from __future__ import annotations

from typing import Any

import falcon.asgi


class OpenApiResource:
    def __init__(self, document: dict[str, Any]) -> None:
        self._document = document

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = self._document
