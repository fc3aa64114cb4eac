"""A retail receipt: the four SROIE fields, as printed on the receipt."""

from __future__ import annotations

import pydantic


class Receipt(pydantic.BaseModel):
    """Key fields of a receipt, copied as printed (normalization happens when comparing)."""

    company: str = pydantic.Field(description="Name of the business that issued the receipt, as printed")
    date: str = pydantic.Field(description="Date of purchase, as printed (e.g. 25/12/2018)")
    address: str = pydantic.Field(description="Full address of the business, lines joined with spaces")
    total: str = pydantic.Field(description="Total amount paid, digits as printed (e.g. 9.00)")


FIELD_KINDS = {"company": "text", "date": "date", "address": "text", "total": "amount"}
"""How each field is compared (see ``agentkit.data.values_match``)."""
