"""Validation: the node-level rules an answer must pass, below both tasks and engines.

A :data:`Validator` returns a problem (the answer fails), a :class:`Drop` (optional fields are wrong
but the rest stands: they are set to null and the reason recorded) or ``None``. :func:`validate` is
the one loop that runs them, for a task checking its own parse and for an engine re-asking an API.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic

__all__ = ["Drop", "Validator", "dropped_details", "nullable", "validate"]


@dataclass(frozen=True)
class Drop:
    """A validator's verdict that optional ``fields`` are wrong but the rest of the answer stands:
    the fields are set to null and the reason is recorded (``details["dropped"]``), so the answer
    is not failed (nor escalated) for a field the caller can do without."""

    fields: tuple[str, ...]
    reason: str


Validator = Callable[[Any, str], "str | Drop | None"]
"""``(value, source_text) -> problem, Drop or None``: a node-level rule, e.g. the total occurs in
the text. Validators run in order; one that returns :class:`Drop` changes what the next ones see."""


def nullable(schema: type[pydantic.BaseModel], name: str) -> bool:
    """Whether field ``name`` of ``schema`` may be null (optional, or typed ``... | None``)."""
    info = schema.model_fields[name]
    return not info.is_required() or type(None) in typing.get_args(info.annotation)


def validate(
    model: pydantic.BaseModel, text: str, validators: Sequence[Validator]
) -> tuple[pydantic.BaseModel, list[str], list[Drop]]:
    """Run ``validators`` on ``model`` against the source ``text``: the model with dropped fields set to
    null, the problems found, and the drops. A validator that raises is a recorded problem, and only an
    optional field may be dropped (dropping a required one is a problem)."""
    schema = type(model)
    problems: list[str] = []
    dropped: list[Drop] = []
    for check in validators:
        name = getattr(check, "__name__", repr(check))
        try:
            verdict = check(model, text)
        except Exception as e:  # a broken rule is a recorded problem, not a crash
            verdict = f"validator {name!r} raised {type(e).__name__}: {e}"
        if isinstance(verdict, Drop):
            required = [f for f in verdict.fields if f not in schema.model_fields or not nullable(schema, f)]
            if required:
                problems.append(f"{verdict.reason} (validator {name!r} cannot drop {', '.join(required)})")
                continue
            model = model.model_copy(update=dict.fromkeys(verdict.fields))
            dropped.append(verdict)
        elif verdict:
            problems.append(verdict)
    return model, problems, dropped


def dropped_details(dropped: Sequence[Drop]) -> dict[str, Any]:
    """The answer details that record the dropped fields (none: nothing)."""
    return {"dropped": [{"fields": list(d.fields), "reason": d.reason} for d in dropped]} if dropped else {}
