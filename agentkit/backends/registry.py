"""The engine behind each tier spec: made on first use, one per model file or server, shared by every tier."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentkit.backends.spec import TierSpec
from agentkit.engine import Capabilities, Constraint, Engine, Generation, Message, Scores
from agentkit.errors import ConfigError

__all__ = ["close_engines", "engine_for", "engine_keys", "shared_engine"]

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def shared_engine(key: str, factory: Callable[[], Engine]) -> Engine:
    """The process-wide engine for ``key``, created once by ``factory()``."""
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = factory()
            _engines[key] = engine
        return engine


def engine_keys() -> set[str]:
    """The keys of the shared engines made so far (for :func:`close_engines`' ``keep``)."""
    with _engines_lock:
        return set(_engines)


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


def engine_for(spec: TierSpec) -> Engine:
    """The shared engine for ``spec`` (nothing is loaded until the engine is first used)."""
    if spec.kind in ("rules", "knn"):
        return _RulesOnly(spec.kind)
    if spec.kind == "embedded":
        from agentkit.embedded import EMBEDDED

        if spec.target not in EMBEDDED:
            raise ConfigError(f"unknown embedded model {spec.target!r}", hint=f"one of: {', '.join(sorted(EMBEDDED))}")
        return _llamacpp(spec, f"embedded:{spec.target}")
    if spec.kind == "gguf":
        return _llamacpp(spec, str(spec.model_file))
    makers = {"api": _api, "hf": _hf, "vllm-offline": _vllm_offline, "server": _server, "vllm": _server}
    return makers[spec.kind](spec)


def _key(spec: TierSpec, where: str) -> str:
    return f"{spec.kind}:{where}|{sorted(spec.options)}"


def _adapter(spec: TierSpec) -> str | None:
    adapter = spec.text("adapter")
    return str(Path(adapter).expanduser().resolve()) if adapter else None


def _llamacpp(spec: TierSpec, where: str) -> Engine:
    from agentkit.backends.llamacpp import LlamaCppEngine

    adapter, context = spec.text("adapter"), spec.integer("context", 4096)
    name = spec.target

    def make() -> Engine:
        if spec.kind == "embedded":
            from agentkit.embedded import model_path

            return _Lazy(
                name,
                Capabilities(context=context),
                lambda: LlamaCppEngine(model_path(name), name=name, lora_path=adapter, n_ctx=context),
            )
        return LlamaCppEngine(Path(spec.target).expanduser(), lora_path=adapter, n_ctx=context)

    return shared_engine(_key(spec, where), make)


def _api(spec: TierSpec) -> Engine:
    from agentkit.backends.instructor_api import InstructorEngine

    return shared_engine(
        _key(spec, spec.target),
        lambda: InstructorEngine(
            spec.target,
            base_url=spec.text("base_url"),
            api_key_env=spec.text("api_key_env", "OPENAI_API_KEY") or "OPENAI_API_KEY",
            mode=spec.text("mode", "json_schema"),  # type: ignore[arg-type]
            reasks=spec.integer("reasks", 2),
            error_chars=spec.integer("error_chars", 300),
            timeout_s=spec.number("timeout_s", 60.0),
        ),
    )


def _model_location(spec: TierSpec) -> str:
    """A path, or an embedded model's name (its assembled GGUF file)."""
    from agentkit.embedded import EMBEDDED

    return spec.target if spec.target in EMBEDDED else str(Path(spec.target).expanduser().resolve())


def _resolve(where: str) -> str:
    """An embedded model's name → its assembled GGUF file (assembled now); a path stays as it is."""
    from agentkit.embedded import EMBEDDED, model_path

    return str(model_path(where)) if where in EMBEDDED else where


def _hf(spec: TierSpec) -> Engine:
    where, adapter, context = _model_location(spec), _adapter(spec), spec.integer("context", 4096)

    def make() -> Engine:
        from agentkit.backends.transformers_hf import TransformersEngine

        return _Lazy(
            f"hf:{spec.target}" + (f"+{Path(adapter).name}" if adapter else ""),
            Capabilities(context=context),
            lambda: TransformersEngine(
                _resolve(where),
                adapter=adapter,
                name=f"hf:{spec.target}",
                n_ctx=context,
                dtype=spec.text("dtype", "float32") or "float32",
                device=spec.text("device", "cpu") or "cpu",
            ),
        )

    return shared_engine(_key(spec, where), make)


def _vllm_offline(spec: TierSpec) -> Engine:
    where, context, scoring = _model_location(spec), spec.integer("context", 4096), spec.flag("scoring", False)

    def make() -> Engine:
        from agentkit.backends.vllm_offline import VLLMOfflineEngine

        return _Lazy(
            f"vllm-offline:{spec.target}",
            Capabilities(context=context, scoring=scoring),
            lambda: VLLMOfflineEngine(
                where,
                name=f"vllm-offline:{spec.target}",
                context=context,
                dtype=spec.text("dtype", "auto") or "auto",
                adapter=spec.text("adapter"),
                scoring=scoring,
            ),
        )

    return shared_engine(_key(spec, where), make)


def _server(spec: TierSpec) -> Engine:
    from agentkit.backends.openai_server import OpenAIServerEngine

    flavor = spec.text("flavor", "vllm" if spec.kind == "vllm" else "auto")
    return shared_engine(
        _key(spec, spec.target) + f"|{flavor}",
        lambda: OpenAIServerEngine(
            spec.target,
            spec.text("model"),
            flavor=flavor,  # type: ignore[arg-type]
            api_key_env=spec.text("api_key_env", "OPENAI_API_KEY") or "OPENAI_API_KEY",
            context=spec.integer("context", 4096),
            logprobs=spec.flag("logprobs", True),
            timeout_s=spec.number("timeout_s", 120.0),
            score_labels=spec.flag("scoring", False),
        ),
    )


class _RulesOnly:
    """A tier with no model at all: ``rules`` (Cleanse runs its deterministic rules only) or
    ``knn`` (Classify votes among the nearest labelled examples). Costs only its CPU time."""

    capabilities = Capabilities(constrained=False, token_probs=False, scoring=False, context=1 << 30, model=False)

    def __init__(self, name: str = "rules") -> None:
        self.name = name

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(
        self, messages: list[Message], constraint: Constraint, *, max_tokens: int, prefix: int = 0
    ) -> Generation:
        raise ConfigError(f"the {self.name!r} tier has no model", hint="give this node a model tier")

    def score(
        self,
        messages: list[Message],
        continuations: list[str],
        *,
        prefix: int = 0,
        margin: float | None = None,
        choice: bool = False,
    ) -> Scores:
        raise ConfigError(f"the {self.name!r} tier has no model", hint="give this node a model tier")


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

    def generate(
        self, messages: list[Message], constraint: Constraint, *, max_tokens: int, prefix: int = 0
    ) -> Generation:
        return self.inner.generate(messages, constraint, max_tokens=max_tokens, prefix=prefix)

    def score(
        self,
        messages: list[Message],
        continuations: list[str],
        *,
        prefix: int = 0,
        margin: float | None = None,
        choice: bool = False,
    ) -> Scores:
        return self.inner.score(messages, continuations, prefix=prefix, margin=margin, choice=choice)

    def structured(self, *args: Any, **kwargs: Any) -> Any:
        """The inner engine's structured output, where it has one (``capabilities.structured``)."""
        return self.inner.structured(*args, **kwargs)  # type: ignore[attr-defined]

    def close(self) -> None:
        """Close the engine if it was made; the next call makes it again."""
        with self._lock:
            engine, self._engine = self._engine, None
        close = getattr(engine, "close", None)
        if callable(close):
            close()
