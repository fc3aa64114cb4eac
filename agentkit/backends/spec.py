"""TierSpec: a tier spec string parsed once into a typed value, and formatted back by the same code.

``KIND:TARGET?OPTION=VALUE&...`` — e.g. ``embedded:qwen2.5-0.5b``, ``gguf:/models/q.gguf?context=8192&adapter=a.gguf``,
``server:http://127.0.0.1:8000/v1?model=NAME``, ``api:gpt-4o-mini``, ``rules``, ``knn``. Every option name
belongs to one vocabulary (:data:`OPTIONS`); the old spellings ``n_ctx`` and ``lora`` are read as
``context`` and ``adapter`` with a :class:`DeprecationWarning`.

A spec can hold credentials (``server:https://user:KEY@host/v1``, a key in a ``base_url``'s query):
:meth:`TierSpec.redacted` is the text to show or record, with them replaced by ``***``, and
:func:`redact` does the same to any text (an error message, a URL).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote

from agentkit.errors import ConfigError

__all__ = ["KINDS", "OPTIONS", "RENAMED", "TierSpec", "redact"]

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


_HIDDEN = "***"
_SECRET_WORDS = {"key", "apikey", "token", "accesstoken", "secret", "password", "passwd", "pwd", "pass", "auth",
                 "authorization", "credential", "credentials", "signature", "sig"}  # fmt: skip
_USERINFO = re.compile(r"(?<=//)[^/@?#\s]+@")
_SCHEME_TOKEN = re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=-]{4,}")
_KEY_SHAPED = re.compile(
    r"\b(?:sk|pk|rk)-[A-Za-z0-9_*-]{8,}|\b(?:hf|ghp|gho|ghu|ghs|ghr|glpat|xox[abprs])[_-][A-Za-z0-9_-]{8,}"
    r"|\bAKIA[0-9A-Z]{16}\b|\bAIza[0-9A-Za-z_-]{30,}"
)
_ASSIGNED = re.compile(r"(?i)\b([a-z][a-z0-9_-]*)(=)([^&\s\"'#;,]+)")  # api_key=VALUE (a query, a form)
_QUOTED = re.compile(r"""(?i)(["'])([a-z][a-z0-9_-]*)\1(\s*:\s*)(["'])([^"']*)\4""")  # "api_key": "VALUE"
_COLON = re.compile(r"(?i)\b([a-z][a-z0-9_-]*)(:[ \t]+)(?!(?:bearer|basic|token)\s)([^\s\"',;}]+)")  # token: VALUE


def _secret_name(name: str) -> bool:
    """A name whose value is a credential (``api_key``, ``access_token``, ``password``, …); names of
    environment variables (``api_key_env``) are not: they say where a key is, not what it is."""
    words = re.split(r"[^a-z0-9]+", name.lower())
    return words[-1] != "env" and any(w in _SECRET_WORDS for w in words)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with credentials replaced by ``***``: each of ``secrets`` (the key a tier reads from its
    environment variable), a URL's user and password, ``Bearer``/``Basic`` tokens, the value given to a
    secret-looking name (``api_key=…``, ``"token": "…"``) and words shaped like API keys (``sk-…``)."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, _HIDDEN)
    text = _USERINFO.sub(_HIDDEN + "@", text)
    text = _SCHEME_TOKEN.sub(lambda m: f"{m[1]}{m[2]}{_HIDDEN}", text)
    text = _ASSIGNED.sub(lambda m: f"{m[1]}{m[2]}{_HIDDEN}" if _secret_name(m[1]) else m[0], text)
    text = _QUOTED.sub(lambda m: f"{m[1]}{m[2]}{m[1]}{m[3]}{m[4]}{_HIDDEN}{m[4]}" if _secret_name(m[2]) else m[0], text)
    text = _COLON.sub(lambda m: f"{m[1]}{m[2]}{_HIDDEN}" if _secret_name(m[1]) else m[0], text)
    return _KEY_SHAPED.sub(_HIDDEN, text)


def _format(kind: str, target: str, options: Iterable[tuple[str, str]]) -> str:
    head = f"{kind}:{target}" if target else kind
    written = "&".join(f"{k}={quote(v, safe='/:@,.~-_*')}" for k, v in options)
    return f"{head}?{written}" if written else head


def _redacted_text(text: str) -> str:
    """A spec's text, parsed or not, as :meth:`TierSpec.redacted` shows it."""
    head, _, query = text.strip().partition("?")
    kind, _, target = head.partition(":")
    return TierSpec(kind, target, tuple(parse_qsl(query, keep_blank_values=True))).redacted()


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
                f"unknown tier spec {_redacted_text(text)!r}",
                hint="use " + ", ".join(_EXAMPLES.values()) + ", rules or knn",
            )
        options: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name in RENAMED:
                warnings.warn(
                    f"tier option {name!r} is now {RENAMED[name]!r} (in {_redacted_text(text)!r})",
                    DeprecationWarning,
                    stacklevel=3,
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
                f"unknown {self.kind} tier options {unknown} in {self.redacted()!r}",
                hint=f"{self.kind} takes {', '.join(sorted(known)) or 'no options'}",
            )
        if self.kind in ("rules", "knn"):
            if self.target:
                raise ConfigError(f"the {self.kind!r} tier takes no target, got {self.redacted()!r}")
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
            raise ConfigError(
                f"tier option {name}={redact(value)!r} is not a {kind.__name__} (in {self.redacted()!r})"
            ) from None

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

    def redacted(self) -> str:
        """The spec as text to show or record: written as :meth:`__str__` writes it, with a URL's user and
        password, the value of any secret-looking option and key-shaped values replaced by ``***``
        (:func:`redact`). Option *names* such as ``api_key_env`` stay: they name a variable, not a key."""
        options = ((k, _HIDDEN if _secret_name(k) else redact(v)) for k, v in self.options)
        return _format(self.kind, redact(self.target), options)

    def __str__(self) -> str:
        """The spec as text, credentials included (:meth:`redacted` is the text to show)."""
        return _format(self.kind, self.target, self.options)

    def __repr__(self) -> str:
        return f"TierSpec.parse({self.redacted()!r})"
