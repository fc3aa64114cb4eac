"""Tier: a rung of a node's ladder — where its model comes from (a :class:`TierSpec`), its price and a name.

Specs (see :mod:`agentkit.backends.spec` for every option): ``embedded:qwen2.5-0.5b``,
``gguf:/path/model.gguf?context=8192&adapter=PATH``, an OpenAI-compatible server
``server:http://host:port/v1?model=NAME`` (``vllm:URL`` is the same with ``flavor=vllm``), a closed model
through instructor ``api:MODEL``, a Hugging Face model in this process ``hf:PATH``, vLLM in this process
``vllm-offline:PATH``, and two tiers with no model: ``rules`` (deterministic rules only) and ``knn`` (a vote
of the nearest labelled examples). Engines are shared: one per model file or server, loaded on first use.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentkit.backends.registry import close_engines, engine_for, shared_engine
from agentkit.backends.spec import TierSpec, redact
from agentkit.engine import Capabilities, Engine, Usage
from agentkit.errors import ConfigError

if TYPE_CHECKING:
    from agentkit.task import Task

__all__ = ["DEFAULT_USD_PER_HOUR", "Tier", "close_engines", "shared_engine"]

DEFAULT_USD_PER_HOUR = 0.20
"""Default price of local compute: roughly a 2-vCPU cloud instance on demand. A local tier's
cost is its measured compute seconds × this rate, so a larger model costs more per answer
because it takes longer. Set ``usd_per_hour`` per tier to your own figure."""


@dataclass(frozen=True)
class Tier:
    """One rung of a node's ladder. A value: a variant is a new Tier (``dataclasses.replace``)."""

    spec: str
    """Where the model comes from (see module doc), as written; :attr:`parsed` is its typed value."""
    usd_per_hour: float | None = DEFAULT_USD_PER_HOUR
    """Local compute price; ``None`` for per-token priced APIs."""
    usd_per_mtok_in: float = 0.0
    usd_per_mtok_out: float = 0.0
    name: str = ""
    """Short label used in traces (defaults to the spec, with any credentials in it shown as ``***``:
    :meth:`~agentkit.backends.spec.TierSpec.redacted`)."""
    engine: Engine | None = field(default=None, repr=False, compare=False)
    """Pass an engine directly (e.g. a fake in tests); otherwise built from ``spec``."""
    task: dict[str, Any] = field(default_factory=dict)
    """Task settings for this tier only (:attr:`~agentkit.task.Task.knobs`), e.g. ``{"k": 0}``: a
    tuned model needs no retrieved examples while the stock tiers above it keep theirs."""

    def __post_init__(self) -> None:
        if self.engine is None:  # a given engine (a test fake, a client you built) needs no spec to parse
            object.__setattr__(self, "spec", str(self.parsed))
            object.__setattr__(self, "engine", engine_for(self.parsed))
        if not self.name:
            object.__setattr__(self, "name", self.shown_spec)
        object.__setattr__(self, "task", dict(self.task))

    @functools.cached_property
    def parsed(self) -> TierSpec:
        """The spec as a typed value (parsed once)."""
        return TierSpec.parse(self.spec)

    @property
    def shown_spec(self) -> str:
        """The spec as text to show or record: credentials replaced by ``***``."""
        try:
            return self.parsed.redacted()
        except ConfigError:  # a tier around a given engine, named freely
            return redact(self.spec)

    def __repr__(self) -> str:
        shown = ", ".join(
            [f"spec={self.shown_spec!r}"]
            + [f"{k}={getattr(self, k)!r}" for k in ("usd_per_hour", "usd_per_mtok_in", "usd_per_mtok_out", "name")]
            + ([f"task={self.task!r}"] if self.task else [])
        )
        return f"Tier({shown})"

    @functools.cached_property
    def provenance(self) -> dict[str, Any]:
        """Where a tuned tier's adapter (or merged model) came from: its file, sha256 and the
        ``tune.json`` beside it (data hash, base model hash, settings). Empty for a stock tier
        and for a tier built around a given engine. Recorded in every attempt."""
        try:
            spec = self.parsed
        except ConfigError:  # a tier around a given engine, named freely
            return {}
        return _provenance(spec)

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
    def parse(cls, value: str | TierSpec | Mapping[str, Any] | Tier) -> Tier:
        """A tier from a spec string, or a config table ``{spec = ..., task = {...}, usd_per_hour = ...}``."""
        if isinstance(value, Tier):
            return value
        if isinstance(value, Mapping):
            known = {"spec", "task", "name", "usd_per_hour", "usd_per_mtok_in", "usd_per_mtok_out"}
            if "spec" not in value or set(value) - known:
                raise ConfigError(
                    f"a tier table needs 'spec' and may have {sorted(known - {'spec'})}, got {sorted(value)}"
                )
            return cls(**dict(value))
        if isinstance(value, TierSpec):
            return cls(spec=str(value))
        return cls(spec=value)


def _provenance(spec: TierSpec) -> dict[str, Any]:
    import hashlib
    import json

    from agentkit.embedded import sha256_file

    where = spec.text("adapter")
    merged = spec.model_file
    if not where and merged is not None and (merged.parent / "tune.json").is_file():
        where = str(merged)  # a merged tuned model (agentkit.tune) beside its tune.json
    if not where:
        return {}
    path = Path(where).expanduser()
    out: dict[str, Any] = {"model" if merged is not None and path.resolve() == merged else "adapter": str(path)}
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
