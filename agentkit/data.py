"""Data hygiene: one split function, one comparison per field type.

Every benchmark, eval and tuning run splits with :func:`split_of`, so an item scored
never appears among the examples retrieved for its own prompt, and exact duplicates
(after normalization) always land in the same split.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

__all__ = [
    "Split",
    "candidates",
    "compare_fields",
    "month_number",
    "normalize_text",
    "occurs_in",
    "parse_amount",
    "parse_date",
    "printed_span",
    "read_jsonl",
    "sample",
    "split_of",
    "split_records",
    "values_match",
    "word_key",
]

_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFKC, whitespace collapsed, case-folded: the key for duplicates and text comparison."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def split_of(text: str, *, seed: int = 0, test_fraction: float = 0.3) -> str:
    """``"test"`` or ``"train"`` for ``text``, from a seeded hash of its normalized form."""
    digest = hashlib.sha256(f"{seed}:{normalize_text(text)}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if u < test_fraction else "train"


@dataclass(frozen=True)
class Split:
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]


def split_records(
    records: Iterable[Mapping[str, Any]], *, seed: int = 0, test_fraction: float = 0.3, key: str = "input"
) -> Split:
    """Split records by :func:`split_of` of ``record[key]`` (non-string inputs are JSON-dumped)."""
    train: list[dict[str, Any]] = []
    test: list[dict[str, Any]] = []
    for r in records:
        side = split_of(_record_text(r, key), seed=seed, test_fraction=test_fraction)
        (test if side == "test" else train).append(dict(r))
    return Split(train=train, test=test)


def _record_text(record: Mapping[str, Any], key: str) -> str:
    """``record[key]`` as text (non-string inputs JSON-dumped): what splitting and sampling hash."""
    value = record[key]
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def sample(
    records: Iterable[Mapping[str, Any]], n: int | None, *, seed: int = 0, key: str = "input"
) -> list[dict[str, Any]]:
    """``n`` records (all when ``None``) in a seeded hash order of ``record[key]``: the first ``n`` of a
    file sorted by label would be one or two labels; these are a mix, the same on every run."""

    def rank(r: Mapping[str, Any]) -> bytes:
        return hashlib.sha256(f"sample:{seed}:{normalize_text(_record_text(r, key))}".encode()).digest()

    ordered = sorted((dict(r) for r in records), key=rank)
    return ordered if n is None else ordered[:n]


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file; a malformed line raises ValueError naming the line."""
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None


# ---- comparisons -------------------------------------------------------------------

_MONTHS = {
    m: i
    for i, names in enumerate(
        [  # English, then German, Dutch, French, Spanish, Italian, Portuguese and Polish names
            ("jan", "january", "januar", "jän", "jänner", "januari", "janv", "janvier", "ene", "enero", "gen",
             "gennaio", "janeiro", "sty", "styczeń", "stycznia"),
            ("feb", "february", "februar", "februari", "fév", "févr", "février", "fev", "fevr", "fevrier", "febrero",
             "febbraio", "fevereiro", "lut", "luty", "lutego"),
            ("mar", "march", "mär", "märz", "maart", "mrt", "mars", "marzo", "março", "marzec", "marca"),
            ("apr", "april", "avr", "avril", "abr", "abril", "aprile", "kwi", "kwiecień", "kwietnia"),
            ("may", "mai", "mei", "mayo", "mag", "maggio", "maio", "maj", "maja"),
            ("jun", "june", "juni", "juin", "junio", "giu", "giugno", "junho", "cze", "czerwiec", "czerwca"),
            ("jul", "july", "juli", "juil", "juillet", "julio", "lug", "luglio", "julho", "lip", "lipiec", "lipca"),
            ("aug", "august", "augustus", "aoû", "août", "aout", "ago", "agosto", "sie", "sierpień", "sierpnia"),
            ("sep", "sept", "september", "septembre", "septiembre", "set", "settembre", "setembro", "wrz",
             "wrzesień", "września"),
            ("oct", "october", "okt", "oktober", "octobre", "octubre", "ott", "ottobre", "out", "outubro", "paź",
             "październik", "października"),
            ("nov", "november", "novembre", "noviembre", "novembro", "lis", "listopad", "listopada"),
            ("dec", "december", "dez", "dezember", "déc", "décembre", "dic", "diciembre", "dicembre", "dezembro",
             "gru", "grudzień", "grudnia"),
        ],
        1,
    )
    for m in names
}  # fmt: skip
_NUMERIC_DATE = re.compile(r"(\d{1,4})\s*[/.\-]\s*(\d{1,2})\s*[/.\-]\s*(\d{2,4})")
_NAMED_DATE = re.compile(r"(\d{1,2})(?:st|nd|rd|th)?[\s\-/.,]*([^\W\d_]{3,12})\.?[\s\-/.,]*(\d{2,4})")
_NAMED_DATE_US = re.compile(r"([^\W\d_]{3,12})\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})")


def _year(y: str) -> int:
    n = int(y)
    return n + 2000 if n < 100 else n


def _safe_date(y: int, m: int, d: int) -> date | None:
    try:
        return date(y, m, d)
    except ValueError:
        return None


def parse_date(text: str) -> date | None:
    """Parse a date as printed on documents, day first (``25/12/2018``, ``25 MAR 2018``, ISO)."""
    s = text.strip()
    m = _NUMERIC_DATE.search(s)
    if m:
        a, b, c = m.groups()
        if len(a) == 4:  # ISO-like: year first
            return _safe_date(int(a), int(b), int(c))
        return _safe_date(_year(c), int(b), int(a)) or _safe_date(_year(c), int(a), int(b))
    m = _NAMED_DATE.search(s)
    if m and m.group(2).lower() in _MONTHS:
        return _safe_date(_year(m.group(3)), _MONTHS[m.group(2).lower()], int(m.group(1)))
    m = _NAMED_DATE_US.search(s)
    if m and m.group(1).lower() in _MONTHS:
        return _safe_date(int(m.group(3)), _MONTHS[m.group(1).lower()], int(m.group(2)))
    return None


def month_number(name: str) -> int | None:
    """1–12 for a month name or abbreviation in English, German, Dutch, French, Spanish, Italian,
    Portuguese or Polish (``"Mar"``, ``"Mai"``, ``"grudnia"``), else None."""
    return _MONTHS.get(name.strip(". ").lower())


_AMOUNT = re.compile(r"-?\d[\d,.\s]*")


def parse_amount(text: str | int | float | Decimal) -> Decimal | None:
    """An amount as Decimal: currency symbols and thousands separators dropped (``RM 1,234.50``)."""
    if isinstance(text, (int, Decimal)):
        return Decimal(text)
    if isinstance(text, float):
        return Decimal(str(text))
    m = _AMOUNT.search(text.replace("\u00a0", " "))
    if not m:
        return None
    s = m.group(0).replace(" ", "").rstrip(".,")
    if "," in s and "." in s:  # the later one is the decimal mark
        s = s.replace(".", "").replace(",", ".") if s.rfind(",") > s.rfind(".") else s.replace(",", "")
    elif "," in s:
        head, _, tail = s.rpartition(",")
        s = f"{head.replace(',', '')}.{tail}" if len(tail) in (1, 2) else s.replace(",", "")
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


def values_match(kind: str, predicted: Any, gold: Any) -> bool:
    """Normalized match for a field of ``kind``: ``"date"``, ``"amount"`` or ``"text"``."""
    if predicted is None or gold is None:
        return predicted is None and gold is None
    if kind == "date":
        p, g = parse_date(str(predicted)), parse_date(str(gold))
        return p is not None and p == g
    if kind == "amount":
        pa, ga = parse_amount(predicted), parse_amount(gold)
        return pa is not None and pa == ga
    return normalize_text(str(predicted)) == normalize_text(str(gold))


def compare_fields(
    predicted: Mapping[str, Any] | None, gold: Mapping[str, Any], kinds: Mapping[str, str]
) -> dict[str, dict[str, bool]]:
    """Per field: ``{"exact": ..., "normalized": ...}``; fields not in ``kinds`` compare as text."""
    predicted = predicted or {}
    out: dict[str, dict[str, bool]] = {}
    for field, g in gold.items():
        p = predicted.get(field)
        out[field] = {
            "exact": p is not None and str(p) == str(g),
            "normalized": values_match(kinds.get(field, "text"), p, g),
        }
    return out


# ---- candidate values in a text -----------------------------------------------------

_AMOUNT_TOKEN = re.compile(r"(?<![\d.,])-?\d{1,3}(?:[,.\s]\d{3})*[.,]\d{2}(?![\d])|(?<![\d.,])-?\d+[.,]\d{2}(?!\d)")
_GLUED_PREFIX = re.compile(r"(?<![A-Za-z])(?:[A-Z]{1,3}|Rs|Rp)$")
"""Letters an amount may be glued to: a currency code or sign (``RM29.30``, ``USD12.00``, ``Rs250.00``)."""


def _amount_tokens(text: str) -> Iterator[str]:
    for m in _AMOUNT_TOKEN.finditer(text):
        before = text[max(0, m.start() - 4) : m.start()]
        if before and (before[-1].isalpha() or before[-1] == "_") and not _GLUED_PREFIX.search(before):
            continue  # part of a word or code ("ITEM2.50", "x12.00")
        yield m.group(0).strip()


_DATE_TOKEN = re.compile(
    r"\b\d{1,4}\s?[/.\-]\s?\d{1,2}\s?[/.\-]\s?\d{2,4}\b"
    r"|\b\d{1,2}(?:st|nd|rd|th)?[\s\-/.]*[^\W\d_]{3,12}\.?[\s\-/.,]*\d{2,4}\b"
    r"|\b[^\W\d_]{3,12}\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4}\b"
)


_NOT_WORD = re.compile(r"[\W_]+")


def word_key(text: str) -> str:
    """``text`` case-folded, letters and digits only: "B & BEST" and "b&best" have the same key."""
    return _NOT_WORD.sub("", text.casefold())


def occurs_in(value: str, text: str, *, min_ratio: float = 0.9) -> bool:
    """Whether ``value`` occurs in ``text`` up to case, spacing, punctuation and OCR noise: at least
    ``min_ratio`` of its letters and digits match, in order, a stretch of the text's."""
    a, b = word_key(value), word_key(text)
    if not a:
        return False
    if a in b:
        return True
    # align on the longest common run, then count matches only in the window it implies
    longest = difflib.SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b))
    slack = len(a) // 10 + 2
    start = max(0, longest.b - longest.a - slack)
    window = b[start : longest.b - longest.a + len(a) + slack]
    matched = sum(m.size for m in difflib.SequenceMatcher(None, a, window, autojunk=False).get_matching_blocks())
    return matched >= min_ratio * len(a)


def printed_span(value: str, text: str, *, min_ratio: float = 0.9) -> str | None:
    """The run of words printed in ``text`` (its lines joined with spaces) that ``value`` is a copy of, up to
    case, spacing, punctuation and a few slips (at least ``min_ratio`` alike in letters and digits): what a
    model meant to copy, as printed. ``None`` when nothing printed is that close. Of equally close runs, the
    one closest to ``value`` with its punctuation."""
    key = word_key(value)
    if not key:
        return None
    words = " ".join(line.strip() for line in text.splitlines() if line.strip()).split(" ")
    keys = [word_key(w) for w in words]
    best: tuple[float, float, str] | None = None
    for i in range(len(words)):
        if not keys[i] or keys[i][0] != key[0] and (len(key) < 2 or keys[i][0] != key[1]):
            continue  # a copy starts where the value starts (a first letter may be lost or added)
        span = ""
        for j in range(i, len(words)):
            span += keys[j]
            if len(span) > len(key) * 1.25 + 2:
                break
            if len(span) < len(key) * 0.75:
                continue
            matcher = difflib.SequenceMatcher(None, key, span, autojunk=False)
            if matcher.real_quick_ratio() < min_ratio or matcher.quick_ratio() < min_ratio:
                continue
            ratio = matcher.ratio()
            if ratio >= min_ratio:
                printed = " ".join(words[i : j + 1])
                alike = difflib.SequenceMatcher(None, normalize_text(value), normalize_text(printed)).ratio()
                if best is None or (ratio, alike) > best[:2]:
                    best = (ratio, alike, printed)
    return best[2] if best else None


def _overlapping(pattern: re.Pattern[str], text: str) -> Iterator[str]:
    """Every match of ``pattern``, also those starting inside an earlier one: in ``REG #19- 18/01/2018``
    the first match, ``19- 18/01``, is no date, and the date starts inside it."""
    pos = 0
    while m := pattern.search(text, pos):
        yield m.group(0).strip()
        pos = m.start() + 1


def candidates(kind: str, text: str) -> list[str]:
    """Strings in ``text`` that could be a value of ``kind`` (``amount`` or ``date``), as printed,
    in order of first appearance, without duplicates."""
    if kind == "amount":
        found = list(_amount_tokens(text))
    elif kind == "date":
        found = [token for token in _overlapping(_DATE_TOKEN, text) if parse_date(token)]
    else:
        raise ValueError(f"no candidate finder for {kind!r}")
    return list(dict.fromkeys(found))
