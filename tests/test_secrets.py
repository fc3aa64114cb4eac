"""Keys are never shown: against a server that rejects the key and echoes it back (as real servers do),
no error, reason, record or repr carries it; credentials written in a tier spec stay out of its name and
records; and a trace can keep a digest of each input instead of its text. Model-free: the servers are
stdlib HTTP servers on 127.0.0.1."""

from __future__ import annotations

import base64
import http.server
import json
import threading

import pydantic
import pytest

from agentkit import Classify, Extract, Node, Policy, Tier, collect
from agentkit.backends.spec import TierSpec, redact
from agentkit.errors import ConfigError, EngineError
from agentkit.result import Result, Trace
from agentkit.testing import FakeEngine, JSONHandler

pytest.importorskip("openai")

KEY = "sk-agentkit-test-5f1c2d9e8b7a6c4d"
"""The API key the tiers read from their environment variable: it must never be shown."""
PASSWORD = "url-password-7d3e9a1b"


class _Echo(JSONHandler):
    """A server that lists one model, then rejects every request with 401 and a body that echoes the
    credentials it was sent (the Authorization header, and a Basic header decoded)."""

    seen: list[str] = []

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "me"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        auth = self.headers.get("Authorization") or ""
        type(self).seen.append(auth)
        echoed = auth
        if auth.startswith("Basic "):
            echoed += " = " + base64.b64decode(auth[6:]).decode()
        message = f"Incorrect API key provided: {echoed}. You sent Authorization: {auth}"
        self._send(401, {"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}})


@pytest.fixture
def echo_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    _Echo.seen = []
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _shown(result: Result) -> str:
    """Everything a result shows or records."""
    return " ".join([result.reason, repr(result), json.dumps(result.to_record(), default=str)])


def test_a_key_the_server_echoes_is_in_no_error_reason_record_or_repr(echo_server, monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTKIT_TEST_KEY", KEY)
    from agentkit.backends.openai_server import OpenAIServerEngine

    engine = OpenAIServerEngine(f"http://{echo_server}/v1", "m", flavor="llamacpp", api_key_env="AGENTKIT_TEST_KEY")
    with pytest.raises(EngineError) as e:
        engine.generate([{"role": "user", "content": "x"}], Classify(["a", "b"])._constraint, max_tokens=4)
    assert any(KEY in seen for seen in _Echo.seen) and KEY in str(e.value.__cause__)  # it was sent and echoed
    assert "HTTP 401" in str(e.value) and "Bearer ***" in str(e.value)
    assert KEY not in str(e.value) and KEY not in repr(e.value) and KEY not in repr(e.value.args)

    tier = Tier(f"server:http://{echo_server}/v1?model=m&flavor=llamacpp&api_key_env=AGENTKIT_TEST_KEY")
    with collect(tmp_path / "trace.jsonl") as trace:
        result = Node(Classify(["a", "b"]), [tier], Policy(retries=0)).run("some text")
    assert not result.ok and "HTTP 401" in result.reason
    assert KEY not in _shown(result) and KEY not in (tmp_path / "trace.jsonl").read_text()
    assert KEY not in repr(tier) and KEY not in repr(trace.results)


def test_a_key_the_server_echoes_is_not_shown_by_the_api_tier(echo_server, monkeypatch):
    pytest.importorskip("instructor")
    monkeypatch.setenv("AGENTKIT_TEST_KEY", KEY)

    class Receipt(pydantic.BaseModel):
        total: str

    tier = Tier(f"api:m?base_url=http://{echo_server}/v1&mode=json&api_key_env=AGENTKIT_TEST_KEY")
    result = Node(Extract(Receipt), [tier], Policy(retries=0)).run("TOTAL 12.50")
    assert any(KEY in seen for seen in _Echo.seen)
    assert not result.ok and "HTTP 401" in result.reason and KEY not in _shown(result)


def test_credentials_in_a_base_url_are_in_no_name_repr_error_or_record(echo_server):
    spec = f"server:http://agentkit:{PASSWORD}@{echo_server}/v1?model=m&flavor=llamacpp"
    tier = Tier(spec)
    assert tier.spec == spec  # kept to be used...
    assert tier.name == f"server:http://***@{echo_server}/v1?model=m&flavor=llamacpp"  # ...and shown without them
    assert PASSWORD not in repr(tier) and PASSWORD not in str(tier) and PASSWORD not in repr(tier.parsed)
    assert PASSWORD not in tier.engine.name
    result = Node(Classify(["a", "b"]), [tier], Policy(retries=0)).run("some text")
    assert not result.ok and result.attempts[0].outcome == "engine_error"
    assert PASSWORD not in _shown(result)
    assert _Echo.seen and _Echo.seen[0].startswith("Basic ")  # the URL's credentials went out; the body echoes
    assert f"agentkit:{PASSWORD}" == base64.b64decode(_Echo.seen[0][6:]).decode()  # them decoded, in clear

    with pytest.raises(ConfigError) as e:  # a spec error shows the spec without its credentials
        Tier(f"server:https://agentkit:{PASSWORD}@example.com/v1?api_key={KEY}")
    assert PASSWORD not in str(e.value) and KEY not in str(e.value) and "api_key=***" in str(e.value)


def test_redacted_hides_userinfo_and_secret_values_and_keeps_variable_names():
    spec = TierSpec.parse(f"server:https://me:{PASSWORD}@host.example/v1?model=q&api_key_env=MY_KEY")
    assert spec.redacted() == "server:https://***@host.example/v1?model=q&api_key_env=MY_KEY"
    assert str(spec).count(PASSWORD) == 1 and TierSpec.parse(str(spec)) == spec  # the spec itself is unchanged
    url = f"https://host.example/v1?api_key={KEY}&region=eu"  # a key in a base_url's own query
    api = TierSpec.parse("api:gpt-4o-mini").replace(base_url=url)
    assert KEY not in api.redacted() and "region%3Deu" in api.redacted() and KEY in str(api)
    assert redact(f"token=abc123xyz&max_tokens=5 Authorization: Bearer {KEY}") == (
        "token=***&max_tokens=5 Authorization: Bearer ***"
    )
    assert redact('{"password": "hunter22", "user": "me"}') == '{"password": "***", "user": "me"}'
    assert redact("the key abcd-1234 was refused", ["abcd-1234"]) == "the key *** was refused"
    for plain in ("embedded:qwen2.5-0.5b", "gguf:/models/q.gguf?context=8192", "knn"):
        assert TierSpec.parse(plain).redacted() == plain


def test_a_tier_around_a_given_engine_is_named_without_credentials():
    tier = Tier(spec=f"https://me:{PASSWORD}@host.example/v1", engine=FakeEngine())
    assert PASSWORD not in tier.name and PASSWORD not in repr(tier)


# ---- traces that keep no input text -------------------------------------------------------------


def test_a_trace_can_keep_a_digest_of_each_input_instead_of_its_text(tmp_path):
    import hashlib

    text = "Jane Doe, 12 Privet Drive, card 4111 1111 1111 1111"
    node = Node(Classify(["a", "b"]), [Tier(spec="fake", engine=FakeEngine(["a"]))], name="pii")
    with collect(tmp_path / "private.jsonl", keep_input=False), collect(tmp_path / "full.jsonl"):
        result = node.run(text)
    (private,) = [json.loads(line) for line in (tmp_path / "private.jsonl").read_text().splitlines()]
    assert "Jane" not in json.dumps(private) and "input_text" not in private
    assert private["input_sha256"] == hashlib.sha256(text.encode()).hexdigest() and private["input_chars"] == len(text)
    assert private["value"] == "a" and private["ok"]
    (full,) = [json.loads(line) for line in (tmp_path / "full.jsonl").read_text().splitlines()]
    assert full["input_text"] == text  # the default keeps it
    assert result.input_text == text  # the result the caller holds is untouched

    own = Node(
        Classify(["a", "b"]),
        [Tier(spec="fake", engine=FakeEngine(["a"]))],
        trace=Trace(tmp_path / "node.jsonl", keep_input=False),
    )
    own.run(text)
    assert "Jane" not in (tmp_path / "node.jsonl").read_text()
