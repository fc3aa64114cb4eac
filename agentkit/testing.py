"""Helpers for users' own tests (and agentkit's): a real server started on 127.0.0.1, and
deterministic fake engines named as what they are.

A fake engine exists only to exercise logic that a real model cannot produce on demand:
a forced validation failure, an engine error, a given confidence. It never stands in for
a model's quality.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import math
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agentkit.engine import Capabilities, Constraint, Generation, Message, Scores, Usage
from agentkit.errors import EngineError

__all__ = [
    "VLLM_ENV",
    "FakeEngine",
    "JSONHandler",
    "LocalServer",
    "failing_engine",
    "free_port",
    "serving",
    "vllm_server_command",
]


@dataclass
class FakeEngine:
    """Replies from a script, in order (cycling on the last one).

    Each scripted reply is either a string (returned by ``generate``; for ``score`` the
    continuation equal to it gets probability ``confidence``) or an exception to raise.
    """

    replies: Sequence[str | Exception] = ("",)
    confidence: float = 0.99
    name: str = "fake"
    capabilities: Capabilities = field(default_factory=Capabilities)
    seconds: float = 0.001
    calls: list[list[Message]] = field(default_factory=list)

    def _next(self) -> str:
        i = min(len(self.calls) - 1, len(self.replies) - 1)
        reply = self.replies[i]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(
        self, messages: list[Message], constraint: Constraint, *, max_tokens: int, prefix: int = 0
    ) -> Generation:
        self.calls.append(messages)
        text = self._next()
        words = text.split(" ")
        offsets, pos = [], 0
        for w in words:
            offsets.append(pos)
            pos += len(w) + 1
        probs = [self.confidence] * len(words)
        finish: Literal["stop", "length"] = "length" if len(words) > max_tokens else "stop"
        usage = Usage(
            prompt_tokens=sum(len(m["content"].split()) for m in messages),
            completion_tokens=len(words),
            seconds=self.seconds,
        )
        return Generation(text=text, finish_reason=finish, token_probs=probs, offsets=offsets, usage=usage)

    def score(
        self,
        messages: list[Message],
        continuations: list[str],
        *,
        prefix: int = 0,
        margin: float | None = None,
        choice: bool = False,
    ) -> Scores:
        self.calls.append(messages)
        chosen = self._next()
        n = len(continuations)
        rest = (1 - self.confidence) / max(1, n - 1)
        lps = [math.log(self.confidence if c == chosen else rest) for c in continuations]
        return Scores(logprobs=lps, usage=Usage(prompt_tokens=10, seconds=self.seconds))


def failing_engine(times: int, then: str, *, retryable: bool = True) -> FakeEngine:
    """A fake engine that raises ``times`` engine errors, then replies ``then``."""
    return FakeEngine(replies=[EngineError("fake transient failure", retryable=retryable)] * times + [then])


VLLM_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1"}  # fmt: skip
"""Environment for vLLM on an offline CPU machine: nothing from a hub, no telemetry, a 1 GiB KV cache."""


def vllm_server_command(
    python: str | Path, model_dir: str | Path, *, max_model_len: int = 4096, lora: dict[str, str | Path] | None = None
) -> list[str]:
    """vLLM's OpenAI-compatible server on ``model_dir`` (served as ``qwen-0.5b``), eager, for :func:`serving`;
    ``lora`` = ``{name: adapter_dir}`` also serves those PEFT adapters, each as a model of that name."""
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", "qwen-0.5b", "--host", "127.0.0.1", "--port", "{port}", "--dtype", "bfloat16",
           "--max-model-len", str(max_model_len), "--enforce-eager"]  # fmt: skip
    if lora:
        cmd += ["--enable-lora", "--max-lora-rank", "64", "--lora-modules"]
        cmd += [f"{name}={Path(path).resolve()}" for name, path in lora.items()]
    return cmd


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(
    cmd: list[str], log: Path, *, env: dict[str, str] | None = None, model: str = "qwen-0.5b", timeout_s: float = 180
) -> Iterator[str]:
    """Start an OpenAI-compatible server (``{port}`` in ``cmd`` is replaced by a free port) in its own
    process group, yield its ``/v1`` URL once a real completion answers (a health endpoint can answer
    while the engine is dead), then stop the whole group. Raises ``RuntimeError`` with the log's tail
    if it exits or does not answer in time."""
    port = free_port()
    log_file = log.open("w")  # a file, not a pipe: an undrained pipe fills and blocks the server
    args = [a.replace("{port}", str(port)) for a in cmd]
    proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}).encode()
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(args[:3])} exited: {log.read_text()[-3000:]}")
            if time.time() > deadline:
                raise RuntimeError(
                    f"{' '.join(args[:3])} did not answer a completion within {timeout_s:.0f} s: "
                    f"{log.read_text()[-3000:]}"
                )
            try:
                req = urllib.request.Request(f"{url}/chat/completions", body, {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=60) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # servers with engine children: stop the whole group
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log_file.close()


class JSONHandler(http.server.BaseHTTPRequestHandler):
    """A base for stand-in HTTP servers in tests (a fake: for faults no real server produces on demand, such
    as a 500, a 429 with ``Retry-After`` or an error that echoes the key): JSON replies, no request log."""

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass


class LocalServer:
    """``handler`` served on 127.0.0.1 (``port`` 0: a free one) in a thread until :meth:`stop`."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler], port: int = 0) -> None:
        self.handler = handler
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
