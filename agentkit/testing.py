"""Deterministic fake engines for users' own tests (and agentkit's), named as what they are.

A fake engine exists only to exercise logic that a real model cannot produce on demand:
a forced validation failure, an engine error, a given confidence. It never stands in for
a model's quality.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from agentkit.engine import Capabilities, Constraint, Generation, Message, Scores, Usage
from agentkit.errors import EngineError


@dataclass
class FakeEngine:
    """Replies from a script, in order (cycling on the last one).

    Each scripted reply is either a string (returned by ``generate``; for ``score`` the
    continuation equal to it gets probability ``confidence``) or an exception to raise.
    """

    replies: Sequence[str | Exception] = ("",)
    confidence: float = 0.99
    name: str = "fake"
    capabilities: Capabilities = field(default_factory=Capabilities)
    seconds: float = 0.001
    calls: list[list[Message]] = field(default_factory=list)

    def _next(self) -> str:
        i = min(len(self.calls) - 1, len(self.replies) - 1)
        reply = self.replies[i]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(
        self, messages: list[Message], constraint: Constraint, *, max_tokens: int, prefix: int = 0
    ) -> Generation:
        self.calls.append(messages)
        text = self._next()
        words = text.split(" ")
        offsets, pos = [], 0
        for w in words:
            offsets.append(pos)
            pos += len(w) + 1
        probs = [self.confidence] * len(words)
        finish = "length" if len(words) > max_tokens else "stop"
        usage = Usage(
            prompt_tokens=sum(len(m["content"].split()) for m in messages),
            completion_tokens=len(words),
            seconds=self.seconds,
        )
        return Generation(text=text, finish_reason=finish, token_probs=probs, offsets=offsets, usage=usage)  # type: ignore[arg-type]

    def score(self, messages: list[Message], continuations: list[str], *, prefix: int = 0) -> Scores:
        self.calls.append(messages)
        chosen = self._next()
        n = len(continuations)
        rest = (1 - self.confidence) / max(1, n - 1)
        lps = [math.log(self.confidence if c == chosen else rest) for c in continuations]
        return Scores(logprobs=lps, usage=Usage(prompt_tokens=10, seconds=self.seconds))


def failing_engine(times: int, then: str, *, retryable: bool = True) -> FakeEngine:
    """A fake engine that raises ``times`` engine errors, then replies ``then``."""
    return FakeEngine(replies=[EngineError("fake transient failure", retryable=retryable)] * times + [then])
