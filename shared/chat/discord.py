"""Discord: interaction signatures, the /ask command, and replies through webhooks."""

from __future__ import annotations

import time
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.chat.errors import ChatError, SignatureInvalid
from shared.chat.http import call_json
from shared.chat.models import Platform
from shared.chat.service import InboundMessage

SIGNATURE_HEADER = "X-Signature-Ed25519"
TIMESTAMP_HEADER = "X-Signature-Timestamp"
MAX_CHARS = 2000

PING = 1
APPLICATION_COMMAND = 2
PONG = 1
CHANNEL_MESSAGE = 4
DEFERRED_CHANNEL_MESSAGE = 5
EPHEMERAL_FLAG = 1 << 6

#: The slash command that foxctl registers and replies to.
ASK_COMMAND = {
    "name": "ask",
    "description": "Ask the agent of this channel",
    "type": 1,
    "options": [
        {"type": 3, "name": "prompt", "description": "What to ask", "required": True},
    ],
}


def verify_signature(
    public_key_hex: str,
    signature_hex: str | None,
    timestamp: str | None,
    body: bytes,
    *,
    max_skew_s: int,
    now: float | None = None,
) -> None:
    """Check the Ed25519 signature over ``timestamp + body`` and the timestamp's age.

    The body is verified as received, byte for byte, before any JSON parsing.
    """
    if not signature_hex or not timestamp:
        raise SignatureInvalid(f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header")
    try:
        signed_at = int(timestamp)
    except ValueError:
        raise SignatureInvalid(f"{TIMESTAMP_HEADER} is not a Unix time") from None
    current = time.time() if now is None else now
    if abs(current - signed_at) > max_skew_s:
        raise SignatureInvalid(
            f"{TIMESTAMP_HEADER} is more than {max_skew_s} s away from the server's clock"
        )
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
        key.verify(bytes.fromhex(signature_hex), timestamp.encode() + body)
    except (ValueError, InvalidSignature):
        raise SignatureInvalid("the Discord signature does not match the body") from None


def parse_interaction(interaction: dict[str, Any]) -> InboundMessage | None:
    """Return the prompt of an ``/ask`` command, or None for anything else."""
    if interaction.get("type") != APPLICATION_COMMAND:
        return None
    data = interaction.get("data") or {}
    if data.get("name") != "ask":
        return None
    options = {o.get("name"): o.get("value") for o in data.get("options") or []}
    prompt = options.get("prompt")
    channel_id = interaction.get("channel_id") or (interaction.get("channel") or {}).get("id")
    if not isinstance(prompt, str) or not prompt.strip() or channel_id is None:
        return None
    return InboundMessage(
        platform=Platform.discord.value,
        delivery_id=str(interaction["id"]),
        tenant=str(interaction.get("guild_id") or ""),
        chat_id=str(channel_id),
        text=prompt.strip(),
        target={
            "application_id": str(interaction.get("application_id")),
            "token": interaction.get("token"),
        },
        reference={"guild_id": interaction.get("guild_id"), "channel_id": channel_id},
    )


def ephemeral(text: str) -> dict[str, Any]:
    return {"type": CHANNEL_MESSAGE, "data": {"content": text, "flags": EPHEMERAL_FLAG}}


class DiscordClient:
    """Edit the deferred response of an interaction and send follow-up messages.

    Interaction webhooks need no bot token: the interaction token (valid 15 minutes)
    authorises them.
    """

    max_chars = MAX_CHARS

    def __init__(self, api_base: str, http: httpx.Client, bot_token: str | None = None) -> None:
        self._base = api_base.rstrip("/")
        self._http = http
        self._bot_token = bot_token

    def start(self, target: dict[str, Any], placeholder_text: str) -> dict[str, Any]:
        # The web process already answered with a deferred response, which Discord
        # shows as "thinking…"; that is the placeholder.
        return {"message": "@original"}

    def edit(self, target: dict[str, Any], placeholder: dict[str, Any], text: str) -> None:
        url = f"{self._webhook(target)}/messages/@original"
        call_json(self._http, "PATCH", url, json={"content": text})

    def send(self, target: dict[str, Any], text: str) -> None:
        call_json(self._http, "POST", self._webhook(target), json={"content": text})

    def register_commands(self, application_id: str) -> dict[str, Any]:
        """Replace the application's global commands with ``/ask``."""
        if not self._bot_token:
            raise ChatError("FOXCTL_DISCORD_BOT_TOKEN is not set; registering commands needs it")
        url = f"{self._base}/applications/{application_id}/commands"
        headers = {"Authorization": f"Bot {self._bot_token}"}
        return call_json(self._http, "PUT", url, json=[ASK_COMMAND], headers=headers)

    def _webhook(self, target: dict[str, Any]) -> str:
        return f"{self._base}/webhooks/{target['application_id']}/{target['token']}"
