"""Quality metrics per task type, each from predicted and expected values.

- classification: accuracy, macro-F1, per-class precision/recall and the confusion counts;
- extraction: per-field exact and normalized match, and the all-fields-right rate;
- grounded answering: SQuAD 2.0 EM/F1 (an abstention is right only on an unanswerable question),
  abstention accuracy and precision;
- confidence: a reliability table and the expected calibration error.

:func:`item_score` gives the one number per item (0..1) that accuracy sweeps and calibration use.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from agentkit.data import values_match

__all__ = [
    "classification",
    "extraction",
    "grounded",
    "grounded_scores",
    "item_score",
    "quality",
    "reliability",
    "squad_f1",
]


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


# ---- classification ------------------------------------------------------------------------


def classification(predicted: Sequence[Any], expected: Sequence[Any]) -> dict[str, Any]:
    """Accuracy, macro-F1 (over the expected classes), per-class figures and ``confusion[gold][predicted]``
    (a failed item is predicted ``None``, shown as ``"(failed)"``)."""
    confusion: dict[str, Counter[str]] = {}
    for p, g in zip(predicted, expected, strict=True):
        confusion.setdefault(str(g), Counter())["(failed)" if p is None else str(p)] += 1
    per_class: dict[str, dict[str, float]] = {}
    for label in sorted(confusion):
        tp = confusion[label][label]
        support = sum(confusion[label].values())
        said = sum(row[label] for row in confusion.values())
        precision = tp / said if said else 0.0
        recall = tp / support
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    right = sum(str(p) == str(g) for p, g in zip(predicted, expected, strict=True) if p is not None)
    return {
        "accuracy": right / len(expected) if expected else 0.0,
        "macro_f1": _mean([c["f1"] for c in per_class.values()]),
        "per_class": per_class,
        "confusion": {g: dict(row) for g, row in confusion.items()},
    }


# ---- extraction ----------------------------------------------------------------------------


def extraction(
    predicted: Sequence[Mapping[str, Any] | None],
    expected: Sequence[Mapping[str, Any]],
    kinds: Mapping[str, str] | None = None,
    fields: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Per-field exact and normalized match and the all-fields-right rate (normalized).

    ``kinds``: gold field -> ``date``/``amount``/``text`` (default text); ``fields``: gold field ->
    output field where the names differ (SROIE's ``company`` is an invoice's ``issuer``). Gold fields
    that are null or empty are not counted."""
    kinds, fields = kinds or {}, fields or {}
    exact: Counter[str] = Counter()
    normalized: Counter[str] = Counter()
    counted: Counter[str] = Counter()
    all_right = 0
    for p, g in zip(predicted, expected, strict=True):
        p = p or {}
        ok = True
        for name, gold in g.items():
            if gold in (None, ""):
                continue
            value = p.get(fields.get(name, name))
            counted[name] += 1
            exact[name] += value is not None and str(value) == str(gold)
            hit = values_match(kinds.get(name, "text"), value, gold)
            normalized[name] += hit
            ok &= hit
        all_right += ok
    return {
        "all_fields": all_right / len(expected) if expected else 0.0,
        "fields": {
            name: {"exact": exact[name] / n, "normalized": normalized[name] / n, "n": n} for name, n in counted.items()
        },
    }


def _fields_right(predicted: Mapping[str, Any] | None, expected: Mapping[str, Any], **kw: Any) -> bool:
    """Whether every (non-empty) gold field matches, normalized."""
    all_fields: float = extraction([predicted], [expected], **kw)["all_fields"]
    return all_fields == 1.0


# ---- grounded answering (SQuAD 2.0) --------------------------------------------------------


def _squad_normalize(text: str) -> str:
    """SQuAD's answer normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 between two answers (SQuAD's official definition)."""
    p, g = _squad_normalize(prediction).split(), _squad_normalize(gold).split()
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
    em = max(float(_squad_normalize(answer) == _squad_normalize(g)) for g in golds)
    return em, max(squad_f1(answer, g) for g in golds)


def _answer_of(value: Any) -> str | None:
    """The answer in a grounded reply (``{"answerable", "answer", ...}``); None for an abstention."""
    if isinstance(value, Mapping):
        return value.get("answer") if value.get("answerable") and value.get("answer") else None
    return value if isinstance(value, str) and value else None


def _golds(expected: Any) -> list[str]:
    if isinstance(expected, Mapping):
        return list(expected.get("answers") or []) if expected.get("answerable", True) else []
    return [expected] if isinstance(expected, str) and expected else []


def grounded(predicted: Sequence[Any], expected: Sequence[Any]) -> dict[str, Any]:
    """EM/F1 (0..100) over answerable questions and over all, abstention accuracy (share of
    unanswerable questions abstained on), precision (share of abstentions that were right) and rate.
    ``expected``: ``{"answerable": bool, "answers": [...]}`` (SQuAD 2.0) or an answer string."""
    em_ans, f1_ans, em_all, f1_all = [], [], [], []
    abstained = abstained_right = unanswerable = 0
    for value, gold in zip(predicted, expected, strict=True):
        golds, answer = _golds(gold), _answer_of(value)
        em, f1 = grounded_scores(answer, golds)
        em_all.append(em)
        f1_all.append(f1)
        if golds:
            em_ans.append(em)
            f1_ans.append(f1)
        else:
            unanswerable += 1
        if answer is None:
            abstained += 1
            abstained_right += not golds
    return {
        "em": 100 * _mean(em_ans),
        "f1": 100 * _mean(f1_ans),
        "em_all": 100 * _mean(em_all),
        "f1_all": 100 * _mean(f1_all),
        "abstain_acc": abstained_right / unanswerable if unanswerable else None,
        "abstain_precision": abstained_right / abstained if abstained else None,
        "abstain_rate": abstained / len(expected) if expected else 0.0,
    }


# ---- one score per item, and everything for a kind -----------------------------------------


def item_score(kind: str, predicted: Any, expected: Any, **kw: Any) -> float:
    """How right one answer is, 0..1: label equality, all fields right, or SQuAD F1."""
    if kind == "extract":
        return float(predicted is not None and _fields_right(predicted, expected, **kw))
    if kind == "grounded_answer":
        return grounded_scores(_answer_of(predicted), _golds(expected))[1]
    return float(predicted is not None and str(predicted) == str(expected))


def quality(kind: str, predicted: Sequence[Any], expected: Sequence[Any], **kw: Any) -> dict[str, Any]:
    """The metrics of ``kind`` (``classify``, ``extract``, ``grounded_answer``)."""
    if kind == "extract":
        return extraction(predicted, expected, **kw)
    if kind == "grounded_answer":
        return grounded(predicted, expected)
    return classification(predicted, expected)


# ---- confidence calibration ----------------------------------------------------------------


def reliability(confidences: Sequence[float | None], scores: Sequence[float], bins: int = 10) -> dict[str, Any]:
    """Reliability table (per confidence bin: count, mean confidence, accuracy) and the expected
    calibration error (count-weighted mean gap). Items without a confidence are left out."""
    pairs = [(c, s) for c, s in zip(confidences, scores, strict=True) if c is not None]
    table: list[dict[str, Any]] = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(c, s) for c, s in pairs if lo <= c < hi or (b == bins - 1 and c == 1.0)]
        if inside:
            table.append(
                {
                    "bin": [round(lo, 3), round(hi, 3)],
                    "n": len(inside),
                    "confidence": _mean([c for c, _ in inside]),
                    "accuracy": _mean([s for _, s in inside]),
                }
            )
    ece = sum(row["n"] * abs(row["confidence"] - row["accuracy"]) for row in table) / len(pairs) if pairs else None
    return {"table": table, "ece": ece, "n": len(pairs)}
