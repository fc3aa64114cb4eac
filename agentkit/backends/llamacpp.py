"""llama.cpp engine: llama-cpp-python driven directly, Outlines for the constraint.

Why not ``outlines.from_llamacpp``: it returns only text and resets the KV cache on every
call. Here the decode loop is ours (:class:`~agentkit.backends.tokens.TokenEngine`), so each
call reuses the longest cached token prefix, each node's fixed prefix is kept as a saved KV
state (restored when another node used the engine in between), usage is counted, and the
probability of every chosen token is read from the constrained distribution. Outlines
compiles each constraint once.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from agentkit.backends.tokens import SpanProcessor, TokenEngine, word_boundaries
from agentkit.engine import Capabilities, Message
from agentkit.errors import EngineError, ModelUnavailableError

__all__ = ["LlamaCppEngine", "SpanProcessor", "load_llama", "word_boundaries"]


_PARAMS_LOCK = threading.Lock()


def _avoid_extra_buffers() -> bool:
    """Whether to load weights without llama.cpp's extra buffer types (AMX, CPU repacking).

    On CPUs with AMX, ggml moves Q4_K weights into an AMX buffer whose matrix product segfaults
    on some machines (ggml-org/llama.cpp#20824; measured here on a 2-vCPU Sapphire Rapids guest:
    the first decode of the stock 0.5B crashes the process). So AMX CPUs load without them.
    ``AGENTKIT_LLAMA_EXTRA_BUFFERS=1`` / ``=0`` decides it either way (set but empty: as if unset)."""
    forced = os.environ.get("AGENTKIT_LLAMA_EXTRA_BUFFERS", "").strip()
    if forced:
        return forced.lower() in ("0", "false", "no", "off")
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return any(line.startswith("flags") and " amx_int8" in line for line in f)
    except OSError:
        return False


@contextlib.contextmanager
def _model_params(*, extra_buffers: bool) -> Iterator[None]:
    """``llama_cpp.Llama`` builds its model parameters itself; this sets ``use_extra_bufts`` in them."""
    if extra_buffers:
        yield
        return
    import llama_cpp.llama_cpp as low

    with _PARAMS_LOCK:
        default = low.llama_model_default_params

        def params() -> Any:
            p = default()
            p.use_extra_bufts = False
            return p

        low.llama_model_default_params = params
        try:
            yield
        finally:
            low.llama_model_default_params = default


def load_llama(model_path: str | Path, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(model_path, **kwargs)``, without llama.cpp's extra weight buffers on CPUs
    where they crash (:func:`_avoid_extra_buffers`). Load every model through this."""
    import llama_cpp

    with _model_params(extra_buffers=not _avoid_extra_buffers()):
        return llama_cpp.Llama(model_path=str(model_path), **kwargs)


class LlamaCppEngine(TokenEngine):
    """One GGUF model, loaded on first use, guarded by a lock (``llama_cpp.Llama`` is not
    thread-safe). Share one instance between all nodes that use the same file."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        name: str | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        lora_path: str | Path | None = None,
        prefix_cache: bool = True,
        prefix_states: int = 64,
    ) -> None:
        """
        Args:
            n_threads: compute threads (default: ``$AGENTKIT_THREADS``, else every CPU). Give each
                process its own share when several run at once: llama.cpp's threads spin while
                they wait, so oversubscribed cores slow every process many times over.
            prefix_cache: ``False`` recomputes every prompt from scratch (for measuring the gain).
            prefix_states: fixed prefixes kept as saved KV states (least recently used dropped);
                each costs (prefix tokens × ~12 KB) for the 0.5B model, ~28 KB for the 1.5B.
        """
        super().__init__(prefix_cache=prefix_cache, prefix_states=prefix_states)
        self.model_path = Path(model_path)
        self.lora_path = Path(lora_path) if lora_path else None
        self.name = name or self.model_path.stem
        self.capabilities = Capabilities(constrained=True, token_probs=True, scoring=True, context=n_ctx)
        self._n_ctx = n_ctx
        self._n_threads = n_threads or int(os.environ.get("AGENTKIT_THREADS") or 0) or max(1, os.cpu_count() or 1)
        self._n_batch = n_batch
        self._llm: Any = None
        self._formatters: dict[bool, Any] = {}

    # ---- loading -------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    def _load(self) -> Any:
        if self._llm is not None:
            return self._llm
        try:
            import llama_cpp
        except ImportError as e:
            raise ModelUnavailableError(
                "llama-cpp-python is not installed", hint="pip install 'agentkit[local]'"
            ) from e
        if not self.model_path.is_file():
            raise ModelUnavailableError(f"model file not found: {self.model_path}")
        try:
            llm = load_llama(
                self.model_path,
                n_ctx=self._n_ctx,
                n_threads=self._n_threads,
                n_threads_batch=self._n_threads,  # prompt reading too: its default is every CPU
                n_batch=self._n_batch,
                lora_path=str(self.lora_path) if self.lora_path else None,
                logits_all=False,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise ModelUnavailableError(f"llama.cpp could not load {self.model_path}: {e}") from e
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._n_vocab = llm.n_vocab()
        self._llm = llm
        return llm

    def _formatter(self, add_generation_prompt: bool) -> Any:
        fmt = self._formatters.get(add_generation_prompt)
        if fmt is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            llm = self._llm
            template = llm.metadata.get("tokenizer.chat_template")
            if not template:
                raise ModelUnavailableError(f"{self.model_path.name} has no chat template in its metadata")
            eos = llm._model.token_get_text(llm.token_eos()) if llm.token_eos() >= 0 else ""
            bos = llm._model.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else ""
            fmt = Jinja2ChatFormatter(
                template=template, eos_token=eos, bos_token=bos, add_generation_prompt=add_generation_prompt
            )
            self._formatters[add_generation_prompt] = fmt
        return fmt

    # ---- the primitives TokenEngine builds on --------------------------------------

    def _chat(self, messages: list[Message], *, add_generation_prompt: bool) -> str:
        prompt: str = self._formatter(add_generation_prompt)(messages=messages).prompt
        return prompt

    def _tokenize(self, text: str, *, first: bool) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=first, special=True))

    def _tokenize_text(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _token_bytes(self, token: int) -> bytes:
        piece: bytes = self._llm.detokenize([token], special=False)
        return piece

    def _is_end(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def _eos(self) -> int | None:
        return int(self._llm.token_eos())

    def _outlines_model(self) -> Any:
        import outlines

        return outlines.from_llamacpp(self._llm)

    def _cut_cache(self, n: int) -> None:
        self._llm._ctx.kv_cache_seq_rm(0, n, -1)

    def _extend_model(self, new: list[int], pos: int, rows: int) -> np.ndarray:
        ctx, batch = self._llm._ctx, self._llm._batch
        first_row = len(new) - rows  # logits are computed for new[first_row:] only
        out: list[np.ndarray] = []
        done = 0
        for i in range(0, len(new), self._n_batch):
            chunk = new[i : i + self._n_batch]
            batch.set_batch(batch=chunk, n_past=pos + done, logits_all=False)  # only the chunk's last has logits
            start = min(max(first_row - i, 0), len(chunk))  # the chunk's first wanted row
            for j in range(start, len(chunk)):
                batch.batch.logits[j] = True
            try:
                ctx.decode(batch)
            except RuntimeError as e:
                self._tokens.extend(new[:done])
                self._truncate(pos + done)
                raise EngineError(f"llama.cpp decode failed: {e}", retryable=True) from e
            if start < len(chunk):
                wanted = np.ctypeslib.as_array(ctx.get_logits(), shape=(len(chunk) - start, self._n_vocab))
                out.append(wanted.copy())
            done += len(chunk)
        return np.concatenate(out)

    def _cache_state(self) -> bytes:
        import llama_cpp

        ctx = self._llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        return bytes(buf[:n])

    def _set_cache_state(self, state: bytes) -> bool:
        import llama_cpp

        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        restored: int = llama_cpp.llama_state_seq_set_data(self._llm._ctx.ctx, buf, len(state), 0)
        return restored == len(state)

    def close(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None
                self._formatters.clear()
                self._reset()
