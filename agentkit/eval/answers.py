"""Each tier's answer to each item, asked once through the node's own attempt and kept in a JSONL cache."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agentkit.errors import InputError
from agentkit.node import Node
from agentkit.task import Task
from agentkit.tier import Tier

__all__ = ["TierAnswer", "answer_all", "answer_mark", "answer_one", "item_id", "iter_answers"]


@dataclass
class TierAnswer:
    """One tier's answer to one item."""

    value: Any
    valid: bool
    confidence: float | None
    cost_usd: float
    seconds: float
    error: str = ""
    transient: bool = False
    """The tier failed (an engine error after the node's retries): not kept in the cache, asked again next time."""


def answer_one(node: Node, tier: Tier, value: Any) -> TierAnswer:
    """Ask ``tier`` once, exactly as ``node`` does (its retries, truncation and error handling)."""
    try:
        text = node.task.check_input(value)
    except InputError as e:
        return TierAnswer(None, False, None, 0.0, 0.0, error=str(e))
    a = node.attempt(tier, text)
    valid = a.outcome == "accepted"
    return TierAnswer(
        a.value if valid else None,
        valid,
        a.confidence if valid else None,
        a.cost_usd,
        a.latency_s,
        error="" if valid else a.reason,
        transient=a.outcome == "engine_error",
    )


def answer_mark(task: Task, tier: Tier) -> str:
    """What a tier's answer depends on, hashed: the task's settings as that tier runs them, the
    tier's spec and, for a tuned tier, its adapter's sha256."""
    blob = json.dumps(
        [tier.adapt(task).settings(), tier.spec, tier.provenance.get("sha256")], sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def item_id(value: Any) -> str:
    """A stable id for an input without one."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def iter_answers(
    node: Node,
    inputs: Sequence[Any],
    *,
    ids: Sequence[str] | None = None,
    cache: str | Path | None = None,
    leave_one_out: bool = False,
) -> Iterator[tuple[int, list[TierAnswer]]]:
    """``(i, row)`` per input, ``row[t]`` being tier ``t``'s answer. With ``cache`` (a JSONL file)
    every answer is appended as soon as it exists and answers already there are reused — only those
    given under the same task settings and the same tier (its spec, task settings and adapter hash),
    so a changed node or a re-tuned adapter is asked again rather than read back stale.
    ``leave_one_out``: no labelled example with an input's own text is retrieved while it is answered."""
    index = getattr(node.task, "index", None) if leave_one_out else None
    ids = list(ids) if ids is not None else [item_id(v) for v in inputs]
    names = [t.name for t in node.tiers]
    marks = [answer_mark(node.task, t) for t in node.tiers]
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
            for tier, name, mark in zip(node.tiers, names, marks, strict=True):
                answer = done.get((key, name, mark))  # a line without a mark (older caches) is asked again
                if answer is None:
                    with index.leaving_out(str(value)) if index is not None else contextlib.nullcontext():
                        answer = answer_one(node, tier, value)
                    if sink is not None and not answer.transient:
                        record = {"id": key, "tier": name, "config": mark, "answer": asdict(answer)}
                        sink.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                        sink.flush()
                row.append(answer)
            yield i, row
    finally:
        if sink is not None:
            sink.close()


def answer_all(
    node: Node, inputs: Sequence[Any], *, on_item: Callable[[int], None] | None = None
) -> list[list[TierAnswer]]:
    """``answers[i][t]``: tier ``t``'s answer to input ``i``."""
    table = []
    for i, row in iter_answers(node, inputs):
        table.append(row)
        if on_item:
            on_item(i)
    return table
