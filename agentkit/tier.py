"""Tier: an engine + its price + a name, built from a spec string.

Specs: ``embedded:qwen2.5-0.5b``, ``gguf:/path/to/model.gguf`` (optional ``?lora=PATH``,
``&n_ctx=4096``), an OpenAI-compatible server ``server:http://host:port/v1?model=NAME``
(optional ``&flavor=vllm|llamacpp|openai``, ``&context=``, ``&api_key_env=``,
``&logprobs=false``, ``&scoring=true`` for label scoring from vLLM's prompt log-probabilities;
``vllm:URL`` is the same with ``flavor=vllm``), a closed model through
instructor ``api:MODEL`` (optional ``?base_url=&api_key_env=&mode=&reasks=``), a Hugging Face model in
this process ``hf:PATH`` (a model folder, a ``.gguf`` file or an embedded model's name; optional
``?adapter=PEFT_DIR&dtype=&n_ctx=``), vLLM in this process ``vllm-offline:PATH`` (optional
``?context=&dtype=&adapter=LORA_DIR&scoring=true``), and two tiers with no model:
``rules`` (deterministic rules only) and ``knn`` (a vote of the nearest labelled examples).
Engines are shared: one per model file or server, loaded on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from agentkit.engine import Capabilities, Engine, Usage
from agentkit.errors import ConfigError

if TYPE_CHECKING:
    from agentkit.task import Task

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


def close_engines(keep: Callable[[str], bool] = lambda key: False) -> int:
    """Close and forget the shared engines whose key ``keep`` rejects (all, by default), releasing their
    models' memory; a tier built afterwards loads its model again. Returns how many were closed."""
    with _engines_lock:
        gone = [key for key in _engines if not keep(key)]
        engines = [_engines.pop(key) for key in gone]
    for engine in engines:
        close = getattr(engine, "close", None)
        if callable(close):
            close()
    return len(engines)


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
    task: dict[str, Any] = field(default_factory=dict)
    """Task settings for this tier only (:data:`~agentkit.task.TASK_KNOBS`), e.g. ``{"k": 0}``: a
    tuned model needs no retrieved examples while the stock tiers above it keep theirs."""

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.spec
        if self.engine is None:
            self.engine = _engine_from_spec(self.spec)
        self._provenance: dict[str, Any] | None = None

    @property
    def provenance(self) -> dict[str, Any]:
        """Where a tuned tier's adapter (or merged model) came from: its file, sha256 and the
        ``tune.json`` beside it (data hash, base model hash, settings). Empty for a stock tier.
        Recorded in every attempt."""
        if self._provenance is None:
            self._provenance = _provenance(self.spec)
        return self._provenance

    def adapt(self, task: Task) -> Task:
        """``task`` as this tier runs it: the same one, or a variant with this tier's task settings."""
        return task.variant(**self.task) if self.task else task

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
    def parse(cls, value: str | Mapping[str, Any] | Tier) -> Tier:
        """A tier from a spec string, or a config table ``{spec = ..., task = {...}, usd_per_hour = ...}``."""
        if isinstance(value, Tier):
            return value
        if isinstance(value, Mapping):
            known = {"spec", "task", "name", "usd_per_hour", "usd_per_mtok_in", "usd_per_mtok_out"}
            if "spec" not in value or set(value) - known:
                raise ConfigError(f"a tier table needs 'spec' and may have {sorted(known - {'spec'})}: {dict(value)}")
            return cls(**dict(value))
        return cls(spec=value)


def _provenance(spec: str) -> dict[str, Any]:
    import hashlib
    import json

    from agentkit.embedded import sha256_file

    opts = {k: v[-1] for k, v in parse_qs(spec.partition("?")[2]).items()}
    where = opts.get("lora") or opts.get("adapter")
    kind, _, rest = spec.partition("?")[0].partition(":")
    if not where and kind == "gguf" and (Path(rest).expanduser().parent / "tune.json").is_file():
        where = rest  # a merged tuned model (agentkit.tune.merge_to_gguf) beside its tune.json
    if not where:
        return {}
    path = Path(where).expanduser()
    out: dict[str, Any] = {"model" if where == rest else "adapter": str(path)}
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if files:  # an adapter folder: the hash of its weight files' hashes
        digests = [sha256_file(f) for f in files]
        out["sha256"] = digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()
    for meta in (path.parent / "tune.json", path / "tune.json"):  # agentkit tune writes it beside the adapter
        if meta.is_file():
            tune = json.loads(meta.read_text(encoding="utf-8"))
            out["tune"] = {k: tune.get(k) for k in ("data_sha256", "base_sha256", "steps", "examples", "counts")}
            break
    return out


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
    if kind == "hf":
        return _hf(target, opts)
    if kind == "vllm-offline":
        return _vllm_offline(target, opts)
    if kind in ("server", "vllm"):
        if not target.startswith(("http://", "https://")):
            raise ConfigError(f"{kind}: spec needs a URL, e.g. {kind}:http://127.0.0.1:8000/v1?model=NAME")
        return _server(target, kind, opts)
    raise ConfigError(
        f"unknown tier spec {spec!r}",
        hint="use embedded:NAME, gguf:PATH, hf:PATH, server:URL, vllm:URL, vllm-offline:PATH, api:MODEL, rules or knn",
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


def _model_location(kind: str, target: str) -> str:
    """A path, or an embedded model's name (its assembled GGUF file)."""
    if not target:
        raise ConfigError(f"{kind}: spec needs a model folder or file, e.g. {kind}:/models/qwen2.5-0.5b")
    from agentkit.embedded import EMBEDDED

    if target in EMBEDDED:
        return target
    return str(Path(target).expanduser().resolve())


def _hf(target: str, opts: dict[str, str]) -> Engine:
    _check_options("hf", opts, {"adapter", "dtype", "n_ctx", "device"})
    where = _model_location("hf", target)
    adapter = str(Path(opts["adapter"]).expanduser().resolve()) if opts.get("adapter") else None

    def make() -> Engine:
        from agentkit.backends.transformers_hf import TransformersEngine

        return _Lazy(
            f"hf:{target}" + (f"+{Path(adapter).name}" if adapter else ""),
            Capabilities(context=int(opts.get("n_ctx", "4096"))),
            lambda: TransformersEngine(
                _resolve(where),
                adapter=adapter,
                name=f"hf:{target}",
                n_ctx=int(opts.get("n_ctx", "4096")),
                dtype=opts.get("dtype", "float32"),
                device=opts.get("device", "cpu"),
            ),
        )

    return shared_engine(f"hf:{where}|{sorted(opts.items())}", make)


def _vllm_offline(target: str, opts: dict[str, str]) -> Engine:
    _check_options("vllm-offline", opts, {"context", "dtype", "adapter", "scoring"})
    where = _model_location("vllm-offline", target)

    def make() -> Engine:
        from agentkit.backends.vllm_offline import VLLMOfflineEngine

        context = int(opts.get("context", "4096"))
        scoring = opts.get("scoring", "false").lower() == "true"
        return _Lazy(
            f"vllm-offline:{target}",
            Capabilities(context=context, scoring=scoring),
            lambda: VLLMOfflineEngine(
                where,
                name=f"vllm-offline:{target}",
                context=context,
                dtype=opts.get("dtype", "auto"),
                adapter=opts.get("adapter"),
                scoring=scoring,
            ),
        )

    return shared_engine(f"vllm-offline:{where}|{sorted(opts.items())}", make)


def _resolve(where: str) -> str:
    """An embedded model's name → its assembled GGUF file (assembled now); a path stays as it is."""
    from agentkit.embedded import EMBEDDED, model_path

    return str(model_path(where)) if where in EMBEDDED else where


def _server(url: str, kind: str, opts: dict[str, str]) -> Engine:
    from agentkit.backends.openai_server import OpenAIServerEngine

    flavor = opts.get("flavor", "vllm" if kind == "vllm" else "auto")
    _check_options("server", opts, {"model", "flavor", "context", "api_key_env", "logprobs", "timeout_s", "scoring"})
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
            score_labels=opts.get("scoring", "false").lower() == "true",
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

    def score(self, messages, continuations, *, prefix=0, margin=None, choice=False):  # type: ignore[no-untyped-def]
        raise ConfigError(f"the {self.name!r} tier has no model", hint="give this node a model tier")


def _llamacpp(key: str, path: Path | None, embedded: str | None, opts: dict[str, str]) -> Engine:
    from agentkit.backends.llamacpp import LlamaCppEngine

    lora = opts.get("lora")
    n_ctx = int(opts.get("n_ctx", "4096"))
    key = f"{key}|lora={lora}|n_ctx={n_ctx}"

    def make() -> Engine:
        if embedded is not None:
            from agentkit.embedded import model_path

            return _Lazy(
                embedded,
                Capabilities(context=n_ctx),
                lambda: LlamaCppEngine(model_path(embedded), name=embedded, lora_path=lora, n_ctx=n_ctx),
            )
        assert path is not None
        return LlamaCppEngine(path, lora_path=lora, n_ctx=n_ctx)

    return shared_engine(key, make)


class _Lazy:
    """An engine made on first use, not when a graph is built (an embedded GGUF is assembled then)."""

    def __init__(self, name: str, capabilities: Capabilities, factory: Callable[[], Engine]) -> None:
        self.name = name
        self.capabilities = capabilities
        self._factory = factory
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    @property
    def inner(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = self._factory()
            return self._engine

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def generate(self, messages, constraint, *, max_tokens, prefix=0):  # type: ignore[no-untyped-def]
        return self.inner.generate(messages, constraint, max_tokens=max_tokens, prefix=prefix)

    def score(self, messages, continuations, *, prefix=0, margin=None, choice=False):  # type: ignore[no-untyped-def]
        return self.inner.score(messages, continuations, prefix=prefix, margin=margin, choice=choice)

    def close(self) -> None:
        """Close the engine if it was made; the next call makes it again."""
        with self._lock:
            engine, self._engine = self._engine, None
        close = getattr(engine, "close", None)
        if callable(close):
            close()
