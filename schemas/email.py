"""What the email workflow decides about one message."""

from __future__ import annotations

from typing import Literal

import pydantic

from schemas.grounded import GroundedReply
from schemas.invoice import Invoice

EmailCategory = Literal["invoice", "support_question", "action_request", "spam", "other"]
"""The routes of the email workflow: invoices → extraction, support questions → grounded answer,
spam → dropped with a record, the rest → a human."""


class EmailTriage(pydantic.BaseModel):
    """The routing decision for one email and what came of it."""

    category: EmailCategory = pydantic.Field(description="What kind of message this is")
    outcome: Literal["extracted", "answered", "dropped", "flagged", "failed"] = pydantic.Field(
        description="What the workflow did with it"
    )
    reason: str = pydantic.Field("", description="One line on why (for flagged or failed messages)")
    subject: str = pydantic.Field("", description="The message's subject line")
    sender: str = pydantic.Field("", description="The message's From header")
    invoice: Invoice | None = pydantic.Field(None, description="The extracted invoice (category invoice)")
    answer: GroundedReply | None = pydantic.Field(
        None, description="The grounded answer from the knowledge base (category support_question)"
    )
