"""Result and Trace: what a node did with one input, every attempt accounted for.

A trace file keeps each input's text unless told not to (``Trace(path, keep_input=False)``,
``collect(path, keep_input=False)``, ``Node(..., trace=Trace(path, keep_input=False))``): for inputs
holding personal data, each record then has the text's sha256 and length (``input_sha256``,
``input_chars``) instead, enough to match a record to its input without keeping the input.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["Attempt", "Outcome", "Result", "Trace", "collect", "publish"]

Outcome = Literal["accepted", "low_confidence", "invalid", "engine_error", "input_error"]


@dataclass
class Attempt:
    """One try of one tier."""

    tier: str
    outcome: Outcome
    reason: str = ""
    raw: str = ""
    value: Any = None
    confidence: float | None = None
    confidence_method: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """The outcome of a node on one input. ``ok`` means ``value`` validated and was accepted."""

    node: str
    ok: bool
    value: Any = None
    confidence: float | None = None
    tier: str | None = None
    """The tier whose answer was accepted (None on failure)."""
    accepted: Literal["confident", "below_threshold", "no_confidence", "abstained", ""] = ""
    reason: str = ""
    """On failure, and for an answer that needs review: every attempt's reason, joined."""
    attempts: list[Attempt] = field(default_factory=list)
    input_id: str | None = None
    input_text: str = ""
    config_hash: str = ""

    @property
    def needs_review(self) -> bool:
        """Accepted although no tier cleared the threshold (``accepted == "below_threshold"``, the policy's
        ``when_unsure="best"``): the best answer there was, for a person to check; ``reason`` says why."""
        return self.ok and self.accepted == "below_threshold"

    @property
    def status(self) -> Literal["accepted", "needs_review", "abstained", "failed"]:
        """How the input ended: an answer accepted as confident (or validated at the last tier when it gives
        no confidence), one that :attr:`needs_review`, an abstention, or a failure."""
        if not self.ok:
            return "failed"
        if self.accepted == "abstained":
            return "abstained"
        return "needs_review" if self.needs_review else "accepted"

    @property
    def escalated(self) -> bool:
        return len({a.tier for a in self.attempts}) > 1

    @property
    def cost_usd(self) -> float:
        return sum(a.cost_usd for a in self.attempts)

    @property
    def latency_s(self) -> float:
        return sum(a.latency_s for a in self.attempts)

    @property
    def tokens(self) -> int:
        return sum(a.prompt_tokens + a.completion_tokens for a in self.attempts)

    def to_record(self, *, keep_input: bool = True) -> dict[str, Any]:
        """A JSON-able dict: the line written to a trace file. ``keep_input=False``: the input's sha256
        and length (``input_sha256``, ``input_chars``) in place of its text (``input_text``)."""
        rec = asdict(self)
        rec.update(status=self.status, escalated=self.escalated, cost_usd=self.cost_usd, latency_s=self.latency_s)
        if not keep_input:
            text = rec.pop("input_text")
            rec["input_sha256"] = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
            rec["input_chars"] = len(text)
        return rec


class Trace:
    """Collects results (thread-safe) and optionally appends each to a JSONL file."""

    def __init__(self, path: str | Path | None = None, *, keep_input: bool = True) -> None:
        """
        Args:
            path: a JSONL file each result is appended to (``None``: kept in :attr:`results` only).
            keep_input: write each input's text to the file; ``False`` writes its sha256 and length
                instead (:meth:`Result.to_record`), for inputs that hold personal data. :attr:`results`
                are the results themselves, as the node returned them.
        """
        self.results: list[Result] = []
        self.path = Path(path) if path is not None else None
        self.keep_input = keep_input
        self._lock = threading.Lock()

    def add(self, result: Result) -> None:
        with self._lock:
            self.results.append(result)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                record = result.to_record(keep_input=self.keep_input)
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")

    def summary(self, node: str | None = None) -> dict[str, Any]:
        """Counts, escalation rate, cost and latency over the collected results (of one node, if given):
        :func:`agentkit.stats.summarize`."""
        from agentkit.stats import summarize

        rs = [r for r in self.results if node is None or r.node == node]
        return summarize(
            [
                {"ok": r.ok, "escalated": r.escalated, "tier": r.tier, "cost_usd": r.cost_usd, "latency_s": r.latency_s}
                for r in rs
            ]
        )


_active: ContextVar[tuple[Trace, ...]] = ContextVar("agentkit_traces", default=())


@contextmanager
def collect(path: str | Path | None = None, *, keep_input: bool = True) -> Iterator[Trace]:
    """Collect every result produced inside the block (any node, any thread LangGraph starts
    from it) without adding keys to the host graph's state; ``path`` and ``keep_input`` as for :class:`Trace`."""
    trace = Trace(path, keep_input=keep_input)
    token = _active.set((*_active.get(), trace))
    try:
        yield trace
    finally:
        _active.reset(token)


def publish(result: Result) -> None:
    """Hand ``result`` to every active :func:`collect` block."""
    for trace in _active.get():
        trace.add(result)
