"""Server faults a model server cannot produce on demand, from stdlib HTTP servers on 127.0.0.1 (model-free):
``Retry-After`` carried on the error, the canary proven again after a restart, the API tier's usage counted on
every re-ask, and the in-process vLLM batcher never leaving a caller waiting forever (with a fake ``LLM``)."""

from __future__ import annotations

import email.utils
import http.server
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pydantic
import pytest

from agentkit import Classify, Extract, Node, Policy, Tier
from agentkit.errors import ConfigError, EngineError
from agentkit.testing import JSONHandler, LocalServer

CHOICE = Classify(["a", "b"])._constraint
MESSAGES = [{"role": "user", "content": "x"}]


def _handler(**state: Any) -> type[http.server.BaseHTTPRequestHandler]:
    """An OpenAI-compatible chat server (a llama.cpp-like ``/models``) whose behaviour ``state`` sets:
    ``status`` and ``headers`` for an error reply, ``replies`` (cycled) for completions, and whether the
    canary's constraint is ``ignored``. Counts ``canaries`` and ``posts``."""

    class Chat(JSONHandler):
        status, headers, replies, ignored, canaries, posts = 200, {}, ["a"], False, 0, 0

        def do_GET(self):
            self._send(200, {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "me"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            cls = type(self)
            if cls.status != 200:
                return self._send(cls.status, {"error": {"message": "busy", "type": "server_error"}}, cls.headers)
            if "Reply with exactly the word: hello" in body["messages"][-1]["content"]:
                cls.canaries += 1
                content = "hello" if cls.ignored else "qv7zx"
            else:
                content = cls.replies[min(cls.posts, len(cls.replies) - 1)]
                cls.posts += 1
            self._send(200, {
                "id": "c", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
            })  # fmt: skip

    for name, value in state.items():
        setattr(Chat, name, value)
    return Chat


@pytest.fixture
def servers():
    started: list[LocalServer] = []

    def start(port: int = 0, **state: Any) -> LocalServer:
        server = LocalServer(_handler(**state), port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _engine(url: str, **kw: Any):
    pytest.importorskip("openai")
    from agentkit.backends.openai_server import OpenAIServerEngine

    return OpenAIServerEngine(url, "m", flavor="llamacpp", timeout_s=5, **kw)


# ---- Retry-After ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status,headers,wait",
    [
        (429, {"Retry-After": "7"}, 7.0),
        (503, {"Retry-After": "0.5"}, 0.5),
        (429, {"retry-after-ms": "1500"}, 1.5),
        (500, {}, None),
        (503, {"Retry-After": "soon"}, None),
    ],
)
def test_the_servers_retry_after_is_on_the_error(servers, status, headers, wait):
    server = servers(status=status, headers=headers)
    with pytest.raises(EngineError) as e:
        _engine(server.url, canary=False).generate(MESSAGES, CHOICE, max_tokens=4)
    assert e.value.retryable and e.value.retry_after_s == wait


def test_a_retry_after_date_is_read_as_seconds_from_now(servers):
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    server = servers(status=503, headers={"Retry-After": later})
    with pytest.raises(EngineError) as e:
        _engine(server.url, canary=False).generate(MESSAGES, CHOICE, max_tokens=4)
    assert 25 <= e.value.retry_after_s <= 31


def test_an_error_not_worth_retrying_carries_no_wait(servers):
    server = servers(status=400, headers={"Retry-After": "7"})
    with pytest.raises(EngineError) as e:
        _engine(server.url, canary=False).generate(MESSAGES, CHOICE, max_tokens=4)
    assert not e.value.retryable and e.value.retry_after_s is None


# ---- the canary after a restart --------------------------------------------------------------------


def test_the_canary_is_proven_again_after_the_server_comes_back(servers):
    first = servers()
    engine = _engine(first.url)
    assert engine.generate(MESSAGES, CHOICE, max_tokens=4).text == "a"
    engine.generate(MESSAGES, CHOICE, max_tokens=4)
    assert first.handler.canaries == 1  # proven once, then trusted
    first.stop()
    with pytest.raises(EngineError) as e:  # the server is down
        engine.generate(MESSAGES, CHOICE, max_tokens=4)
    assert e.value.retryable
    back = servers(port=first.port)  # ... and back
    assert engine.generate(MESSAGES, CHOICE, max_tokens=4).text == "a"
    assert back.handler.canaries == 1 and back.handler.posts == 1  # proven again before the request


def test_a_server_that_comes_back_ignoring_the_constraint_is_refused(servers):
    first = servers()
    engine = _engine(first.url)
    engine.generate(MESSAGES, CHOICE, max_tokens=4)
    first.stop()
    with pytest.raises(EngineError):
        engine.generate(MESSAGES, CHOICE, max_tokens=4)
    back = servers(port=first.port, ignored=True)  # another server on the same port, constraints ignored
    with pytest.raises(ConfigError, match="ignored the output constraint"):
        engine.generate(MESSAGES, CHOICE, max_tokens=4)
    assert back.handler.posts == 0  # no request was trusted to it


# ---- the API tier's usage, re-asks included ----------------------------------------------------------


class Receipt(pydantic.BaseModel):
    total: str


def _total_printed(value: Receipt, text: str) -> str | None:
    return None if value.total in text else f"total {value.total} is not in the text"


def test_the_api_tier_counts_the_usage_of_every_try_when_no_reply_validates(servers):
    pytest.importorskip("instructor")
    server = servers(replies=[json.dumps({"total": "99.99"})])
    tier = Tier(f"api:m?base_url={server.url}&mode=json&reasks=2")
    result = Node(Extract(Receipt, validators=[_total_printed]), [tier], Policy(retries=0)).run("TOTAL 12.50")
    (attempt,) = result.attempts
    assert not result.ok and attempt.outcome == "invalid" and server.handler.posts == 3
    assert (attempt.prompt_tokens, attempt.completion_tokens) == (33, 15)  # 3 tries × (11, 5)


def test_the_api_tier_counts_the_failed_tries_before_a_valid_reply(servers):
    pytest.importorskip("instructor")
    server = servers(replies=[json.dumps({"total": "99.99"}), json.dumps({"total": "12.50"})])
    tier = Tier(f"api:m?base_url={server.url}&mode=json&reasks=2")
    result = Node(Extract(Receipt, validators=[_total_printed]), [tier]).run("TOTAL 12.50")
    assert result.ok and result.value == {"total": "12.50"} and server.handler.posts == 2
    assert (result.attempts[0].prompt_tokens, result.attempts[0].completion_tokens) == (22, 10)


# ---- vLLM in this process: the batcher, with a fake LLM --------------------------------------------


class FakeLLM:
    """A fake ``vllm.LLM`` (no model): ``generate`` answers each prompt with ``"out:PROMPT"``, after
    ``gate`` opens; ``then`` may replace its answer with a fault (an exception to raise, or a wrong list)."""

    def __init__(self, gate: threading.Event | None = None, then: Callable[[list[Any]], list[Any]] | None = None):
        self.gate, self.then, self.batches = gate, then, []

    def get_tokenizer(self) -> None:
        return None

    def generate(self, prompts, params, use_tqdm=False, lora_request=None):
        self.batches.append(list(prompts))
        if self.gate is not None:
            self.gate.wait(10)
        outs = [f"out:{p}" for p in prompts]
        return self.then(outs) if self.then else outs


def _vllm(llm: FakeLLM, **kw: Any):
    from agentkit.backends.vllm_offline import VLLMOfflineEngine

    engine = VLLMOfflineEngine("fake-model", name="fake-vllm", **kw)
    engine._start(llm)
    return engine


class _Call:
    """``fn()`` in a thread; :meth:`outcome` is its result or exception, or ``"still waiting"``."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = "still waiting"
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.value = fn()
        except Exception as e:  # noqa: BLE001 - the outcome under test
            self.value = e

    def outcome(self, timeout: float = 5.0) -> Any:
        self.thread.join(timeout)
        return self.value


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.time() + 5
    while not condition():
        assert time.time() < deadline
        time.sleep(0.01)


def test_requests_from_many_threads_are_gathered_into_one_generate_call():
    gate = threading.Event()
    llm = FakeLLM(gate)
    engine = _vllm(llm)
    first = _Call(lambda: engine._run(["p0"], [None]))
    _until(lambda: len(llm.batches) == 1)  # p0 is being generated; the next ones queue up meanwhile
    rest = [_Call(lambda i=i: engine._run([f"p{i}"], [None])) for i in range(1, 6)]
    time.sleep(0.1)
    gate.set()
    assert first.outcome() == ["out:p0"] and [c.outcome() for c in rest] == [[f"out:p{i}"] for i in range(1, 6)]
    assert [len(b) for b in llm.batches] == [1, 5]
    engine.close()


def test_a_request_after_close_fails_at_once_instead_of_waiting_forever():
    engine = _vllm(FakeLLM())
    assert engine._run(["p"], [None]) == ["out:p"]
    engine.close()
    late = _Call(lambda: engine._run(["p"], [None]))
    error = late.outcome()
    assert isinstance(error, EngineError) and error.retryable and "closed" in str(error)


def test_requests_queued_when_the_engine_closes_fail_retryably():
    gate = threading.Event()
    llm = FakeLLM(gate)
    engine = _vllm(llm)
    batcher = engine._batcher
    first = _Call(lambda: batcher.run(["p0"], [None], timeout_s=10))
    _until(lambda: len(llm.batches) == 1)
    queued = _Call(lambda: batcher.run(["p1"], [None], timeout_s=10))
    time.sleep(0.1)
    closing = _Call(engine.close)
    error = queued.outcome()
    assert isinstance(error, EngineError) and error.retryable and "closed" in str(error)
    gate.set()  # the batch in hand is finished
    assert first.outcome() == ["out:p0"] and closing.outcome() is None and len(llm.batches) == 1


def test_a_batch_with_the_wrong_number_of_outputs_fails_its_callers_and_the_batcher_goes_on():
    llm = FakeLLM(then=lambda outs: outs[:-1])
    engine = _vllm(llm)
    error = _Call(lambda: engine._run(["p0", "p1"], [None, None])).outcome()
    assert isinstance(error, EngineError) and "1 outputs for 2 requests" in str(error)
    llm.then = None
    assert _Call(lambda: engine._run(["p2"], [None])).outcome() == ["out:p2"]
    engine.close()


def _die(outs: list[Any]) -> list[Any]:
    raise SystemExit  # not an Exception: it ends the batcher's thread


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_when_the_batcher_thread_dies_its_callers_fail_retryably_instead_of_waiting_forever():
    gate = threading.Event()
    llm = FakeLLM(gate, then=_die)
    engine = _vllm(llm)
    first = _Call(lambda: engine._run(["p0"], [None]))
    _until(lambda: len(llm.batches) == 1)
    queued = _Call(lambda: engine._run(["p1"], [None]))
    time.sleep(0.1)
    gate.set()
    for call in (first, queued):
        error = call.outcome()
        assert isinstance(error, EngineError) and error.retryable and "stopped" in str(error)
    engine._batcher._thread.join(5)
    later = _Call(lambda: engine._run(["p2"], [None])).outcome()
    assert isinstance(later, EngineError) and later.retryable


def test_a_reply_that_takes_too_long_is_a_retryable_error_and_its_request_is_dropped():
    gate = threading.Event()
    llm = FakeLLM(gate)
    engine = _vllm(llm, timeout_s=0.3)
    first = _Call(lambda: engine._run(["p0"], [None]))
    _until(lambda: len(llm.batches) == 1)
    behind = _Call(lambda: engine._run(["p1"], [None]))
    for call in (first, behind):
        error = call.outcome()
        assert isinstance(error, EngineError) and error.retryable and "no reply within 0.3 s" in str(error)
    gate.set()
    time.sleep(0.2)
    assert llm.batches == [["p0"]]  # p1's caller gave up: it was never generated
    engine.close()
