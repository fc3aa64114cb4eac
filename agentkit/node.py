"""Node: a task bound to a ladder of tiers and a policy; usable as a LangGraph node.

``node.run(text)`` walks the ladder: each tier answers once (transient engine errors are
retried with tenacity); an answer that validates and clears the threshold is accepted,
anything else escalates. Every attempt is recorded; a failure keeps the input and every
reason. ``node(state)`` does the same inside any ``StateGraph``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agentkit.calibration import FieldCalibration, TierCalibration, agreement
from agentkit.errors import AgentkitError, ConfigError, InputError, TaskFailed
from agentkit.policy import Decision, Policy, Rung, Verdict
from agentkit.result import Attempt, Result, Trace, publish
from agentkit.task import Answer, Task
from agentkit.tier import Tier

__all__ = ["DEFAULT_LADDER", "InputSelector", "Node", "select"]

DEFAULT_LADDER = ("embedded:qwen2.5-0.5b", "embedded:qwen2.5-1.5b")

InputSelector = str | Callable[[Any], Any]
"""A state key, a dotted path (``"doc.text"``), or a callable ``state -> input``."""


def select(state: Any, selector: InputSelector) -> Any:
    """Read a node's input from a LangGraph state (dict, pydantic model or dataclass)."""
    if callable(selector):
        return selector(state)
    value = state
    for part in selector.split("."):
        if isinstance(value, Mapping):
            if part not in value:
                raise InputError(f"state has no key {selector!r}")
            value = value[part]
        elif isinstance(value, (list, tuple)) and part.lstrip("-").isdigit():
            value = value[int(part)]
        elif hasattr(value, part):
            value = getattr(value, part)
        else:
            raise InputError(f"state has no key {selector!r}")
    if hasattr(value, "content") and not isinstance(value, (str, bytes)):
        value = value.content  # a LangChain message
    return value


class Node:
    """A narrow task on a tier ladder. Build once, call many times; models load on first use."""

    def __init__(
        self,
        task: Task,
        tiers: Sequence[str | Tier] = DEFAULT_LADDER,
        policy: Policy | None = None,
        *,
        name: str | None = None,
        input: InputSelector = "input",
        output: str | None = None,
        meta: str | None = None,
        trace: str | Path | Trace | None = None,
        calibration: TierCalibration | str | Path | None = None,
    ) -> None:
        """
        Args:
            task: what to do (Classify, Extract, Cleanse, GroundedAnswer, …).
            tiers: the ladder, cheapest first; specs (``embedded:qwen2.5-0.5b``, ``gguf:PATH``) or Tiers.
            policy: acceptance / retry / escalation rules.
            name: node name in traces and graphs (default: the task kind).
            input: where the input is in a graph state.
            output: state key for the value (default: ``name``).
            meta: optional state key for ``{ok, needs_review, tier, confidence, reason, cost_usd}``.
            trace: a JSONL path or Trace that receives every result.
            calibration: a :class:`~agentkit.calibration.TierCalibration` (or its file, as ``agentkit eval``
                writes it): each tier's confidence becomes its calibrated probability of being right, and
                the policy decides on that (the raw score stays in the attempt's details).
        """
        if not tiers:
            raise ValueError("a node needs at least one tier")
        self.task = task
        self.tiers = [Tier.parse(t) for t in tiers]
        self.policy = policy or task.default_policy()
        if self.policy.when_unsure == "abstain":
            task.abstention("")  # a task that cannot abstain says so now, not mid-batch
        self.name = name or task.kind
        self.input = input
        self.output = output or self.name
        self.meta = meta
        self.trace = trace if isinstance(trace, Trace) or trace is None else Trace(trace)
        if isinstance(calibration, FieldCalibration):
            raise ConfigError(
                "a node takes a TierCalibration (agentkit eval fits one); a FieldCalibration belongs to an Extract",
                hint="Extract(..., calibration=...)",
            )
        self.calibration = TierCalibration.load(calibration) if isinstance(calibration, (str, Path)) else calibration

    def replace(self, **changes: Any) -> Node:
        """A new node like this one with some constructor arguments changed (``task``, ``tiers``, ``policy``, …)."""
        current = {"task": self.task, "tiers": self.tiers, "policy": self.policy, "name": self.name,
                   "input": self.input, "output": self.output, "meta": self.meta, "trace": self.trace,
                   "calibration": self.calibration}  # fmt: skip
        unknown = set(changes) - set(current)
        if unknown:
            raise TypeError(f"Node has no argument {sorted(unknown)}")
        return Node(**{**current, **changes})

    def adopt(self, other: Node) -> None:
        """Take on ``other``'s task, tiers, policy and calibration as one whole: for a node a compiled graph
        holds, which cannot be swapped for a new one. Nothing is changed inside a task or tier."""
        self.task, self.tiers, self.policy = other.task, list(other.tiers), other.policy
        self.calibration = other.calibration

    # ---- running -------------------------------------------------------------------

    def config_hash(self) -> str:
        settings: dict[str, Any] = {
            "task": self.task.settings(),
            "tiers": [{"spec": t.spec, "task": t.task} if t.task else t.spec for t in self.tiers],
            "policy": asdict(self.policy),
        }
        if self.calibration is not None:
            settings["calibration"] = self.calibration.data
        blob = json.dumps(settings, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def run(self, value: Any, *, input_id: str | None = None) -> Result:
        """Answer one input. Returns a Result (``ok`` or a failure with every reason)."""
        try:
            text = self.task.check_input(value)
        except InputError as e:
            return self._input_failure(e, value, input_id)
        result = Result(node=self.name, ok=False, input_id=input_id, config_hash=self.config_hash(), input_text=text)
        rungs: list[Rung] = []
        deadline = self.policy.deadline_s
        until = time.perf_counter() + deadline if deadline is not None else None
        for tier in self.tiers:
            if until is not None and time.perf_counter() >= until:
                reason = f"the input's deadline of {deadline:g} s passed before this tier was asked"
                attempt = Attempt(tier=tier.name, outcome="engine_error", reason=reason)
            else:
                attempt = self.attempt(tier, text, until=until)
                self._calibrate(attempt, result.attempts[-1] if result.attempts else None)
            result.attempts.append(attempt)
            rungs.append(self.rung(attempt))
            decision = self.policy.decide(rungs, tiers=len(self.tiers))
            self._mark(attempt, decision.verdicts[-1])
            if decision.action != "next":
                break
        return self._finish(self._conclude(result, decision))

    def rung(self, attempt: Attempt) -> Rung:
        """What the policy weighs of ``attempt``."""
        valid = attempt.outcome == "accepted"
        return Rung(valid, attempt.confidence, valid and self.task.is_abstention(attempt.value))

    def _mark(self, attempt: Attempt, verdict: Verdict) -> None:
        """Record on ``attempt`` why the policy passed it over."""
        if verdict in ("accept", "invalid"):
            return
        attempt.outcome = "low_confidence"
        if verdict == "passed_up":
            attempt.reason = "abstained; the policy escalates abstentions"
        elif verdict == "unscored":
            attempt.reason = "tier gives no confidence; not accepted before the last tier"
        else:
            attempt.reason = _below(attempt, self.policy.threshold, "threshold")

    def _conclude(self, result: Result, decision: Decision) -> Result:
        """``result`` as ``decision`` makes it."""
        if decision.action == "accept":
            assert decision.index is not None
            attempt = result.attempts[decision.index]
            result.ok, result.value, result.confidence = True, attempt.value, attempt.confidence
            result.tier, result.accepted = attempt.tier, decision.how
            if result.needs_review:  # why no tier was trusted (an extraction's attempts name its weak fields)
                if not attempt.reason and self.policy.review_threshold is not None:  # accepted below the review bar
                    attempt.reason = _below(attempt, self.policy.review_threshold, "review threshold")
                result.reason = _why(result)
            return result
        result.reason = _why(result)
        if decision.action == "abstain":
            result.ok, result.accepted = True, "abstained"
            # a tier's own abstention keeps what it saw (the passages it retrieved); else the task's
            own = decision.index
            result.value = result.attempts[own].value if own is not None else self.task.abstention(result.reason)
        return result

    def _finish(self, result: Result) -> Result:
        if self.trace is not None:
            self.trace.add(result)
        publish(result)
        if not result.ok and self.policy.on_failure == "raise":
            raise TaskFailed(result)
        return result

    def attempt(self, tier: Tier, text: str, *, until: float | None = None) -> Attempt:
        """Ask ``tier`` once: its answer, validated, or the error it met. Transient errors are retried
        (jittered exponential back-off, at least a server's ``Retry-After``), never past ``until``
        (a :func:`time.perf_counter` time)."""
        from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

        assert tier.engine is not None
        engine = tier.engine
        started = time.perf_counter()
        backoff = wait_random_exponential(multiplier=self.policy.retry_wait_s, max=8)

        def stop(state: RetryCallState) -> bool:
            out_of_time = until is not None and time.perf_counter() >= until
            return out_of_time or state.attempt_number >= self.policy.retries + 1

        def wait(state: RetryCallState) -> float:
            pause = backoff(state)
            error = state.outcome.exception() if state.outcome is not None else None
            after = getattr(error, "retry_after_s", None)
            if after:
                pause = max(pause, min(float(after), 60.0))  # a server's word, within reason
            return min(pause, max(0.0, until - time.perf_counter())) if until is not None else pause

        retrying = Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, AgentkitError) and e.retryable),
            stop=stop,
            wait=wait,
            reraise=True,
        )
        details: dict[str, Any] = {"tier": tier.provenance} if tier.provenance else {}
        task = tier.adapt(self.task)
        try:
            try:
                answer: Answer = retrying(task.answer, engine, text)
            except InputError as e:
                if self.policy.too_long != "truncate" or "context" not in str(e):
                    raise
                text = self._truncate(engine, text)
                details["truncated_to_chars"] = len(text)
                answer = retrying(task.answer, engine, text)
        except InputError as e:
            return Attempt(
                tier=tier.name, outcome="input_error", reason=str(e), latency_s=time.perf_counter() - started
            )
        except AgentkitError as e:
            return Attempt(
                tier=tier.name, outcome="engine_error", reason=str(e), latency_s=time.perf_counter() - started
            )
        except Exception as e:  # an unexpected failure is recorded for this input; the batch goes on
            reason = f"unexpected {type(e).__name__}: {e}"
            return Attempt(
                tier=tier.name, outcome="engine_error", reason=reason, latency_s=time.perf_counter() - started
            )
        u = answer.usage
        attempt = Attempt(
            tier=tier.name,
            outcome="accepted",
            raw=answer.raw,
            value=answer.value,
            confidence=answer.confidence,
            confidence_method=answer.method,
            prompt_tokens=u.prompt_tokens,
            cached_tokens=u.cached_tokens,
            completion_tokens=u.completion_tokens,
            latency_s=time.perf_counter() - started,
            cost_usd=tier.cost(u),
            details={**answer.details, **details},
        )
        if answer.problems:
            attempt.outcome, attempt.reason = "invalid", "; ".join(answer.problems)
        return attempt

    def _calibrate(self, attempt: Attempt, before: Attempt | None) -> None:
        """Replace a valid ``attempt``'s confidence by its tier's calibrated probability of being right (given
        whether it agrees with ``before``, the attempt of the tier asked before it), where there is a map."""
        if self.calibration is None or attempt.confidence is None or attempt.outcome != "accepted":
            return
        seen = (before.outcome in ("accepted", "low_confidence"), before.value) if before is not None else None
        p = self.calibration.probability(attempt.tier, attempt.confidence, agreement(seen, attempt.value))
        if p is not None:
            attempt.details.setdefault("raw_confidence", attempt.confidence)
            attempt.confidence = p
            attempt.confidence_method += f"+calibrated:{self.calibration.data[:12]}"

    @staticmethod
    def _truncate(engine: Any, text: str) -> str:
        """Cut ``text`` so that it fits the engine's context with room for the prompt and answer."""
        budget = max(256, engine.capabilities.context // 2)
        n = engine.count_tokens(text)
        while n > budget and len(text) > 16:
            text = text[: int(len(text) * budget / n * 0.95)]
            n = engine.count_tokens(text)
        return text

    async def arun(self, value: Any, *, input_id: str | None = None) -> Result:
        """Async :meth:`run` (the engine work runs in a worker thread)."""
        return await asyncio.to_thread(self.run, value, input_id=input_id)

    def batch(self, values: Sequence[Any], *, concurrency: int = 1) -> list[Result]:
        """Results in input order. ``concurrency > 1`` keeps that many items in flight (worth it on
        server tiers, which batch concurrent requests; a local model serves one at a time anyway)."""
        if concurrency <= 1:
            return [self.run(v) for v in values]
        return asyncio.run(self.abatch(values, concurrency=concurrency))

    async def abatch(self, values: Sequence[Any], *, concurrency: int = 8) -> list[Result]:
        """Async :meth:`batch`: at most ``concurrency`` items in flight, results in input order;
        every input ends as a result (a failure is a failed Result, never a lost item)."""
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        gate = asyncio.Semaphore(concurrency)

        async def one(value: Any) -> Result:
            async with gate:
                return await self.arun(value)

        return list(await asyncio.gather(*(one(v) for v in values)))

    # ---- LangGraph -----------------------------------------------------------------

    def _update(self, result: Result) -> dict[str, Any]:
        update: dict[str, Any] = {self.output: result.value if result.ok else None}
        if self.meta:
            update[self.meta] = {
                "ok": result.ok,
                "needs_review": result.needs_review,
                "tier": result.tier,
                "confidence": result.confidence,
                "reason": result.reason,
                "cost_usd": result.cost_usd,
            }
        return update

    def __call__(self, state: Any) -> dict[str, Any]:
        """LangGraph node: read the input from ``state``, return a partial state update."""
        try:
            value = select(state, self.input)
        except InputError as e:
            value = e  # recorded as an input failure below
        result = self.run(value) if not isinstance(value, InputError) else self._input_failure(value, None, None)
        return self._update(result)

    async def acall(self, state: Any) -> dict[str, Any]:
        """Async LangGraph node (``graph.add_node("x", node.acall)``); the engine runs in a thread."""
        return await asyncio.to_thread(self.__call__, state)

    def _input_failure(self, error: InputError, value: Any, input_id: str | None) -> Result:
        """A failure record for an input no tier was asked about (the input is kept)."""
        result = Result(
            node=self.name,
            ok=False,
            input_id=input_id,
            input_text=(value if isinstance(value, str) else repr(value)[:1000])
            .encode("utf-8", "backslashreplace")
            .decode(),
            config_hash=self.config_hash(),
            reason=str(error),
        )
        result.attempts.append(Attempt(tier="-", outcome="input_error", reason=str(error)))
        return self._finish(result)

    def route(
        self, mapping: Mapping[str, str] | None = None, *, default: str | None = None, review: str | None = None
    ) -> Callable[[Any], str]:
        """A function for ``add_conditional_edges``: the node's output value (a label), mapped
        through ``mapping``; failures and unmapped labels go to ``default``. ``review``: the branch for
        answers marked for review (a person), read from the node's ``meta`` key, which it then needs."""
        if review is not None and not self.meta:
            raise ConfigError(
                f"node {self.name!r} routes answers marked for review but records no meta",
                hint='give the node meta="<state key>"',
            )

        meta = self.meta

        def router(state: Any) -> str:
            if review is not None and meta and _has(state, meta) and (select(state, meta) or {}).get("needs_review"):
                return review
            value = select(state, self.output) if _has(state, self.output) else None
            if value is None:
                if default is None:
                    raise InputError(f"node {self.name!r} produced no value to route on")
                return default
            key = str(value)
            if mapping is None:
                return key
            if key in mapping:
                return mapping[key]
            if default is None:
                raise InputError(f"no route for {key!r}")
            return default

        return router


def _has(state: Any, key: str) -> bool:
    try:
        select(state, key)
        return True
    except InputError:
        return False


def _why(result: Result) -> str:
    """Every attempt's tier, outcome and reason, in order."""
    return "; ".join(f"{a.tier}: {a.outcome}: {a.reason}" for a in result.attempts)


def _below(attempt: Attempt, bar: float, name: str) -> str:
    """Why ``attempt``'s confidence falls short of ``bar``, naming an extraction's weak fields."""
    assert attempt.confidence is not None
    reason = f"confidence {attempt.confidence:.3f} < {name} {bar}"
    counted = attempt.details.get("field_probability")  # calibrated: each field's chance of being right
    if counted is None:
        fields = attempt.details.get("field_confidence") or {}
        counted = {f: c for f, c in fields.items() if f not in attempt.details.get("settled_fields", ())}
    weak = sorted((c, f) for f, c in counted.items() if c < bar)
    if weak:
        reason += " (" + ", ".join(f"{f} {c:.2f}" for c, f in weak[:4]) + ")"
    return reason
