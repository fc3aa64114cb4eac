"""A grounded answer (re-exported from agentkit, where GroundedAnswer produces it)."""

from __future__ import annotations

from agentkit.tasks.grounded import GroundedReply

__all__ = ["GroundedReply"]
