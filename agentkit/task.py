"""Task: a narrow job (prompt + output type + validators) that one tier answers once.

A task knows how to ask an engine and how to check the reply; the :class:`~agentkit.node.Node`
decides what to do with the answer (accept, escalate, fail).
"""

from __future__ import annotations

import copy
import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from agentkit.engine import Engine, Usage
from agentkit.errors import ConfigError, InputError
from agentkit.policy import Policy


@dataclass
class Answer:
    """One engine's reply to one input, parsed and checked."""

    value: Any
    raw: str
    confidence: float | None
    method: str
    """How confidence was computed (e.g. ``label-scoring``, ``token-probs:q10``)."""
    usage: Usage
    problems: list[str] = field(default_factory=list)
    """Validation problems; empty means the value is valid."""
    details: dict[str, Any] = field(default_factory=dict)


TASK_KNOBS = (
    "k", "shortlist", "example_chars", "max_tokens", "quantile", "vote_k", "list_labels", "static_per_label",
    "verbalizer", "score_margin", "scoring", "verify",
)  # fmt: skip
"""Task attributes that can change after the task is built: a config file may set them, and a tier
may override them for itself (``Tier(..., task={"k": 0})``)."""


class Task(ABC):
    """A narrow task. Subclasses implement :meth:`answer`; configuration is fixed at init."""

    kind: str = "task"
    max_input_chars: int = 200_000

    def check_input(self, value: Any) -> str:
        """The text to work on, or :class:`InputError` saying what is wrong with ``value``."""
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError("input is binary, not UTF-8 text") from None
        if not isinstance(value, str):
            raise InputError(f"input must be text, got {type(value).__name__}")
        if "\x00" in value:
            raise InputError("input contains NUL bytes (binary data?)")
        if not value.strip():
            raise InputError("input is empty")
        if len(value) > self.max_input_chars:
            raise InputError(f"input is {len(value)} characters, the limit is {self.max_input_chars}")
        return value

    @abstractmethod
    def answer(self, engine: Engine, text: str) -> Answer:
        """Ask ``engine`` once and check the reply."""

    def default_policy(self) -> Policy:
        """The policy a node gets when none is given."""
        return Policy()

    def abstention(self, reason: str) -> Any:
        """The value returned when no tier is confident and the policy says ``abstain``
        (e.g. "not in the corpus"). Tasks that cannot abstain raise :class:`ConfigError`."""
        raise ConfigError(f"{self.kind} cannot abstain", hint="use when_unsure='best' or 'fail'")

    def is_abstention(self, value: Any) -> bool:
        """Whether a tier's answer ``value`` is itself an abstention (a grounded "not in these passages")."""
        return False

    def variant(self, **knobs: Any) -> Task:
        """A copy with some :data:`TASK_KNOBS` changed, sharing everything else (its example index);
        made once per setting of the task and the knobs."""
        unknown = set(knobs) - set(TASK_KNOBS)
        if unknown:
            raise ConfigError(f"a tier cannot change {sorted(unknown)} of a task", hint=f"one of {TASK_KNOBS}")
        missing = [k for k in knobs if not hasattr(self, k)]
        if missing:
            raise ConfigError(f"a {self.kind} task has no setting {missing}")
        key = (self.config_hash(), tuple(sorted((k, repr(v)) for k, v in knobs.items())))
        cache = self.__dict__.setdefault("_variants", {})
        if key not in cache:  # kept, so a variant's own caches (prompt prefix, prior) live on
            twin = copy.copy(self)
            for k, v in knobs.items():
                setattr(twin, k, v)
            twin._variants = {}
            twin._forget()
            cache[key] = twin
        return cache[key]

    def _forget(self) -> None:  # noqa: B027 - a hook: most tasks derive nothing from their knobs
        """Drop what was derived from the settings (a cached prompt prefix), after they changed."""

    def settings(self) -> dict[str, Any]:
        """What identifies this task's configuration (hashed into every trace)."""
        return {"kind": self.kind}

    def config_hash(self) -> str:
        blob = json.dumps(self.settings(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
