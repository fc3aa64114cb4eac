"""An invoice: who issued it, its number and date, the currency and the amounts."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated

import pydantic

Amount = Annotated[Decimal, pydantic.WithJsonSchema({"type": "string", "pattern": r"^-?[0-9]{1,12}(\.[0-9]{1,4})?$"})]
"""A decimal amount, written as a plain decimal string (``"1234.50"``: no sign, no separators)."""


class LineItem(pydantic.BaseModel):
    """One billed line."""

    description: str = pydantic.Field(description="What was billed, as printed")
    quantity: Amount | None = pydantic.Field(None, description="Units billed, if printed")
    unit_price: Amount | None = pydantic.Field(None, description="Price per unit, if printed")
    amount: Amount = pydantic.Field(description="Line total as a decimal number, no currency sign")


class InvoiceHeader(pydantic.BaseModel):
    """Key fields of an invoice, normalized: ISO 8601 date, ISO 4217 currency, decimal amounts (no line items)."""

    issuer: str = pydantic.Field(description="Company that issued the invoice, as printed")
    issuer_address: str | None = pydantic.Field(
        None, description="The issuer's postal address, lines joined with spaces, if printed"
    )
    invoice_number: str | None = pydantic.Field(
        None, description="The invoice's own number or id, as printed (receipts may have none)"
    )
    issue_date: date = pydantic.Field(description="Date the invoice was issued, ISO 8601 (YYYY-MM-DD)")
    currency: str | None = pydantic.Field(
        None,
        description="ISO 4217 code of the invoice currency (EUR, USD, INR, ...), if the document shows it",
        pattern=r"^[A-Z]{3}$",
    )
    total: Amount = pydantic.Field(description="Amount due including tax, a decimal number with no currency sign")
    subtotal: Amount | None = pydantic.Field(None, description="Amount before tax, if printed")
    tax: Amount | None = pydantic.Field(None, description="Tax amount, if printed")
    buyer: str | None = pydantic.Field(None, description="Name of the customer billed, if printed")


class Invoice(InvoiceHeader):
    """An invoice's key fields and its billed lines."""

    line_items: list[LineItem] = pydantic.Field(default_factory=list, description="Billed lines, if listed")
