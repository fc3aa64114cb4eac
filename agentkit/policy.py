"""Policy: when a node accepts an answer, retries a tier, escalates, or gives up.

:meth:`Policy.decide` is the ladder's one decision rule. :class:`~agentkit.node.Node` calls it after
each tier's answer, and ``agentkit eval`` calls it on cached answers to derive every cascade, so the
thresholds eval picks are measured on the rule a node runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from agentkit.errors import ConfigError

__all__ = ["Acceptance", "Decision", "Policy", "Rung", "Verdict"]

Verdict = Literal["accept", "invalid", "passed_up", "unscored", "low_confidence"]
"""What the policy made of one tier's answer: ``accept``; ``invalid`` (it did not validate, or the tier
failed); ``passed_up`` (an abstention sent on under ``escalate_abstentions``); ``unscored`` (no
confidence, before the last tier); ``low_confidence`` (below the threshold)."""

Acceptance = Literal["confident", "no_confidence", "below_threshold", "abstained", ""]
"""How a result was accepted (``Result.accepted``)."""


@dataclass(frozen=True)
class Rung:
    """What the policy weighs of one tier's answer."""

    valid: bool
    """The answer parsed and validated (an invalid answer or a tier's error is not valid)."""
    confidence: float | None = None
    """The tier's confidence, ``None`` when the tier gives none."""
    abstains: bool = False
    """The answer is itself an abstention (a grounded "not in these passages")."""


@dataclass(frozen=True)
class Decision:
    """The policy's decision after the rungs asked so far."""

    action: Literal["next", "accept", "abstain", "fail"]
    """``next``: ask the next tier; else the node's result."""
    index: int | None = None
    """The rung whose answer is returned: the accepted one, or (``abstain``) the last rung that
    abstained on its own — ``None`` when no rung did and the task's own abstention is returned."""
    how: Acceptance = ""
    verdicts: tuple[Verdict, ...] = ()
    """One per rung asked, in order."""


@dataclass(frozen=True)
class Policy:
    """How a node walks its tier ladder. Immutable; safe defaults."""

    threshold: float = 0.8
    """An answer that validates is accepted when its confidence is at least this."""
    review_threshold: float | None = None
    """An answer accepted with a confidence below this (but at or above ``threshold``) is accepted without
    asking a costlier tier, and marked for review (``accepted="below_threshold"``): where the next tier
    would not be more often right, a person is. ``None``: only answers below ``threshold`` are marked."""
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
    deadline_s: float | None = None
    """Seconds one input may take over all its tiers and retries: once they are spent no tier is retried
    or asked, and the input ends as the policy decides on what it has (a call in flight runs to its
    engine's own timeout). ``None``: no deadline."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.review_threshold is not None and not 0.0 <= self.review_threshold <= 1.0:
            raise ConfigError(f"review_threshold must be in [0, 1], got {self.review_threshold}")
        if self.retries < 0:
            raise ConfigError(f"retries must be >= 0, got {self.retries}")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ConfigError(f"deadline_s must be > 0 seconds, got {self.deadline_s}")
        for name, allowed in (
            ("when_unsure", ("best", "fail", "abstain")),
            ("on_failure", ("return", "raise")),
            ("too_long", ("fail", "truncate")),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def verdict(self, rung: Rung, *, last: bool) -> Verdict:
        """What one tier's answer comes to at its place on the ladder."""
        if not rung.valid:
            return "invalid"
        if rung.abstains and self.escalate_abstentions and not last:
            return "passed_up"
        if rung.confidence is None:
            return "accept" if last else "unscored"  # validation alone suffices only at the top
        return "accept" if rung.confidence >= self.threshold else "low_confidence"

    def decide(self, rungs: Sequence[Rung], *, tiers: int) -> Decision:
        """The decision after asking the first ``len(rungs)`` of ``tiers`` tiers, cheapest first."""
        if not 0 < len(rungs) <= tiers:
            raise ValueError(f"{len(rungs)} answers for a ladder of {tiers} tiers")
        verdicts = tuple(self.verdict(r, last=i == tiers - 1) for i, r in enumerate(rungs))
        last = len(rungs) - 1
        if verdicts[last] == "accept":
            confidence = rungs[last].confidence
            how: Acceptance = "confident" if confidence is not None else "no_confidence"
            if confidence is not None and self.review_threshold is not None and confidence < self.review_threshold:
                how = "below_threshold"
            return Decision("accept", last, how, verdicts)
        if len(rungs) < tiers:
            return Decision("next", verdicts=verdicts)
        scored = [i for i, r in enumerate(rungs) if r.valid and r.confidence is not None]
        if scored and self.when_unsure == "best":
            best = max(scored, key=lambda i: rungs[i].confidence or 0.0)  # the first of equals
            return Decision("accept", best, "below_threshold", verdicts)
        if self.when_unsure == "abstain":
            own = [i for i, r in enumerate(rungs) if r.valid and r.abstains]
            return Decision("abstain", own[-1] if own else None, "abstained", verdicts)
        return Decision("fail", verdicts=verdicts)
