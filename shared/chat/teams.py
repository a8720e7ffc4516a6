"""Microsoft Teams: validate Bot Framework tokens, read activities, reply via Connector.

Tokens are RS256 JWTs signed with keys published through OpenID metadata: the Bot
Framework's for multi-tenant bots (issuer https://api.botframework.com), and Entra ID's
for a single-tenant bot (issuer sts.windows.net or login.microsoftonline.com for that
tenant). Keys are cached; an unknown key id refreshes them at most once a minute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import jwt

from shared.chat.errors import PlatformError, SignatureInvalid
from shared.chat.http import call_json
from shared.chat.models import Platform
from shared.chat.service import InboundMessage
from shared.settings import Settings

BOT_FRAMEWORK_ISSUER = "https://api.botframework.com"
CONNECTOR_SCOPE = "https://api.botframework.com/.default"
# Teams refuses messages over about 28 KB; this leaves room for the envelope.
MAX_CHARS = 20_000
#: Clock skew the Bot Framework allows on exp and nbf.
LEEWAY_S = 300
KEY_REFRESH_S = 60.0


class OpenIdKeys:
    """Signing keys from one OpenID metadata document, cached by key id."""

    def __init__(
        self,
        metadata_url: str,
        http: httpx.Client,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_refresh_s: float = KEY_REFRESH_S,
    ) -> None:
        self._metadata_url = metadata_url
        self._http = http
        self._clock = clock
        self._min_refresh_s = min_refresh_s
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def key(self, kid: str) -> Any:
        """Return the public key for ``kid``; raise SignatureInvalid for an unknown one."""
        with self._lock:
            if kid not in self._keys and self._may_refresh():
                self._refresh()
            if kid in self._keys:
                return self._keys[kid]
        raise SignatureInvalid(f"the token's signing key id {kid!r} is not published")

    def _may_refresh(self) -> bool:
        if self._fetched_at is None:
            return True
        return self._clock() - self._fetched_at >= self._min_refresh_s

    def _refresh(self) -> None:
        # Counted from the attempt, so a failing endpoint is not called on every request.
        self._fetched_at = self._clock()
        try:
            metadata = self._http.get(self._metadata_url).raise_for_status().json()
            jwks = self._http.get(metadata["jwks_uri"]).raise_for_status().json()
        except (httpx.HTTPError, ValueError, KeyError) as error:
            raise SignatureInvalid(f"could not fetch the signing keys: {error}") from error
        keys: dict[str, Any] = {}
        for entry in jwks.get("keys", []):
            if entry.get("kty") != "RSA" or "kid" not in entry:
                continue
            keys[entry["kid"]] = jwt.PyJWK(entry, algorithm="RS256").key
        self._keys = keys


class TeamsTokenVerifier:
    """Check the Authorization header of an activity sent to the bot."""

    def __init__(
        self,
        app_id: str,
        bot_framework_keys: OpenIdKeys,
        *,
        tenant_id: str | None = None,
        entra_keys: OpenIdKeys | None = None,
    ) -> None:
        self._app_id = app_id
        self._issuers: dict[str, OpenIdKeys] = {BOT_FRAMEWORK_ISSUER: bot_framework_keys}
        if tenant_id and entra_keys is not None:
            self._issuers[f"https://sts.windows.net/{tenant_id}/"] = entra_keys
            self._issuers[f"https://login.microsoftonline.com/{tenant_id}/v2.0"] = entra_keys

    @classmethod
    def from_settings(
        cls, settings: Settings, http: httpx.Client | None = None
    ) -> TeamsTokenVerifier:
        client = http or httpx.Client(timeout=10)
        tenant = settings.teams_tenant_id
        entra = None
        if tenant:
            url = settings.teams_entra_openid_url.replace("{tenant}", tenant)
            entra = OpenIdKeys(url, client)
        return cls(
            settings.teams_app_id or "",
            OpenIdKeys(settings.teams_openid_url, client),
            tenant_id=tenant,
            entra_keys=entra,
        )

    def verify(self, authorization: str | None, service_url: Any) -> dict[str, Any]:
        """Return the token's claims; raise SignatureInvalid for any failed check."""
        token = _bearer(authorization)
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as error:
            raise SignatureInvalid(f"malformed token: {error}") from None
        if header.get("alg") != "RS256":
            raise SignatureInvalid(f"token algorithm {header.get('alg')!r} is not RS256")
        issuer = unverified.get("iss")
        keys = self._issuers.get(issuer) if isinstance(issuer, str) else None
        if keys is None:
            raise SignatureInvalid(f"token issuer {issuer!r} is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise SignatureInvalid("the token has no key id")

        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                keys.key(kid),
                algorithms=["RS256"],
                audience=self._app_id,
                issuer=issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as error:
            raise SignatureInvalid(f"token rejected: {error}") from None
        _check_service_url(claims, service_url, bot_framework=issuer == BOT_FRAMEWORK_ISSUER)
        return claims


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise SignatureInvalid("missing Authorization header")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise SignatureInvalid("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def _check_service_url(claims: dict[str, Any], service_url: Any, *, bot_framework: bool) -> None:
    claimed = claims.get("serviceurl", claims.get("serviceUrl"))
    if claimed is None and not bot_framework:
        return
    if not isinstance(service_url, str) or not isinstance(claimed, str):
        raise SignatureInvalid("the token or the activity has no serviceUrl")
    if claimed.rstrip("/") != service_url.rstrip("/"):
        raise SignatureInvalid("the activity's serviceUrl does not match the token's")


def parse_activity(activity: dict[str, Any]) -> InboundMessage | None:
    """Return the message of a ``message`` activity, or None for other activities."""
    if activity.get("type") != "message":
        return None
    text = _strip_mentions(str(activity.get("text") or ""))
    conversation = activity.get("conversation") or {}
    conversation_id = conversation.get("id")
    if not text or not isinstance(conversation_id, str) or "id" not in activity:
        return None
    tenant = ((activity.get("channelData") or {}).get("tenant") or {}).get("id")
    tenant = tenant or conversation.get("tenantId") or ""
    # A reply thread in a Teams channel is the channel's id plus ";messageid=<root>".
    chat_id, _, thread = conversation_id.partition(";messageid=")
    service_url = str(activity.get("serviceUrl") or "")

    target = {
        "service_url": service_url,
        "conversation_id": conversation_id,
        "activity_id": activity["id"],
        "bot": activity.get("recipient") or {},
        "user": activity.get("from") or {},
    }
    reference = {
        "service_url": service_url,
        "channel_id": activity.get("channelId"),
        "conversation": conversation,
        "bot": activity.get("recipient") or {},
        "user": activity.get("from") or {},
        "tenant_id": tenant,
    }
    return InboundMessage(
        platform=Platform.teams.value,
        delivery_id=f"{conversation_id}|{activity['id']}"[:200],
        tenant=str(tenant)[:100],
        chat_id=chat_id[:200],
        thread_id=thread[:200],
        text=text,
        target=target,
        reference=reference,
    )


def _strip_mentions(text: str) -> str:
    while "<at>" in text and "</at>" in text:
        start = text.index("<at>")
        end = text.index("</at>", start) + len("</at>")
        text = text[:start] + text[end:]
    return text.strip()


class TeamsClient:
    """Reply through the Bot Connector API with a client-credentials token."""

    max_chars = MAX_CHARS

    def __init__(
        self,
        app_id: str,
        app_password: str,
        token_url: str,
        http: httpx.Client,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._app_id = app_id
        self._app_password = app_password
        self._token_url = token_url
        self._http = http
        self._clock = clock
        self._token: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def start(self, target: dict[str, Any], placeholder_text: str) -> dict[str, Any]:
        base = self._activities(target)
        self._post(base, {"type": "typing", "from": target.get("bot")})
        body = {
            "type": "message",
            "text": placeholder_text,
            "replyToId": target["activity_id"],
            "from": target.get("bot"),
            "recipient": target.get("user"),
        }
        sent = self._post(f"{base}/{quote(str(target['activity_id']), safe='')}", body)
        if "id" not in sent:
            raise PlatformError("the Bot Connector did not return the placeholder's id")
        return {"activity_id": sent["id"]}

    def edit(self, target: dict[str, Any], placeholder: dict[str, Any], text: str) -> None:
        activity_id = str(placeholder["activity_id"])
        url = f"{self._activities(target)}/{quote(activity_id, safe='')}"
        body = {"type": "message", "id": activity_id, "text": text, "from": target.get("bot")}
        call_json(self._http, "PUT", url, json=body, headers=self._auth())

    def send(self, target: dict[str, Any], text: str) -> None:
        body = {"type": "message", "text": text, "from": target.get("bot")}
        self._post(self._activities(target), body)

    def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        return call_json(self._http, "POST", url, json=body, headers=self._auth())

    def _activities(self, target: dict[str, Any]) -> str:
        conversation = quote(str(target["conversation_id"]), safe="")
        return (
            f"{str(target['service_url']).rstrip('/')}/v3/conversations/{conversation}/activities"
        )

    def _auth(self) -> dict[str, str]:
        with self._lock:
            if self._token is None or self._token[1] <= self._clock():
                self._token = self._fetch_token()
            return {"Authorization": f"Bearer {self._token[0]}"}

    def _fetch_token(self) -> tuple[str, float]:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._app_id,
            "client_secret": self._app_password,
            "scope": CONNECTOR_SCOPE,
        }
        answer = call_json(self._http, "POST", self._token_url, data=form)
        token = answer.get("access_token")
        if not isinstance(token, str):
            raise PlatformError("the token endpoint returned no access_token")
        # Renew a minute early, so a token never expires between check and use.
        lifetime_s = float(answer.get("expires_in", 3600))
        return token, self._clock() + max(lifetime_s - 60, 0)
