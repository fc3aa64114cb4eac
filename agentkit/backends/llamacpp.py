"""llama.cpp engine: llama-cpp-python driven directly, Outlines for the constraint.

Why not ``outlines.from_llamacpp``: it returns only text and resets the KV cache on every
call. Here the decode loop is ours, so each call reuses the longest cached token prefix,
each node's fixed prefix is kept as a saved KV state (restored when another node used
the engine in between), usage is counted, and the probability of every chosen token is
read from the constrained distribution. Outlines compiles each constraint once.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from agentkit.engine import Capabilities, Constraint, Generation, Message, Scores, Usage
from agentkit.errors import EngineError, InputError, ModelUnavailableError

_CONSTRAINTS = 64
"""Compiled constraints kept per engine (a node's fixed constraint stays; per-input ones rotate)."""


def _lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class LlamaCppEngine:
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
        self.prefix_cache = prefix_cache
        self.prefix_states = prefix_states
        self.model_path = Path(model_path)
        self.lora_path = Path(lora_path) if lora_path else None
        self.name = name or self.model_path.stem
        self.capabilities = Capabilities(constrained=True, token_probs=True, scoring=True, context=n_ctx)
        self._n_ctx = n_ctx
        self._n_threads = n_threads or int(os.environ.get("AGENTKIT_THREADS") or 0) or max(1, os.cpu_count() or 1)
        self._n_batch = n_batch
        self._lock = threading.RLock()
        self._llm: Any = None
        self._tokens: list[int] = []
        self._prefix_states: OrderedDict[tuple[int, ...], bytes] = OrderedDict()
        self._processors: OrderedDict[Constraint, Any] = OrderedDict()
        self._backend: Any = None
        self._formatters: dict[bool, Any] = {}
        self._eot: str | None = None

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
            llm = llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=self._n_ctx,
                n_threads=self._n_threads,
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

    # ---- tokens --------------------------------------------------------------------

    def _tokenize(self, text: str, *, first: bool) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=first, special=True))

    def count_tokens(self, text: str) -> int:
        with self._lock:
            self._load()
            return len(self._tokenize(text, first=False))

    def _prompt_tokens(self, messages: list[Message], prefix: int) -> tuple[list[int], int]:
        """Tokens of the chat prompt and how many of them belong to the fixed prefix."""
        full = self._formatter(True)(messages=messages).prompt
        if 0 < prefix < len(messages):
            head = self._formatter(False)(messages=messages[:prefix]).prompt
            if full.startswith(head):
                head_tokens = self._tokenize(head, first=True)
                return head_tokens + self._tokenize(full[len(head) :], first=False), len(head_tokens)
        return self._tokenize(full, first=True), 0

    def _end_of_turn(self) -> str:
        """The text that closes an assistant reply in this model's chat template (e.g. ``<|im_end|>``)."""
        if self._eot is None:
            sentinel = "\x00reply\x00"
            text = self._formatter(False)(
                messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": sentinel}]
            ).prompt
            self._eot = text.split(sentinel, 1)[1].rstrip() if sentinel in text else ""
        return self._eot

    def _is_end(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    # ---- KV cache ------------------------------------------------------------------

    def _truncate(self, n: int) -> None:
        self._tokens = self._tokens[:n]
        self._llm._ctx.kv_cache_seq_rm(0, n, -1)

    def _extend(self, new: list[int], *, all_logits: bool = False) -> np.ndarray:
        """Decode ``new`` after the cached tokens; logits of the last token, or of every one."""
        llm = self._llm
        ctx, batch = llm._ctx, llm._batch
        pos = len(self._tokens)
        ctx.kv_cache_seq_rm(0, pos, -1)
        rows: list[np.ndarray] = []
        for i in range(0, len(new), self._n_batch):
            chunk = new[i : i + self._n_batch]
            batch.set_batch(batch=chunk, n_past=pos, logits_all=all_logits)
            try:
                ctx.decode(batch)
            except RuntimeError as e:
                self._truncate(pos)
                raise EngineError(f"llama.cpp decode failed: {e}", retryable=True) from e
            if all_logits:
                out = np.ctypeslib.as_array(ctx.get_logits(), shape=(len(chunk) * self._n_vocab,))
                rows.append(out.reshape(len(chunk), self._n_vocab).copy())
            pos += len(chunk)
            self._tokens.extend(chunk)
        if all_logits:
            return np.concatenate(rows)
        return np.ctypeslib.as_array(ctx.get_logits_ith(-1), shape=(self._n_vocab,)).copy()

    def _save_prefix(self, key: tuple[int, ...]) -> None:
        import llama_cpp

        ctx = self._llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        self._prefix_states[key] = bytes(buf[:n])
        while len(self._prefix_states) > self.prefix_states:
            self._prefix_states.popitem(last=False)

    def _restore_prefix(self, key: tuple[int, ...]) -> bool:
        import llama_cpp

        state = self._prefix_states.get(key)
        if state is None:
            return False
        self._truncate(0)
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_cpp.llama_state_seq_set_data(self._llm._ctx.ctx, buf, len(state), 0) != len(state):
            self._truncate(0)
            return False
        self._tokens = list(key)
        self._prefix_states.move_to_end(key)
        return True

    def _feed(self, tokens: list[int], prefix_len: int) -> tuple[np.ndarray, int]:
        """Make the KV cache hold ``tokens``; return the last logits and how many tokens were reused."""
        if len(tokens) >= self._n_ctx:
            raise InputError(f"prompt is {len(tokens)} tokens, the context is {self._n_ctx}")
        if not self.prefix_cache:
            self._truncate(0)
            prefix_len = 0
        common = _lcp(self._tokens, tokens)
        if 0 < prefix_len < len(tokens) and common < prefix_len:
            key = tuple(tokens[:prefix_len])
            if self._restore_prefix(key):
                common = prefix_len
            else:
                self._truncate(common)
                self._extend(tokens[common:prefix_len])
                self._save_prefix(key)
                reused = common
                self._truncate(prefix_len)
                return self._extend(tokens[prefix_len:]), reused
        common = min(common, len(tokens) - 1)  # at least one token to get fresh logits
        self._truncate(common)
        return self._extend(tokens[common:]), common

    # ---- constraints ---------------------------------------------------------------

    def _processor(self, constraint: Constraint) -> Any:
        if constraint.kind == "text":
            return None
        proc = self._processors.get(constraint)
        if proc is None and constraint.kind == "span":
            import json

            spec = json.loads(constraint.spec)
            end = {int(self._llm.token_eos()), *self._tokenize(self._end_of_turn(), first=False)}
            source = self._tokenize(spec["source"], first=False)
            pieces = [self._llm.detokenize([t], special=False).decode("utf-8", errors="ignore") for t in source]
            proc = SpanProcessor(
                source,
                lead=self._tokenize(spec["lead"], first=False) if spec["lead"] else [],
                stops=[self._tokenize(x, first=False) for x in spec["stops"]],
                end=sorted(end),
                boundaries=word_boundaries(pieces),
            )
            self._processors[constraint] = proc
        elif proc is None:
            try:
                import outlines
                from outlines.backends.outlines_core import OutlinesCoreBackend
            except ImportError as e:
                raise ModelUnavailableError("outlines is not installed", hint="pip install 'agentkit[local]'") from e
            if self._backend is None:
                self._backend = OutlinesCoreBackend(outlines.from_llamacpp(self._llm))
            if constraint.kind == "json":
                proc = self._backend.get_json_schema_logits_processor(constraint.spec, r"[ ]?")
            elif constraint.kind == "regex":
                proc = self._backend.get_regex_logits_processor(constraint.spec)
            elif constraint.kind == "choice":
                import json
                import re

                options = json.loads(constraint.spec)
                proc = self._backend.get_regex_logits_processor("|".join(f"({re.escape(o)})" for o in options))
            else:
                raise ValueError(f"unknown constraint kind {constraint.kind!r}")
            self._processors[constraint] = proc
            while len(self._processors) > _CONSTRAINTS:
                self._processors.popitem(last=False)
        else:
            self._processors.move_to_end(constraint)
        return proc

    # ---- public API ----------------------------------------------------------------

    def generate(
        self, messages: list[Message], constraint: Constraint, *, max_tokens: int, prefix: int = 0
    ) -> Generation:
        """Greedy decoding under ``constraint``; per-token probabilities under the constraint."""
        with self._lock:
            self._load()
            t0 = time.perf_counter()
            tokens, prefix_len = self._prompt_tokens(messages, prefix)
            if len(tokens) + max_tokens > self._n_ctx:
                raise InputError(
                    f"prompt of {len(tokens)} tokens + {max_tokens} to generate exceeds the context of {self._n_ctx}"
                )
            logits, reused = self._feed(tokens, prefix_len)
            proc = self._processor(constraint)
            if proc is not None:
                proc.reset()
            out: list[int] = []
            probs: list[float] = []
            finish: str = "length"
            stop_prob: float | None = None
            for _ in range(max_tokens):
                if proc is not None:
                    ids = np.asarray(tokens + out, dtype=np.int64)
                    try:
                        logits = np.asarray(proc(ids, logits.astype(np.float32)))
                    except Exception as e:  # the constraint itself broke: not retryable
                        raise EngineError(f"constraint failed: {e}") from e
                tok = int(np.argmax(logits))
                top = float(logits[tok])
                if not np.isfinite(top):
                    raise EngineError("constraint allows no token")
                p = 1.0 / float(np.exp(logits - top).sum())
                if self._is_end(tok):
                    finish, stop_prob = "stop", p
                    break
                out.append(tok)
                probs.append(p)
                logits = self._extend([tok])
            raw = b""
            offsets: list[int] = []
            for tok in out:
                offsets.append(len(raw.decode("utf-8", errors="ignore")))
                raw += self._llm.detokenize([tok], special=False)
            text = raw.decode("utf-8", errors="replace")
            usage = Usage(
                prompt_tokens=len(tokens),
                cached_tokens=reused,
                completion_tokens=len(out),
                seconds=time.perf_counter() - t0,
            )
            return Generation(
                text=text,
                finish_reason=finish,
                token_probs=probs,
                tokens=out,
                offsets=offsets,
                usage=usage,
                stop_prob=stop_prob,
            )

    def score(self, messages: list[Message], continuations: list[str], *, prefix: int = 0) -> Scores:
        """Log-probability that the assistant's reply is exactly each continuation
        (its tokens and the end-of-turn marker).

        Continuations that share leading tokens share their decoded KV entries."""
        with self._lock:
            self._load()
            t0 = time.perf_counter()
            tokens, prefix_len = self._prompt_tokens(messages, prefix)
            logits, reused = self._feed(tokens, prefix_len)
            base = len(self._tokens)
            first = _log_softmax(logits)
            eot = self._end_of_turn()
            encoded = [self._tokenize(c + eot, first=False) for c in continuations]
            order = sorted(range(len(encoded)), key=lambda i: encoded[i])
            totals = [0.0] * len(encoded)
            prev: list[int] = []
            prev_rows = np.empty((0, self._n_vocab), dtype=np.float32)
            decoded = 0
            for i in order:
                ct = encoded[i]
                if not ct:
                    raise ValueError(f"continuation {continuations[i]!r} has no tokens")
                body = ct[:-1]
                keep = _lcp(prev, body)
                self._truncate(base + keep)
                rows = prev_rows[:keep]
                if len(body) > keep:
                    rows = np.concatenate([rows, _log_softmax(self._extend(body[keep:], all_logits=True))])
                    decoded += len(body) - keep
                prev, prev_rows = body, rows
                totals[i] = float(first[ct[0]]) + sum(float(rows[j - 1][ct[j]]) for j in range(1, len(ct)))
            self._truncate(base)
            usage = Usage(
                prompt_tokens=len(tokens),
                cached_tokens=reused,
                completion_tokens=decoded,
                seconds=time.perf_counter() - t0,
            )
            return Scores(logprobs=totals, usage=usage)

    def close(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None
                self._tokens = []
                self._prefix_states.clear()
                self._processors.clear()
                self._backend = None
                self._formatters.clear()
                self._eot = None


def word_boundaries(pieces: list[str]) -> list[bool]:
    """For token texts ``pieces``: whether a word boundary lies before each token (and at the end)."""

    def word_char(c: str) -> bool:
        return c.isalnum() or c in "_'"

    out = [True]
    for prev, cur in zip(pieces, pieces[1:], strict=False):
        out.append(not (prev and cur and word_char(prev[-1]) and word_char(cur[0])))
    out.append(True)
    return out[: len(pieces) + 1]


class SpanProcessor:
    """Logits mask for :meth:`Constraint.span`: one of ``stops`` exactly, or ``lead`` then a
    contiguous run of the source's tokens, then an end token. Same interface as Outlines'
    processors (``reset()``, ``__call__(ids, logits)``); the state is read from ``ids``."""

    def __init__(
        self,
        source: list[int],
        *,
        lead: list[int],
        stops: list[list[int]],
        end: list[int],
        boundaries: list[bool] | None = None,
    ) -> None:
        """``boundaries[i]``: a word boundary lies before source token ``i`` (``len(source) + 1``
        entries); a span starts and ends only at boundaries, so "10" cannot be cut from "10th"."""
        if not source:
            raise ValueError("span constraint over an empty source")
        self.source, self.lead, self.stops, self.end = source, lead, [s for s in stops if s], end
        self.boundaries = boundaries or [True] * (len(source) + 1)
        if len(self.boundaries) != len(source) + 1:
            raise ValueError("boundaries needs one entry per source token, plus one")
        self._positions: dict[int, list[int]] = {}
        for i, tok in enumerate(source):
            self._positions.setdefault(tok, []).append(i)
        self._starts = sorted({t for i, t in enumerate(source) if self.boundaries[i]})
        self._prompt: int | None = None

    def reset(self) -> None:
        self._prompt = None

    def allowed(self, out: list[int]) -> list[int]:
        """Token ids allowed after ``out`` (the tokens generated so far)."""
        allowed: set[int] = set()
        for stop in self.stops:
            if out == stop:
                allowed.update(self.end)
            elif len(out) < len(stop) and stop[: len(out)] == out:
                allowed.add(stop[len(out)])
        n = len(self.lead)
        if len(out) < n:
            if self.lead[: len(out)] == out:
                allowed.add(self.lead[len(out)])
            return sorted(allowed)
        if out[:n] != self.lead:
            return sorted(allowed)
        span = out[n:]
        if not span:
            allowed.update(self._starts)
            return sorted(allowed)
        m = len(span)
        for p in self._positions.get(span[0], []):
            if self.boundaries[p] and self.source[p : p + m] == span:
                if p + m < len(self.source):
                    allowed.add(self.source[p + m])
                if self.boundaries[p + m]:
                    allowed.update(self.end)
        return sorted(allowed)

    def __call__(self, ids: Any, logits: Any) -> Any:
        if self._prompt is None:
            self._prompt = len(ids)
        allowed = self.allowed([int(t) for t in ids[self._prompt :]])
        masked = np.full_like(logits, -np.inf)
        if allowed:
            masked[allowed] = logits[allowed]
        return masked
