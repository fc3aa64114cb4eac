"""Tier: an engine + its price + a name, built from a spec string.

Specs: ``embedded:qwen2.5-0.5b``, ``gguf:/path/to/model.gguf`` (optional ``?lora=PATH``,
``&n_ctx=4096``), an OpenAI-compatible server ``server:http://host:port/v1?model=NAME``
(optional ``&flavor=vllm|llamacpp|openai``, ``&context=``, ``&api_key_env=``,
``&logprobs=false``; ``vllm:URL`` is the same with ``flavor=vllm``), a closed model through
instructor ``api:MODEL`` (optional ``?base_url=&api_key_env=&mode=&reasks=``), and two tiers with no model:
``rules`` (deterministic rules only) and ``knn`` (a vote of the nearest labelled examples).
Engines are shared: one per model file or server, loaded on first use.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

from agentkit.engine import Capabilities, Engine, Usage
from agentkit.errors import ConfigError

DEFAULT_USD_PER_HOUR = 0.20
"""Default price of local compute: roughly a 2-vCPU cloud instance on demand. A local tier's
cost is its measured compute seconds × this rate, so a larger model costs more per answer
because it takes longer. Set ``usd_per_hour`` per tier to your own figure."""

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def shared_engine(key: str, factory: object) -> Engine:
    """The process-wide engine for ``key``, created once by ``factory()``."""
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = factory()  # type: ignore[operator]
            _engines[key] = engine
        return engine


@dataclass
class Tier:
    """One rung of a node's ladder."""

    spec: str
    """Where the model comes from (see module doc)."""
    usd_per_hour: float | None = DEFAULT_USD_PER_HOUR
    """Local compute price; ``None`` for per-token priced APIs."""
    usd_per_mtok_in: float = 0.0
    usd_per_mtok_out: float = 0.0
    name: str = ""
    """Short label used in traces (defaults to the spec)."""
    engine: Engine | None = field(default=None, repr=False, compare=False)
    """Pass an engine directly (e.g. a fake in tests); otherwise built from ``spec``."""

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.spec
        if self.engine is None:
            self.engine = _engine_from_spec(self.spec)

    @property
    def capabilities(self) -> Capabilities:
        assert self.engine is not None
        return self.engine.capabilities

    def cost(self, usage: Usage) -> float:
        """USD for one attempt: compute time for local tiers, tokens for API tiers (prompt tokens
        served from the cache are not charged)."""
        billed_prompt = usage.prompt_tokens - usage.cached_tokens
        cost = (billed_prompt * self.usd_per_mtok_in + usage.completion_tokens * self.usd_per_mtok_out) / 1e6
        if self.usd_per_hour is not None:
            cost += usage.seconds * self.usd_per_hour / 3600.0
        return cost

    @classmethod
    def parse(cls, value: str | Tier) -> Tier:
        return value if isinstance(value, Tier) else cls(spec=value)


def _engine_from_spec(spec: str) -> Engine:
    kind, _, rest = spec.partition(":")
    target, _, query = rest.partition("?")
    opts = {k: v[-1] for k, v in parse_qs(query).items()}
    if kind == "embedded":
        from agentkit.embedded import EMBEDDED

        if target not in EMBEDDED:
            raise ConfigError(f"unknown embedded model {target!r}", hint=f"one of: {', '.join(sorted(EMBEDDED))}")
        return _llamacpp(f"embedded:{target}", None, target, opts)
    if kind in ("rules", "knn"):
        return _RulesOnly(kind)
    if kind == "gguf":
        if not target:
            raise ConfigError("gguf: spec needs a path, e.g. gguf:/models/qwen.gguf")
        return _llamacpp(str(Path(target).expanduser().resolve()), Path(target).expanduser(), None, opts)
    if kind == "api":
        return _api(target, opts)
    if kind in ("server", "vllm"):
        if not target.startswith(("http://", "https://")):
            raise ConfigError(f"{kind}: spec needs a URL, e.g. {kind}:http://127.0.0.1:8000/v1?model=NAME")
        return _server(target, kind, opts)
    raise ConfigError(
        f"unknown tier spec {spec!r}", hint="use embedded:NAME, gguf:PATH, server:URL, vllm:URL, rules or knn"
    )


def _check_options(kind: str, opts: dict[str, str], known: set[str]) -> None:
    unknown = set(opts) - known
    if unknown:
        raise ConfigError(f"unknown {kind} tier options {sorted(unknown)}", hint=", ".join(sorted(known)))


def _api(model: str, opts: dict[str, str]) -> Engine:
    from agentkit.backends.instructor_api import InstructorEngine

    if not model:
        raise ConfigError("api: spec needs a model name, e.g. api:gpt-4o-mini")
    _check_options("api", opts, {"base_url", "api_key_env", "mode", "reasks", "error_chars", "timeout_s"})
    key = f"api:{model}|{sorted(opts.items())}"
    return shared_engine(
        key,
        lambda: InstructorEngine(
            model,
            base_url=opts.get("base_url"),
            api_key_env=opts.get("api_key_env", "OPENAI_API_KEY"),
            mode=opts.get("mode", "json_schema"),  # type: ignore[arg-type]
            reasks=int(opts.get("reasks", "2")),
            error_chars=int(opts.get("error_chars", "300")),
            timeout_s=float(opts.get("timeout_s", "60")),
        ),
    )


def _server(url: str, kind: str, opts: dict[str, str]) -> Engine:
    from agentkit.backends.openai_server import OpenAIServerEngine

    flavor = opts.get("flavor", "vllm" if kind == "vllm" else "auto")
    _check_options("server", opts, {"model", "flavor", "context", "api_key_env", "logprobs", "timeout_s"})
    key = f"server:{url}|{sorted(opts.items())}|{flavor}"
    return shared_engine(
        key,
        lambda: OpenAIServerEngine(
            url,
            opts.get("model"),
            flavor=flavor,  # type: ignore[arg-type]
            api_key_env=opts.get("api_key_env", "OPENAI_API_KEY"),
            context=int(opts.get("context", "4096")),
            logprobs=opts.get("logprobs", "true").lower() != "false",
            timeout_s=float(opts.get("timeout_s", "120")),
        ),
    )


class _RulesOnly:
    """A tier with no model at all: ``rules`` (Cleanse runs its deterministic rules only) or
    ``knn`` (Classify votes among the nearest labelled examples). Costs only its CPU time."""

    capabilities = Capabilities(constrained=False, token_probs=False, scoring=False, context=1 << 30)

    def __init__(self, name: str = "rules") -> None:
        self.name = name

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, messages, constraint, *, max_tokens, prefix=0):  # type: ignore[no-untyped-def]
        raise ConfigError(f"the {self.name!r} tier has no model", hint="give this node a model tier")

    def score(self, messages, continuations, *, prefix=0):  # type: ignore[no-untyped-def]
        raise ConfigError(f"the {self.name!r} tier has no model", hint="give this node a model tier")


def _llamacpp(key: str, path: Path | None, embedded: str | None, opts: dict[str, str]) -> Engine:
    from agentkit.backends.llamacpp import LlamaCppEngine

    lora = opts.get("lora")
    n_ctx = int(opts.get("n_ctx", "4096"))
    key = f"{key}|lora={lora}|n_ctx={n_ctx}"

    def make() -> Engine:
        if embedded is not None:
            return _LazyEmbedded(embedded, lora=lora, n_ctx=n_ctx)
        assert path is not None
        return LlamaCppEngine(path, lora_path=lora, n_ctx=n_ctx)

    return shared_engine(key, make)


class _LazyEmbedded:
    """An embedded model's engine; the GGUF is assembled on first use, not when a graph is built."""

    def __init__(self, name: str, *, lora: str | None, n_ctx: int) -> None:
        self.name = name
        self.capabilities = Capabilities(context=n_ctx)
        self._lora, self._n_ctx = lora, n_ctx
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    @property
    def inner(self) -> Engine:
        with self._lock:
            if self._engine is None:
                from agentkit.backends.llamacpp import LlamaCppEngine
                from agentkit.embedded import model_path

                self._engine = LlamaCppEngine(
                    model_path(self.name), name=self.name, lora_path=self._lora, n_ctx=self._n_ctx
                )
            return self._engine

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def generate(self, messages, constraint, *, max_tokens, prefix=0):  # type: ignore[no-untyped-def]
        return self.inner.generate(messages, constraint, max_tokens=max_tokens, prefix=prefix)

    def score(self, messages, continuations, *, prefix=0):  # type: ignore[no-untyped-def]
        return self.inner.score(messages, continuations, prefix=prefix)
