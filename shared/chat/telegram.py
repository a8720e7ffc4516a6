"""Telegram: webhook verification, update parsing, and replies through the Bot API."""

from __future__ import annotations

import hmac
from typing import Any

import httpx

from shared.chat.errors import PlatformError, SignatureInvalid
from shared.chat.http import call_json
from shared.chat.models import Platform
from shared.chat.service import InboundMessage

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 - a header name
MAX_CHARS = 4096


def verify_secret(received: str | None, secret: str | None) -> None:
    """Compare the secret header in constant time; fail closed when none is configured."""
    if not secret:
        raise SignatureInvalid(
            "no Telegram webhook secret is configured (FOXCTL_TELEGRAM_WEBHOOK_SECRET); "
            "every update is refused"
        )
    if received is None:
        raise SignatureInvalid(f"missing {SECRET_HEADER} header")
    if not hmac.compare_digest(received.encode(), secret.encode()):
        raise SignatureInvalid(f"wrong {SECRET_HEADER} header")


def parse_update(
    update: dict[str, Any], *, bot_username: str | None, allowed_groups: frozenset[str]
) -> InboundMessage | None:
    """Parse the message the bot should reply to, or return None to ignore the update.

    Private chats always get a reply. Groups must be allowlisted, and the message must
    mention the bot, reply to it, or be a command. ``/ask text`` sends ``text``. A
    command addressed to another bot is ignored.
    """
    message = update.get("message")
    update_id = update.get("update_id")
    if not isinstance(message, dict) or not isinstance(update_id, int):
        return None
    text = message.get("text")
    chat = message.get("chat") or {}
    if not isinstance(text, str) or not text.strip() or "id" not in chat:
        return None

    chat_id = str(chat["id"])
    private = chat.get("type") == "private"
    if not private and chat_id not in allowed_groups:
        return None
    command = parse_command(text)
    if command is not None and not _for_this_bot(command[0], bot_username):
        return None
    if not private and command is None and not _addressed(message, text, bot_username):
        return None

    prompt = _prompt(text, command, bot_username)
    if not prompt:
        return None
    thread = message.get("message_thread_id")
    target: dict[str, Any] = {"chat_id": chat["id"], "message_id": message.get("message_id")}
    if thread is not None:
        target["message_thread_id"] = thread
    return InboundMessage(
        platform=Platform.telegram.value,
        delivery_id=str(update_id),
        chat_id=chat_id,
        thread_id=str(thread) if thread is not None else "",
        text=prompt,
        target=target,
        reference={"chat_id": chat["id"], "chat_type": chat.get("type")},
    )


def parse_command(text: str) -> tuple[str, str] | None:
    """Split ``/name@bot args`` into (``name@bot``, ``args``); None when not a command."""
    if not text.startswith("/"):
        return None
    head, _, args = text[1:].partition(" ")
    if not head:
        return None
    return head, args.strip()


def _for_this_bot(head: str, bot_username: str | None) -> bool:
    _, _, addressee = head.partition("@")
    if not addressee:
        return True
    return bot_username is not None and addressee.lower() == bot_username.lower()


def _addressed(message: dict[str, Any], text: str, bot_username: str | None) -> bool:
    replied = message.get("reply_to_message") or {}
    author = replied.get("from") or {}
    if author.get("is_bot") and bot_username and author.get("username") == bot_username:
        return True
    return bot_username is not None and f"@{bot_username}".lower() in text.lower()


def _prompt(text: str, command: tuple[str, str] | None, bot_username: str | None) -> str:
    if command is not None:
        name = command[0].partition("@")[0].lower()
        if name == "ask":
            return command[1]
        return text.strip()
    if bot_username:
        mention = f"@{bot_username}"
        index = text.lower().find(mention.lower())
        if index != -1:
            text = text[:index] + text[index + len(mention) :]
    return text.strip()


class TelegramClient:
    """Bot API calls, at ``{api_base}/bot{token}/{method}``."""

    max_chars = MAX_CHARS

    def __init__(self, token: str, api_base: str, http: httpx.Client) -> None:
        self._base = f"{api_base.rstrip('/')}/bot{token}"
        self._http = http

    def start(self, target: dict[str, Any], placeholder_text: str) -> dict[str, Any]:
        chat = _chat_fields(target)
        self._call("sendChatAction", {**chat, "action": "typing"})
        body = {**chat, "text": placeholder_text}
        if target.get("message_id") is not None:
            body["reply_parameters"] = {
                "message_id": target["message_id"],
                "allow_sending_without_reply": True,
            }
        sent = self._call("sendMessage", body)
        return {"message_id": (sent.get("result") or {}).get("message_id")}

    def edit(self, target: dict[str, Any], placeholder: dict[str, Any], text: str) -> None:
        body = {"chat_id": target["chat_id"], "message_id": placeholder["message_id"], "text": text}
        try:
            self._call("editMessageText", body)
        except PlatformError as error:
            # Telegram rejects an edit to the text the message already has.
            if "message is not modified" not in error.message:
                raise

    def send(self, target: dict[str, Any], text: str) -> None:
        self._call("sendMessage", {**_chat_fields(target), "text": text})

    def set_webhook(self, url: str, secret: str) -> dict[str, Any]:
        body = {"url": url, "secret_token": secret, "allowed_updates": ["message"]}
        return self._call("setWebhook", body)

    def _call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        return call_json(self._http, "POST", f"{self._base}/{method}", json=body)


def _chat_fields(target: dict[str, Any]) -> dict[str, Any]:
    fields = {"chat_id": target["chat_id"]}
    if target.get("message_thread_id") is not None:
        fields["message_thread_id"] = target["message_thread_id"]
    return fields
