"""Chat adapter selection, the settings each adapter requires, and reply clients."""

from __future__ import annotations

import httpx

from shared.chat.clients import ReplyClient
from shared.chat.discord import DiscordClient
from shared.chat.models import Platform
from shared.chat.teams import TeamsClient
from shared.chat.telegram import TelegramClient
from shared.settings import Settings, SettingsError

#: Settings fields each adapter needs in the web and worker processes.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    Platform.telegram.value: ("telegram_bot_token", "telegram_webhook_secret"),
    Platform.discord.value: ("discord_application_id", "discord_public_key"),
    Platform.teams.value: ("teams_app_id", "teams_app_password"),
}


def selected_adapters(settings: Settings) -> frozenset[str]:
    """Return the selected adapters; raise SettingsError naming a missing variable.

    Raises for an unknown adapter name too.
    """
    names = settings.chat_adapter_names
    for name in sorted(names):
        if name not in REQUIRED_FIELDS:
            raise SettingsError(
                f"invalid FOXCTL_CHAT_ADAPTERS entry {name!r}: expected telegram, discord or teams"
            )
        for field in REQUIRED_FIELDS[name]:
            if not getattr(settings, field):
                raise SettingsError(
                    f"the {name} chat adapter needs FOXCTL_{field.upper()}; set it or "
                    f"remove {name} from FOXCTL_CHAT_ADAPTERS (--chat)"
                )
    return names


def make_reply_clients(settings: Settings, http: httpx.Client) -> dict[str, ReplyClient]:
    """Build a reply client for each platform whose credentials are set."""
    clients: dict[str, ReplyClient] = {
        Platform.discord.value: DiscordClient(settings.discord_api_base, http),
    }
    if settings.telegram_bot_token is not None:
        clients[Platform.telegram.value] = TelegramClient(
            settings.telegram_bot_token.get_secret_value(), settings.telegram_api_base, http
        )
    if settings.teams_app_id and settings.teams_app_password is not None:
        tenant = settings.teams_tenant_id or "botframework.com"
        clients[Platform.teams.value] = TeamsClient(
            settings.teams_app_id,
            settings.teams_app_password.get_secret_value(),
            settings.teams_token_url.replace("{tenant}", tenant),
            http,
        )
    return clients
