"""`agentkit run --ray`: the same records as `agentkit run`, every input once, on a real Ray cluster.

The fixture starts a real Ray head (``ray start --head``) on 127.0.0.1 with token authentication,
and stops it after; under CI a cluster that fails to start fails the run. The targets are real
LangGraph graphs around a real Classify node on the ``knn`` tier (no model), and one real llama.cpp
node. Faults are real: an actor's process is SIGKILLed (by a graph step, on a chosen input, the
first time — or every time), and the driver process is SIGKILLed mid-run and started again."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentkit.errors import AgentkitError
from agentkit.runner import Item, TargetSource, iter_inputs, run_batch

RAY = Path(sys.executable).with_name("ray")

WORKFLOW = """
import os, signal, time
from pathlib import Path
from typing import TypedDict
from langgraph.graph import END, START, StateGraph
from agentkit import Classify, Node

EXAMPLES = [
    {"input": "WINNER claim your free prize now", "expected": "spam"},
    {"input": "free prize, text CLAIM to 80086 now", "expected": "spam"},
    {"input": "are we still on for lunch tomorrow", "expected": "ham"},
    {"input": "I will call you after the meeting", "expected": "ham"},
]
node = Node(Classify(["ham", "spam"], examples=EXAMPLES, vote_k=2), ["knn"], input="input", output="label")
HERE = Path(__file__).parent


class State(TypedDict, total=False):
    input: object
    source: str
    label: str | None
    output: dict


def step(state):
    # fault injection: "crash once" kills this process the first time it is run, "poison" every time
    text = str(state["input"])
    with open(HERE / "ran.txt", "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    time.sleep(float(os.environ.get("PAUSE_S", "0")))
    if text.startswith("poison") or (text.startswith("crash once") and not (HERE / "crashed").exists()):
        (HERE / "crashed").touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return {}


def report(state):
    return {"output": {"label": state.get("label")}}


g = StateGraph(State)
g.add_node("step", step)
g.add_node("classify", node)
g.add_node("report", report)
g.add_edge(START, "step")
g.add_edge("step", "classify")
g.add_edge("classify", "report")
g.add_edge("report", END)
graph = g.compile()
"""

TEXTS = ["claim your free prize", "lunch tomorrow?", "call me after the meeting", "free entry, text now"]


def _start(env: dict[str, str], port: int) -> subprocess.CompletedProcess[str]:
    command = [str(RAY), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
               "--disable-usage-stats"]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray head on 127.0.0.1 (2 CPUs, token authentication); its address. Ray is imported in this
    process only after its settings are in the environment (it reads them on import)."""
    import importlib.util
    import socket

    if importlib.util.find_spec("ray") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the ray extra is not installed")
        pytest.skip("the ray extra is not installed (pip install 'agentkit[ray]')")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray binds its node to 127.0.0.1, not the machine's address
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_BACKEND_LOG_LEVEL": "error",
    }
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    started = _start(dict(os.environ), port)
    if started.returncode != 0:
        message = f"ray start failed: {started.stderr[-2000:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def flow(tmp_path: Path) -> Path:
    path = tmp_path / "flow.py"
    path.write_text(WORKFLOW)
    return path


def _inbox(path: Path, texts: list[str]) -> Path:
    with path.open("w") as fh:
        for i, text in enumerate(texts):
            fh.write(json.dumps({"id": i, "input": text}) + "\n")
    return path


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def _ray(source: TargetSource, address: str, **options):
    from agentkit.distributed import RayExecutor

    return RayExecutor(source, address=address, **options)


def _same(record: dict) -> dict:
    """What must agree between runs: everything but the time it took (a local tier's cost is its time)."""
    timed = ("latency_s", "cost_usd")
    nodes = [{k: v for k, v in n.items() if k not in timed} for n in record.get("nodes", [])]
    return {k: v for k, v in record.items() if k not in timed} | {"nodes": nodes}


def test_a_workflow_on_two_actors_gives_the_records_of_agentkit_run(ray_cluster, flow, tmp_path):
    inbox = _inbox(tmp_path / "inbox.jsonl", [f"{TEXTS[i % 4]} {i}" for i in range(300)] + ["lunch tomorrow?"] * 3)
    items = list(iter_inputs([str(inbox), str(tmp_path / "missing.txt")]))
    source = TargetSource.find(f"{flow}:graph")
    target, _ = source.load()
    local = run_batch(target, items, tmp_path / "local.jsonl")
    (tmp_path / "ran.txt").unlink()
    executor = _ray(source, ray_cluster, actors=2, batch_size=4)
    on_ray = run_batch(target, items, tmp_path / "ray.jsonl", executor=executor)
    assert local.figures()["items"] == on_ray.figures()["items"] == 304
    by_key = {r["key"]: r for r in _records(tmp_path / "local.jsonl")}
    ray_records = _records(tmp_path / "ray.jsonl")
    assert len(ray_records) == len({r["key"] for r in ray_records}) == 304
    assert {k: _same(r) for k, r in by_key.items()} == {r["key"]: _same(r) for r in ray_records}
    assert sum(r["ok"] for r in ray_records) == 303  # the missing file is a failure record, on Ray too
    pids = {line for line in (tmp_path / "ran.txt").read_text().splitlines()}
    assert len(pids) == 2 and str(os.getpid()) not in pids  # two actors did the work, not the driver
    # the keys are agentkit run's: a file it began is finished by a Ray run
    half = tmp_path / "half.jsonl"
    run_batch(target, items[:150], half)
    finished = run_batch(target, items, half, executor=executor)
    assert finished.skipped == 150 and len(finished.records) == 154
    assert sorted(r["key"] for r in _records(half)) == sorted(by_key)


def test_an_actor_killed_mid_run_loses_nothing_and_writes_nothing_twice(ray_cluster, flow, tmp_path):
    texts = [f"{TEXTS[i % 4]} {i}" for i in range(40)]
    texts[10] = "crash once, then fine"
    texts[30] = "poison: kills its worker every time"
    inbox = _inbox(tmp_path / "inbox.jsonl", texts)
    source = TargetSource.find(f"{flow}:graph")
    target, _ = source.load()
    out = tmp_path / "out.jsonl"
    summary = run_batch(
        target, iter_inputs([str(inbox)]), out, executor=_ray(source, ray_cluster, actors=2, batch_size=4)
    )
    records = _records(out)
    assert sorted(r["id"] for r in records) == list(range(40))  # every input once
    by_id = {r["id"]: r for r in records}
    assert (tmp_path / "crashed").exists()  # the actor did die
    assert by_id[10]["ok"] and by_id[10]["value"]["label"] in ("ham", "spam")  # run again on a new actor
    assert not by_id[30]["ok"] and "died each of the 4 times" in by_id[30]["reason"]
    assert [i for i, r in by_id.items() if not r["ok"]] == [30]
    assert summary.figures()["failed"] == 1
    again = run_batch(target, iter_inputs([str(inbox)]), out, executor=_ray(source, ray_cluster, actors=2))
    assert again.skipped == 40 and again.kept_failures == 1 and not again.records


def test_the_driver_killed_mid_run_resumes_with_every_input_once(ray_cluster, flow, tmp_path):
    inbox = _inbox(tmp_path / "inbox.jsonl", [f"{TEXTS[i % 4]} {i}" for i in range(60)])
    out = tmp_path / "out.jsonl"
    command = [str(Path(sys.executable).with_name("agentkit")), "run", f"{flow}:graph", str(inbox), "--out", str(out),
               "--ray", ray_cluster, "--actors", "2"]  # fmt: skip
    env = dict(os.environ, PAUSE_S="0.2")
    log = tmp_path / "driver.log"
    with log.open("wb") as stderr:
        driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 15):
            assert driver.poll() is None, log.read_text()[-2000:]
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    first = len(_records(out))
    assert 15 <= first < 60
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed: {first} inputs were already in" in done.stderr
    assert "agentkit run" in done.stderr  # the same closing table
    records = _records(out)
    assert sorted(r["id"] for r in records) == list(range(60)) and all(r["ok"] for r in records)


def test_a_worker_with_other_settings_is_refused(ray_cluster, flow, tmp_path, monkeypatch):
    """The driver's node settings differ from what the cluster's workers load (its environment)."""
    flow.write_text(WORKFLOW.replace("vote_k=2", 'vote_k=int(os.environ.get("VOTE_K", "2"))'))
    monkeypatch.setenv("VOTE_K", "3")  # the driver's only: the cluster was started without it
    source = TargetSource.find(f"{flow}:graph")
    target, _ = source.load()
    with pytest.raises(AgentkitError, match="differ from the driver's"):
        run_batch(target, [Item("x", "free prize")], tmp_path / "o.jsonl", executor=_ray(source, ray_cluster))
    assert (tmp_path / "o.jsonl").read_text() == ""  # nothing written under the wrong name


@pytest.mark.slow
def test_a_real_model_node_on_ray_answers_as_it_does_locally(ray_cluster, small, tmp_path):
    """The embedded 0.5B in each of two actors (llama.cpp, one thread each) against this process."""
    node_file = tmp_path / "sms.py"
    node_file.write_text(
        "from agentkit import Classify, Node\n"
        "node = Node(Classify(['ham', 'spam'], instructions='Is this SMS message spam?'), ['embedded:qwen2.5-0.5b'])\n"
    )
    texts = [
        "WINNER!! You have won a 1000 cash prize. Call 09061701461 to claim now",
        "Ok lar... see you at 8",
        "URGENT! Your mobile number has been awarded a 2000 bonus. Text YES to 80082",
        "Sorry, I'll call later",
        "Free entry in 2 a wkly comp to win FA Cup final tkts. Text FA to 87121",
        "I'm home, what's for dinner?",
    ]
    items = [Item(i, t) for i, t in enumerate(texts)]
    source = TargetSource.find(f"{node_file}:node")
    target, _ = source.load()
    local = {r["id"]: r for r in run_batch(target, items, tmp_path / "local.jsonl").records}
    on_ray = {r["id"]: r for r in run_batch(target, items, tmp_path / "ray.jsonl",
                                            executor=_ray(source, ray_cluster, actors=2)).records}  # fmt: skip
    assert set(on_ray) == set(local) == set(range(6))
    for i, r in on_ray.items():
        assert r["ok"] and r["value"] == local[i]["value"] and r["tier"] == local[i]["tier"]
        assert abs(r["confidence"] - local[i]["confidence"]) < 0.05  # llama.cpp scores move slightly with batching
    assert {r["value"] for r in on_ray.values()} == {"ham", "spam"}


def test_an_actor_no_node_can_hold_is_refused_at_once(ray_cluster, flow, tmp_path):
    source = TargetSource.find(f"{flow}:graph")
    target, _ = source.load()
    with pytest.raises(AgentkitError, match="no node of the cluster has 4 CPUs"):
        run_batch(target, [Item("x", "hi")], tmp_path / "o.jsonl", executor=_ray(source, ray_cluster, actor_cpus=4))
