"""Evaluating a node (every tier, every cascade, a calibrated threshold) or a workflow on labelled records.

Each item is answered once per tier (answers are appended to a JSONL file as they come, so an
interrupted evaluation keeps them and a rerun resumes); every configuration is then derived from
those answers with :meth:`Policy.decide`, the rule :meth:`Node.run` runs. The threshold is chosen
on a calibration split and reported on a separate test split; neither overlaps the node's example
pool. A workflow (a compiled graph) is evaluated as it runs, in one configuration.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from agentkit.data import normalize_text, split_of
from agentkit.eval import metrics
from agentkit.eval.answers import TierAnswer, item_id, iter_answers
from agentkit.eval.calibration import calibrate, calibrated, checked_costs, fit_confidence, headline, review_bar
from agentkit.eval.cascades import THRESHOLDS, CascadeOutcome, cascade, configurations, figures
from agentkit.node import Node
from agentkit.task import Task

__all__ = ["evaluate_node", "evaluate_workflow"]


def _pool_texts(task: Task, *, fixed_only: bool = False) -> set[str]:
    """The inputs of the task's labelled examples (``fixed_only``: those in its fixed prompt)."""
    examples = getattr(task, "static", []) if fixed_only else getattr(getattr(task, "index", None), "examples", [])
    return {normalize_text(str(e["input"])) for e in examples}


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
    fit: bool = True,
    max_error: float | None = None,
    costs: tuple[float, float] | None = None,
    leave_one_out: bool = False,
) -> dict[str, Any]:
    """Every number about ``node`` on labelled ``records`` (``input``, ``expected``, optional ``id``).

    Records whose input is in the node's example pool are left out (counted); with ``leave_one_out`` they
    are kept and answered with every example but their own (only examples in the fixed prompt are left
    out), so a small labelled set can be both the pool and the evaluation. The rest are split
    (by :func:`~agentkit.data.split_of`, duplicates together) into a calibration part, where the
    threshold is chosen (:func:`calibrate`), and a test part, where it is reported. ``kinds`` and
    ``fields`` are passed to :func:`agentkit.eval.metrics.extraction`. ``on_item(done, total)`` reports
    progress. ``ladders`` adds sub-ladder cascades (see :func:`configurations`). Ctrl-C stops
    answering and reports on the items answered so far.

    Tiers answer uncalibrated; with ``fit``, each tier's confidence is calibrated on the calibration
    split (:func:`fit_confidence`, kept as ``report["fitted"]``, a
    :class:`~agentkit.calibration.TierCalibration`) and every configuration is derived on the calibrated
    values, as a node given that calibration runs. ``max_error``: the chosen cascade's review bar is the
    lowest confidence at which its accepted answers are wrong at most that often on the calibration split
    (:func:`review_bar`); ``costs`` (a review's cost, a wrong answer's cost): the bar is where a review costs
    less than the expected cost of a wrong answer, ``1 - review / wrong`` (on calibrated confidences).
    ``report["operating_point"]`` has the bar, measured on the test split."""
    costs = checked_costs(costs) if costs is not None else None
    kind = node.task.kind
    pool = _pool_texts(node.task, fixed_only=leave_one_out)
    kept = [r for r in records if normalize_text(str(r["input"])) not in pool]
    ids = [str(r.get("id") or item_id(r["input"])) for r in kept]
    table: list[list[TierAnswer]] = []
    interrupted = False
    t0 = time.perf_counter()
    try:
        answers = iter_answers(node, [r["input"] for r in kept], ids=ids, cache=cache, leave_one_out=leave_one_out)
        for i, row in answers:  # uncalibrated: Node.attempt gives each tier's own confidence
            table.append(row)
            if on_item:
                on_item(i + 1, len(kept))
    except KeyboardInterrupt:
        interrupted = True
    done = kept[: len(table)]
    expected = [r["expected"] for r in done]
    abstention = node.task.abstention("") if node.policy.when_unsure == "abstain" else None
    opts = {"kinds": kinds, "fields": fields} if kind == "extract" else {}

    def score(outs: Sequence[CascadeOutcome], which: Sequence[int]) -> list[float]:
        return [metrics.item_score(kind, outs[i].value, expected[i], **opts) for i in which]

    def judge(outs: Sequence[CascadeOutcome], which: Sequence[int]) -> dict[str, Any]:
        quality = metrics.quality(kind, [outs[i].value for i in which], [expected[i] for i in which], **opts)
        return figures([outs[i] for i in which], score(outs, which), len(node.tiers)) | {"quality": quality}

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
    tier_scores = [  # each tier's own answer, scored
        [metrics.item_score(kind, r[t].value if r[t].valid else None, expected[i], **opts) for i, r in enumerate(table)]
        for t in range(len(names))
    ]
    fitted, fit_note = fit_confidence(table, tier_scores, names, calib) if fit and done else (None, "not fitted")

    def as_run(rungs: Sequence[TierAnswer], tiers: Sequence[int]) -> list[TierAnswer]:
        """The rungs' answers as a node with the fitted calibration sees them."""
        return calibrated(fitted, [names[t] for t in tiers], rungs) if fitted is not None else list(rungs)

    configs = configurations(table, node.policy, thresholds, abstention, ladders, node.task.is_abstention, as_run)
    report: dict[str, Any] = {
        "target": node.name,
        "kind": kind,
        "tiers": names,
        "policy": asdict(node.policy),
        "n": len(done),
        "left_out_in_pool": len(records) - len(kept),
        "leave_one_out": leave_one_out,
        "interrupted": interrupted,
        "wall_s": time.perf_counter() - t0,
        "split": split_note,
        "confidence": {"calibrated": fitted is not None, "note": fit_note},
        "all": {k: judge(v, every) for k, v in configs.items()} if done else {},
    }
    shown = test if fitted is not None else every  # a fitted map is judged on items it was not fitted on
    report["reliability"] = {  # each tier alone
        name: metrics.reliability(
            [as_run([table[i][t]], [t])[0].confidence for i in shown], [tier_scores[t][i] for i in shown]
        )
        for t, name in enumerate(names)
    }
    if fitted is not None:
        report["reliability_raw"] = {
            name: metrics.reliability([table[i][t].confidence for i in shown], [tier_scores[t][i] for i in shown])
            for t, name in enumerate(names)
        }
        report["fitted"] = fitted
    if not done:
        return report
    if len(node.tiers) > 1:
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
    if max_error is not None or costs is not None:
        threshold = report["calibration"]["threshold"] if "calibration" in report else node.policy.threshold
        runs = [as_run(row, range(len(names))) for row in table]
        report["operating_point"] = _operating_point(
            node, runs, table, threshold, max_error, costs, calib, test, judge, score, abstention
        )
        report["operating_point"]["calibrated"] = fitted is not None
    return report


def _operating_point(
    node: Node,
    runs: Sequence[Sequence[TierAnswer]],
    raw: Sequence[Sequence[TierAnswer]],
    threshold: float,
    max_error: float | None,
    costs: tuple[float, float] | None,
    calib: Sequence[int],
    test: Sequence[int],
    judge: Callable[[Sequence[CascadeOutcome], Sequence[int]], dict[str, Any]],
    score: Callable[[Sequence[CascadeOutcome], Sequence[int]], list[float]],
    abstention: Any,
) -> dict[str, Any]:
    """The chosen cascade with a review bar for ``max_error`` (chosen on ``calib``) or for ``costs``, judged on
    ``test``, and the calibration error of its answers' confidence, raw and as run."""
    policy = replace(node.policy, threshold=threshold)
    outs = [cascade(row, policy, abstention, node.task.is_abstention) for row in runs]
    if costs is not None:
        bar = max(threshold, 1 - costs[0] / costs[1]) if costs[1] else threshold
    else:
        assert max_error is not None
        bar = review_bar([outs[i] for i in calib], score(outs, calib), threshold, max_error)
    policy = replace(policy, review_threshold=bar)
    outs = [cascade(row, policy, abstention, node.task.is_abstention) for row in runs]
    on_test = judge(outs, test)
    answered = [i for i in test if outs[i].tier is not None]
    scores = dict(zip(test, score(outs, test), strict=True))
    raw_conf = [raw[i][outs[i].tier].confidence for i in answered]  # type: ignore[index]
    return {
        "threshold": threshold,
        "review_threshold": bar,
        "max_error": max_error,
        "costs": costs,
        "on_test": on_test,
        "ece": metrics.reliability([outs[i].confidence for i in answered], [scores[i] for i in answered])["ece"],
        "ece_raw": metrics.reliability(raw_conf, [scores[i] for i in answered])["ece"],
    }


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
