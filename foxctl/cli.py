"""The ``foxctl`` command: the composition root that wires web, workers and shared."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx

from shared.errors import FoxctlError
from shared.settings import Settings, SettingsError, load_settings

F = TypeVar("F", bound=Callable[..., Any])

# The names in shared.queues.ALL_QUEUES (a test keeps them equal), spelled out here so
# that the CLI starts without importing Dramatiq.
QUEUE_CHOICES = ("turns", "embeddings", "maintenance", "chat-delivery", "search")
CHAT_CHOICES = ("telegram", "discord", "teams")
#: Variables that `foxctl up` gives laptop defaults unless the user set them.
UP_DEFAULTED = (
    "FOXCTL_AUTH",
    "FOXCTL_LOG_FORMAT",
    "FOXCTL_LLM_PROVIDER",
    "FOXCTL_EMBEDDING_PROVIDER",
)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"foxctl: error: {message}", err=True)
    raise SystemExit(code)


def one_line_errors(function: F) -> F:
    """Print expected failures as one line on stderr and exit 1."""

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (SettingsError, FoxctlError) as error:
            fail(str(error))
        except httpx.HTTPError as error:
            url = error.request.url if _has_request(error) else "the foxctl API"
            fail(
                f"request to {url} failed: {error or type(error).__name__}; check that "
                "foxctl is running there, or set FOXCTL_API_URL to its address"
            )

    return wrapper  # type: ignore[return-value]


def _has_request(error: httpx.HTTPError) -> bool:
    try:
        error.request  # noqa: B018 - raises RuntimeError when the error has no request
    except RuntimeError:
        return False
    return True


def settings_from_env() -> Settings:
    try:
        return load_settings()
    except SettingsError as error:
        fail(str(error), code=2)
        raise


class OneLineErrorGroup(click.Group):
    """Print usage errors as one ``foxctl: error:`` line, as the commands print theirs."""

    def main(  # type: ignore[override]
        self, args: Any = None, prog_name: str | None = None, **extra: Any
    ) -> Any:
        if extra.get("standalone_mode", True) is False:
            return super().main(args, prog_name, **extra)
        extra["standalone_mode"] = False
        try:
            result = super().main(args, prog_name, **extra)
        except click.UsageError as error:
            command = error.ctx.command_path if error.ctx is not None else "foxctl"
            message = error.format_message().rstrip(".")
            fail(f"{message} (see `{command} --help`)", code=error.exit_code)
        except click.ClickException as error:
            fail(error.format_message(), code=error.exit_code)
        except click.Abort:
            fail("aborted", code=1)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=OneLineErrorGroup)
@click.version_option(package_name="foxctl")
def main() -> None:
    """Run and operate the foxctl agent control plane."""


# -- processes ---------------------------------------------------------------------------


@main.command()
@click.option("--host", default=None, help="Address to bind (default FOXCTL_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to bind (default PORT, 8080).")
@click.option(
    "--threads",
    type=int,
    default=4,
    show_default=True,
    help="Worker threads for turns in this process.",
)
@click.option(
    "--workspace",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Source checkout the agents work on (default FOXCTL_WORKSPACE, the current directory).",
)
@one_line_errors
def up(host: str | None, port: int | None, threads: int, workspace: Path | None) -> None:
    """Run web, worker, reconciler and scheduler loop in one process on embedded defaults.

    Uses SQLite under FOXCTL_STORAGE_ROOT and an in-process broker. Authentication is off
    unless FOXCTL_AUTH is set, so the server binds to loopback only.
    """
    from foxctl.up import run_up

    run_up(
        settings_from_env(),
        host=host,
        port=port,
        threads=threads,
        explicit={name for name in UP_DEFAULTED if name in os.environ},
        workspace=workspace,
    )


@main.group()
def web() -> None:
    """Web tier commands."""


@web.command("serve")
@click.option(
    "--workers",
    type=int,
    default=None,
    help="gunicorn worker processes (default WEB_CONCURRENCY, 2).",
)
@click.option(
    "--chat",
    "chat",
    multiple=True,
    type=click.Choice(CHAT_CHOICES),
    help="Enable a chat adapter's webhook; repeat for several (default FOXCTL_CHAT_ADAPTERS).",
)
@one_line_errors
def web_serve(workers: int | None, chat: tuple[str, ...]) -> None:
    """Serve the API with gunicorn and uvicorn workers (replaces this process)."""
    from shared.chat.adapters import selected_adapters

    settings = settings_from_env()
    environment = dict(os.environ)
    if chat:
        environment["FOXCTL_CHAT_ADAPTERS"] = ",".join(sorted(set(chat)))
        settings = settings.model_copy(
            update={"chat_adapters": environment["FOXCTL_CHAT_ADAPTERS"]}
        )
    # Fail here, with one line, rather than in every gunicorn worker.
    selected_adapters(settings)
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        "uvicorn_worker.UvicornWorker",
        "--workers",
        str(workers or settings.web_concurrency),
        "--bind",
        f"{settings.host}:{settings.port}",
        # The graceful timeout bounds how long in-flight requests may finish after
        # SIGTERM; Kubernetes' terminationGracePeriodSeconds must exceed it.
        "--graceful-timeout",
        str(settings.web_graceful_timeout_s),
        "--timeout",
        "60",
        "--keep-alive",
        "75",
        # gunicorn's control socket would live under $HOME, which is read-only or
        # missing in the container, and foxctl does not use it.
        "--no-control-socket",
        "--access-logfile",
        "-" if settings.log_level == "debug" else "/dev/null",
        "web.asgi:create()",
    ]
    os.execve(sys.executable, argv, {**environment, **metrics_environment(settings, "web")})


@main.command()
@click.option(
    "--queues",
    "-Q",
    multiple=True,
    type=click.Choice(QUEUE_CHOICES),
    help="Queues to consume; repeat for several (default: all).",
)
@click.option("--processes", "-p", type=int, default=1, show_default=True, help="Worker processes.")
@click.option(
    "--threads", "-t", type=int, default=8, show_default=True, help="Threads per worker process."
)
@one_line_errors
def worker(queues: tuple[str, ...], processes: int, threads: int) -> None:
    """Run Dramatiq workers on the given queues (replaces this process)."""
    settings = settings_from_env()
    if settings.broker_url.startswith("memory://"):
        fail(
            "FOXCTL_BROKER_URL is memory:// (in-process); a separate worker needs "
            "redis://HOST:6379/0, or run everything in one process with `foxctl up`"
        )
    argv = [
        sys.executable,
        "-m",
        "dramatiq",
        "workers.main",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--worker-shutdown-timeout",
        str(settings.worker_shutdown_timeout_s * 1000),
        "--skip-logging",
    ]
    if queues:
        argv += ["--queues", *queues]
    # Dramatiq reads its idle poll interval from this variable at import time.
    environment = {
        **os.environ,
        "dramatiq_worker_timeout": str(settings.worker_poll_ms),
        **metrics_environment(settings, "worker"),
    }
    os.execve(sys.executable, argv, environment)


def metrics_environment(settings: Settings, process: str) -> dict[str, str]:
    """Return PROMETHEUS_MULTIPROC_DIR for the processes this command starts, emptied.

    prometheus_client reads it at import. The directory is named after this process,
    whose pid the exec keeps, so that commands sharing FOXCTL_RUN_DIR (a Procfile) do not
    mix or delete each other's files. Leftover files would add old counts to new ones.
    """
    default = settings.run_dir / f"metrics-{process}-{os.getpid()}"
    directory = settings.prometheus_multiproc_dir or default
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    return {"PROMETHEUS_MULTIPROC_DIR": str(directory)}


@main.command()
@one_line_errors
def migrate() -> None:
    """Apply database migrations under a lock; safe to run from several pods at once."""
    from shared.db import make_engine
    from shared.logging import configure_logging
    from shared.migrate import current_revision, upgrade

    settings = settings_from_env()
    configure_logging(settings, process="release")
    engine = make_engine(settings)
    try:
        upgrade(engine)
    except Exception as error:
        fail(f"migration failed: {error}")
    click.echo(f"database at revision {current_revision(engine)}")


@main.command()
@click.option("--ready", is_flag=True, help="Check readiness instead of liveness.")
@one_line_errors
def health(ready: bool) -> None:
    """Probe the local process; exit 0 when healthy (for exec probes)."""
    from foxctl.probes import probe_local

    ok, detail = probe_local(settings_from_env(), ready=ready)
    click.echo(detail, err=not ok)
    raise SystemExit(0 if ok else 1)


@main.command()
@click.option(
    "--timeout",
    type=float,
    default=20.0,
    show_default=True,
    help="Seconds to wait for in-flight requests.",
)
@one_line_errors
def drain(timeout: float) -> None:
    """Make the local web processes not-ready and wait for in-flight requests (preStop)."""
    from foxctl.probes import drain_local

    remaining = drain_local(settings_from_env(), timeout_s=timeout)
    if remaining < 0:
        fail(f"web processes did not report draining within {timeout} s")
    if remaining:
        fail(f"{remaining} request(s) still in flight after {timeout} s")
    click.echo("drained")


@main.command()
@one_line_errors
def scheduler() -> None:
    """Run the scheduler: enqueue maintenance on cron and due think/tick turns.

    Run one or more replicas; one leads at a time through a lease in the database.
    """
    from shared.broker import make_broker
    from shared.logging import configure_logging
    from shared.queues import Enqueuer
    from workers.scheduler import Scheduler

    settings = settings_from_env()
    if settings.broker_url.startswith("memory://"):
        fail(
            "FOXCTL_BROKER_URL is memory:// (in-process); a separate scheduler needs "
            "redis://HOST:6379/0, or use `foxctl up`, which runs its own loop"
        )
    configure_logging(settings, process="scheduler")
    Scheduler(settings, _database(), Enqueuer(make_broker(settings))).run_forever()


# -- maintenance -------------------------------------------------------------------------


@main.group()
def sessions() -> None:
    """Session maintenance."""


@sessions.command("cleanup")
@click.option("--older-than", required=True, help="Idle time, such as 30d or 12h.")
@click.option(
    "--status",
    "statuses",
    default="ok,error,cancelled",
    show_default=True,
    help="Comma-separated statuses to delete: ok, error, cancelled, empty.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--enqueue", is_flag=True, help="Run it on a maintenance worker instead.")
@one_line_errors
def sessions_cleanup(older_than: str, statuses: str, dry_run: bool, enqueue: bool) -> None:
    """Delete ended sessions with their messages, turns and events."""
    params = {
        "older_than": older_than,
        "dry_run": dry_run,
        "statuses": [s.strip() for s in statuses.split(",") if s.strip()],
    }
    _run_job("cleanup_sessions", params, enqueue)


@main.group()
def cas() -> None:
    """Content-addressed store maintenance."""


@cas.command("gc")
@click.option(
    "--older-than",
    required=True,
    help=(
        "Age such as 24h: unpinned, unreferenced artifacts last uploaded this long ago, "
        "and stored bytes with no artifact row stored this long ago, are deleted."
    ),
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option(
    "--max-delete",
    type=click.IntRange(min=1),
    default=None,
    help="Delete at most this many artifacts and orphaned objects together.",
)
@click.option("--enqueue", is_flag=True, help="Run it on a maintenance worker instead.")
@one_line_errors
def cas_gc(older_than: str, dry_run: bool, max_delete: int | None, enqueue: bool) -> None:
    """Delete old unpinned, unreferenced artifacts, then stored bytes that have no row."""
    params: dict[str, Any] = {"older_than": older_than, "dry_run": dry_run}
    if max_delete is not None:
        params["max_delete"] = max_delete
    _run_job("cas_gc", params, enqueue)


@main.group()
def turns() -> None:
    """Turn maintenance."""


@turns.command("reap")
@click.option(
    "--stale-after",
    default="1h",
    show_default=True,
    help="Fail running turns that no live worker leases and that started this long ago.",
)
@click.option("--enqueue", is_flag=True, help="Run it on a maintenance worker instead.")
@one_line_errors
def turns_reap(stale_after: str, enqueue: bool) -> None:
    """Fail running turns that lost their worker long ago."""
    _run_job("reap_turns", {"stale_after": stale_after}, enqueue)


@main.group()
def jobs() -> None:
    """Maintenance job runs."""


@jobs.command("list")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@one_line_errors
def jobs_list(limit: int) -> None:
    """List recent maintenance job runs, newest first."""
    import json

    from shared.jobs.service import list_runs

    with _database().read() as db:
        runs = list_runs(db, limit=limit)
    for run in runs:
        click.echo(
            f"{run.id}\t{run.name}\t{run.origin}\t{run.status}\t"
            f"{json.dumps(run.result, sort_keys=True)}"
        )


def _run_job(name: str, params: dict[str, Any], enqueue: bool) -> None:
    """Record a job run, then run it here or hand it to a maintenance worker."""
    import json

    from shared.jobs.catalog import enqueue_job, record_job
    from shared.logging import configure_logging

    configure_logging(settings_from_env(), process="cli", stream=sys.stderr)
    database = _database()
    origin = "cli"
    with database.write() as db:
        run = record_job(db, name, params, origin)
    if enqueue:
        from shared.broker import make_broker
        from shared.queues import Enqueuer

        settings = settings_from_env()
        if settings.broker_url.startswith("memory://"):
            fail(
                "--enqueue needs FOXCTL_BROKER_URL=redis://...; without it, run the job "
                "here by leaving --enqueue out"
            )
        enqueue_job(Enqueuer(make_broker(settings)), run)
        click.echo(f"enqueued {name} as {run.id}")
        return

    from workers.maintenance import execute_run

    finished = execute_run(database, run.id)
    assert finished is not None
    if finished.error:
        fail(f"{name} failed: {finished.error}")
    click.echo(json.dumps(finished.result, sort_keys=True))


# -- tokens ------------------------------------------------------------------------------


@main.group()
def tokens() -> None:
    """Create, list and revoke API tokens."""


@tokens.command("create")
@click.option("--name", required=True, help="A label for the token, such as its owner.")
@one_line_errors
def tokens_create(name: str) -> None:
    """Create a token and print it once; only its hash is stored."""
    from shared.auth.service import create_token

    with _database().write() as db:
        row, token = create_token(db, name)
    click.echo(token)
    click.echo(f"created token {row.id} ({name}); it is shown only now", err=True)


@tokens.command("list")
@one_line_errors
def tokens_list() -> None:
    """List tokens (never their values)."""
    from shared.auth.service import list_tokens

    with _database().read() as db:
        rows = list_tokens(db)
    for row in rows:
        state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
        click.echo(f"{row.id}\t{row.name}\t{row.created_at:%Y-%m-%d %H:%M}\t{state}")


@tokens.command("revoke")
@click.argument("token")
@one_line_errors
def tokens_revoke(token: str) -> None:
    """Revoke a token by id or name."""
    from shared.auth.service import revoke_token

    with _database().write() as db:
        row = revoke_token(db, token)
    click.echo(f"revoked {row.id} ({row.name})")


# -- agents and messages -----------------------------------------------------------------


@main.group()
def agents() -> None:
    """Create and list agents."""


@agents.command("create")
@click.option("--name", required=True)
@click.option(
    "--role",
    required=True,
    type=click.Choice(["overseer", "researcher", "coder", "planner", "reviewer"]),
)
@click.option("--prompt", default="", help="System prompt.")
@click.option("--model", default=None, help="Model name (default FOXCTL_LLM_MODEL).")
@click.option("--tool-profile", default="default", show_default=True)
@click.option("--max-iterations", type=click.IntRange(1, 100), default=8, show_default=True)
@one_line_errors
def agents_create(
    name: str, role: str, prompt: str, model: str | None, tool_profile: str, max_iterations: int
) -> None:
    """Create an agent and print its id."""
    from pydantic import ValidationError

    from shared.agents.models import AgentCreate
    from shared.agents.service import create_agent

    try:
        spec = AgentCreate.model_validate(
            {
                "name": name,
                "role": role,
                "system_prompt": prompt,
                "model": model,
                "tool_profile": tool_profile,
                "max_iterations": max_iterations,
            },
            strict=False,
        )
    except ValidationError as error:
        first = error.errors()[0]
        fail(f"invalid --{first['loc'][0]}: {first['msg']}")
        raise
    with _database().write() as db:
        agent = create_agent(db, spec)
    click.echo(agent.id)


@agents.command("list")
@one_line_errors
def agents_list() -> None:
    """List agents."""
    from shared.agents.service import list_agents

    with _database().read() as db:
        rows = list_agents(db, limit=500)
    for agent in rows:
        click.echo(f"{agent.id}\t{agent.name}\t{agent.role}\t{agent.model or '-'}")


@main.command()
@click.argument("session")
@click.argument("text")
@click.option("--wait", is_flag=True, help="Wait for the turn and print the reply.")
@click.option(
    "--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait with --wait."
)
@one_line_errors
def send(session: str, text: str, wait: bool, timeout: float) -> None:
    """Post TEXT to SESSION through the API; print the turn id, or the reply with --wait."""
    from foxctl.client import ApiClient

    client = ApiClient.from_settings(settings_from_env())
    accepted = client.post_message(session, text)
    if not wait:
        click.echo(accepted["turn_id"])
        return
    turn = client.wait_for_turn(accepted["turn_id"], timeout_s=timeout)
    if turn["status"] != "succeeded":
        fail(f"turn {turn['id']} ended {turn['status']}: {turn.get('error') or 'no reply'}")
    click.echo(client.reply_text(session, turn))


@main.command()
@click.option(
    "--full", is_flag=True, help="Chunk every file and embed every chunk again, not only changes."
)
@click.option("--watch", is_flag=True, help="Follow the job with a progress bar until it ends.")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds to follow.")
@one_line_errors
def index(full: bool, watch: bool, timeout: float) -> None:
    """Enqueue an index of the workspace through the API; print the job id."""
    from foxctl.client import ApiClient
    from foxctl.indexing import follow_index

    client = ApiClient.from_settings(settings_from_env())
    accepted = client.start_index(full=full)
    click.echo(accepted["job_id"])
    if watch:
        follow_index(client, accepted["job_id"], timeout_s=timeout)


@main.command()
@click.argument("query")
@click.option(
    "--limit", type=click.IntRange(1, 100), default=5, show_default=True, help="Hits to print."
)
@click.option("--path-prefix", default=None, help="Only files whose path starts with this.")
@click.option("--rerank/--no-rerank", default=None, help="Override the configured reranking.")
@one_line_errors
def search(query: str, limit: int, path_prefix: str | None, rerank: bool | None) -> None:
    """Search the workspace index through the API; print path:lines, score and snippet."""
    from foxctl.client import ApiClient

    client = ApiClient.from_settings(settings_from_env())
    rerank_param = None if rerank is None else str(rerank).lower()
    results = client.search(query, limit=limit, path_prefix=path_prefix, rerank=rerank_param)
    for warning in results.get("warnings", []):
        click.echo(f"foxctl: warning: {warning}", err=True)
    if not results["items"] and path_prefix:
        click.echo(f"no results under {path_prefix!r}; check the prefix", err=True)
    elif not results["items"]:
        click.echo("no results; is the workspace indexed? (foxctl index --watch)", err=True)
    for hit in results["items"]:
        first_line = hit["snippet"].strip().splitlines()[0] if hit["snippet"].strip() else ""
        click.echo(
            f"{hit['path']}:{hit['start_line']}-{hit['end_line']}\t{hit['score']:.4f}\t"
            f"{first_line[:100]}"
        )


# -- chat adapters -----------------------------------------------------------------------


@main.group()
def chat() -> None:
    """Set up the chat platforms' webhooks and commands, and prune stored updates."""


@chat.command("prune-updates")
@click.option(
    "--older-than",
    required=True,
    help="Delete delivery ids received this long ago, such as 7d. Keep it above 24h.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--enqueue", is_flag=True, help="Run it on a maintenance worker instead.")
@one_line_errors
def chat_prune_updates(older_than: str, dry_run: bool, enqueue: bool) -> None:
    """Delete stored platform delivery ids, which deduplicate redelivered webhooks."""
    _run_job("prune_chat_updates", {"older_than": older_than, "dry_run": dry_run}, enqueue)


@chat.group("telegram")
def chat_telegram() -> None:
    """Telegram Bot API commands."""


@chat_telegram.command("set-webhook")
@click.argument("url")
@one_line_errors
def telegram_set_webhook(url: str) -> None:
    """Point the bot's webhook at URL (https://HOST/api/telegram/webhook) with the secret."""
    from shared.chat.errors import ChatError
    from shared.chat.telegram import TelegramClient

    settings = settings_from_env()
    token, secret = settings.telegram_bot_token, settings.telegram_webhook_secret
    if token is None or secret is None:
        missing = "FOXCTL_TELEGRAM_BOT_TOKEN" if token is None else "FOXCTL_TELEGRAM_WEBHOOK_SECRET"
        fail(f"{missing} is not set; set-webhook needs the bot token and the webhook secret")
        return
    if not url.startswith(("https://", "http://")):
        fail(f"invalid URL {url!r}: expected https://HOST/api/telegram/webhook")
    with httpx.Client(timeout=15) as http:
        client = TelegramClient(token.get_secret_value(), settings.telegram_api_base, http)
        try:
            client.set_webhook(url, secret.get_secret_value())
        except ChatError as error:
            fail(f"Telegram refused the webhook: {error.message}")
    click.echo(f"telegram webhook set to {url}")


@chat.group("discord")
def chat_discord() -> None:
    """Discord application commands."""


@chat_discord.command("register-commands")
@one_line_errors
def discord_register_commands() -> None:
    """Register the /ask slash command for FOXCTL_DISCORD_APPLICATION_ID."""
    from shared.chat.discord import DiscordClient
    from shared.chat.errors import ChatError

    settings = settings_from_env()
    if not settings.discord_application_id or settings.discord_bot_token is None:
        missing = (
            "FOXCTL_DISCORD_APPLICATION_ID"
            if not settings.discord_application_id
            else "FOXCTL_DISCORD_BOT_TOKEN"
        )
        fail(f"{missing} is not set; register-commands needs the application id and bot token")
        return
    with httpx.Client(timeout=15) as http:
        client = DiscordClient(
            settings.discord_api_base, http, settings.discord_bot_token.get_secret_value()
        )
        try:
            client.register_commands(settings.discord_application_id)
        except ChatError as error:
            fail(f"Discord refused the commands: {error.message}")
    click.echo("discord command /ask registered")


def _database() -> Any:
    from shared.db import Database, make_engine
    from shared.migrate import is_migrated

    settings = settings_from_env()
    database = Database(make_engine(settings))
    if not is_migrated(database.engine):
        fail("the database schema is not current; run `foxctl migrate` first")
    return database


__all__ = ["main"]
