"""Signing helpers for the chat tests: Ed25519 for Discord, RS256 tokens for Teams.

Keys are generated per test run; none is stored in the repository.
"""

from __future__ import annotations

import json
import time
from functools import cache
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, generate_private_key

TELEGRAM_SECRET = "telegram-webhook-secret"
TEAMS_APP_ID = "00000000-0000-0000-0000-00000000a99"
TEAMS_TENANT = "11111111-2222-3333-4444-555555555555"
TEAMS_SERVICE_URL = "https://smba.example.test/teams/"


@cache
def discord_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def discord_public_hex() -> str:
    return discord_key().public_key().public_bytes_raw().hex()


def discord_headers(body: bytes, timestamp: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = discord_key().sign(stamp.encode() + body).hex()
    return {
        "X-Signature-Ed25519": signature,
        "X-Signature-Timestamp": stamp,
        "Content-Type": "application/json",
    }


@cache
def rsa_key(name: str) -> RSAPrivateKey:
    return generate_private_key(public_exponent=65537, key_size=2048)


def jwk(name: str, kid: str) -> dict[str, Any]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key(name).public_key()))
    return {**public, "kid": kid, "use": "sig"}


def teams_token(
    *,
    issuer: str = "https://api.botframework.com",
    audience: str = TEAMS_APP_ID,
    service_url: str | None = TEAMS_SERVICE_URL,
    expires_in_s: int = 600,
    key: str = "bf",
    kid: str = "bf-1",
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "exp": now + expires_in_s,
        "nbf": now - 5,
    }
    if service_url is not None:
        claims["serviceurl"] = service_url
    return jwt.encode(claims, rsa_key(key), algorithm="RS256", headers={"kid": kid})


def teams_activity(
    activity_id: str, text: str, service_url: str = TEAMS_SERVICE_URL
) -> dict[str, Any]:
    return {
        "type": "message",
        "id": activity_id,
        "channelId": "msteams",
        "serviceUrl": service_url,
        "from": {"id": "29:user", "name": "User"},
        "recipient": {"id": "28:bot", "name": "foxbot"},
        "conversation": {"id": "a:conv-1", "tenantId": TEAMS_TENANT},
        "channelData": {"tenant": {"id": TEAMS_TENANT}},
        "text": f"<at>foxbot</at> {text}",
    }


def telegram_update(
    update_id: int, text: str, chat_id: int = 42, chat_type: str = "private"
) -> dict[str, Any]:
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id + 1000,
            "chat": {"id": chat_id, "type": chat_type},
            "from": {"id": 7, "is_bot": False, "first_name": "Ann"},
            "text": text,
        },
    }
