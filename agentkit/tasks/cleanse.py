"""Cleanse: normalize messy input before extraction.

Deterministic rules where rules are exact (whitespace and control characters, dates to
ISO 8601, amounts to decimals, currency codes); the model only where judgement is needed
(``model_instructions``: e.g. fixing OCR misreadings), and then its output is checked.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from agentkit.data import parse_amount, parse_date
from agentkit.engine import Constraint, Engine, Usage
from agentkit.task import Answer, Task

__all__ = [
    "DEFAULT_RULES",
    "Cleanse",
    "Rule",
    "clean_whitespace",
    "currency_code",
    "currency_codes",
    "decimal_amount",
    "iso_date",
]

# ---- exact rules -------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANKS = re.compile(r"\n{3,}")


def clean_whitespace(text: str) -> str:
    """NFKC, control and zero-width characters removed, runs of spaces collapsed,
    lines stripped, more than one blank line collapsed."""
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def iso_date(text: str) -> str | None:
    """A printed date (day first) as ISO 8601, or None if it is not a date."""
    d = parse_date(text)
    return d.isoformat() if d else None


def decimal_amount(text: str) -> Decimal | None:
    """An amount as printed (``RM 1,234.50``, ``1.234,50 €``) as a Decimal."""
    return parse_amount(text)


_CURRENCIES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p, re.I), code)
    for p, code in [
        (r"\bMYR\b|\bRM\s?\d|\bringgit", "MYR"),
        (r"€|\bEUR\b|\beuros?\b", "EUR"),
        (r"£|\bGBP\b|\bpounds? sterling", "GBP"),
        (r"\bUSD\b|US\$|\bdollars?\b", "USD"),
        (r"\bCHF\b|\bFr\.\s?\d", "CHF"),
        (r"\bPLN\b|\bzł|\bzl\b", "PLN"),
        (r"\bSGD\b|S\$", "SGD"),
        (r"\bINR\b|₹|\bRs\.?\s?\d", "INR"),
        (r"\bJPY\b|¥|円", "JPY"),
        (r"\bCAD\b|C\$", "CAD"),
        (r"\bAUD\b|A\$", "AUD"),
        (r"\$", "USD"),
    ]
]


def currency_code(text: str) -> str | None:
    """The ISO 4217 code of the first currency marker found in ``text`` (a bare ``$`` is USD)."""
    best: tuple[int, str] | None = None
    for pattern, code in _CURRENCIES:
        m = pattern.search(text)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), code)
    return best[1] if best else None


def currency_codes(text: str) -> set[str]:
    """The ISO 4217 codes of every currency marker in ``text``."""
    return {code for pattern, code in _CURRENCIES if pattern.search(text)}


Rule = Callable[[str], str]

DEFAULT_RULES: tuple[Rule, ...] = (clean_whitespace,)


class Cleanse(Task):
    """Normalize a text: the ``rules`` in order, then optionally the model.

    With ``model_instructions`` the model rewrites the rule-cleaned text (greedy, its
    confidence from token probabilities); the rewrite is rejected if it drops more than
    ``max_change`` of the characters, so the model cannot silently lose content."""

    kind = "cleanse"
    knobs = frozenset({"max_tokens"})

    def __init__(
        self,
        rules: Sequence[Rule] = DEFAULT_RULES,
        *,
        model_instructions: str | None = None,
        max_change: float = 0.2,
        max_tokens: int = 1024,
    ) -> None:
        self.rules = list(rules)
        self.model_instructions = model_instructions
        self.max_change = max_change
        self.max_tokens = max_tokens

    def apply_rules(self, text: str) -> str:
        for rule in self.rules:
            text = rule(text)
        return text

    def answer(self, engine: Engine, text: str) -> Answer:
        cleaned = self.apply_rules(text)
        if not cleaned.strip():  # nothing readable was left: a failure saying so, not an empty success
            problems = ["no text is left after cleansing (the input held only invisible or control characters)"]
            return Answer(value=None, raw=cleaned, confidence=None, method="rules", usage=Usage(), problems=problems)
        if not self.model_instructions:
            return Answer(value=cleaned, raw=cleaned, confidence=1.0, method="rules", usage=Usage())
        msgs = [
            {"role": "system", "content": self.model_instructions},
            {"role": "user", "content": cleaned},
        ]
        gen = engine.generate(msgs, Constraint("text"), max_tokens=self.max_tokens, prefix=1)
        out = gen.text.strip()
        problems = []
        if gen.finish_reason == "length":
            problems.append("output cut at the token limit")
        if len(out) < (1 - self.max_change) * len(cleaned):
            problems.append(f"model dropped {1 - len(out) / max(1, len(cleaned)):.0%} of the text")
        probs = sorted(gen.token_probs or [])
        conf = probs[len(probs) // 10] if probs else None
        return Answer(
            value=out, raw=gen.text, confidence=conf, method="token-probs:q10", usage=gen.usage, problems=problems
        )

    def settings(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rules": [getattr(r, "__name__", repr(r)) for r in self.rules],
            "model_instructions": self.model_instructions,
        }
