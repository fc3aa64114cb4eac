"""Extract: fill a pydantic schema from text, constrained to its JSON Schema, then validated."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pydantic

from agentkit.data import candidates
from agentkit.engine import Constraint, Engine, Generation, Message, StructuredEngine
from agentkit.errors import ConfigError
from agentkit.retrieval import ExampleIndex, Retrieval
from agentkit.task import Answer, Task
from agentkit.validation import Drop, Validator, dropped_details, nullable, validate

__all__ = ["CandidateFinder", "Extract", "field_spans", "low_quantile"]

CandidateFinder = Callable[[str], list[str]]
"""``source_text -> candidate values`` for a verbatim field."""


_RUNAWAY_WHITESPACE = re.compile(r"\n[ \t]*\n|[ \t]{17,}")
"""A blank line or a long run of spaces: a model padding its JSON (where the constraint allows any
whitespace) rather than writing it; pretty-printed JSON has neither."""


def field_spans(text: str) -> dict[str, tuple[int, int]]:
    """Character span of each top-level field's value in a JSON object text."""
    decoder = json.JSONDecoder()
    spans: dict[str, tuple[int, int]] = {}
    i = text.find("{") + 1
    n = len(text)
    while 0 < i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] != '"':
            break
        try:
            key, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:  # output cut inside a key
            break
        while i < n and text[i] in " \t\r\n:":
            i += 1
        try:
            _, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            break
        spans[str(key)] = (i, end)
        i = end
    return spans


def low_quantile(probs: list[float], quantile: float) -> float:
    """The ``quantile``-th smallest of ``probs`` (0.0 when there are none)."""
    if not probs:
        return 0.0
    ranked = sorted(probs)
    return ranked[min(len(ranked) - 1, int(quantile * len(ranked)))]


def _field_confidence(gen: Generation, quantile: float = 0.1) -> dict[str, float]:
    """Per field: a low quantile of its value tokens' probabilities (under the constraint)."""
    if not gen.token_probs or not gen.offsets:
        return {}
    out: dict[str, float] = {}
    for name, (start, end) in field_spans(gen.text).items():
        probs = [p for p, off in zip(gen.token_probs, gen.offsets, strict=False) if start <= off < end]
        if probs:
            out[name] = low_quantile(probs, quantile)
    return out


class Extract(Task):
    """Fill ``schema`` from a text: JSON constrained to the schema, parsed, validated by
    pydantic and by ``validators``. Confidence is the lowest field's confidence."""

    kind = "extract"
    knobs = frozenset({"k", "max_tokens", "quantile"})

    def __init__(
        self,
        schema: type[pydantic.BaseModel],
        *,
        instructions: str = "Extract the fields from the text.",
        examples: Sequence[Mapping[str, Any]] | ExampleIndex | None = None,
        k: int = 2,
        validators: Sequence[Validator] = (),
        max_tokens: int = 512,
        quantile: float = 0.1,
        verbatim: Mapping[str, str | CandidateFinder] | None = None,
        retrieval: Retrieval = "bm25",
    ) -> None:
        """
        Args:
            verbatim: fields whose value must be copied from the text, with the kind of value
                (``{"total": "amount", "date": "date"}``, see :func:`agentkit.data.candidates`) or
                a function ``text -> candidates``: for each input the JSON Schema of those fields is
                narrowed to an ``enum`` of the candidates, so the model picks one and cannot invent
                a value (the pick is checked after parsing too). A field with candidates must be
                written (an optional one may be null), so it is not left out by imitating examples
                that lack it. With no candidate the field stays free. Keep candidate lists short:
                the grammar is compiled per input, and its cost grows with the total length of the
                candidates (dozens of multi-line address candidates took minutes per receipt with
                Outlines' index on 2 cores).
            retrieval: how examples are found (``bm25``, ``dense``, ``hybrid``).
        """
        self.schema = schema
        self.verbatim = dict(verbatim or {})
        unknown = set(self.verbatim) - set(schema.model_fields)
        if unknown:
            raise ConfigError(f"verbatim fields not in the schema: {sorted(unknown)}")
        self.instructions = instructions
        self.k = k
        self.validators = list(validators)
        self.max_tokens = max_tokens
        self.quantile = quantile
        self.index = (
            (examples if isinstance(examples, ExampleIndex) else ExampleIndex(examples, retrieval=retrieval))
            if examples
            else None
        )
        self._json_schema = schema.model_json_schema()
        self._constraint = Constraint.json_schema(self._json_schema)

    def system_prompt(self) -> str:
        return (
            f"{self.instructions.strip()}\n\nReply with one JSON object that matches this JSON Schema:\n"
            f"{json.dumps(self._json_schema, ensure_ascii=False)}"
        )

    def prompt(self, text: str, *, unseen: bool = False) -> list[Message]:
        """The messages sent for ``text`` (``unseen``: no retrieved example with ``text`` itself,
        as for a training prompt built from the pool)."""
        return self.messages(text, unseen=unseen)

    def messages(self, text: str, *, unseen: bool = False) -> list[Message]:
        msgs: list[Message] = [{"role": "system", "content": self.system_prompt()}]
        shots = self.index.search(text, self.k, unseen=unseen) if self.index is not None and self.k > 0 else []
        for ex in reversed(shots):
            expected = ex["expected"]
            msgs.append({"role": "user", "content": str(ex["input"])})
            msgs.append({"role": "assistant", "content": json.dumps(expected, ensure_ascii=False)})
        msgs.append({"role": "user", "content": text})
        return msgs

    def parse(self, raw: str, text: str) -> tuple[Any, list[str], list[Drop]]:
        """Parse and validate ``raw``: the value (or None), the problems found and the optional
        fields dropped (already null in the value)."""
        try:
            model = self.schema.model_validate_json(raw)
        except pydantic.ValidationError as e:
            errs = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'output'}: {x['msg']}" for x in e.errors()[:5])
            return None, [f"schema: {errs}"], []
        return self.check(model, text)

    def check(self, model: pydantic.BaseModel, text: str) -> tuple[Any, list[str], list[Drop]]:
        """Run the validators on a parsed ``model`` (:func:`agentkit.validation.validate`); see :meth:`parse`."""
        return validate(model, text, self.validators)

    def verbatim_candidates(self, text: str) -> dict[str, list[str]]:
        """Per verbatim field, the values it may take for ``text`` (fields with none are left out)."""
        out: dict[str, list[str]] = {}
        for name, kind in self.verbatim.items():
            found = kind(text) if callable(kind) else candidates(kind, text)
            if found:
                out[name] = list(dict.fromkeys(found))
        return out

    def constraint_for(self, text: str) -> Constraint:
        """The node's constraint, narrowed for ``text`` when there are verbatim fields."""
        return self._narrowed(self.verbatim_candidates(text))

    def _narrowed(self, choices: Mapping[str, list[str]]) -> Constraint:
        if not choices:
            return self._constraint
        schema = json.loads(json.dumps(self._json_schema))
        for name, found in choices.items():
            narrowed: dict[str, Any] = {"type": "string", "enum": found}
            if self._nullable(name):  # an optional field: one of the candidates, or explicitly null
                narrowed = {"anyOf": [narrowed, {"type": "null"}]}
            schema["properties"][name] = narrowed
            if name not in schema.setdefault("required", []):  # decided, not left out by imitation
                schema["required"].append(name)
        return Constraint.json_schema(schema)

    def _off_candidates(self, model: pydantic.BaseModel, choices: Mapping[str, list[str]]) -> list[str]:
        """A problem for each verbatim field whose value is not one of its candidates (null is allowed
        for an optional field)."""
        problems = []
        for name, allowed in choices.items():
            value = getattr(model, name, None)
            if not (value is None and self._nullable(name)) and str(value) not in allowed:
                problems.append(f"{name} {str(value)!r} is not one of its {len(allowed)} candidates")
        return problems

    def _nullable(self, name: str) -> bool:
        return nullable(self.schema, name)

    def answer(self, engine: Engine, text: str) -> Answer:
        choices = self.verbatim_candidates(text)
        if isinstance(engine, StructuredEngine) and engine.capabilities.structured:  # it validates and re-asks
            return self._structured(engine, text, choices)
        gen = engine.generate(self.messages(text), self._narrowed(choices), max_tokens=self.max_tokens, prefix=1)
        problems: list[str] = []
        if gen.finish_reason == "length":
            problems.append(f"output cut at the token limit ({self.max_tokens})")
        if _RUNAWAY_WHITESPACE.search(gen.text):  # indented JSON is fine; blank lines or long runs are not
            problems.append("runaway whitespace in output")
        model, parse_problems, dropped = self.parse(gen.text, text)
        problems += parse_problems
        if model is not None:  # the constraint may have been dropped by the engine: check, never trust
            problems += self._off_candidates(model, choices)
        fields = _field_confidence(gen, self.quantile) if engine.capabilities.token_probs else {}
        # a dropped field's doubt is settled, and so is a required field with one candidate: the text
        # decided it, and its tokens' probabilities only say how the model would have spelled it
        settled = {f for d in dropped for f in d.fields}
        settled |= {f for f, allowed in choices.items() if len(allowed) == 1 and not self._nullable(f)}
        kept = [c for name, c in fields.items() if name not in settled]
        conf = min(kept) if kept else (None if not engine.capabilities.token_probs else 0.0)
        details: dict[str, Any] = {"field_confidence": fields, **dropped_details(dropped)}
        if settled & fields.keys():
            details["settled_fields"] = sorted(settled & fields.keys())  # not counted in the confidence
        return Answer(
            value=model.model_dump(mode="json") if model is not None else None,
            raw=gen.text,
            confidence=conf,
            method=f"token-probs:q{int(self.quantile * 100)}" if engine.capabilities.token_probs else "none",
            usage=gen.usage,
            problems=problems,
            details=details,
        )

    def _structured(self, engine: StructuredEngine, text: str, choices: Mapping[str, list[str]]) -> Answer:
        reply = engine.structured(
            self.messages(text), self.schema, text=text, validators=self.validators, max_tokens=self.max_tokens
        )
        problems = list(reply.problems)
        if reply.value is not None:  # the engine ran the validators (drops applied); the candidates are ours
            problems += self._off_candidates(reply.value, choices)
        value = reply.value.model_dump(mode="json") if reply.value is not None else None
        raw = json.dumps(value, ensure_ascii=False) if value is not None else ""
        return Answer(value, raw, None, "validated", reply.usage, problems, dropped_details(reply.dropped))

    def _shared(self) -> dict[str, Any]:
        return {"examples": self.index} if self.index is not None else {}

    def settings(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "schema": self._json_schema,
            "instructions": self.instructions,
            "k": self.k,
            "validators": [getattr(v, "__name__", repr(v)) for v in self.validators],
            "max_tokens": self.max_tokens,
            "verbatim": {k: getattr(v, "__name__", repr(v)) if callable(v) else v for k, v in self.verbatim.items()},
            "examples": len(self.index) if self.index else 0,
        }

    def training_reply(self, value: Any) -> str:
        """The JSON object the model is trained to write for the gold ``value``."""
        return json.dumps(value, ensure_ascii=False)
