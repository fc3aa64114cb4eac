"""Evaluation: small vs large vs cascade, computed exactly, with a calibrated threshold.

Each item is answered once per tier (answers are appended to a JSONL file as they come, so an
interrupted evaluation keeps them and a rerun resumes); every configuration — each tier alone
and the cascade at each threshold of a sweep — is then derived from those answers with the
node's own policy rules (:func:`cascade` is what :meth:`Node.run` does). The threshold is chosen
on a calibration split and reported on a separate test split; neither overlaps the node's
example pool. A workflow (a compiled graph) is evaluated as it runs, in one configuration.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from agentkit import metrics
from agentkit.data import normalize_text, split_of
from agentkit.errors import AgentkitError, ConfigError
from agentkit.node import Node
from agentkit.policy import Policy
from agentkit.task import Task
from agentkit.tier import Tier

THRESHOLDS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)
"""The default threshold sweep."""


@dataclass
class TierAnswer:
    """One tier's answer to one item."""

    value: Any
    valid: bool
    confidence: float | None
    cost_usd: float
    seconds: float
    error: str = ""


def answer_one(task: Task, tier: Tier, value: Any) -> TierAnswer:
    """Ask ``tier`` once (input errors and engine errors become invalid answers, not crashes)."""
    assert tier.engine is not None
    task = tier.adapt(task)  # the tier's own task settings, as a node applies them
    t0 = time.perf_counter()
    try:
        a = task.answer(tier.engine, task.check_input(value))
    except AgentkitError as e:
        return TierAnswer(None, False, None, 0.0, time.perf_counter() - t0, error=str(e))
    return TierAnswer(
        a.value, not a.problems, a.confidence, tier.cost(a.usage), time.perf_counter() - t0, "; ".join(a.problems)
    )


def iter_answers(
    task: Task,
    tiers: Sequence[Tier],
    inputs: Sequence[Any],
    *,
    ids: Sequence[str] | None = None,
    cache: str | Path | None = None,
) -> Iterator[tuple[int, list[TierAnswer]]]:
    """``(i, row)`` per input, ``row[t]`` being tier ``t``'s answer. With ``cache`` (a JSONL file)
    every answer is appended as soon as it exists and answers already there are reused — only those
    given under the same task settings and the same tier (its spec, task settings and adapter hash),
    so a changed node or a re-tuned adapter is asked again rather than read back stale."""
    ids = list(ids) if ids is not None else [item_id(v) for v in inputs]
    names = [t.name for t in tiers]
    marks = [answer_mark(task, t) for t in tiers]
    done: dict[tuple[str, str, str | None], TierAnswer] = {}
    if cache is not None and Path(cache).exists():
        with Path(cache).open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                    done[(rec["id"], rec["tier"], rec.get("config"))] = TierAnswer(**rec["answer"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut by a kill: that answer is asked again
    sink = Path(cache).open("a", encoding="utf-8") if cache is not None else None  # noqa: SIM115 (closed in finally; a generator)
    try:
        for i, (value, key) in enumerate(zip(inputs, ids, strict=True)):
            row = []
            for tier, name, mark in zip(tiers, names, marks, strict=True):
                answer = done.get((key, name, mark))  # a line without a mark (older caches) is asked again
                if answer is None:
                    answer = answer_one(task, tier, value)
                    if sink is not None:
                        record = {"id": key, "tier": name, "config": mark, "answer": asdict(answer)}
                        sink.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                        sink.flush()
                row.append(answer)
            yield i, row
    finally:
        if sink is not None:
            sink.close()


def answer_mark(task: Task, tier: Tier) -> str:
    """What a tier's answer depends on, hashed: the task's settings as that tier runs them, the
    tier's spec and, for a tuned tier, its adapter's sha256."""
    blob = json.dumps(
        [tier.adapt(task).settings(), tier.spec, tier.provenance.get("sha256")], sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def answer_all(
    task: Task, tiers: Sequence[Tier], inputs: Sequence[Any], *, on_item: Callable[[int], None] | None = None
) -> list[list[TierAnswer]]:
    """``answers[i][t]``: tier ``t``'s answer to input ``i``."""
    table = []
    for i, row in iter_answers(task, tiers, inputs):
        table.append(row)
        if on_item:
            on_item(i)
    return table


def item_id(value: Any) -> str:
    """A stable id for an input without one."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- the cascade, derived -------------------------------------------------------------------


@dataclass
class CascadeOutcome:
    value: Any
    tier: int | None
    """Index of the tier whose answer was taken (None: failure or abstention)."""
    cost_usd: float
    seconds: float
    escalated: bool
    abstained: bool = False
    confidence: float | None = None


def cascade(
    row: Sequence[TierAnswer],
    policy: Policy,
    abstention: Any = None,
    is_abstention: Callable[[Any], bool] | None = None,
) -> CascadeOutcome:
    """What a node with ``policy`` over these tiers would have returned (same rules as ``Node.run``);
    ``abstention`` is the value of an abstained outcome (``when_unsure="abstain"``), ``is_abstention``
    tells a tier's own abstention (the task's :meth:`~agentkit.task.Task.is_abstention`)."""
    cost = seconds = 0.0
    best: tuple[float, int] | None = None
    for t, a in enumerate(row):
        cost += a.cost_usd
        seconds += a.seconds
        last = t == len(row) - 1
        if not a.valid:
            continue
        abstains = is_abstention is not None and is_abstention(a.value)
        if policy.accepts_answer(a.confidence, last=last, abstains=abstains):
            return CascadeOutcome(a.value, t, cost, seconds, t > 0, confidence=a.confidence)
        if a.confidence is not None and (best is None or a.confidence > best[0]):
            best = (a.confidence, t)
    if best is not None and policy.when_unsure == "best":
        return CascadeOutcome(row[best[1]].value, best[1], cost, seconds, len(row) > 1, confidence=best[0])
    if policy.when_unsure == "abstain":
        return CascadeOutcome(abstention, None, cost, seconds, len(row) > 1, abstained=True)
    return CascadeOutcome(None, None, cost, seconds, len(row) > 1)


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion ``k/n``."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n))) / d
    return (max(0.0, c - h), min(1.0, c + h))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation; 0 for no values."""
    xs = sorted(values)
    if not xs:
        return 0.0
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def figures(outcomes: Sequence[CascadeOutcome], scores: Sequence[float], n_tiers: int) -> dict[str, Any]:
    """Score (mean, 95% interval), escalation rate, share answered per tier, cost per item and per
    answer (all attempts counted), latency p50/p95 and failures of one configuration."""
    n = len(outcomes)
    answered = sum(o.tier is not None or o.abstained for o in outcomes)
    cost = sum(o.cost_usd for o in outcomes)
    score = sum(scores) / n if n else 0.0
    return {
        "score": score,
        "ci95": wilson(sum(scores), n),
        "escalation_rate": sum(o.escalated for o in outcomes) / n if n else 0.0,
        "answered_by": [sum(o.tier == t for o in outcomes) / n if n else 0.0 for t in range(n_tiers)],
        "abstained": sum(o.abstained for o in outcomes) / n if n else 0.0,
        "failures": n - answered,
        "cost_per_item": cost / n if n else 0.0,
        "cost_per_answer": cost / answered if answered else None,
        "s_per_item": sum(o.seconds for o in outcomes) / n if n else 0.0,
        "latency_p50_s": percentile([o.seconds for o in outcomes], 0.5),
        "latency_p95_s": percentile([o.seconds for o in outcomes], 0.95),
    }


def configurations(
    table: Sequence[Sequence[TierAnswer]],
    policy: Policy,
    thresholds: Sequence[float],
    abstention: Any = None,
    ladders: Mapping[str, Sequence[int]] | None = None,
    is_abstention: Callable[[Any], bool] | None = None,
) -> dict[str, list[CascadeOutcome]]:
    """Outcomes per configuration: each tier alone (its own answer whatever its confidence — the
    small-only / large-only baselines; an invalid answer is still a failure or, under an abstaining
    policy, an abstention), the cascade per threshold,
    and each of ``ladders`` (name → tier indices, cheapest first) as a cascade per threshold
    (``NAME@THRESHOLD``), e.g. the stock and the tuned small tier each under the same large one."""
    n_tiers = len(table[0]) if table else 0
    out: dict[str, list[CascadeOutcome]] = {}
    alone = replace(policy, threshold=0.0)
    for t in range(n_tiers):
        out[f"tier{t}"] = [_on(cascade([row[t]], alone, abstention, is_abstention), [t]) for row in table]
    if n_tiers > 1:
        for th in thresholds:
            at = replace(policy, threshold=th)
            out[f"cascade@{th:g}"] = [cascade(row, at, abstention, is_abstention) for row in table]
    for name, rungs in (ladders or {}).items():
        if not rungs or any(not 0 <= t < n_tiers for t in rungs):
            raise ConfigError(f"ladder {name!r} names tiers outside 0..{n_tiers - 1}: {list(rungs)}")
        for th in thresholds:
            at = replace(policy, threshold=th)
            out[f"{name}@{th:g}"] = [
                _on(cascade([row[t] for t in rungs], at, abstention, is_abstention), rungs) for row in table
            ]
    return out


def _on(outcome: CascadeOutcome, rungs: Sequence[int]) -> CascadeOutcome:
    """``outcome`` of a sub-ladder, its tier index mapped back to the node's ladder."""
    return replace(outcome, tier=rungs[outcome.tier] if outcome.tier is not None else None)


# ---- calibration and headline ratios ----------------------------------------------------------


def calibrate(
    points: Mapping[str, Mapping[str, Any]],
    *,
    target: float | None = None,
    budget: float | None = None,
    tolerance: float = 0.01,
) -> tuple[str, str]:
    """The cascade configuration to use, and why. ``target``: the cheapest reaching that score;
    ``budget``: the best score at most that cost per item; neither: the cheapest within
    ``tolerance`` of the best cascade score. Falls back to the best score when nothing qualifies."""
    cascades = {k: v for k, v in points.items() if k.startswith("cascade@")}
    if not cascades:
        raise ConfigError("calibration needs at least two tiers")
    best = max(cascades, key=lambda k: (cascades[k]["score"], -cascades[k]["cost_per_item"]))
    if budget is not None:
        within = [k for k, v in cascades.items() if v["cost_per_item"] <= budget]
        if not within:
            return best, f"no threshold costs at most {budget:g} per item; took the best score"
        pick = max(within, key=lambda k: (cascades[k]["score"], -cascades[k]["cost_per_item"]))
        return pick, f"best score at most {budget:g} USD per item"
    if target is None:
        target = cascades[best]["score"] - tolerance
        rule = f"cheapest within {tolerance:g} of the best score"
    else:
        rule = f"cheapest reaching score {target:g}"
    reaching = [k for k, v in cascades.items() if v["score"] >= target - 1e-9]
    if not reaching:
        return best, f"no threshold reaches {target:.4f}; took the best score"
    return min(reaching, key=lambda k: (cascades[k]["cost_per_item"], -cascades[k]["score"])), rule


def headline(points: Mapping[str, Mapping[str, Any]], pick: str) -> dict[str, Any]:
    """Ratios as the literature prints them: the cascade's cost relative to large-only (at the
    chosen threshold, and at the cheapest threshold matching large-only's score), the share of
    the small→large gap recovered (PGR) per share escalated, and APGR (area under PGR vs
    escalation rate, RouteLLM)."""
    tiers = sorted(k for k in points if k.startswith("tier"))
    small, large = points[tiers[0]], points[tiers[-1]]
    out: dict[str, Any] = {"cascade_vs_large_cost": _ratio(points[pick]["cost_per_item"], large["cost_per_item"])}
    matching = [v for k, v in points.items() if k.startswith("cascade@") and v["score"] >= large["score"] - 1e-9]
    cheapest = min((v["cost_per_item"] for v in matching), default=None)
    out["cost_vs_large_at_matched_score"] = _ratio(cheapest, large["cost_per_item"]) if cheapest is not None else None
    gap = large["score"] - small["score"]
    if gap <= 0:  # the larger tier is not better: escalation cannot recover anything
        out |= {"gap": gap, "pgr": None, "pgr_per_escalated": None, "apgr": None}
        return out
    pgr = (points[pick]["score"] - small["score"]) / gap
    esc = points[pick]["escalation_rate"]
    curve = sorted(
        [(0.0, 0.0), (1.0, 1.0)]
        + [
            (v["escalation_rate"], (v["score"] - small["score"]) / gap)
            for k, v in points.items()
            if k.startswith("cascade@")
        ]
    )
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False))
    out |= {"gap": gap, "pgr": pgr, "pgr_per_escalated": pgr / esc if esc else None, "apgr": area}
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# ---- evaluating a node ---------------------------------------------------------------------------


def _pool_texts(task: Task) -> set[str]:
    index = getattr(task, "index", None)
    return {normalize_text(str(e["input"])) for e in getattr(index, "examples", [])}


def evaluate_node(
    node: Node,
    records: Sequence[Mapping[str, Any]],
    *,
    thresholds: Sequence[float] = THRESHOLDS,
    target: float | None = None,
    budget: float | None = None,
    seed: int = 0,
    calibration_share: float = 0.5,
    cache: str | Path | None = None,
    kinds: Mapping[str, str] | None = None,
    fields: Mapping[str, str] | None = None,
    on_item: Callable[[int, int], None] | None = None,
    ladders: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Every number about ``node`` on labelled ``records`` (``input``, ``expected``, optional ``id``).

    Records whose input is in the node's example pool are left out (counted). The rest are split
    (by :func:`~agentkit.data.split_of`, duplicates together) into a calibration part, where the
    threshold is chosen (:func:`calibrate`), and a test part, where it is reported. ``kinds`` and
    ``fields`` are passed to :func:`agentkit.metrics.extraction`. ``on_item(done, total)`` reports
    progress. ``ladders`` adds sub-ladder cascades (see :func:`configurations`). Ctrl-C stops
    answering and reports on the items answered so far."""
    kind = node.task.kind
    pool = _pool_texts(node.task)
    kept = [r for r in records if normalize_text(str(r["input"])) not in pool]
    ids = [str(r.get("id") or item_id(r["input"])) for r in kept]
    table: list[list[TierAnswer]] = []
    interrupted = False
    t0 = time.perf_counter()
    try:
        for i, row in iter_answers(node.task, node.tiers, [r["input"] for r in kept], ids=ids, cache=cache):
            table.append(row)
            if on_item:
                on_item(i + 1, len(kept))
    except KeyboardInterrupt:
        interrupted = True
    done = kept[: len(table)]
    expected = [r["expected"] for r in done]
    abstention = node.task.abstention("") if node.policy.when_unsure == "abstain" else None
    opts = {"kinds": kinds, "fields": fields} if kind == "extract" else {}

    def judge(outs: Sequence[CascadeOutcome], which: Sequence[int]) -> dict[str, Any]:
        values = [outs[i].value for i in which]
        golds = [expected[i] for i in which]
        scores = [metrics.item_score(kind, v, g, **opts) for v, g in zip(values, golds, strict=True)]
        picked = [outs[i] for i in which]
        return figures(picked, scores, len(node.tiers)) | {"quality": metrics.quality(kind, values, golds, **opts)}

    configs = configurations(table, node.policy, thresholds, abstention, ladders, node.task.is_abstention)
    every = list(range(len(done)))
    calib = [
        i for i in every if split_of(str(done[i]["input"]), seed=seed + 1, test_fraction=calibration_share) == "test"
    ]
    in_calib = set(calib)
    test = [i for i in every if i not in in_calib]
    if len(calib) < 5 or len(test) < 5:  # too few to split: calibrate and report on every item
        calib, test, split_note = every, every, "too few items to split: calibrated and reported on the same items"
    else:
        split_note = f"calibration {len(calib)} / test {len(test)} items (seed {seed + 1})"
    names = [t.name for t in node.tiers]
    report: dict[str, Any] = {
        "target": node.name,
        "kind": kind,
        "tiers": names,
        "policy": asdict(node.policy),
        "n": len(done),
        "left_out_in_pool": len(records) - len(kept),
        "interrupted": interrupted,
        "wall_s": time.perf_counter() - t0,
        "split": split_note,
        "all": {k: judge(v, every) for k, v in configs.items()} if done else {},
    }
    reliability = {}
    for t, name in enumerate(names):
        scores = [
            metrics.item_score(kind, row[t].value if row[t].valid else None, g, **opts)
            for row, g in zip(table, expected, strict=True)
        ]
        reliability[name] = metrics.reliability([row[t].confidence for row in table], scores)
    report["reliability"] = reliability
    if len(node.tiers) > 1 and done:
        on_calib = {k: judge(v, calib) for k, v in configs.items()}
        pick, rule = calibrate(on_calib, target=target, budget=budget)
        on_test = {k: judge(v, test) for k, v in configs.items()}
        report["calibration"] = {
            "rule": rule,
            "target": target,
            "budget": budget,
            "picked": pick,
            "threshold": float(pick.split("@")[1]),
            "on_calibration": on_calib[pick],
        }
        report["test"] = on_test
        report["headline"] = headline(on_test, pick)
    return report


# ---- evaluating a workflow ---------------------------------------------------------------------


def evaluate_workflow(
    graph: Any,
    records: Sequence[Mapping[str, Any]],
    *,
    field: str | None = None,
    kinds: Mapping[str, str] | None = None,
    fields: Mapping[str, str] | None = None,
    on_item: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """A compiled workflow on labelled records, in the one configuration it runs with: its output
    (or ``output[field]``) against ``expected`` — extraction metrics when ``expected`` is a dict,
    grounded-answer metrics when it has ``answerable``, else classification."""
    from agentkit.runner import Item, run_one

    rows: list[dict[str, Any]] = []
    interrupted = False
    try:
        for n, r in enumerate(records, 1):
            rows.append(run_one(graph, Item(str(r.get("id") or item_id(r["input"])), r["input"])))
            if on_item:
                on_item(n, len(records))
    except KeyboardInterrupt:
        interrupted = True
    golds = [r["expected"] for r in records[: len(rows)]]
    values = [(row.get("value") or {}).get(field) if field else row.get("value") for row in rows]
    kind = "classify"
    if golds and isinstance(golds[0], Mapping):
        kind = "grounded_answer" if "answerable" in golds[0] else "extract"
    opts = {"kinds": kinds, "fields": fields} if kind == "extract" else {}
    outcomes = [
        CascadeOutcome(
            row.get("value"),
            0 if row.get("ok") else None,
            row.get("cost_usd", 0.0),
            row.get("latency_s", 0.0),
            bool(row.get("escalated")),
        )
        for row in rows
    ]
    scores = [metrics.item_score(kind, v, g, **opts) for v, g in zip(values, golds, strict=True)]
    result = figures(outcomes, scores, 1) | {"quality": metrics.quality(kind, values, golds, **opts)}
    return {
        "target": getattr(graph, "name", "workflow"),
        "kind": f"workflow/{kind}",
        "n": len(rows),
        "interrupted": interrupted,
        "all": {"workflow": result},
        "failed": [{"id": row["id"], "reason": row.get("reason", "")} for row in rows if not row.get("ok")][:20],
    }
