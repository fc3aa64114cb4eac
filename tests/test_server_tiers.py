"""Server tiers against real servers on 127.0.0.1, started here and stopped after: llama-cpp-python's
OpenAI-compatible server on the embedded 0.5B model, and (for faults a model server cannot produce
on demand) a plain stdlib HTTP server that answers 500 or 400."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

from agentkit import Classify, Extract, Node, Policy, Tier
from agentkit.errors import ConfigError, EngineError
from agentkit.testing import JSONHandler, free_port, serving, vllm_server_command
from tests.conftest import VLLM_ENV

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")  # stopped after this module: an idle server's threads still take CPU
def llama_server(tmp_path_factory):
    """llama-cpp-python's server (through agentkit's launcher: AMX-safe loading) on the embedded 0.5B GGUF."""
    from agentkit.embedded import model_path

    cmd = [sys.executable, "-m", "agentkit.backends.llamacpp_server", "--model", str(model_path("qwen2.5-0.5b")),
           "--host", "127.0.0.1", "--port", "{port}", "--n_ctx", "4096", "--model_alias", "qwen-0.5b"]  # fmt: skip
    with serving(cmd, tmp_path_factory.mktemp("llama_server") / "server.log") as url:
        yield url


def test_server_tier_detects_the_flavor_and_proves_the_constraint(llama_server):
    tier = Tier(f"server:{llama_server}")
    assert tier.engine.flavor == "llamacpp"  # detected from /models, then the canary passed
    assert tier.engine.name == f"qwen-0.5b@{llama_server}"


def test_a_server_that_ignores_the_constraint_is_refused(llama_server):
    # vLLM's request fields sent to llama.cpp's server: ignored with HTTP 200 -> the canary catches it
    tier = Tier(f"server:{llama_server}?flavor=vllm&model=qwen-0.5b")
    with pytest.raises(ConfigError, match="ignored the output constraint"):
        tier.engine.generate([{"role": "user", "content": "hi"}], Classify(["a", "b"])._constraint, max_tokens=4)


def test_classify_and_extract_through_a_real_server(llama_server):
    tier = Tier(f"server:{llama_server}")
    spam = Node(Classify(["ham", "spam"], instructions="Is this SMS spam or ham?"), [tier])
    result = spam.run("WINNER!! You have won a 1000 pound prize. Call 09061701461 now to claim")
    assert result.ok and result.value in ("ham", "spam")
    (attempt,) = result.attempts
    assert 0.0 < attempt.confidence <= 1.0 and attempt.confidence_method == "choice-token-probs"
    assert attempt.prompt_tokens > 0 and attempt.completion_tokens > 0

    import pydantic

    class Receipt(pydantic.BaseModel):
        company: str
        total: str

    receipt = Node(Extract(Receipt, max_tokens=80), [tier]).run("ACME SDN BHD\nCoffee 3.50\nTOTAL RM 12.50")
    assert receipt.ok, receipt.reason
    assert receipt.value["company"].upper().startswith("ACME") and receipt.value["total"] in ("12.50", "RM 12.50")


def test_a_batch_keeps_several_items_in_flight_and_their_order(llama_server):
    node = Node(Classify(["ham", "spam"], instructions="Is this SMS spam or ham?"), [Tier(f"server:{llama_server}")])
    texts = [
        "Ok lar... Joking wif u oni",
        "FREE entry to win a prize! Text WIN to 80086",
        "See you at 6",
        "",
        "Call me",
    ]
    results = node.batch(texts, concurrency=3)
    assert [r.input_text for r in results[:3]] == texts[:3]  # input order, whatever order they finished in
    assert [r.ok for r in results] == [True, True, True, False, True]  # the empty one is a recorded failure
    assert "empty" in results[3].reason


class _Faulty(JSONHandler):
    status = 500
    hits = 0

    def do_GET(self):  # /models: a llama.cpp-like listing, so set-up succeeds
        self._send(200, {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "me"}]})

    def do_POST(self):
        type(self).hits += 1
        self._send(type(self).status, {"error": {"message": "boom", "type": "server_error"}})


@pytest.fixture
def faulty_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Faulty)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Faulty.hits = 0
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _engine(url: str):
    from agentkit.backends.openai_server import OpenAIServerEngine

    return OpenAIServerEngine(url, canary=False, timeout_s=5)


@pytest.mark.parametrize("status,retryable", [(500, True), (503, True), (429, True), (400, False), (422, False)])
def test_http_errors_are_retried_only_when_trying_again_can_help(faulty_server, status, retryable):
    _Faulty.status = status
    engine = _engine(faulty_server)
    with pytest.raises(EngineError) as e:
        engine.generate([{"role": "user", "content": "x"}], Classify(["a", "b"])._constraint, max_tokens=4)
    assert e.value.retryable is retryable and f"HTTP {status}" in str(e.value)
    assert _Faulty.hits == 1  # the client itself never retries: the node does, with its policy

    _Faulty.hits = 0
    tier = Tier(spec="faulty", name="faulty", engine=engine)
    result = Node(Classify(["a", "b"]), [tier], Policy(retries=2, retry_wait_s=0.01)).run("text")
    assert not result.ok and f"HTTP {status}" in result.reason  # a failure record, not a crash
    assert _Faulty.hits == (3 if retryable else 1)


def test_a_closed_port_is_a_retryable_connection_error():
    engine = _engine(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(EngineError) as e:
        engine.generate([{"role": "user", "content": "x"}], Classify(["a", "b"])._constraint, max_tokens=4)
    assert e.value.retryable and "APIConnectionError" in str(e.value)


def test_server_spec_errors_are_clear():
    with pytest.raises(ConfigError, match="needs a URL"):
        Tier("server:localhost:8000")
    with pytest.raises(ConfigError, match="unknown server tier options"):
        Tier("server:http://127.0.0.1:1/v1?modle=x")


# ---- the closed-model tier (instructor), pointed at the local server ----------------------------


def _receipt_model():
    import pydantic

    class Receipt(pydantic.BaseModel):
        company: str
        total: str

    return Receipt


def test_api_tier_parses_and_validates_through_instructor(llama_server):
    tier = Tier(f"api:qwen-0.5b?base_url={llama_server}&mode=json")
    result = Node(Extract(_receipt_model(), max_tokens=80), [tier]).run("ACME SDN BHD\nCoffee 3.50\nTOTAL RM 12.50")
    assert result.ok, result.reason
    assert result.value["company"].upper().startswith("ACME") and result.confidence is None
    assert result.attempts[0].confidence_method == "validated" and result.attempts[0].prompt_tokens > 0


def test_api_tier_reasks_a_bounded_number_of_times_with_a_short_error(llama_server, monkeypatch):
    monkeypatch.setenv("SECRET_KEY_FOR_TEST", "sk-test-123456")
    tier = Tier(
        f"api:qwen-0.5b?base_url={llama_server}&mode=json&reasks=2&error_chars=60&api_key_env=SECRET_KEY_FOR_TEST"
    )

    def never(value, text):  # a rule no reply can satisfy: forces every re-ask
        return "this reply is never accepted " + "x" * 500

    node = Node(Extract(_receipt_model(), max_tokens=80, validators=[never]), [tier])
    result = node.run("ACME SDN BHD\nTOTAL RM 12.50")
    assert not result.ok and "no valid reply after 3 tries" in result.reason
    calls = tier.engine.calls
    assert [len(c) for c in calls] == [2, 4, 6]  # system+user, then one reply and one correction per re-ask
    corrections = [c[-1]["content"] for c in calls[1:]]
    assert all("never accepted" in c and "x" * 61 not in c for c in corrections)  # the error text is cut
    assert "sk-test-123456" not in result.reason and "sk-test-123456" not in repr(result)  # the key is never shown


def test_api_tier_needs_a_key_for_a_hosted_endpoint(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="no API key: set OPENAI_API_KEY"):
        Tier("api:gpt-4o-mini")


# ---- a real vLLM server (the CPU build, in its own virtual environment: `make vllm`) ------------


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory, vllm_env):
    """vLLM's OpenAI-compatible server on the embedded 0.5B model."""
    python, hf = vllm_env
    cmd = vllm_server_command(python, hf)
    env = {**os.environ, **VLLM_ENV}
    with serving(cmd, tmp_path_factory.mktemp("vllm") / "server.log", env=env, timeout_s=400) as url:
        yield url


def test_vllm_flavor_is_detected_and_its_constraint_proven(vllm_server):
    tier = Tier(f"server:{vllm_server}")
    assert tier.engine.flavor == "vllm"  # owned_by "vllm"; the canary passed with structured_outputs


def test_vllm_ignores_the_old_guided_fields_which_is_why_they_are_never_sent(vllm_server):
    import urllib.request

    body = {"model": "qwen-0.5b", "messages": [{"role": "user", "content": "Reply with exactly the word: hello"}],
            "max_tokens": 8, "temperature": 0, "guided_choice": ["qv7zx", "kj3wp"]}  # fmt: skip
    req = urllib.request.Request(
        f"{vllm_server}/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        text = json.loads(r.read())["choices"][0]["message"]["content"]
    assert text.strip() not in ("qv7zx", "kj3wp")  # HTTP 200, unconstrained
    from agentkit.backends.openai_server import OpenAIServerEngine

    engine = OpenAIServerEngine(vllm_server, "qwen-0.5b", flavor="vllm", canary=False)
    fields, _ = engine.request_fields(Classify(["a", "b"])._constraint)
    assert "guided_choice" not in json.dumps(fields) and fields["extra_body"]["structured_outputs"]["choice"]


def test_classify_and_extract_through_vllm(vllm_server):
    tier = Tier(f"vllm:{vllm_server}?model=qwen-0.5b")
    spam = Node(Classify(["ham", "spam"], instructions="Is this SMS spam or ham?"), [tier])
    result = spam.run("WINNER!! You have won a 1000 pound prize. Call 09061701461 now to claim")
    assert result.ok and result.value in ("ham", "spam") and 0 < result.confidence <= 1
    assert result.attempts[0].confidence_method == "choice-token-probs"  # label scoring is opt-in (scoring=true)
    receipt = Node(Extract(_receipt_model(), max_tokens=80), [tier]).run("ACME SDN BHD\nCoffee 3.50\nTOTAL RM 12.50")
    assert receipt.ok, receipt.reason
    assert receipt.value["company"].upper().startswith("ACME")
    texts = [f"message number {i}: see you at {i} pm" for i in range(6)]
    results = spam.batch(texts, concurrency=4)  # vLLM batches what is in flight
    assert [r.input_text for r in results] == texts and all(r.ok for r in results)


def test_a_ladder_escalates_from_the_embedded_model_to_a_vllm_server(small, vllm_server):
    """Real escalation: a question the 0.5B cannot answer confidently at a high threshold goes to vLLM."""
    task = Classify(["ham", "spam"], instructions="Is this SMS spam or ham?")
    ladder = [Tier(spec="test:small", name="embedded-0.5b", engine=small), Tier(f"vllm:{vllm_server}?model=qwen-0.5b")]
    node = Node(task, ladder, policy=Policy(threshold=0.99))
    result = node.run("Call me when you get this")  # the 0.5B is unsure of this one (about 0.8)
    assert [a.tier for a in result.attempts] == ["embedded-0.5b", f"vllm:{vllm_server}?model=qwen-0.5b"]
    assert result.attempts[0].confidence < 0.99 and result.attempts[1].confidence_method == "choice-token-probs"
    assert result.escalated and result.value in ("ham", "spam")


def test_killing_the_server_mid_batch_loses_no_item(tmp_path):
    """llama-cpp-python's server killed while a batch is in flight: every item ends answered or failed."""
    from agentkit.embedded import model_path

    cmd = [sys.executable, "-m", "agentkit.backends.llamacpp_server", "--model", str(model_path("qwen2.5-0.5b")),
           "--host", "127.0.0.1", "--port", "{port}", "--n_ctx", "2048", "--model_alias", "qwen-0.5b"]  # fmt: skip
    with serving(cmd, tmp_path / "server.log") as url:
        node = Node(
            Classify(["ham", "spam"], instructions="Is this SMS spam or ham?"),
            [Tier(f"server:{url}?model=qwen-0.5b&timeout_s=20")],
            policy=Policy(retries=1),
        )
        texts = [f"message {i}: call me back about the {i} tickets" for i in range(12)]
        out: list = []
        runner = threading.Thread(target=lambda: out.extend(node.batch(texts, concurrency=2)))
        runner.start()
        time.sleep(4)  # a few answered, the rest in flight or queued
        port = urllib.parse.urlparse(url).port
        found = subprocess.run(["pgrep", "-f", f"llamacpp_server .*--port {port} "], capture_output=True, text=True)
        os.kill(int(found.stdout.split()[0]), signal.SIGKILL)
        runner.join(timeout=300)
    assert not runner.is_alive() and [r.input_text for r in out] == texts
    answered = [r for r in out if r.ok]
    failed = [r for r in out if not r.ok]
    assert failed, "the server was killed before any item failed: kill it earlier"
    assert all(r.value in ("ham", "spam") for r in answered)
    assert all(r.reason and r.input_text for r in failed)  # recorded with a reason, input kept


def test_vllm_label_scores_agree_with_llamacpp_on_the_same_weights(vllm_server, small):
    """Whole-label scores from vLLM's prompt_logprobs (bf16) vs llama.cpp's own scoring (Q4)."""
    task = Classify(["ham", "spam"], instructions="Is this SMS spam or ham?")
    text = "Sorry, I'll be late tonight. Can you pick up the kids at six?"
    served = task.answer(Tier(f"vllm:{vllm_server}?model=qwen-0.5b&scoring=true").engine, text)
    local = task.answer(small, text)
    assert served.method == "label-scoring"
    assert abs(served.details["distribution"]["ham"] - local.details["distribution"]["ham"]) < 0.05


def test_grounded_answer_on_an_api_tier(llama_server):
    """An api: tier fills the joint reply as a schema (citations among the passages retrieved), through
    instructor against a real local server — it is never asked for constrained text it cannot give."""
    from agentkit import Corpus, GroundedAnswer

    corpus = Corpus()
    corpus.add_documents(
        [
            {"doc_id": "close", "text": "To close your account, open Settings and choose Close account."},
            {"doc_id": "pin", "text": "You can change your card's PIN at any cash machine of our bank."},
        ]
    )
    tier = Tier(f"api:qwen-0.5b?base_url={llama_server}&mode=json")
    result = Node(GroundedAnswer(corpus, k=2), [tier]).run("How do I close my account?")
    attempt = result.attempts[0]
    assert attempt.outcome != "engine_error", attempt.reason
    assert attempt.confidence_method == "joint" and attempt.prompt_tokens > 0
    assert result.ok and set(result.value["citations"]) <= set(result.value["retrieved"]), result.reason
