"""Pydantic schemas for the shipped domains; ``python -m schemas OUT_DIR`` writes their JSON Schemas."""

from schemas.email import EmailTriage
from schemas.grounded import GroundedReply
from schemas.invoice import Invoice, InvoiceHeader, LineItem
from schemas.receipt import Receipt

ALL = {"invoice": Invoice, "receipt": Receipt, "email_triage": EmailTriage, "grounded_answer": GroundedReply}

__all__ = ["ALL", "EmailTriage", "GroundedReply", "Invoice", "InvoiceHeader", "LineItem", "Receipt"]
