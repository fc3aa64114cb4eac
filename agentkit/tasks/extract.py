"""Extract: fill a pydantic schema from text, constrained to its JSON Schema, then validated."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence, Set
from pathlib import Path
from typing import Any

import pydantic

from agentkit.calibration import FieldCalibration, State
from agentkit.data import candidates, printed_span, word_key
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
        defaults: Mapping[str, Any] | None = None,
        copied: Sequence[str] = (),
        confirm_by_examples: bool = False,
        calibration: FieldCalibration | str | Path | None = None,
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
                that lack it. A field with no candidate is *unstated*: it takes its value from
                ``defaults``, or is null if optional, without asking the model (an unstated
                field is never guessed, and never counts in the confidence); a required field
                with no candidate and no default stays free. Keep candidate lists short:
                the grammar is compiled per input, and its cost grows with the total length of the
                candidates (dozens of multi-line address candidates took minutes per receipt with
                Outlines' index on 2 cores).
            defaults: the value of a verbatim field the text does not state (a deployment's
                currency: ``{"currency": "MYR"}``).
            copied: text fields copied from the text (a name, an address): a value that nearly matches a
                run of printed words (:func:`agentkit.data.printed_span`) becomes that run as printed, so a
                model's slips in spacing and punctuation are undone; one that matches nothing printed is
                left for the validators.
            confirm_by_examples: a field whose value is the one a retrieved example has (up to case,
                spacing and punctuation: a document of the same issuer, read the way it was labelled) is
                *confirmed*: it does not count in the confidence, like a field the text decides.
            calibration: a :class:`~agentkit.calibration.FieldCalibration` (or its file): the confidence
                becomes the estimated probability that every calibrated field is right (the raw score,
                the lowest field's token probability, stays in the details as ``raw_confidence``).
            retrieval: how examples are found (``bm25``, ``dense``, ``hybrid``).
        """
        self.schema = schema
        self.verbatim = dict(verbatim or {})
        self.defaults = dict(defaults or {})
        unknown = set(self.verbatim) - set(schema.model_fields)
        if unknown:
            raise ConfigError(f"verbatim fields not in the schema: {sorted(unknown)}")
        self.copied = tuple(copied)
        self.confirm_by_examples = confirm_by_examples
        self.calibration = (
            calibration
            if calibration is None or isinstance(calibration, FieldCalibration)
            else FieldCalibration.load(calibration)
        )
        if set(self.copied) - set(schema.model_fields):
            raise ConfigError(f"copied fields not in the schema: {sorted(set(self.copied) - set(schema.model_fields))}")
        if set(self.defaults) - set(self.verbatim):
            raise ConfigError(
                f"defaults for fields that are not verbatim: {sorted(set(self.defaults) - set(self.verbatim))}"
            )
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
        return self._messages(text, self._shots(text, unseen=unseen))

    def _shots(self, text: str, *, unseen: bool = False) -> list[dict[str, Any]]:
        """The examples retrieved for ``text``, most similar first."""
        return self.index.search(text, self.k, unseen=unseen) if self.index is not None and self.k > 0 else []

    def _messages(self, text: str, shots: Sequence[Mapping[str, Any]]) -> list[Message]:
        msgs: list[Message] = [{"role": "system", "content": self.system_prompt()}]
        for ex in reversed(shots):
            expected = ex["expected"]
            msgs.append({"role": "user", "content": str(ex["input"])})
            msgs.append({"role": "assistant", "content": json.dumps(expected, ensure_ascii=False)})
        msgs.append({"role": "user", "content": text})
        return msgs

    def parse(self, raw: str, text: str, shots: Sequence[Mapping[str, Any]] = ()) -> tuple[Any, list[str], list[Drop]]:
        """Parse and validate ``raw``: the value (or None), the problems found and the optional
        fields dropped (already null in the value). A copied field is set as printed unless the retrieved
        ``shots`` confirm it as written (``confirm_by_examples``)."""
        try:
            model = self.schema.model_validate_json(raw)
        except pydantic.ValidationError as e:
            errs = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'output'}: {x['msg']}" for x in e.errors()[:5])
            return None, [f"schema: {errs}"], []
        return self.check(self.as_printed(model, text, keep=self._confirmed(model, shots)), text)

    def as_printed(self, model: pydantic.BaseModel, text: str, *, keep: Set[str] = frozenset()) -> pydantic.BaseModel:
        """``model`` with each copied field (but those in ``keep``) that nearly matches printed words set to
        them as printed."""
        update = {}
        for name in set(self.copied) - keep:
            value = getattr(model, name, None)
            if isinstance(value, str) and (printed := printed_span(value, text)) is not None and printed != value:
                update[name] = printed
        return model.model_copy(update=update) if update else model

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

    def unstated(self, choices: Mapping[str, list[str]]) -> dict[str, Any]:
        """The verbatim fields with no candidate that are not left to the model, with their value:
        the field's default, or None for an optional field."""
        out: dict[str, Any] = {}
        for name in self.verbatim.keys() - choices.keys():
            if name in self.defaults:
                out[name] = self.defaults[name]
            elif self._nullable(name):
                out[name] = None
        return out

    def constraint_for(self, text: str) -> Constraint:
        """The node's constraint, narrowed for ``text`` when there are verbatim fields."""
        choices = self.verbatim_candidates(text)
        return self._narrowed(choices, self.unstated(choices))

    def _narrowed(self, choices: Mapping[str, list[str]], unstated: Mapping[str, Any]) -> Constraint:
        if not choices and not unstated:
            return self._constraint
        schema = json.loads(json.dumps(self._json_schema))
        fixed = {
            n: {"type": "null"} if v is None else {"type": "string", "enum": [str(v)]} for n, v in unstated.items()
        }
        for name, found in [*choices.items(), *fixed.items()]:
            narrowed: dict[str, Any] = {"type": "string", "enum": found} if isinstance(found, list) else found
            if self._nullable(name) and name in choices:  # an optional field: a candidate, or explicitly null
                narrowed = {"anyOf": [narrowed, {"type": "null"}]}
            schema["properties"][name] = narrowed
            if name not in schema.setdefault("required", []):  # decided, not left out by imitation
                schema["required"].append(name)
        return Constraint.json_schema(schema)

    def _off_candidates(
        self, model: pydantic.BaseModel, choices: Mapping[str, list[str]], unstated: Mapping[str, Any]
    ) -> list[str]:
        """A problem for each verbatim field whose value is not one of its candidates (null is allowed
        for an optional field), or is an unstated field's value."""
        problems = [
            f"{name} {getattr(model, name, None)!r} is not printed in the document"
            for name, v in unstated.items()
            if (getattr(model, name, None) is None) != (v is None)
            or (v is not None and str(getattr(model, name)) != str(v))
        ]
        for name, allowed in choices.items():
            value = getattr(model, name, None)
            if not (value is None and self._nullable(name)) and str(value) not in allowed:
                problems.append(f"{name} {str(value)!r} is not one of its {len(allowed)} candidates")
        return problems

    def _nullable(self, name: str) -> bool:
        return nullable(self.schema, name)

    def answer(self, engine: Engine, text: str) -> Answer:
        choices = self.verbatim_candidates(text)
        unstated = self.unstated(choices)
        if isinstance(engine, StructuredEngine) and engine.capabilities.structured:  # it validates and re-asks
            return self._structured(engine, text, choices, unstated)
        constraint = self._narrowed(choices, unstated)
        shots = self._shots(text)
        gen = engine.generate(self._messages(text, shots), constraint, max_tokens=self.max_tokens, prefix=1)
        problems: list[str] = []
        if gen.finish_reason == "length":
            problems.append(f"output cut at the token limit ({self.max_tokens})")
        if _RUNAWAY_WHITESPACE.search(gen.text):  # indented JSON is fine; blank lines or long runs are not
            problems.append("runaway whitespace in output")
        model, parse_problems, dropped = self.parse(gen.text, text, shots)
        problems += parse_problems
        if model is not None:  # the constraint may have been dropped by the engine: check, never trust
            problems += self._off_candidates(model, choices, unstated)
        fields = _field_confidence(gen, self.quantile) if engine.capabilities.token_probs else {}
        # a dropped field's doubt is settled, and so is a required field with one candidate or an unstated
        # field: the text decided it, and its tokens' probabilities only say how the model spelled it
        decided = {f for f, allowed in choices.items() if len(allowed) == 1 and not self._nullable(f)}
        settled = {f for d in dropped for f in d.fields} | unstated.keys() | decided
        confirmed = self._confirmed(model, shots) - settled if model is not None else set()
        settled |= confirmed
        kept = [c for name, c in fields.items() if name not in settled]
        if not engine.capabilities.token_probs:
            conf = None
        elif kept:
            conf = min(kept)
        else:  # every field settled: nothing left in doubt (or nothing parsed)
            conf = 1.0 if model is not None else 0.0
        details: dict[str, Any] = {"field_confidence": fields, **dropped_details(dropped)}
        method = f"token-probs:q{int(self.quantile * 100)}" if engine.capabilities.token_probs else "none"
        if model is not None and fields:
            details["field_states"] = self._states(model, fields, decided | unstated.keys(), confirmed)
        if self.calibration is not None and conf is not None and model is not None:
            details["raw_confidence"] = conf
            conf, details["field_probability"] = self.calibration.confidence(details.get("field_states", {}))
            method = f"calibrated:{self.calibration.data[:12]}"
        if unstated:
            details["unstated"] = sorted(unstated)
        if confirmed:
            details["confirmed"] = sorted(confirmed)
        if settled & fields.keys():
            details["settled_fields"] = sorted(settled & fields.keys())  # not counted in the confidence
        return Answer(
            value=model.model_dump(mode="json") if model is not None else None,
            raw=gen.text,
            confidence=conf,
            method=method,
            usage=gen.usage,
            problems=problems,
            details=details,
        )

    @staticmethod
    def _states(
        model: pydantic.BaseModel, fields: Mapping[str, float], settled: Set[str], confirmed: Set[str]
    ) -> dict[str, tuple[float, State]]:
        """Per field: its raw confidence and how its value came about (what a calibration is fitted on)."""
        out: dict[str, tuple[float, State]] = {}
        for name, value in model.model_dump(mode="json").items():
            state: State = (
                "null" if value is None
                else "settled" if name in settled
                else "confirmed" if name in confirmed
                else "free"
            )  # fmt: skip
            out[name] = (fields.get(name, 1.0 if state == "settled" else 0.0), state)
        return out

    def _confirmed(self, model: pydantic.BaseModel, shots: Sequence[Mapping[str, Any]]) -> set[str]:
        """The fields of ``model`` whose value a retrieved example has (``confirm_by_examples``)."""
        if not self.confirm_by_examples:
            return set()
        labelled = [ex["expected"] for ex in shots if isinstance(ex["expected"], Mapping)]
        found = set()
        for name, value in model.model_dump(mode="json").items():
            key = word_key(str(value)) if value is not None else ""
            if key and any(x.get(name) is not None and word_key(str(x[name])) == key for x in labelled):
                found.add(name)
        return found

    def _structured(
        self, engine: StructuredEngine, text: str, choices: Mapping[str, list[str]], unstated: Mapping[str, Any]
    ) -> Answer:
        shots = self._shots(text)
        reply = engine.structured(
            self._messages(text, shots), self.schema, text=text, validators=self.validators, max_tokens=self.max_tokens
        )
        problems = list(reply.problems)
        if reply.value is not None:  # the engine ran the validators (drops applied); the candidates are ours
            # what the text does not state is not the engine's to say; copied fields as printed
            value = reply.value.model_copy(update=unstated)
            reply.value = self.as_printed(value, text, keep=self._confirmed(value, shots))
            problems += self._off_candidates(reply.value, choices, unstated)
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
            "defaults": self.defaults,
            "copied": list(self.copied),
            "confirm_by_examples": self.confirm_by_examples,
            "calibration": self.calibration.data if self.calibration is not None else None,
            "examples": len(self.index) if self.index else 0,
        }

    def training_reply(self, value: Any) -> str:
        """The JSON object the model is trained to write for the gold ``value``."""
        return json.dumps(value, ensure_ascii=False)
