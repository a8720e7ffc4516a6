"""Local model speed: generation tokens/s and the latency of a short question.

Runs SmolLM2-135M-Instruct from the ``local`` extra in this process, through the same
``LocalChatModel`` that workers use. Each measured call starts from an empty KV cache
(``Llama.reset``), so the whole prompt is evaluated every time, as for the first turn
of a session. With ``--keep-cache``, repeated prompts reuse the cached prefix instead.

- short question: "What is the capital of France?" streamed with the default reply
  limit of 256 tokens; latency to the first delta and to the whole reply;
- generation: a request for a story, cut at ``--story-tokens``; tokens/s is completion
  tokens divided by the wall time of the call, prompt evaluation included.

Run from the repository root: ``.venv/bin/python -m bench.local_model``.
"""

from __future__ import annotations

import argparse
import time

from bench.stats import percentile, print_table, summarize_ms
from workers.llm.local import LocalChatModel, default_thread_count

# Turns always start with a system prompt, so the benchmark sends one too.
SYSTEM_PROMPT = {"role": "system", "content": "You are a helpful assistant."}
SHORT_QUESTION = [SYSTEM_PROMPT, {"role": "user", "content": "What is the capital of France?"}]
STORY_REQUEST = [
    SYSTEM_PROMPT,
    {"role": "user", "content": "Write a long story about a fox in a forest."},
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="measured runs of each case")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="llama.cpp threads (default: usable CPUs, at most 4)",
    )
    parser.add_argument(
        "--story-tokens", type=int, default=128, help="max reply tokens when measuring tokens/s"
    )
    parser.add_argument("--keep-cache", action="store_true", help="reuse cached prompt prefixes")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    threads = args.threads or default_thread_count()
    chat = LocalChatModel(n_threads=threads)
    story = LocalChatModel(n_threads=threads, max_tokens=args.story_tokens)

    started = time.perf_counter()
    chat.load()
    load_s = time.perf_counter() - started
    chat.complete(SHORT_QUESTION, [])  # warm-up, unmeasured

    first_delta_s, reply_s, reply_tokens = measure_short_question(chat, args)
    tokens_per_s = measure_generation(story, args)

    reply = chat.complete(SHORT_QUESTION, []).content.strip()
    print_table(
        f"local model {chat.name}, {threads} threads, {args.runs} runs",
        [
            ("model load", f"{load_s * 1000:.0f} ms"),
            ("short question, first delta", summarize_ms(first_delta_s)),
            ("short question, whole reply", summarize_ms(reply_s)),
            ("short question, reply tokens", f"p50 {percentile(reply_tokens, 0.5):.0f}"),
            ("generation tokens/s", summarize_rate(tokens_per_s)),
            ("short question reply", repr(reply[:80])),
        ],
    )


def measure_short_question(
    model: LocalChatModel, args: argparse.Namespace
) -> tuple[list[float], list[float], list[float]]:
    first_delta_s: list[float] = []
    reply_s: list[float] = []
    reply_tokens: list[float] = []
    for _ in range(args.runs):
        reset_cache(model, args)
        first_s, whole_s, tokens = time_streamed_reply(model)
        first_delta_s.append(first_s)
        reply_s.append(whole_s)
        reply_tokens.append(tokens)
    return first_delta_s, reply_s, reply_tokens


def time_streamed_reply(model: LocalChatModel) -> tuple[float, float, int]:
    """Return seconds to the first delta, seconds to the whole reply, and reply tokens."""
    delta_times: list[float] = []
    started = time.perf_counter()
    reply = model.complete(
        SHORT_QUESTION, [], on_delta=lambda _: delta_times.append(time.perf_counter())
    )
    whole_s = time.perf_counter() - started
    return delta_times[0] - started, whole_s, reply.completion_tokens


def measure_generation(model: LocalChatModel, args: argparse.Namespace) -> list[float]:
    rates: list[float] = []
    for _ in range(args.runs):
        reset_cache(model, args)
        started = time.perf_counter()
        reply = model.complete(STORY_REQUEST, [])
        rates.append(reply.completion_tokens / (time.perf_counter() - started))
    return rates


def reset_cache(model: LocalChatModel, args: argparse.Namespace) -> None:
    if not args.keep_cache:
        model.load().llama.reset()


def summarize_rate(values: list[float]) -> str:
    p50 = percentile(values, 0.5)
    return f"p50 {p50:.1f}, min {min(values):.1f}, max {max(values):.1f} (n={len(values)})"


if __name__ == "__main__":
    main()
