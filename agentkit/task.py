"""Task: a narrow job (prompt + output type + validators) that one tier answers once.

A task knows how to ask an engine and how to check the reply; the :class:`~agentkit.node.Node`
decides what to do with the answer (accept, escalate, fail).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agentkit.engine import Engine, Usage
from agentkit.errors import ConfigError, InputError
from agentkit.policy import Policy

__all__ = ["Answer", "Task"]


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


class Task(ABC):
    """A narrow task. Subclasses implement :meth:`answer`; configuration is fixed at init.

    A task is a value: :meth:`variant` builds another through the constructor, with some of the
    settings the task declares in :attr:`knobs` changed (a tier's own settings, a config file's)."""

    kind: str = "task"
    max_input_chars: int = 200_000
    knobs: ClassVar[frozenset[str]] = frozenset()
    """Constructor arguments a tier may set for itself (``Tier(..., task={"k": 0})``) or a config file may set."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Record the arguments each task was built with, so that :meth:`variant` can build it again."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording(self: Task, *args: Any, **kw: Any) -> None:
            if "_arguments" not in self.__dict__:  # the outermost constructor's arguments: those of type(self)
                bound = signature.bind(self, *args, **kw).arguments
                bound.pop(next(iter(signature.parameters)))  # self
                for name, param in signature.parameters.items():
                    if param.kind is inspect.Parameter.VAR_KEYWORD and name in bound:
                        bound.update(bound.pop(name))
                self.__dict__["_arguments"] = dict(bound)
            init(self, *args, **kw)

        cls.__init__ = recording  # type: ignore[method-assign,assignment]

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
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(f"input is not valid text: a lone surrogate at character {e.start}") from None
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

    def training_reply(self, value: Any) -> str:
        """The reply a model is trained to write for the gold ``value`` (:func:`agentkit.tune.training_set`).
        A task that cannot be tuned raises :class:`ConfigError`."""
        raise ConfigError(f"a {self.kind} task cannot be tuned yet", hint="Classify, Extract and GroundedAnswer can")

    def variant(self, **knobs: Any) -> Task:
        """This task built again with some :attr:`knobs` changed (built once per setting, then reused).
        Whatever the task built from its data (an example index) is shared, not built again."""
        unknown = set(knobs) - self.knobs
        if unknown:
            raise ConfigError(
                f"a {self.kind} task has no setting {sorted(unknown)} a tier or config may change",
                hint=f"one of {sorted(self.knobs)}" if self.knobs else f"a {self.kind} task has none",
            )
        if not knobs:
            return self
        key = tuple(sorted((k, repr(v)) for k, v in knobs.items()))
        cache: dict[tuple[tuple[str, str], ...], Task] = self.__dict__.setdefault("_variants", {})
        if key not in cache:  # kept, so a variant's own caches (prompt prefix, prior) live on
            cache[key] = type(self)(**{**self.__dict__["_arguments"], **self._shared(), **knobs})
        return cache[key]

    def _shared(self) -> dict[str, Any]:
        """Constructor arguments that hand a variant what this task already built (e.g. its example index)."""
        return {}

    def settings(self) -> dict[str, Any]:
        """What identifies this task's configuration (hashed into every trace)."""
        return {"kind": self.kind}

    def config_hash(self) -> str:
        blob = json.dumps(self.settings(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
