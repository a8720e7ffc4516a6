"""``foxctl index --watch``: follow an index job and its embedding backlog."""

from __future__ import annotations

import time
from typing import Any

import click

from foxctl.client import ApiClient, ApiError

POLL_S = 0.5


def follow_index(client: ApiClient, job_id: str, *, timeout_s: float) -> None:
    """Show a progress bar of embedded chunks until the job ends and nothing is pending.

    Raises ApiError when the job fails or ``timeout_s`` passes first.
    """
    deadline = time.monotonic() + timeout_s
    job = _wait_for_job(client, job_id, deadline)
    status = client.index_status()
    total = status["chunks"] if status["model"] else 0
    with click.progressbar(length=max(total, 1), label="embedding chunks") as bar:
        shown = 0
        while True:
            done = status["embedded"] if total else 1
            bar.update(max(done - shown, 0))
            shown = max(done, shown)
            if status["pending"] == 0:
                break
            if time.monotonic() > deadline:
                raise ApiError(f"{status['pending']} chunks still pending after {timeout_s} s")
            time.sleep(POLL_S)
            status = client.index_status()
    result = job.get("result") or {}
    click.echo(
        f"indexed {status['files']} files, {status['chunks']} chunks; "
        f"added {result.get('files_added', 0)}, changed {result.get('files_changed', 0)}, "
        f"deleted {result.get('files_deleted', 0)}; model {status['model'] or 'none'}"
    )
    if status.get("last_error"):
        click.echo(f"last embedding error: {status['last_error']}", err=True)


def _wait_for_job(client: ApiClient, job_id: str, deadline: float) -> dict[str, Any]:
    while True:
        job = client.get_job(job_id)
        if job is not None and job["status"] == "failed":
            raise ApiError(f"index job {job_id} failed: {job.get('error')}")
        if job is not None and job["status"] == "succeeded":
            return job
        if time.monotonic() > deadline:
            raise ApiError(f"index job {job_id} did not finish in time")
        time.sleep(POLL_S)
