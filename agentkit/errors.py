"""Errors: one root, each with a hint saying what to do, and a ``retryable`` flag.

Vendor exceptions are mapped once, at the engine boundary, and chained with ``from``.
"""

from __future__ import annotations

__all__ = ["AgentkitError", "ConfigError", "EngineError", "InputError", "ModelUnavailableError", "TaskFailed"]


class AgentkitError(Exception):
    """Root of every error agentkit raises on purpose."""

    retryable: bool = False
    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (hint: {self.hint})" if self.hint else text


class ConfigError(AgentkitError):
    """A node, tier or config file is set up wrongly."""


class InputError(AgentkitError):
    """The input itself cannot be processed (empty, not text, too long)."""


class ModelUnavailableError(AgentkitError):
    """A model file or backend package is missing or corrupt."""


class EngineError(AgentkitError):
    """An engine failed while serving a request. ``retryable`` says whether trying again may help;
    ``retry_after_s`` is how long the server asked to be left alone first (its ``Retry-After``), if it said."""

    def __init__(
        self, message: str, *, retryable: bool = False, hint: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class TaskFailed(AgentkitError):
    """Every tier of a node's ladder failed; ``result`` holds each attempt and its reason."""

    def __init__(self, result: object) -> None:
        self.result = result
        reason = getattr(result, "reason", "") or "every tier failed"
        super().__init__(f"task failed: {reason}")
