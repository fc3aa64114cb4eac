"""An OpenAI-compatible chat-completions server as an engine: vLLM, llama.cpp's servers, Ollama,
LM Studio, hosted providers (``pip install 'agentkit[openai]'``).

Servers differ in how they take a constraint, so each request is shaped for the server's
*flavor* (given, or detected from ``/models``):

- ``vllm``: ``structured_outputs`` ``{"json"|"choice"|"regex": ...}`` (JSON with ``disable_any_whitespace``:
  given free whitespace, small models pad JSON with newlines); the old ``guided_*`` fields are
  silently ignored by current vLLM (HTTP 200, unconstrained), so they are never sent;
- ``llamacpp`` (llama-cpp-python's server): ``response_format`` ``{"type": "json_object", "schema": ...}``
  for JSON, a GBNF ``grammar`` for a choice; no regex;
- ``openai`` (hosted APIs): ``response_format`` ``json_schema`` (strict); a choice as a JSON enum.

A constraint is never trusted: before first use the engine sends a **canary** — a request whose
right answer is impossible unless the constraint is live — and refuses the server with a clear
error if the constraint was ignored (this is also the readiness check: a real completion, not
``/health``). Confidence comes from the returned token log-probabilities where the server gives
them (``token_probs``); a server without them gives none, and its answers are accepted on
validation alone only at the last tier. Timeouts, connection errors, 429 and 5xx raise retryable
:class:`EngineError` (the node retries them with tenacity), carrying the server's ``Retry-After``
(``retry_after_s``); other 4xx are not retried. A connection error may mean the server restarted,
perhaps as another server: the canary is sent again before the next request is trusted.

Keys are never shown: every error message has the key (read from ``api_key_env``), a password in
``base_url`` and any bearer token replaced by ``***`` (:func:`~agentkit.backends.spec.redact`), and
the engine's name shows ``base_url`` without its credentials.
"""

from __future__ import annotations

import contextlib
import email.message
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from email.utils import parsedate_to_datetime
from typing import Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit

from agentkit.backends.spec import redact
from agentkit.engine import Capabilities, Constraint, Generation, Message, Scores, Usage, choice_logprobs
from agentkit.errors import ConfigError, EngineError, ModelUnavailableError

__all__ = ["Flavor", "OpenAIServerEngine", "api_error", "retry_after", "url_secrets"]

Flavor = Literal["auto", "vllm", "llamacpp", "openai"]
_T = TypeVar("_T")
_CANARY_OPTIONS = ["qv7zx", "kj3wp"]
"""The only two replies the canary allows; asked for a different word, a model says neither
unless the constraint is enforced."""


class OpenAIServerEngine:
    """Chat completions from an OpenAI-compatible server at ``base_url`` (``http://host:port/v1``)."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        flavor: Flavor = "auto",
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 120.0,
        context: int = 4096,
        logprobs: bool = True,
        name: str | None = None,
        canary: bool = True,
        score_labels: bool = False,
    ) -> None:
        """
        Args:
            model: the served model's name (default: the first one ``/models`` lists).
            flavor: how to send constraints (see the module doc); ``auto`` asks ``/models``.
            api_key_env: environment variable holding the API key (never logged; a local server
                needs none).
            context: the served context window, in tokens (a server does not report it).
            logprobs: ask for token log-probabilities (confidence); ``False`` for servers that reject it.
            canary: prove the constraint is live before first use (leave on outside tests of this check).
            score_labels: on a vLLM server, score whole labels from ``prompt_logprobs`` (set up on
                first use; a classifier then reads every label's probability instead of the
                tokens it generated under a choice constraint). Off by default: on vLLM's CPU build
                prompt log-probabilities ran at ~10 prompt tokens/s (about 30 s per two-label item,
                against ~0.5 s for a choice); on a GPU server it is the better confidence.
        """
        try:
            import openai
        except ImportError:
            raise ConfigError("server tiers need the openai client", hint="pip install 'agentkit[openai]'") from None
        self._openai = openai
        self.base_url = base_url.rstrip("/")
        self.shown_url = redact(self.base_url)
        """``base_url`` as messages show it (credentials replaced by ``***``)."""
        key = os.environ.get(api_key_env)
        self._secrets = (*url_secrets(self.base_url), *([key] if key else []))
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=key or "not-needed",
            timeout=timeout_s,
            max_retries=0,  # the node retries (tenacity), with its own bounded, jittered policy
        )
        self._model = model
        self._flavor = flavor
        self._want_logprobs = logprobs
        self._canary = canary
        self._score_labels = score_labels
        self._eot: list[int] = []
        self._token_cache: dict[str, list[int]] = {}
        self._epoch = 0
        """Counts the connection errors met: each may be a restart, after which set-up runs again."""
        self._ready_at: int | None = None
        """The epoch in which set-up (and the canary) last succeeded."""
        self._lock = threading.Lock()
        self.name = name or f"{model or 'server'}@{self.shown_url}"
        self._caps = Capabilities(constrained=True, token_probs=logprobs, scoring=False, context=context)

    # ---- set-up: which model, which flavor, and a live constraint ---------------------

    def _setup(self) -> None:
        with self._lock:
            epoch = self._epoch
            if self._ready_at == epoch:
                return
            if self._model is None or self._flavor == "auto":
                listed = self._call(lambda: self._client.models.list())
                models = list(getattr(listed, "data", []) or [])
                if not models:
                    raise ModelUnavailableError(f"{self.shown_url} serves no model")
                first = models[0]
                if self._model is None:
                    self._model = first.id
                if self._flavor == "auto":
                    owner = str(getattr(first, "owned_by", "") or "").lower()
                    self._flavor = (
                        "vllm" if owner == "vllm" else "llamacpp" if owner in ("me", "llamacpp") else "openai"
                    )
            self.name = f"{self._model}@{self.shown_url}"
            if self._canary:  # under the lock: no request goes out before the constraint is proven
                self.check_constraint()
            if self._flavor == "vllm" and self._want_logprobs and self._score_labels:
                eot = self._find_end_of_turn()
                if eot:
                    self._eot = eot
                    self._caps = replace(self._caps, scoring=True)
            self._ready_at = epoch  # a connection error since then (another epoch) sets it up again

    @property
    def capabilities(self) -> Capabilities:
        """What the server can do, known after set-up (first use): a vLLM server scores labels."""
        self._setup()
        return self._caps

    @property
    def flavor(self) -> str:
        self._setup()
        return self._flavor

    def check_constraint(self) -> None:
        """Send the canary: asked to reply ``hello``, a constrained model can only say one of
        :data:`_CANARY_OPTIONS`. Raises :class:`ConfigError` if the server ignored the constraint."""
        messages = [{"role": "user", "content": "Reply with exactly the word: hello"}]
        gen = self._generate(messages, Constraint.choice(_CANARY_OPTIONS), max_tokens=8)
        if gen.text.strip() not in _CANARY_OPTIONS:
            raise ConfigError(
                f"{self.name} ignored the output constraint (flavor {self._flavor!r}):"
                f" the canary got {redact(gen.text[:40], self._secrets)!r}",
                hint="set the server's flavor (vllm, llamacpp, openai) or use a server that enforces structured output",
            )

    # ---- the Engine protocol ----------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """An upper estimate (no tokenizer here): about one token per three characters."""
        return math.ceil(len(text) / 3)

    def generate(
        self, messages: list[Message], constraint: Constraint, *, max_tokens: int, prefix: int = 0
    ) -> Generation:
        self._setup()
        return self._generate(messages, constraint, max_tokens=max_tokens)

    def score(
        self,
        messages: list[Message],
        continuations: list[str],
        *,
        prefix: int = 0,
        margin: float | None = None,
        choice: bool = False,
    ) -> Scores:
        """Label scoring from ``prompt_logprobs`` (vLLM): the chat prompt tokenized by the server
        (``/tokenize``), each continuation + the end-of-turn marker appended, every sequence sent in
        one ``/completions`` request with ``max_tokens=1``; the log-probability of a continuation is
        the sum over its tokens, as the local engines compute it (``choice``: as a choice among the
        continuations, :func:`~agentkit.engine.choice_logprobs`)."""
        self._setup()
        if not self._caps.scoring:
            raise ConfigError(f"{self.name} cannot score continuations", hint="tasks use a choice constraint instead")
        model = self._model
        assert model is not None  # set-up names the model
        t0 = time.perf_counter()
        base = self._tokens({"messages": messages, "add_generation_prompt": True})
        bodies = [self._text_tokens(c) + self._eot for c in continuations]
        response = self._call(
            lambda: self._client.completions.create(
                model=model, prompt=[base + b for b in bodies], max_tokens=1, temperature=0.0,
                extra_body={"prompt_logprobs": 0},
            )
        )  # fmt: skip
        per_token: list[list[float]] = [[] for _ in bodies]
        for reply in response.choices:
            extra: dict[str, Any] = reply.model_extra or {}
            prompt_logprobs: Any = getattr(reply, "prompt_logprobs", None) or extra.get("prompt_logprobs")
            rows = prompt_logprobs[len(base) :]
            body = bodies[reply.index]
            per_token[reply.index] = [float(row[str(tok)]["logprob"]) for tok, row in zip(body, rows, strict=True)]
        totals = choice_logprobs(bodies, per_token) if choice else [sum(lps) for lps in per_token]
        n = len(base) * len(bodies) + sum(len(b) for b in bodies)
        return Scores(logprobs=totals, usage=Usage(prompt_tokens=n, seconds=time.perf_counter() - t0))

    # ---- vLLM's tokenizer endpoints (label scoring) -------------------------------------

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import urllib.error
        import urllib.request

        root = self.base_url.removesuffix("/v1")
        where = f"{self.shown_url.removesuffix('/v1')}{path}"
        data = json.dumps({"model": self._model, **body}).encode()
        req = urllib.request.Request(f"{root}{path}", data, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                reply: dict[str, Any] = json.loads(r.read())
                return reply
        except urllib.error.HTTPError as e:
            retryable = e.code == 429 or e.code >= 500
            wait = retry_after(e.headers) if retryable else None
            raise EngineError(f"{where}: HTTP {e.code}", retryable=retryable, retry_after_s=wait) from e
        except OSError as e:
            self._epoch += 1  # the server may be restarting: prove it again when it is back
            raise EngineError(redact(f"{where}: {e}", self._secrets), retryable=True) from e

    def _tokens(self, body: dict[str, Any]) -> list[int]:
        return list(self._post("/tokenize", {"add_special_tokens": False, **body})["tokens"])

    def _text_tokens(self, text: str) -> list[int]:
        if text not in self._token_cache:
            self._token_cache[text] = self._tokens({"prompt": text})
        return self._token_cache[text]

    def _find_end_of_turn(self) -> list[int] | None:
        """Tokens that close an assistant reply in the served chat template (``None``: not found)."""
        user = [{"role": "user", "content": "x"}]
        prompt = self._tokens({"messages": user, "add_generation_prompt": True})
        reply = self._text_tokens(_CANARY_OPTIONS[0])
        full = self._post(
            "/tokenize",
            {"messages": [*user, {"role": "assistant", "content": _CANARY_OPTIONS[0]}], "add_generation_prompt": False,
             "add_special_tokens": False, "return_token_strs": True},
        )  # fmt: skip
        tokens, strs = full["tokens"], full.get("token_strs") or []
        start = len(prompt) + len(reply)
        if tokens[: len(prompt)] != prompt or tokens[len(prompt) : start] != reply or len(strs) != len(tokens):
            return None
        eot = list(zip(tokens[start:], strs[start:], strict=True))
        while eot and not eot[-1][1].strip():  # the newline after the marker is not part of the reply
            eot.pop()
        return [t for t, _ in eot] or None

    # ---- requests ---------------------------------------------------------------------

    def request_fields(self, constraint: Constraint) -> tuple[dict[str, Any], bool]:
        """The request fields carrying ``constraint`` for this server, and whether the reply is a
        ``{"answer": ...}`` wrapper to unwrap (a choice sent as JSON)."""
        kind, spec, flavor = constraint.kind, constraint.spec, self._flavor
        if kind == "span":
            constraint = constraint.span_regex()
            kind, spec = constraint.kind, constraint.spec
        if kind == "text":
            return {}, False
        if kind == "json":
            schema = json.loads(spec)
            if flavor == "vllm":  # no free whitespace: small models otherwise pad JSON with newlines
                return {"extra_body": {"structured_outputs": {"json": schema, "disable_any_whitespace": True}}}, False
            if flavor == "llamacpp":
                return {"response_format": {"type": "json_object", "schema": schema}}, False
            return {"response_format": _json_schema_format(schema)}, False
        if flavor == "vllm":
            key = "choice" if kind == "choice" else "regex"
            value = json.loads(spec) if kind == "choice" else spec
            return {"extra_body": {"structured_outputs": {key: value}}}, False
        if kind == "choice" and flavor == "llamacpp":
            options = " | ".join(json.dumps(o) for o in json.loads(spec))
            return {"extra_body": {"grammar": f"root ::= {options}"}}, False
        if kind == "choice":  # hosted APIs: a JSON object whose one field is the choice
            schema = {
                "type": "object",
                "properties": {"answer": {"type": "string", "enum": json.loads(spec)}},
                "required": ["answer"],
                "additionalProperties": False,
            }
            return {"response_format": _json_schema_format(schema)}, True
        raise ConfigError(f"{self.name}: a {flavor} server takes no {kind} constraint", hint="use a vllm server")

    def _generate(self, messages: list[Message], constraint: Constraint, *, max_tokens: int) -> Generation:
        fields, wrapped = self.request_fields(constraint)
        extra = fields.pop("extra_body", None)
        args: dict[str, Any] = {
            "model": self._model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            **fields,
        }
        if self._want_logprobs:
            args |= {"logprobs": True, "top_logprobs": 1}
        if extra:
            args["extra_body"] = extra
        t0 = time.perf_counter()
        response = self._call(lambda: self._client.chat.completions.create(**args))
        seconds = time.perf_counter() - t0
        choice = response.choices[0]
        text = choice.message.content or ""
        tokens = list(getattr(choice.logprobs, "content", None) or [])
        probs = [math.exp(t.logprob) for t in tokens] if tokens else None
        offsets, raw = [], b""
        for t in tokens:  # character offsets from the tokens' bytes (a character may span tokens)
            offsets.append(len(raw.decode("utf-8", errors="ignore")))
            raw += bytes(t.bytes) if getattr(t, "bytes", None) is not None else t.token.encode()
        if not raw.decode("utf-8", errors="ignore").startswith(text):  # tokens that do not spell the text
            offsets = []
        if wrapped:  # {"answer": "x"} -> "x"; its probability is that of the whole reply
            with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):  # else the task reports it
                text = str(json.loads(text)["answer"])
            offsets = []
        usage = response.usage
        cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None) or 0
        return Generation(
            text=text,
            finish_reason="length" if choice.finish_reason == "length" else "stop",
            token_probs=probs if self._want_logprobs else None,
            offsets=offsets,
            usage=Usage(
                prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                cached_tokens=cached,
                completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                seconds=seconds,
            ),
        )

    def _call(self, request: Callable[[], _T]) -> _T:
        try:
            return request()
        except self._openai.APIError as e:
            if isinstance(e, self._openai.APIConnectionError):  # timeouts too: a hung server may be restarted
                self._epoch += 1  # the server may be restarting: prove it again when it is back
            raise api_error(self._openai, self.base_url, e, secrets=self._secrets) from e


def api_error(openai: Any, where: str, e: Exception, *, secrets: Iterable[str] = ()) -> EngineError:
    """An OpenAI-client error as an EngineError: transport failures, 429 and 5xx are retryable (with the
    server's ``Retry-After``), other 4xx not. The message has ``secrets`` (the API key), credentials in
    ``where`` and bearer tokens replaced by ``***``: a server may echo the key it was sent."""
    secrets = (*secrets, *url_secrets(where))
    if isinstance(e, (openai.APITimeoutError, openai.APIConnectionError)):
        return EngineError(redact(f"{where}: {type(e).__name__}: {e}", secrets), retryable=True)
    status = getattr(e, "status_code", 0) or 0
    detail = redact(str(getattr(e, "message", e)), secrets)[:300]
    retryable = status == 429 or status >= 500
    wait = retry_after(getattr(getattr(e, "response", None), "headers", None)) if retryable else None
    return EngineError(redact(f"{where}: HTTP {status}: {detail}", secrets), retryable=retryable, retry_after_s=wait)


def retry_after(headers: Mapping[str, str] | email.message.Message[str, str] | None) -> float | None:
    """Seconds a server asks a client to wait (``Retry-After``: seconds or an HTTP date; or OpenAI's
    ``retry-after-ms``); ``None`` when it says nothing usable."""
    if headers is None:
        return None
    with contextlib.suppress(TypeError, ValueError):
        ms = headers.get("retry-after-ms")
        if ms is not None and math.isfinite(value := float(ms)):
            return max(0.0, value / 1000)
    text = (headers.get("retry-after") or "").strip()
    if not text:
        return None
    with contextlib.suppress(ValueError):
        value = float(text)
        return max(0.0, value) if math.isfinite(value) else None
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        return max(0.0, parsedate_to_datetime(text).timestamp() - time.time())
    return None


def url_secrets(url: str) -> tuple[str, ...]:
    """The credential written in ``url`` (its password; or its user when there is no password, a token
    written as ``https://TOKEN@host``), as written and decoded, to keep out of messages."""
    try:
        parts = urlsplit(url)
        secret = parts.password or parts.username
    except ValueError:
        return ()
    return tuple({secret, unquote(secret)}) if secret else ()


def _json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}}
