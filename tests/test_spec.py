"""Tier specs: parsed once into a TierSpec, formatted back by the same code, one option vocabulary."""

from __future__ import annotations

import pytest

from agentkit import ConfigError, Tier
from agentkit.backends.spec import TierSpec


@pytest.mark.parametrize(
    "text",
    [
        "embedded:qwen2.5-0.5b",
        "gguf:/models/q.gguf?context=8192&adapter=/tuned/a.gguf",
        "server:http://127.0.0.1:8000/v1?model=qwen&scoring=true",
        "api:gpt-4o-mini?base_url=http://127.0.0.1:9/v1&mode=json&reasks=1",
        "hf:qwen2.5-0.5b?adapter=tuned/sms/adapter&dtype=float32",
        "knn",
        "rules",
    ],
)
def test_a_spec_formats_back_to_what_was_written(text):
    spec = TierSpec.parse(text)
    assert str(spec) == text and TierSpec.parse(str(spec)) == spec


def test_options_are_read_as_their_types():
    spec = TierSpec.parse("server:http://127.0.0.1:8000/v1?model=m&context=2048&logprobs=false&timeout_s=2.5")
    assert (spec.kind, spec.target) == ("server", "http://127.0.0.1:8000/v1")
    assert spec.integer("context", 4096) == 2048 and spec.flag("logprobs", True) is False
    assert spec.number("timeout_s", 120.0) == 2.5 and spec.text("api_key_env") is None
    assert (
        str(spec.replace(model="other", context=None))
        == "server:http://127.0.0.1:8000/v1?model=other&logprobs=false&timeout_s=2.5"
    )


def test_old_option_names_are_read_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="is now") as seen:
        spec = TierSpec.parse("embedded:qwen2.5-0.5b?n_ctx=512&lora=a.gguf")
    assert str(spec) == "embedded:qwen2.5-0.5b?context=512&adapter=a.gguf"  # written only in the new names
    assert {str(w.message).split("'")[1] for w in seen} == {"n_ctx", "lora"}


@pytest.mark.parametrize(
    "text,message",
    [
        ("nonsense:x", "unknown tier spec"),
        ("gguf:", "needs a target"),
        ("server:127.0.0.1:8000", "needs a URL"),
        ("embedded:qwen2.5-0.5b?contxt=512", "unknown embedded tier options"),
        ("embedded:qwen2.5-0.5b?context=big", "is not a int"),
        ("server:http://x/v1?logprobs=maybe", "is not a bool"),
        ("knn:something", "takes no target"),
    ],
)
def test_bad_specs_are_clear_config_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        TierSpec.parse(text)


def test_a_tier_is_a_value_built_from_its_spec():
    tier = Tier("knn")
    assert tier.parsed == TierSpec("knn") and tier.name == "knn" and tier.provenance == {}
    with pytest.raises(AttributeError):
        tier.name = "other"  # type: ignore[misc]
