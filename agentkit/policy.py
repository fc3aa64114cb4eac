"""Policy: when a node accepts an answer, retries a tier, escalates, or gives up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Policy:
    """How a node walks its tier ladder. Immutable; safe defaults."""

    threshold: float = 0.8
    """An answer that validates is accepted when its confidence is at least this."""
    retries: int = 2
    """Extra tries of the same tier after a transient (retryable) engine error."""
    retry_wait_s: float = 0.5
    """First back-off between retries (exponential, jittered, capped at 8 s)."""
    when_unsure: Literal["best", "fail", "abstain"] = "best"
    """When no tier clears ``threshold``: ``"best"`` returns the most confident valid answer
    (marked ``accepted="below_threshold"``), ``"fail"`` returns a failure result, ``"abstain"``
    returns the task's abstention (e.g. "not in the corpus", ``accepted="abstained"``)."""
    escalate_abstentions: bool = False
    """A cheaper tier's abstention ("not in the corpus") is never accepted: the next tier is asked.
    Trades correct abstentions for answers; off by default, measure it per node (``agentkit eval``)."""
    on_failure: Literal["return", "raise"] = "return"
    """``"return"``: a failure comes back as a :class:`~agentkit.result.Result` with ``ok=False``;
    ``"raise"``: :class:`~agentkit.errors.TaskFailed` is raised (it carries the result)."""
    too_long: Literal["fail", "truncate"] = "fail"
    """Input longer than the tier's context: fail clearly, or truncate it (recorded in the trace)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.retries < 0:
            raise ValueError("retries must be >= 0")

    def accepts(self, confidence: float | None, *, last: bool) -> bool:
        """Whether a valid answer with ``confidence`` is accepted at this rung.

        No confidence (the tier cannot give one) is accepted on validation alone only at the last tier."""
        if confidence is None:
            return last
        return confidence >= self.threshold

    def passes_up(self, *, abstains: bool, last: bool) -> bool:
        """Whether an answer goes to the next tier whatever its confidence: a cheaper tier's
        abstention under ``escalate_abstentions``."""
        return abstains and self.escalate_abstentions and not last

    def accepts_answer(self, confidence: float | None, *, last: bool, abstains: bool) -> bool:
        """:meth:`accepts`, unless the answer :meth:`passes_up`."""
        return not self.passes_up(abstains=abstains, last=last) and self.accepts(confidence, last=last)
