"""Small vs large vs cascade, computed exactly: each item is answered once per tier, and the
cascade at any threshold is derived from those answers with the node's own policy rules."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from agentkit.errors import AgentkitError
from agentkit.policy import Policy
from agentkit.task import Task
from agentkit.tier import Tier


@dataclass
class TierAnswer:
    """One tier's answer to one item."""

    value: Any
    valid: bool
    confidence: float | None
    cost_usd: float
    seconds: float
    error: str = ""


def answer_all(
    task: Task,
    tiers: Sequence[Tier],
    inputs: Sequence[Any],
    *,
    on_item: Callable[[int], None] | None = None,
) -> list[list[TierAnswer]]:
    """``answers[i][t]``: tier ``t``'s answer to input ``i``."""
    table: list[list[TierAnswer]] = []
    for i, value in enumerate(inputs):
        row: list[TierAnswer] = []
        for tier in tiers:
            assert tier.engine is not None
            t0 = time.perf_counter()
            try:
                text = task.check_input(value)
                a = task.answer(tier.engine, text)
            except AgentkitError as e:
                row.append(TierAnswer(None, False, None, 0.0, time.perf_counter() - t0, error=str(e)))
                continue
            cost = tier.cost(a.usage)
            row.append(
                TierAnswer(a.value, not a.problems, a.confidence, cost, time.perf_counter() - t0, "; ".join(a.problems))
            )
        table.append(row)
        if on_item:
            on_item(i)
    return table


@dataclass
class CascadeOutcome:
    value: Any
    tier: int | None
    """Index of the tier whose answer was taken (None: failure)."""
    cost_usd: float
    seconds: float
    escalated: bool
    abstained: bool = False


def cascade(row: Sequence[TierAnswer], policy: Policy, abstention: Any = None) -> CascadeOutcome:
    """What a node with ``policy`` over these tiers would have returned (same rules as ``Node.run``);
    ``abstention`` is the value of an abstained outcome (``when_unsure="abstain"``)."""
    cost = seconds = 0.0
    best: tuple[float, int] | None = None
    for t, a in enumerate(row):
        cost += a.cost_usd
        seconds += a.seconds
        last = t == len(row) - 1
        if not a.valid:
            continue
        if policy.accepts(a.confidence, last=last):
            return CascadeOutcome(a.value, t, cost, seconds, t > 0)
        if a.confidence is not None and (best is None or a.confidence > best[0]):
            best = (a.confidence, t)
    if best is not None and policy.when_unsure == "best":
        return CascadeOutcome(row[best[1]].value, best[1], cost, seconds, len(row) > 1)
    if policy.when_unsure == "abstain":
        return CascadeOutcome(abstention, None, cost, seconds, len(row) > 1, abstained=True)
    return CascadeOutcome(None, None, cost, seconds, len(row) > 1)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion ``k/n``."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def summarize(
    table: Sequence[Sequence[TierAnswer]],
    correct: Callable[[Any, int], bool],
    policy: Policy,
    thresholds: Sequence[float],
    abstention: Any = None,
) -> dict[str, Any]:
    """Accuracy (95% interval), cost and time per item for each tier alone and the cascade at
    each threshold. ``correct(value, item_index)`` judges one answer."""
    n = len(table)
    out: dict[str, Any] = {"n": n, "tiers": [], "cascade": []}
    if not n:
        return out
    for t in range(len(table[0])):
        k = sum(bool(row[t].valid and correct(row[t].value, i)) for i, row in enumerate(table))
        out["tiers"].append(
            {
                "acc": k / n,
                "ci95": wilson(k, n),
                "invalid": sum(not row[t].valid for row in table) / n,
                "cost_per_item": sum(row[t].cost_usd for row in table) / n,
                "s_per_item": sum(row[t].seconds for row in table) / n,
            }
        )
    for th in thresholds:
        p = replace(policy, threshold=th)
        outcomes = [cascade(row, p, abstention) for row in table]
        k = sum(bool((o.tier is not None or o.abstained) and correct(o.value, i)) for i, o in enumerate(outcomes))
        out["cascade"].append(
            {
                "threshold": th,
                "acc": k / n,
                "ci95": wilson(k, n),
                "escalation_rate": sum(o.escalated for o in outcomes) / n,
                "answered_by": [sum(o.tier == t for o in outcomes) / n for t in range(len(table[0]))],
                "cost_per_item": sum(o.cost_usd for o in outcomes) / n,
                "s_per_item": sum(o.seconds for o in outcomes) / n,
            }
        )
    return out


# ---- grounded answering (SQuAD 2.0 conventions) --------------------------------------


def squad_normalize(text: str) -> str:
    """SQuAD's answer normalization: lower case, no punctuation, no articles, single spaces."""
    import re
    import string

    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 between two answers (SQuAD's official definition)."""
    from collections import Counter

    p, g = squad_normalize(prediction).split(), squad_normalize(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def grounded_scores(answer: str | None, golds: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) of one prediction, SQuAD 2.0 style: ``answer=None`` is an abstention,
    right (1, 1) when there is no gold answer and wrong (0, 0) otherwise."""
    if not golds:
        return (1.0, 1.0) if answer is None else (0.0, 0.0)
    if answer is None:
        return (0.0, 0.0)
    em = max(float(squad_normalize(answer) == squad_normalize(g)) for g in golds)
    return em, max(squad_f1(answer, g) for g in golds)
