"""The engine interface every backend implements, and the values that cross it.

Tasks speak in chat messages and constraints; an engine turns them into tokens, keeps
what it can cached, and reports usage and probabilities. Backends import their SDK lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from agentkit.validation import Drop, Validator

if TYPE_CHECKING:
    import pydantic

__all__ = [
    "Capabilities",
    "Constraint",
    "Engine",
    "Generation",
    "Message",
    "Scores",
    "Structured",
    "StructuredEngine",
    "Usage",
    "choice_logprobs",
]

Message = dict[str, str]
"""``{"role": "system" | "user" | "assistant", "content": str}``"""


@dataclass(frozen=True)
class Constraint:
    """What the output must match. Hashable, so an engine compiles each one once."""

    kind: Literal["json", "choice", "regex", "span", "text"]
    spec: str = ""
    """JSON Schema text for ``json``, the regex for ``regex``, a JSON list for ``choice``,
    ``{"source", "lead", "stops"}`` JSON for ``span``."""

    @classmethod
    def json_schema(cls, schema: dict[str, Any]) -> Constraint:
        import json

        return cls("json", json.dumps(schema))  # key order kept: the output's fields come in the schema's order

    @classmethod
    def choice(cls, options: list[str]) -> Constraint:
        import json

        return cls("choice", json.dumps(list(options)))

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        return cls("regex", pattern)

    @classmethod
    def span(cls, source: str, *, lead: str = "", stops: list[str] | None = None) -> Constraint:
        """Output is one of ``stops`` exactly, or ``lead`` followed by a contiguous piece of
        ``source`` (token for token, as the engine tokenizes it): extractive answers that cannot
        be invented. Engines without it fall back to :meth:`span_regex`."""
        import json

        return cls("span", json.dumps({"source": source, "lead": lead, "stops": list(stops or [])}))

    def span_regex(self) -> Constraint:
        """A looser regex for engines that cannot constrain to a span: ``stops`` or ``lead`` + one line."""
        import json
        import re

        spec = json.loads(self.spec)
        options = [re.escape(s) for s in spec["stops"]] + [re.escape(spec["lead"]) + r"[^\n]{1,300}"]
        return Constraint.regex("(" + "|".join(options) + ")")


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do; tasks pick their method from this."""

    constrained: bool = True
    """Output can be grammar-constrained."""
    token_probs: bool = True
    """Chosen-token probabilities (under the constraint) are reported."""
    scoring: bool = True
    """Log-probability of given continuations can be computed (label scoring)."""
    context: int = 4096
    """Context window in tokens."""
    structured: bool = False
    """The engine fills a pydantic schema itself, validating and re-asking (:class:`StructuredEngine`),
    e.g. an API through instructor; tasks then ask it for the object instead of constrained text."""
    model: bool = True
    """A language model answers (``False`` for the ``rules`` and ``knn`` tiers, which run no model)."""


@dataclass
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens served from the cache (not recomputed)."""
    completion_tokens: int = 0
    seconds: float = 0.0


@dataclass
class Generation:
    text: str
    finish_reason: Literal["stop", "length"]
    token_probs: list[float] | None
    """Per generated token: its probability renormalized over what the constraint allowed."""
    tokens: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    """Character offset in ``text`` where each generated token starts."""
    usage: Usage = field(default_factory=Usage)
    stop_prob: float | None = None
    """Probability of the end-of-reply token where the reply stopped (under the constraint)."""


@dataclass
class Scores:
    logprobs: list[float]
    """Log-probability of each continuation being the whole reply, in the order given."""
    usage: Usage = field(default_factory=Usage)


@runtime_checkable
class Engine(Protocol):
    """A model behind one lock. ``prefix`` = number of leading messages that are fixed for
    a node (instructions, label list): engines that cache keep them warm across calls."""

    name: str

    @property
    def capabilities(self) -> Capabilities:
        """What the engine can do (a server's are known once it is reached)."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def generate(
        self, messages: list[Message], constraint: Constraint, *, max_tokens: int, prefix: int = 0
    ) -> Generation: ...

    def score(
        self,
        messages: list[Message],
        continuations: list[str],
        *,
        prefix: int = 0,
        margin: float | None = None,
        choice: bool = False,
    ) -> Scores:
        """Log-probability of each continuation being the whole reply. ``margin``: the best continuation
        must be exact; the engine may report any other at an upper bound (e.g. its first tokens') once it
        cannot be the best, and may leave it there once it is ``margin`` nats below the best.
        ``choice``: the log-probability as a choice among the continuations (:func:`choice_logprobs`)."""
        ...


@dataclass
class Structured:
    """A :class:`StructuredEngine`'s reply: the validated object (``None`` when no reply validated),
    the usage of every try, the last try's problems, and the optional fields the validators dropped."""

    value: Any
    usage: Usage
    problems: list[str] = field(default_factory=list)
    dropped: list[Drop] = field(default_factory=list)


@runtime_checkable
class StructuredEngine(Engine, Protocol):
    """An engine that returns validated objects (``capabilities.structured``)."""

    def structured(
        self,
        messages: list[Message],
        schema: type[pydantic.BaseModel],
        *,
        text: str = "",
        validators: Sequence[Validator] = (),
        max_tokens: int = 512,
    ) -> Structured:
        """The reply as ``schema``, checked by ``validators`` against the source ``text``, re-asked with
        the problems a bounded number of times."""
        ...


def choice_logprobs(encoded: list[list[int]], token_logprobs: list[list[float]]) -> list[float]:
    """Each token sequence's log-probability as a choice among ``encoded``: the probability that
    decoding constrained to these sequences produces it. Where the sequences part, a token's
    probability is renormalized over the tokens they part into; a token that is the only way on
    counts 1 (so it need not be decoded at all). ``token_logprobs[i][j]``: the model's log-probability
    of ``encoded[i][j]`` after ``encoded[i][:j]``. The results sum to 1 in probability."""
    import math

    parts: dict[tuple[int, ...], dict[int, float]] = {}
    for ct, lps in zip(encoded, token_logprobs, strict=True):
        for j, (tok, lp) in enumerate(zip(ct, lps, strict=True)):
            parts.setdefault(tuple(ct[:j]), {})[tok] = lp
    norm = {}
    for node, options in parts.items():
        if len(options) > 1:
            top = max(options.values())
            norm[node] = top + math.log(sum(math.exp(v - top) for v in options.values()))
    totals = []
    for ct, lps in zip(encoded, token_logprobs, strict=True):
        nodes = (tuple(ct[:j]) for j in range(len(ct)))
        totals.append(sum(lp - norm[node] for node, lp in zip(nodes, lps, strict=True) if node in norm))
    return totals
