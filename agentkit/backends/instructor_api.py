"""A closed model (OpenAI, or any OpenAI-compatible API) through instructor, as the top of a ladder
(``pip install 'agentkit[openai]'``): the reply is parsed into the task's pydantic model and checked
by the node's own validators; a reply that fails is re-asked with the error, a bounded number of
times and with the error text cut to ``error_chars`` (re-asks must not grow the context without
limit). Confidence is not available (``None``): such a tier is accepted on validation alone, which
the policy allows only at the last rung. The usage of every try (re-asks included) is counted, whether
or not a reply validated; errors never show the key (:func:`~agentkit.backends.openai_server.api_error`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import pydantic

from agentkit.backends.openai_server import api_error, url_secrets
from agentkit.backends.spec import redact
from agentkit.engine import Capabilities, Constraint, Generation, Message, Scores, Structured, Usage
from agentkit.errors import ConfigError
from agentkit.validation import Validator, validate

__all__ = ["InstructorEngine", "Mode"]

Mode = Literal["json_schema", "json", "tools", "md_json"]


def _checked_model(
    schema: type[pydantic.BaseModel], validators: Sequence[Validator], error_chars: int
) -> type[pydantic.BaseModel]:
    """``schema`` with the node's validators as a model validator (:func:`agentkit.validation.validate`;
    the source text comes in the validation context): a problem is one error of at most ``error_chars``
    characters, to be re-asked; the fields a :class:`Drop` names are nulled in the value and the drops
    kept in the context (``"dropped"``) — so the validators run once per reply."""

    def rules(self: Any, info: pydantic.ValidationInfo) -> Any:
        context = info.context if isinstance(info.context, dict) else {}
        checked, problems, dropped = validate(self, context.get("text", ""), validators)
        if problems:
            raise ValueError("; ".join(problems)[:error_chars])
        context["dropped"] = dropped
        for name in {f for d in dropped for f in d.fields}:
            self.__dict__[name] = None  # in place: an after-validator hands back the object it was given
        return self

    return pydantic.create_model(
        schema.__name__,
        __base__=schema,
        __validators__={"_node_rules": pydantic.model_validator(mode="after")(rules)},  # type: ignore[dict-item]
    )


class InstructorEngine:
    """Structured output from ``model`` through instructor, with bounded re-asks."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        mode: Mode = "json_schema",
        reasks: int = 2,
        error_chars: int = 300,
        timeout_s: float = 60.0,
        context: int = 128_000,
    ) -> None:
        """
        Args:
            model: the API's model name.
            base_url: an OpenAI-compatible endpoint (default: OpenAI's).
            api_key_env: the environment variable holding the key (read here, never logged).
            mode: instructor's mode: ``json_schema`` (strict structured output), ``json``, ``tools``, ``md_json``.
            reasks: re-asks after a reply that does not validate (so at most ``1 + reasks`` calls).
            error_chars: the longest error text sent back in a re-ask.
        """
        try:
            import instructor
            import openai
        except ImportError:
            raise ConfigError(
                "the API tier needs instructor and openai", hint="pip install 'agentkit[openai]'"
            ) from None
        key = os.environ.get(api_key_env)
        if not key and base_url is None:
            raise ConfigError(f"no API key: set {api_key_env}", hint="or point base_url at a local server")
        self._openai = openai
        self._instructor = instructor
        self._secrets = (*url_secrets(base_url or ""), *([key] if key else []))
        modes = {"json_schema": instructor.Mode.JSON_SCHEMA, "json": instructor.Mode.JSON,
                 "tools": instructor.Mode.TOOLS, "md_json": instructor.Mode.MD_JSON}  # fmt: skip
        if mode not in modes:
            raise ConfigError(f"unknown instructor mode {mode!r}", hint=", ".join(modes))
        raw = openai.OpenAI(base_url=base_url, api_key=key or "not-needed", timeout=timeout_s, max_retries=0)
        self._client = instructor.from_openai(raw, mode=modes[mode])
        self.model = model
        self.reasks = reasks
        self.error_chars = error_chars
        self.base_url = base_url or "https://api.openai.com/v1"
        self.name = f"api:{model}"
        self.capabilities = Capabilities(
            constrained=True, token_probs=False, scoring=False, context=context, structured=True
        )
        self.calls: list[list[Message]] = []
        """The messages of the last structured request's attempts (to see what a re-ask sent)."""

    def count_tokens(self, text: str) -> int:
        return len(text) // 3 + 1

    def structured(
        self,
        messages: list[Message],
        schema: type[pydantic.BaseModel],
        *,
        text: str = "",
        validators: Sequence[Validator] = (),
        max_tokens: int = 512,
    ) -> Structured:
        """The reply as ``schema``, checked by ``validators`` against ``text``, re-asked at most
        ``reasks`` times; or None and the problems of the last attempt."""
        model_cls = _checked_model(schema, validators, self.error_chars) if validators else schema
        context: dict[str, Any] = {"text": text}
        self.calls = []
        tokens = [0, 0, 0]  # prompt, cached, completion: summed over every try, re-asks included

        def count(response: Any) -> None:
            u = getattr(response, "usage", None)
            tokens[0] += getattr(u, "prompt_tokens", 0) or 0
            tokens[1] += getattr(getattr(u, "prompt_tokens_details", None), "cached_tokens", 0) or 0
            tokens[2] += getattr(u, "completion_tokens", 0) or 0

        def usage() -> Usage:
            seconds = time.perf_counter() - t0
            return Usage(prompt_tokens=tokens[0], cached_tokens=tokens[1], completion_tokens=tokens[2], seconds=seconds)

        hooks = {
            "completion:kwargs": lambda *a, **kw: self.calls.append(list(kw.get("messages", []))),
            "completion:response": count,
        }
        t0 = time.perf_counter()
        try:
            value, completion = self._client.chat.completions.create_with_completion(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]  # our Message dicts are the wire format
                response_model=model_cls,
                max_retries=self.reasks,
                max_tokens=max_tokens,
                temperature=0.0,
                context=context,
                hooks=self._hooks(hooks),
            )
        except self._instructor.core.InstructorRetryException as e:
            cause = e.__cause__ or e
            if isinstance(cause, self._openai.APIError):
                raise api_error(self._openai, self.base_url, cause, secrets=self._secrets) from e
            if not isinstance(cause, (pydantic.ValidationError, ValueError)) or isinstance(cause, TypeError):
                raise  # not the model's reply: a bug, not a failed answer
            tries = getattr(e, "n_attempts", None) or len(self.calls)
            problem = redact(f"no valid reply after {tries} tries: {str(cause)[: self.error_chars]}", self._secrets)
            return Structured(None, usage(), [problem])
        except self._openai.APIError as e:
            raise api_error(self._openai, self.base_url, e, secrets=self._secrets) from e
        if not any(tokens):  # a client that fired no response hook: the final completion's own usage
            count(completion)
        return Structured(value, usage(), [], list(context.get("dropped", [])))

    def _hooks(self, handlers: Mapping[str, Callable[..., None]]) -> Any:
        hooks = self._instructor.hooks.Hooks()
        for event, handler in handlers.items():
            hooks.on(event, handler)  # type: ignore[arg-type]  # the names are instructor's hook names
        return hooks

    def generate(
        self, messages: list[Message], constraint: Constraint, *, max_tokens: int, prefix: int = 0
    ) -> Generation:
        """A choice as a one-field model (``{"answer": one of ...}``); JSON as a free object (tasks with a
        pydantic schema use :meth:`structured`)."""
        import json

        if constraint.kind != "choice":
            raise ConfigError(f"{self.name}: use structured() for {constraint.kind} output")
        options = tuple(json.loads(constraint.spec))
        reply = pydantic.create_model("Reply", answer=(Literal[options], ...))  # type: ignore[arg-type]
        got = self.structured(messages, reply, max_tokens=max_tokens)
        return Generation(
            text=str(got.value.answer) if got.value is not None else "",
            finish_reason="stop",
            token_probs=None,
            usage=got.usage,
        )

    def score(
        self,
        messages: list[Message],
        continuations: list[str],
        *,
        prefix: int = 0,
        margin: float | None = None,
        choice: bool = False,
    ) -> Scores:
        raise ConfigError(f"{self.name} cannot score continuations")
