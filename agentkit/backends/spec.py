"""TierSpec: a tier spec string parsed once into a typed value, and formatted back by the same code.

``KIND:TARGET?OPTION=VALUE&...`` — e.g. ``embedded:qwen2.5-0.5b``, ``gguf:/models/q.gguf?context=8192&adapter=a.gguf``,
``server:http://127.0.0.1:8000/v1?model=NAME``, ``api:gpt-4o-mini``, ``rules``, ``knn``. Every option name
belongs to one vocabulary (:data:`OPTIONS`); the old spellings ``n_ctx`` and ``lora`` are read as
``context`` and ``adapter`` with a :class:`DeprecationWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote

from agentkit.errors import ConfigError

__all__ = ["KINDS", "OPTIONS", "RENAMED", "TierSpec"]

_MODEL = {"context": int, "adapter": str}
_SERVER = {"model": str, "flavor": str, "context": int, "api_key_env": str, "logprobs": bool, "timeout_s": float,
           "scoring": bool}  # fmt: skip
OPTIONS: Mapping[str, Mapping[str, type]] = {
    "embedded": _MODEL,
    "gguf": _MODEL,
    "hf": {**_MODEL, "dtype": str, "device": str},
    "vllm-offline": {**_MODEL, "dtype": str, "scoring": bool},
    "server": _SERVER,
    "vllm": _SERVER,
    "api": {"base_url": str, "api_key_env": str, "mode": str, "reasks": int, "error_chars": int, "timeout_s": float},
    "rules": {},
    "knn": {},
}
"""The options each kind of tier takes, and their types."""

KINDS = tuple(OPTIONS)

RENAMED = {"n_ctx": "context", "lora": "adapter"}
"""Old option names, still read (with a DeprecationWarning), never written."""

_EXAMPLES = {
    "embedded": "embedded:qwen2.5-0.5b",
    "gguf": "gguf:/models/qwen.gguf",
    "hf": "hf:/models/qwen2.5-0.5b",
    "vllm-offline": "vllm-offline:/models/qwen2.5-0.5b",
    "server": "server:http://127.0.0.1:8000/v1?model=NAME",
    "vllm": "vllm:http://127.0.0.1:8000/v1?model=NAME",
    "api": "api:gpt-4o-mini",
}


@dataclass(frozen=True)
class TierSpec:
    """Where a tier's model comes from: its kind, its target (a name, path, URL or model id) and options."""

    kind: str
    target: str = ""
    options: tuple[tuple[str, str], ...] = ()
    """``(name, value)`` pairs in the order written; values as text (read them with :meth:`get`)."""

    @classmethod
    def parse(cls, text: str) -> TierSpec:
        """The spec ``text`` as a value; a :class:`ConfigError` says what is wrong with it."""
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"a tier spec must be a non-empty string, got {text!r}")
        head, _, query = text.strip().partition("?")
        kind, _, target = head.partition(":")
        if kind not in OPTIONS:
            raise ConfigError(
                f"unknown tier spec {text!r}", hint="use " + ", ".join(_EXAMPLES.values()) + ", rules or knn"
            )
        options: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name in RENAMED:
                warnings.warn(
                    f"tier option {name!r} is now {RENAMED[name]!r} (in {text!r})", DeprecationWarning, stacklevel=3
                )
                name = RENAMED[name]
            options[name] = value  # the last one written wins
        spec = cls(kind, target, tuple(options.items()))
        spec._check()
        return spec

    def _check(self) -> None:
        known = OPTIONS[self.kind]
        unknown = sorted(set(dict(self.options)) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown {self.kind} tier options {unknown} in {str(self)!r}",
                hint=f"{self.kind} takes {', '.join(sorted(known)) or 'no options'}",
            )
        if self.kind in ("rules", "knn"):
            if self.target:
                raise ConfigError(f"the {self.kind!r} tier takes no target, got {str(self)!r}")
        elif not self.target:
            raise ConfigError(f"{self.kind}: spec needs a target, e.g. {_EXAMPLES[self.kind]}")
        if self.kind in ("server", "vllm") and not self.target.startswith(("http://", "https://")):
            raise ConfigError(f"{self.kind}: spec needs a URL, e.g. {_EXAMPLES[self.kind]}")
        for name, value in self.options:
            self._typed(name, value)

    def _typed(self, name: str, value: str) -> int | float | bool | str:
        kind = OPTIONS[self.kind][name]
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return kind(value)  # type: ignore[no-any-return]
        except ValueError:
            raise ConfigError(f"tier option {name}={value!r} is not a {kind.__name__} (in {str(self)!r})") from None

    def get(self, name: str, default: int | float | bool | str | None = None) -> object:
        """Option ``name`` read as its type (:data:`OPTIONS`), or ``default`` when not given (or when
        this kind of tier does not take it)."""
        if not any(name in options for options in OPTIONS.values()):
            raise ConfigError(f"no tier takes an option {name!r}")
        value = dict(self.options).get(name)
        return default if value is None else self._typed(name, value)

    def text(self, name: str, default: str | None = None) -> str | None:
        """A text option (a path, a name), or ``default``."""
        value = self.get(name, default)
        return None if value is None else str(value)

    def number(self, name: str, default: float) -> float:
        value = self.get(name, default)
        assert isinstance(value, (int, float))
        return float(value)

    def integer(self, name: str, default: int) -> int:
        value = self.get(name, default)
        assert isinstance(value, int)
        return value

    def flag(self, name: str, default: bool) -> bool:
        return bool(self.get(name, default))

    def replace(self, *, target: str | None = None, **options: str | Path | None) -> TierSpec:
        """A copy with ``target`` and some options changed (``None`` removes one)."""
        merged = dict(self.options)
        for name, value in options.items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = str(value)
        spec = TierSpec(self.kind, self.target if target is None else target, tuple(merged.items()))
        spec._check()
        return spec

    @property
    def model_file(self) -> Path | None:
        """The model file a ``gguf:`` tier loads, resolved; ``None`` for other kinds."""
        return Path(self.target).expanduser().resolve() if self.kind == "gguf" else None

    def __str__(self) -> str:
        head = f"{self.kind}:{self.target}" if self.target else self.kind
        if not self.options:
            return head
        return head + "?" + "&".join(f"{k}={quote(v, safe='/:@,.~-_')}" for k, v in self.options)
