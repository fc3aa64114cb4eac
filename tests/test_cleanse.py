"""Cleanse rules on real values from ../shared/datasets (SROIE receipts, invoice2data invoices)."""

from __future__ import annotations

import re
from decimal import Decimal

from agentkit import Cleanse, Node
from agentkit.data import parse_date, read_jsonl
from agentkit.tasks.cleanse import clean_whitespace, currency_code, decimal_amount, iso_date


def test_dates_and_totals_of_real_receipts(datasets):
    receipts = list(read_jsonl(datasets / "sroie2019" / "dev.jsonl"))
    dates = [r["expected"]["date"] for r in receipts if r["expected"]["date"]]
    parsed = [iso_date(d) for d in dates]
    assert sum(p is not None for p in parsed) / len(dates) > 0.97, [
        d for d, p in zip(dates, parsed, strict=True) if p is None
    ][:10]
    assert iso_date("25/12/2018") == "2018-12-25"
    totals = [r["expected"]["total"] for r in receipts if r["expected"]["total"]]
    amounts = [decimal_amount(t) for t in totals]
    wrong = [
        (t, a) for t, a in zip(totals, amounts, strict=True) if a is None or a != Decimal(re.sub(r"[^\d.\-]", "", t))
    ]
    assert not wrong, wrong[:10]  # gold totals are as printed ("RM 3.90", "$8.20", one is "-1.73")


def test_currency_codes_of_real_invoices(datasets):
    invoices = [
        r for r in read_jsonl(datasets / "invoice2data" / "all.jsonl") if r.get("expected_core", {}).get("currency")
    ]
    right = [currency_code(r["input"]) == r["expected_core"]["currency"] for r in invoices]
    # the first currency marker decides; report which invoices disagree if too many do
    assert sum(right) / len(right) >= 0.75, [
        (r["id"], currency_code(r["input"])) for r, ok in zip(invoices, right, strict=True) if not ok
    ]


def test_invoice_dates_parse_to_gold(datasets):
    invoices = [
        r for r in read_jsonl(datasets / "invoice2data" / "all.jsonl") if r.get("expected_core", {}).get("date")
    ]
    for r in invoices:
        assert parse_date(r["expected_core"]["date"]).isoformat() == r["expected_core"]["date"]


def test_whitespace_cleaning_keeps_content(datasets):
    invoice = next(read_jsonl(datasets / "invoice2data" / "all.jsonl"))
    text = invoice["input"]
    cleaned = clean_whitespace(text + "\x00\u200b\r\n\r\n\r\n\r\n")
    assert len(cleaned) < len(text)
    assert "  " not in cleaned and "\n\n\n" not in cleaned and "\x00" not in cleaned
    assert cleaned.split() == text.split()  # no word lost or changed


def test_cleanse_node_runs_on_the_rules_tier():
    node = Node(Cleanse(), ["rules"])
    r = node.run("  TOTAL :   9.00 \t RM \n\n\n\nTHANK   YOU ")
    assert r.ok and r.value == "TOTAL : 9.00 RM\n\nTHANK YOU" and r.tier == "rules" and r.cost_usd == 0.0
    assert Decimal("9.00") == decimal_amount("RM 9.00")
