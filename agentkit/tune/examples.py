"""Training data: examples in a node's exact prompt format, from gold labels and from the node's
own escalations (distillation), on the train side of the split only."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from agentkit.data import normalize_text, split_of
from agentkit.engine import Message
from agentkit.errors import InputError
from agentkit.task import Task
from agentkit.tasks.grounded import GroundedAnswer, supported

__all__ = ["TrainingExample", "TrainingSet", "distillable", "reader_training_set", "training_set"]


@dataclass
class TrainingExample:
    input: str
    reply: str
    """What the model is trained to write (a label's word, a JSON object)."""
    source: Literal["gold", "distilled"]
    messages: list[Message]
    """The node's prompt for ``input``, as its task builds it."""
    origin: str = ""
    """Where it came from: the labelled file, or the trace and the tier that answered."""


@dataclass
class TrainingSet:
    examples: list[TrainingExample]
    counts: dict[str, int] = field(default_factory=dict)
    """gold, distilled, duplicates dropped, held out (evaluation side), excluded, unusable."""

    def digest(self) -> str:
        """sha256 of the examples (prompts and replies): names the data an adapter was trained on."""
        h = hashlib.sha256()
        for ex in self.examples:
            h.update(json.dumps([ex.messages, ex.reply], ensure_ascii=False).encode())
        return h.hexdigest()

    def write(self, path: str | Path) -> None:
        with Path(path).open("w", encoding="utf-8") as f:
            for ex in self.examples:
                f.write(json.dumps(asdict(ex), ensure_ascii=False) + "\n")


def distillable(trace: Mapping[str, Any], node: str | None = None) -> bool:
    """Whether a result record (of the node named ``node``, if given) is an answer a later tier gave
    confidently after the first tier escalated: a label to distil into the first tier."""
    if node is not None and trace.get("node") != node:
        return False
    attempts = trace.get("attempts") or []
    first = attempts[0]["tier"] if attempts else None
    return bool(trace.get("ok")) and trace.get("accepted") == "confident" and trace.get("tier") not in (None, first)


def training_set(
    task: Task,
    *,
    records: Iterable[Mapping[str, Any]] = (),
    traces: Iterable[Mapping[str, Any]] = (),
    node: str | None = None,
    exclude: Iterable[str] = (),
    seed: int = 0,
) -> TrainingSet:
    """Examples for ``task`` from labelled ``records`` (``input``, ``expected``) and from ``traces``
    (result records, as :func:`agentkit.collect` writes them) of the node named ``node``.

    A trace gives an example when the node escalated and a later tier's answer was accepted
    confidently: that answer is the label (distillation). Only inputs on the train side of
    ``split_of(seed=seed)`` are used; ``exclude`` (e.g. the evaluation inputs) are dropped. The reply
    is the task's :meth:`~agentkit.Task.training_reply` (a :class:`~agentkit.errors.ConfigError` for a
    task that cannot be tuned). A :class:`~agentkit.GroundedAnswer` task gets
    :func:`reader_training_set`'s examples."""
    if isinstance(task, GroundedAnswer):  # per-passage examples, from question records
        return reader_training_set(task, records, traces=traces, node=node, exclude=exclude, seed=seed)
    counts = dict.fromkeys(("gold", "distilled", "duplicates", "held_out", "excluded", "unusable"), 0)
    excluded = {normalize_text(t) for t in exclude}
    seen: dict[str, TrainingExample] = {}

    def add(text: str, value: Any, source: Literal["gold", "distilled"], origin: str) -> None:
        key = normalize_text(text)
        if key in excluded:
            counts["excluded"] += 1
            return
        if split_of(text, seed=seed) != "train":
            counts["held_out"] += 1
            return
        if key in seen and not (source == "gold" and seen[key].source == "distilled"):
            counts["duplicates"] += 1
            return
        try:
            reply = task.training_reply(value)
            msgs = task.prompt(task.check_input(text), unseen=True)  # type: ignore[attr-defined]
        except InputError:
            counts["unusable"] += 1
            return
        if key in seen:
            counts["duplicates"] += 1  # a distilled answer replaced by the gold label
        seen[key] = TrainingExample(text, reply, source, msgs, origin)

    for r in records:
        if "input" in r and "expected" in r:
            add(str(r["input"]), r["expected"], "gold", str(r.get("id", "")))
    for t in traces:
        if distillable(t, node):
            add(str(t.get("input_text", "")), t.get("value"), "distilled", f"trace:{t.get('tier')}")
    examples = list(seen.values())
    counts["gold"] = sum(e.source == "gold" for e in examples)
    counts["distilled"] = sum(e.source == "distilled" for e in examples)
    return TrainingSet(examples, counts)


def reader_training_set(
    task: GroundedAnswer,
    records: Iterable[Mapping[str, Any]] = (),
    *,
    traces: Iterable[Mapping[str, Any]] = (),
    node: str | None = None,
    negatives: int = 1,
    exclude: Iterable[str] = (),
    seed: int = 0,
    train_side_only: bool = True,
) -> TrainingSet:
    """Per-passage examples for a :class:`~agentkit.GroundedAnswer` reader from question records
    (SQuAD 2.0 style: ``input`` the question, ``expected`` ``{"answerable", "answers"}``,
    ``gold_doc_id`` the document it was written on; the documents must be in ``task.corpus``).

    Each question gives its gold passage — ``yes: <first gold answer>`` on the passage that holds it,
    ``no`` for an unanswerable question (written against that passage) — and up to ``negatives`` of
    the passages retrieved for it from other documents, ``no`` (what the reader must refuse when
    retrieval misses). The prompt is the one the node sends (:meth:`GroundedAnswer.passage_messages`),
    the reply the task's :meth:`GroundedAnswer.training_reply`.
    From ``traces`` of the node named ``node``: an answer a later tier gave confidently after the
    small tier escalated, on the passage it cited (distillation; a gold example for the same question
    and passage wins). Only questions on the train side of ``split_of(seed=seed)`` are used
    (``train_side_only=False``: all, for records that are a training set of their own, e.g. other
    articles than those evaluated on); ``exclude`` are dropped."""
    counts = dict.fromkeys(("gold", "distilled", "duplicates", "held_out", "excluded", "unusable"), 0)
    counts |= {"answer": 0, "no_answer": 0, "retrieved_negative": 0}  # what the gold examples are
    excluded = {normalize_text(t) for t in exclude}
    seen: dict[tuple[str, str], TrainingExample] = {}
    by_doc: dict[str, list[Any]] = {}
    for p in task.corpus.passages:
        by_doc.setdefault(p.doc_id, []).append(p)
    refusal = task.training_reply({"answerable": False})

    def add(question: str, passage: Any, reply: str, kind: str) -> None:
        key = (normalize_text(question), passage.id)
        source: Literal["gold", "distilled"] = "distilled" if kind == "distilled" else "gold"
        if key in seen:  # a gold example replaces a distilled one; otherwise the first stays
            counts["duplicates"] += 1
            if not (source == "gold" and seen[key].source == "distilled"):
                return
        msgs = task.passage_messages(passage, question)
        seen[key] = TrainingExample(question, reply, source, msgs, f"{kind}:{passage.id}")
        counts[kind] += 1

    def usable(question: str) -> bool:
        if normalize_text(question) in excluded:
            counts["excluded"] += 1
            return False
        if train_side_only and split_of(question, seed=seed) != "train":
            counts["held_out"] += 1
            return False
        return True

    for t in traces:
        value = t.get("value")
        if not distillable(t, node) or not isinstance(value, dict):
            continue
        question = " ".join(str(t.get("input_text", "")).split())
        cited = [task.corpus.get(c) for c in value.get("citations") or []]
        answer = str(value.get("answer") or "").strip()
        if not value.get("answerable") or not cited or cited[0] is None or not supported(answer, cited[0].text):
            continue
        if usable(question):
            add(question, cited[0], task.training_reply({"answerable": True, "answer": answer}), "distilled")

    for r in records:
        question = " ".join(str(r.get("input", "")).split())
        expected = r.get("expected") or {}
        if not usable(question):
            continue
        passages = by_doc.get(str(r.get("gold_doc_id", "")), [])
        answers = [str(a) for a in expected.get("answers") or [] if str(a).strip()]
        if not question or not passages or (expected.get("answerable") and not answers):
            counts["unusable"] += 1
            continue
        if expected.get("answerable"):
            holder = next((p for p in passages if supported(answers[0], p.text)), None)
            if holder is None:
                counts["unusable"] += 1
                continue
            add(question, holder, task.training_reply({"answerable": True, "answer": answers[0]}), "answer")
        else:
            for p in passages:
                add(question, p, refusal, "no_answer")
        others = [
            p
            for p, _ in task.corpus.search(question, task.k + len(passages))
            if p.doc_id != r["gold_doc_id"] and not any(supported(a, p.text) for a in answers)
        ]  # fmt: skip  (a passage that holds a gold answer too is no negative)
        for p in others[:negatives]:
            add(question, p, refusal, "retrieved_negative")
    examples = list(seen.values())
    counts["gold"] = sum(e.source == "gold" for e in examples)
    counts["distilled"] = sum(e.source == "distilled" for e in examples)
    return TrainingSet(examples, counts)
