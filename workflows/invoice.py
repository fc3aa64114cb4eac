"""Invoice workflow: a document (PDF, text or OCR text) → cleanse → extract an :class:`Invoice` →
business checks → a validated invoice, or a failure record with every reason.

The business checks are the extraction node's validators, so an invoice that fails them is
re-asked of the next tier (0.5B → 1.5B by default) before it is given up on:

- the issuer is printed in the document (up to OCR noise);
- the total is an amount printed in the document;
- the issue date is a date printed in the document, read the way the document writes dates (day
  first, unless a printed date can only be read month first or the amounts are in US dollars);
- the currency is one a currency marker in the document shows (``RM`` → MYR, ``€`` → EUR, …); a
  document with no marker has no currency (or the deployment's ``default_currency``), never a guess;
- with ``line_items=True``, the lines add up to the subtotal or total.

The optional fields are checked too, but an invoice is not failed (nor re-asked of a bigger
model) for them: a subtotal or tax that is not printed, a pair that does not add up to the total, or
a buyer that is not printed or is the issuer, is set to null and the reason recorded (``Drop``; in
the result's attempt details; a dropped field's confidence no longer counts). The exception:
when a plausible pair (0 < tax < subtotal) adds up to another printed amount, the total is the suspect
and the check fails. Sums are to the cent, or to 5 cents when the document prints a rounding line.

Where the document prints currency markers, the currency is constrained to their codes, the total to
the amounts printed (as plain decimals: ``€ 4.904,94`` → ``4904.94``), the issue date to the dates
printed (as ISO 8601: ``7. Mai 2014`` → ``2014-05-07``) and the invoice number to the identifiers
printed under a number label: a field the text decides is not left for the model to guess.

The prompt holds the most similar labelled receipt (BM25 over ``workflows/data/receipts_labelled.jsonl``,
the SROIE train split), so a vendor seen before is read the way it was labelled.

Importing this module builds nothing: :func:`build` makes a graph (indexing the labelled receipts, loading
no model), and ``graph`` / :func:`make_graph` are the shipped one, built on first use and then reused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from agentkit import DEFAULT_LADDER, Cleanse, Drop, Extract, Node, Policy, Tier, read_jsonl
from agentkit.data import candidates, month_number, occurs_in, parse_amount, parse_date, word_key
from agentkit.documents import document_text
from agentkit.errors import InputError
from agentkit.tasks.cleanse import currency_codes
from schemas.invoice import Invoice, InvoiceHeader
from workflows import DATA, existing

EXAMPLES = DATA / "receipts_labelled.jsonl"
"""The labelled receipts the prompt's example is retrieved from (SROIE, train side of the split)."""
CALIBRATION = DATA / "invoice_calibration.json"
"""The extraction's confidence calibration, fitted on those receipts (``python -m workflows.calibrate_invoice``)."""
INSTRUCTIONS = (
    "Extract the invoice's key fields from the document. Copy names, numbers and addresses as printed; "
    "write the issue date as YYYY-MM-DD, amounts as plain decimals (no currency sign, no thousands "
    "separator), the currency as its ISO 4217 code. Leave optional fields null when they are not printed."
)


class InvoiceState(TypedDict, total=False):
    input: Any  # bytes of a PDF or text file, a string, or {"text": ...}
    source: str
    text: str
    invoice: dict[str, Any] | None
    invoice_meta: dict[str, Any]
    output: dict[str, Any] | None
    ok: bool
    status: str
    reason: str


if TYPE_CHECKING:  # langgraph is imported when a graph is built: importing it takes most of a second
    from langgraph.graph.state import CompiledStateGraph

    CompiledInvoiceGraph = CompiledStateGraph[InvoiceState, None, InvoiceState, InvoiceState]


# ---- business checks (validators: value, source text -> problem or None) ------------------


@lru_cache(maxsize=2)
def _amounts(text: str) -> frozenset[Decimal]:
    """The amounts printed in ``text`` (cached for the one text that every check of an answer reads)."""
    return frozenset(a for a in (parse_amount(c) for c in candidates("amount", text)) if a is not None)


def _whole_amount_printed(amount: Decimal, text: str) -> bool:
    """A whole amount printed without decimals ("Total 1,939" for 1939.00)."""
    if amount != amount.to_integral_value():
        return False
    digits = f"{int(amount):,}".replace(",", "[,.' ]?")
    return re.search(rf"(?<![\d.,]){digits}(?![\d]|[.,]\d)", text) is not None


_DAY_MONTH = re.compile(r"(\d{1,2})\s?[/.\-]\s?(\d{1,2})\s?[/.\-]\s?\d{2,4}")


@lru_cache(maxsize=2)
def _date_tokens(text: str) -> tuple[str, ...]:
    """The dates printed in ``text``, as printed (cached: the date check reads them up to four times)."""
    return tuple(candidates("date", re.sub(r"\s+,", ",", text)))


def printed_dates(text: str, *, month_first: bool | None = None) -> set[date]:
    """Dates printed in ``text``. An ambiguous numeric date (03/08) is read day first, month first when
    ``month_first``, or both ways when ``month_first`` is None."""
    found: set[date] = set()
    for c in _date_tokens(text):
        d = parse_date(c)  # day first where both readings are valid
        if not d:
            continue
        m = _DAY_MONTH.fullmatch(c)
        if m and int(m.group(1)) <= 12 and int(m.group(2)) <= 12:
            if month_first is not True:
                found.add(d)
            if month_first is not False:
                found.add(d.replace(day=d.month, month=d.day))
        else:
            found.add(d)
    return found


def writes_month_first(text: str, currency: str | None = None) -> bool | None:
    """How ``text`` writes numeric dates: month first (True) when a printed date can only be read so
    (``03/25/2018``), day first (False) when one can only be read day first, or, with no such date,
    day first unless the amounts are in US dollars (then None: either)."""
    pairs = [(int(m.group(1)), int(m.group(2))) for c in _date_tokens(text) if (m := _DAY_MONTH.fullmatch(c))]
    day_first, month_first = any(a > 12 for a, _ in pairs), any(b > 12 for _, b in pairs)
    if day_first != month_first:
        return month_first
    if day_first:  # both kinds printed: the text does not say
        return None
    return None if currency == "USD" else False


def _printed(amount: Decimal, printed: frozenset[Decimal], text: str) -> bool:
    return amount in printed or _whole_amount_printed(amount, text)


def total_printed(value: InvoiceHeader, text: str) -> str | None:
    if not _printed(value.total, _amounts(text), text):
        return f"total {value.total} is not an amount printed in the document"
    return None


def optional_amounts_printed(value: InvoiceHeader, text: str) -> Drop | None:
    """A subtotal or tax that is not printed is dropped (the invoice stands without it)."""
    printed = _amounts(text)
    unprinted = tuple(
        name
        for name in ("subtotal", "tax")
        if (amount := getattr(value, name)) is not None and amount != 0 and not _printed(amount, printed, text)
    )
    if unprinted:
        return Drop(unprinted, ", ".join(f"{n} {getattr(value, n)} is not printed" for n in unprinted))
    return None


def date_printed(value: InvoiceHeader, text: str) -> str | None:
    day = value.issue_date
    month_first = writes_month_first(text, value.currency)
    if day in printed_dates(text, month_first=month_first):
        return None
    if day in printed_dates(text):
        way = "month first" if month_first else "day first"
        return f"issue date {day} misreads a printed date: this document writes dates {way}"
    # dates in words that do not parse (a language or spelling not in agentkit.data's month names): then
    # the day, a word that is not another month's known name, and the four-digit year must be printed
    # together (not a "20" anywhere and a "2018" elsewhere)
    d, y = rf"(?<!\d)0?{day.day}(?:st|nd|rd|th)?\.?", rf"{day.year}(?!\d)"
    for m in re.finditer(rf"{d}\s*([^\W\d_]{{3,}})\.?,?\s*{y}|([^\W\d_]{{3,}})\.?\s*{d},?\s*{y}", text):
        if month_number(m.group(1) or m.group(2)) in (None, day.month):
            return None
    return f"issue date {day} is not a date printed in the document"


_ROUNDING = re.compile(r"\bround", re.I)  # "ROUNDING ADJ", "Round off"; not "ground"


def amounts_add_up(value: InvoiceHeader, text: str) -> str | Drop | None:
    """subtotal + tax = total (to the cent, or to 5 cents when the document prints a rounding line:
    cash rounding, ``19.79 + 1.19`` → ``21.00``). When they do not, the optional pair is dropped, unless
    it is a plausible pair (0 < tax < subtotal) whose sum is itself printed: then the total is the
    suspect, and the invoice fails the check. (``0.00 + 5.60``, ``6.00 + 6.00`` are the model's
    misreadings, not evidence against the total.)"""
    if value.subtotal is None or value.tax is None:
        return None
    added = value.subtotal + value.tax
    slack = Decimal("0.05") if _ROUNDING.search(text) else Decimal("0.01")
    if abs(added - value.total) <= slack:
        return None
    problem = f"subtotal {value.subtotal} + tax {value.tax} != total {value.total}"
    if 0 < value.tax < value.subtotal and _printed(added, _amounts(text), text):
        return f"{problem}, and {added} is printed: the total may be wrong"
    return Drop(("subtotal", "tax"), problem)


def line_items_add_up(value: InvoiceHeader, text: str) -> str | None:
    cent = Decimal("0.01")
    if isinstance(value, Invoice) and value.line_items:
        lines = sum((item.amount for item in value.line_items), Decimal(0))
        if all(abs(lines - t) > cent for t in (value.subtotal, value.total) if t is not None):
            return f"line items add up to {lines}, not to the subtotal or total"
    return None


def issuer_printed(value: InvoiceHeader, text: str) -> str | None:
    if not occurs_in(value.issuer, text):
        return f"issuer {value.issuer!r} is not printed in the document"
    return None


def buyer_is_another_party(value: InvoiceHeader, text: str) -> Drop | None:
    """A buyer that is not printed, or is the issuer itself, is dropped (receipts name no customer, and
    the model then repeats the vendor or an item line)."""
    if value.buyer is None:
        return None
    if not occurs_in(value.buyer, text):
        return Drop(("buyer",), f"buyer {value.buyer!r} is not printed in the document")
    if word_key(value.buyer) == word_key(value.issuer):
        return Drop(("buyer",), f"buyer {value.buyer!r} is the issuer")
    return None


def address_is_postal(value: InvoiceHeader, text: str) -> Drop | None:
    """An issuer address that is the issuer's name, or has no number in it (no postcode, no street number),
    is not a postal address: dropped (the model took a name or a slogan for it)."""
    address = value.issuer_address
    if address is None:
        return None
    if word_key(address) == word_key(value.issuer):
        return Drop(("issuer_address",), f"issuer address {address!r} is the issuer's name")
    if not re.search(r"\d", address):
        return Drop(("issuer_address",), f"issuer address {address!r} has no number: not a postal address")
    return None


def currency_printed(value: InvoiceHeader, text: str) -> str | None:
    codes = currency_codes(text)
    if codes and value.currency not in codes:
        return f"currency {value.currency} but the document shows {', '.join(sorted(codes))}"
    return None


CHECKS = (issuer_printed, total_printed, optional_amounts_printed, date_printed, amounts_add_up, line_items_add_up,
          buyer_is_another_party, address_is_postal, currency_printed)  # fmt: skip


# ---- the invoice number: picked among labelled identifiers ---------------------------------

_NUMBER_LABEL = re.compile(
    r"(?<![A-Za-z])(?:invoice|inv|receipt|bill|booking|document|doc|rechnung|factuur|facture|faktura|fattura"
    r"|factura|nota)(?:[ -]?(?:no|nr|number|num|nummer|numéro|numero|id|ref)\b\.?|nummer|snr\.?|nr\.?)?"
    r"(?:\s*(?:n°|no\.?|#|:))*",
    re.IGNORECASE,
)
_IDENTIFIER = re.compile(r"#?\s?([A-Za-z0-9][A-Za-z0-9/_.-]*\d[A-Za-z0-9/_-]*)")


def _is_date(token: str) -> bool:
    return bool(re.fullmatch(r"[\d./-]+", token)) and parse_date(token) is not None


def document_numbers(text: str) -> list[str]:
    """Identifiers printed after an invoice-number label (``Invoice No: 42``, ``Factuurnummer 9935``,
    ``Facture n°5620``) or, in a laid-out table, under one: the candidates for ``invoice_number``.
    Dates, amounts, years and numbers under four characters are not identifiers."""
    lines = text.splitlines()
    found: list[str] = []
    for i, line in enumerate(lines):
        for m in _NUMBER_LABEL.finditer(line):
            after = _IDENTIFIER.match(line, m.end()) or _IDENTIFIER.match(line[m.end() :].lstrip(" :#"))
            spots = [after.group(1)] if after else []
            below = next((x for x in lines[i + 1 : i + 3] if x.strip()), "")
            for b in _IDENTIFIER.finditer(below):  # the value under the label's column
                if b.start(1) < m.end() + 4 and b.end(1) > m.start() - 4:
                    spots.append(b.group(1))
            found += [x.rstrip(".-/") for x in spots if not _is_date(x) and not re.fullmatch(r"[\d,.]+\.\d\d", x)]
    return list(dict.fromkeys(x for x in found if len(x) >= 4 and not re.fullmatch(r"(19|20)\d\d", x)))


_MARKED_WHOLE = re.compile(
    r"(?:[$€£₹¥]|(?<![A-Za-z])(?:RM|Rs\.?|EUR|USD|GBP|INR|MYR|SGD|CHF|PLN|JPY|CAD|AUD))\s?"
    r"(\d{1,3}(?:[,.' ]\d{3})+|\d+)(?![\d]|[.,]\d)"
)


def document_amounts(text: str) -> list[str]:
    """The amounts printed in ``text`` as plain decimals (``€ 4.904,94`` → ``4904.94``), and whole
    amounts printed after a currency marker (``Rs 1939`` → ``1939``): the candidates for ``total``."""
    found = [parse_amount(c) for c in candidates("amount", text)]
    found += [parse_amount(m.group(1)) for m in _MARKED_WHOLE.finditer(text)]
    return list(dict.fromkeys(f"{a:f}" for a in found if a is not None))


def document_dates(text: str) -> list[str]:
    """The dates printed in ``text`` as ISO 8601, an ambiguous numeric date (03/08/2018) read the way
    the document writes dates (:func:`writes_month_first`; both ways when it cannot tell): the
    candidates for ``issue_date``."""
    codes = currency_codes(text)
    month_first = writes_month_first(text, "USD" if codes == {"USD"} else None)
    return sorted(d.isoformat() for d in printed_dates(text, month_first=month_first))


def document_currencies(text: str) -> list[str]:
    """The ISO 4217 codes of the currency markers printed in ``text`` (none: the currency is unstated)."""
    return sorted(currency_codes(text))


# ---- the graph ----------------------------------------------------------------------------


def _receipt_as_invoice(record: dict[str, Any]) -> dict[str, Any]:
    """A labelled SROIE receipt as an invoice example (the four labelled fields, date as ISO)."""
    gold = record["expected"]
    day = parse_date(gold["date"])
    expected = {  # only what is labelled: a null number or a fixed currency here would be copied
        "issuer": gold["company"],
        "issuer_address": gold["address"] or None,
        "issue_date": day.isoformat() if day else None,
        "total": gold["total"],
    }
    return {"input": record["input"], "expected": expected}


def extraction_node(
    tiers: Sequence[str | Tier] = DEFAULT_LADDER,
    *,
    examples: str | Path | Sequence[Mapping[str, Any]] | None = EXAMPLES,
    k: int = 1,
    threshold: float = 0.1,
    review_threshold: float | None = 0.9,
    line_items: bool = False,
    default_currency: str | None = None,
    calibration: str | Path | None = CALIBRATION,
    input: Any = "text",
) -> Node:
    """The invoice extraction node (with the business checks), reading ``input`` from the state.
    ``line_items=True`` extracts the billed lines too (:class:`Invoice`; slower, and checked to add
    up); by default the header fields (:class:`InvoiceHeader`). ``examples=None``: no example in the prompt.
    ``default_currency`` (``"MYR"``): the currency of a document that shows none (else null).
    ``calibration`` (a file, if it exists): the confidence is the estimated probability that issuer, address,
    date and total are all right (else the lowest field's token probability, fields a labelled receipt of the
    same issuer confirms not counted). Below ``threshold`` the next tier is asked (on the labelled receipts the
    calibration was fitted on, none of the 0.5B's answers below 0.1 was right); an invoice accepted below
    ``review_threshold`` is marked for review: a doubtful reading above 0.1 goes to a person, not to the 1.5B
    (whose answers the calibration was not fitted on, and which costs 3× the time)."""
    pool = None
    if examples is not None:
        records = (
            read_jsonl(existing(examples, "the labelled receipts")) if isinstance(examples, str | Path) else examples
        )
        pool = [_receipt_as_invoice(r) for r in records]
    return Node(
        Extract(
            Invoice if line_items else InvoiceHeader,
            instructions=INSTRUCTIONS,
            examples=pool,
            k=k,
            validators=CHECKS,
            max_tokens=800 if line_items else 300,
            verbatim={
                "invoice_number": document_numbers,
                "issue_date": document_dates,
                "currency": document_currencies,
                "total": document_amounts,
            },
            defaults={"currency": default_currency} if default_currency else None,
            copied=("issuer", "issuer_address", "buyer"),
            confirm_by_examples=True,
            calibration=calibration if calibration is not None and Path(calibration).is_file() else None,
        ),
        tiers,
        Policy(threshold=threshold, review_threshold=review_threshold),
        name="extract_invoice",
        input=input,
        output="invoice",
        meta="invoice_meta",
    )


def build(
    tiers: Sequence[str | Tier] = DEFAULT_LADDER,
    *,
    examples: str | Path | None = EXAMPLES,
    k: int = 1,
    threshold: float = 0.1,
    review_threshold: float | None = 0.9,
    line_items: bool = False,
    default_currency: str | None = None,
    calibration: str | Path | None = CALIBRATION,
) -> CompiledInvoiceGraph:
    """A compiled invoice graph. Building it indexes the labelled receipts and loads no model (models load
    on first use)."""
    from langgraph.graph import END, START, StateGraph  # here, not at import: it takes most of a second

    cleanse = Node(Cleanse(), ["rules"], name="cleanse", input="text", output="text")
    extract = extraction_node(
        tiers,
        examples=examples,
        k=k,
        threshold=threshold,
        review_threshold=review_threshold,
        line_items=line_items,
        default_currency=default_currency,
        calibration=calibration,
    )

    def read(state: InvoiceState) -> dict[str, Any]:
        try:
            return {"text": document_text(state.get("input"), name=str(state.get("source") or "input"))}
        except InputError as e:
            return {"text": "", "status": "failed", "ok": False, "reason": str(e), "output": None}

    def finish(state: InvoiceState) -> dict[str, Any]:
        meta = state.get("invoice_meta") or {}
        if state.get("invoice") is not None:
            if meta.get("needs_review"):  # no tier was confident: the best reading, marked for a person
                return {"output": state["invoice"], "ok": True, "status": "needs_review", "reason": meta["reason"]}
            return {"output": state["invoice"], "ok": True, "status": "extracted", "reason": ""}
        return {"output": None, "ok": False, "status": "failed", "reason": meta.get("reason", "not extracted")}

    g = StateGraph(InvoiceState)
    g.add_node("read", read)
    g.add_node("cleanse", cleanse)
    g.add_node("extract", extract)
    g.add_node("finish", finish)
    g.add_edge(START, "read")
    g.add_conditional_edges("read", lambda s: END if s.get("status") == "failed" else "cleanse")
    g.add_edge("cleanse", "extract")
    g.add_edge("extract", "finish")
    g.add_edge("finish", END)
    return g.compile()


@cache
def shipped_graph() -> CompiledInvoiceGraph:
    """The shipped invoice workflow (``agentkit run invoice``): built on the first call, then reused."""
    return build()


def make_graph(config: Mapping[str, Any] | None = None) -> CompiledInvoiceGraph:
    """The graph factory ``langgraph.json`` names: :func:`shipped_graph` (LangGraph passes its run config; the
    workflow reads none)."""
    return shipped_graph()


def __getattr__(name: str) -> Any:
    """``graph`` is :func:`shipped_graph`, built on first access: importing this module builds nothing."""
    if name == "graph":
        return shipped_graph()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
