"""`agentkit run` under faults: repeated and colliding ids, inputs that change between runs, records
that cannot be written, failures retried, two runs on one output, SIGKILL at random points with torn
lines, and the command line's errors. Every target is model-free: a ``Cleanse`` node on the ``rules``
tier, alone or inside a small LangGraph graph."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from agentkit.runner import iter_inputs, load_target, run_batch

TARGETS = """
import os, time
from typing import TypedDict
from langgraph.graph import END, START, StateGraph
from agentkit import Cleanse, Node, Policy

node = Node(Cleanse(), ["rules"])
stricter = Node(Cleanse(), ["rules"], Policy(threshold=0.5))


class State(TypedDict, total=False):
    input: object
    source: str
    text: str | None
    output: object
    ok: bool


def _graph(*steps):
    g = StateGraph(State)
    names = [f"step{n}" for n in range(len(steps))]
    for name, step in zip(names, steps):
        g.add_node(name, step)
    for a, b in zip([START, *names], [*names, END]):
        g.add_edge(a, b)
    return g.compile()


def unhashable_keys(state):
    return {"output": {(1, 2): state.get("text")}}


def report(state):
    return {"output": state.get("text"), "ok": state.get("text") is not None}


def pause(state):
    time.sleep(float(os.environ.get("PAUSE_S", "0")))
    return {}


CALLS = [0]


def server(state):  # a server that dies after DOWN_AFTER calls
    CALLS[0] += 1
    if CALLS[0] > int(os.environ.get("DOWN_AFTER", "1000000")):
        raise ConnectionError("the server went away")
    return {}


cleanse = Node(Cleanse(), ["rules"], input="input", output="text")
sets_nothing = _graph(lambda state: {})
bad_output = _graph(cleanse, unhashable_keys)
slow = _graph(pause, cleanse, report)
flaky = _graph(server, cleanse, report)
"""


@pytest.fixture
def targets(tmp_path: Path) -> Path:
    path = tmp_path / "targets.py"
    path.write_text(TARGETS)
    return path


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_bytes().decode("utf-8").splitlines()]


def _cli(*args: str, stdin: bytes | None = None, env: dict | None = None, cwd: Path | None = None):
    cmd = [sys.executable, "-m", "agentkit.cli", "run", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, env={**os.environ, **(env or {})}, cwd=cwd)


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# ---- ids and resume keys ----------------------------------------------------------------


def test_repeated_colliding_and_null_ids_keep_every_input(targets, tmp_path):
    one = _jsonl(tmp_path / "one.jsonl", [{"id": 1, "input": "alpha"}, {"id": "1", "input": "beta"}])
    two = _jsonl(tmp_path / "two.jsonl", [{"id": 1, "input": "alpha"}, {"id": None, "input": "gamma"}])
    node, out = load_target(f"{targets}:node"), tmp_path / "out.jsonl"
    summary = run_batch(node, iter_inputs([str(one), str(two)]), out)
    records = _records(out)
    expected = [(1, "alpha"), ("1", "beta"), (1, "alpha"), (f"{two}:2", "gamma")]
    assert [(r["id"], r["value"]) for r in records] == expected
    assert len({r["key"] for r in records}) == 4 and summary.repeated_ids == ["1"]
    again = run_batch(node, iter_inputs([str(one), str(two)]), out)
    assert again.records == [] and again.skipped == 4 and len(_records(out)) == 4


def test_a_line_inserted_at_the_top_of_an_idless_jsonl_runs_and_nothing_is_filed_twice(targets, tmp_path):
    data = _jsonl(tmp_path / "in.jsonl", [{"input": t} for t in ("alpha", "beta", "gamma")])
    node, out = load_target(f"{targets}:node"), tmp_path / "out.jsonl"
    run_batch(node, iter_inputs([str(data)]), out)
    _jsonl(data, [{"input": t} for t in ("first", "alpha", "beta", "gamma")])
    summary = run_batch(node, iter_inputs([str(data)]), out)
    assert [r["value"] for r in summary.records] == ["first"] and summary.skipped == 3
    assert sorted(r["value"] for r in _records(out)) == ["alpha", "beta", "first", "gamma"]


def test_stdin_twice_with_different_text_runs_both(targets, tmp_path):
    node, out = load_target(f"{targets}:node"), tmp_path / "out.jsonl"
    run_batch(node, iter_inputs(["-"], stdin=io.StringIO("the first message")), out)
    summary = run_batch(node, iter_inputs(["-"], stdin=io.StringIO("another message")), out)
    assert [r["value"] for r in summary.records] == ["another message"]
    assert [r["value"] for r in _records(out)] == ["the first message", "another message"]


def test_relative_and_absolute_paths_resume_the_same_inputs(targets, tmp_path):
    (tmp_path / "docs").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "docs" / name).write_text(f"text of {name}")
    out = tmp_path / "out.jsonl"
    first = _cli(f"{targets}:node", "docs", "--out", str(out), cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    again = _cli(f"{targets}:node", str(tmp_path / "docs"), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0 and b"resumed: 2 inputs" in again.stderr
    assert len(_records(out)) == 2


def test_other_settings_on_the_same_output_are_refused(targets, tmp_path):
    data = _jsonl(tmp_path / "in.jsonl", [{"input": "alpha"}])
    out = tmp_path / "out.jsonl"
    assert _cli(f"{targets}:node", str(data), "--out", str(out)).returncode == 0
    before = out.read_bytes()
    err = _one_line_error(_cli(f"{targets}:stricter", str(data), "--out", str(out)))
    assert "holds results of 'cleanse' with config" in err and out.read_bytes() == before


# ---- records that cannot be written, graphs that set nothing ---------------------------


def test_surrogates_in_ids_and_file_names_are_written_and_the_batch_goes_on(targets, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text('{"id": "\\ud800", "input": "alpha"}\n{"id": "next", "input": "beta"}\n')
    folder = tmp_path / "docs"
    folder.mkdir()
    (Path(os.fsdecode(bytes(folder)) + os.sep + os.fsdecode(b"\xff.txt"))).write_text("gamma")
    node, out = load_target(f"{targets}:node"), tmp_path / "out.jsonl"
    summary = run_batch(node, iter_inputs([str(data), str(folder)]), out)
    records = _records(out)  # strict UTF-8
    assert [r["value"] for r in records] == ["alpha", "beta", "gamma"] and all(r["ok"] for r in records)
    assert records[0]["id"] == "\ud800" and records[2]["id"].endswith("\udcff.txt")
    assert len(summary.records) == 3


def test_an_output_that_cannot_be_serialized_is_a_failure_record_and_the_batch_goes_on(targets, tmp_path):
    graph, out = load_target(f"{targets}:bad_output"), tmp_path / "out.jsonl"
    data = _jsonl(tmp_path / "in.jsonl", [{"input": "alpha"}, {"input": "beta"}])
    summary = run_batch(graph, iter_inputs([str(data)]), out)
    records = _records(out)
    assert len(records) == 2 and not any(r["ok"] for r in records)
    assert "cannot be written as JSON" in records[0]["reason"] and "keys must be" in records[0]["reason"]
    assert summary.figures()["failed"] == 2
    assert run_batch(graph, iter_inputs([str(data)]), out).skipped == 2  # not rerun: kept as failures


def test_a_graph_that_sets_nothing_is_a_failure(targets, tmp_path):
    graph = load_target(f"{targets}:sets_nothing")
    summary = run_batch(graph, iter_inputs(["-"], stdin=io.StringIO("alpha")), None, stream=io.StringIO())
    (record,) = summary.records
    assert record["ok"] is False and record["reason"] == "the graph set nothing"


# ---- failures retried ------------------------------------------------------------------


def test_retry_failed_runs_the_failures_again_and_the_summary_says_so(targets, tmp_path):
    data = _jsonl(tmp_path / "in.jsonl", [{"id": f"m{i}", "input": f"message {i}"} for i in range(8)])
    out, target = tmp_path / "out.jsonl", f"{targets}:flaky"
    down = _cli(target, str(data), "--out", str(out), env={"DOWN_AFTER": "3"})
    assert down.returncode == 1 and sum(not r["ok"] for r in _records(out)) == 5
    assert "the server went away" in _records(out)[-1]["reason"]
    kept = _cli(target, str(data), "--out", str(out))
    assert kept.returncode == 1 and b"kept 5 earlier failures" in kept.stderr and len(_records(out)) == 8
    retried = _cli(target, str(data), "--out", str(out), "--retry-failed")
    assert retried.returncode == 0, retried.stderr.decode()
    assert b"retried 5 inputs" in retried.stderr and b"resumed: 3 inputs" in retried.stderr
    last = {r["key"]: r for r in _records(out)}
    assert len(last) == 8 and all(r["ok"] for r in last.values())
    assert sum(bool(r.get("retried")) for r in _records(out)) == 5
    done = _cli(target, str(data), "--out", str(out), "--retry-failed")
    assert done.returncode == 0 and b"resumed: 8 inputs" in done.stderr and len(_records(out)) == 13


# ---- the output file: a lock, and nothing truncated that is not a torn record ----------


def test_a_second_run_on_the_same_output_fails_clearly(targets, tmp_path):
    data = _jsonl(tmp_path / "in.jsonl", [{"input": f"message {i}"} for i in range(40)])
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "agentkit.cli", "run", f"{targets}:slow", str(data), "--out", str(out)]
    first = subprocess.Popen(cmd, env={**os.environ, "PAUSE_S": "0.1"}, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 2):
            time.sleep(0.02)
        second = _cli(f"{targets}:slow", str(data), "--out", str(out))
        assert first.poll() is None, "the first run ended before the second started"
        err = _one_line_error(second)
        assert "is being written by another agentkit run" in err
    finally:
        _, first_err = first.communicate(timeout=60)
    assert first.returncode == 0, first_err.decode()
    assert Counter(r["value"] for r in _records(out)) == Counter(f"message {i}" for i in range(40))


def test_a_file_that_is_not_agentkit_output_is_left_alone(targets, tmp_path):
    data = _jsonl(tmp_path / "in.jsonl", [{"input": "alpha"}])
    for text in (b"my notes\nmore notes", b'{"id": "a", "ok": true}\n', b"no newline at all"):
        out = tmp_path / "notes.jsonl"
        out.write_bytes(text)
        err = _one_line_error(_cli(f"{targets}:node", str(data), "--out", str(out)))
        assert "is not agentkit run output" in err and out.read_bytes() == text


def test_a_complete_last_record_without_its_newline_is_kept(targets, tmp_path):
    data = _jsonl(tmp_path / "in.jsonl", [{"input": "alpha"}, {"input": "beta"}])
    node, out = load_target(f"{targets}:node"), tmp_path / "out.jsonl"
    run_batch(node, iter_inputs([str(data)]), out)
    written = out.read_bytes()
    out.write_bytes(written.rstrip(b"\n"))
    summary = run_batch(node, iter_inputs([str(data)]), out)
    assert summary.skipped == 2 and summary.records == [] and out.read_bytes() == written


def test_sigkill_at_random_points_with_torn_lines_loses_nothing_and_files_nothing_twice(targets, tmp_path):
    """Kill -9 the command at random moments (while it starts, reads, runs or writes), tear the
    last line now and then as a dying write would, resume; at the end every input has exactly
    the record an uninterrupted run writes."""
    rng = random.Random(20240611)
    texts = [f"message number {i % 170}  with  spaces" for i in range(260)]  # 90 repeated contents
    one = [{"id": i % 50, "input": t} for i, t in enumerate(texts[:150])]  # ids repeat, and collide with two's
    two = [{"input": t} if i % 3 else {"id": None, "input": t} for i, t in enumerate(texts[150:])]
    two += [{"id": "\ud800", "input": "a surrogate id"}, {"id": "blank", "input": "   "}]
    a, b = _jsonl(tmp_path / "one.jsonl", one), _jsonl(tmp_path / "two.jsonl", two)
    with b.open("a") as fh:
        fh.write("{not json\n")
    inputs = [str(a), str(b)]
    ref = tmp_path / "ref.jsonl"
    assert _cli(f"{targets}:node", *inputs, "--out", str(ref)).returncode == 1  # the blank and the bad line fail
    n_inputs = len(one) + len(two) + 1
    expected = Counter((r["id"], r["ok"], r.get("value")) for r in _records(ref))
    assert sum(expected.values()) == n_inputs

    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "agentkit.cli", "run", f"{targets}:node", *inputs, "--out", str(out)]
    kills = torn = crashes = 0
    lines = ref.read_bytes().splitlines()
    for _ in range(300):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if rng.random() < 0.25:  # while it starts, loads or checks the output file
            time.sleep(rng.uniform(0, 0.6))
        else:  # while it runs and writes: after a few more records
            start = out.read_bytes().count(b"\n") if out.exists() else 0
            goal = start + rng.randint(1, 20)
            while proc.poll() is None and (out.read_bytes().count(b"\n") if out.exists() else 0) < goal:
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.003))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        err = proc.communicate()[1].decode("utf-8", "replace")
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            if rng.random() < 0.5:  # a torn write: part of a record, no newline
                line = rng.choice(lines)
                with out.open("ab") as fh:
                    fh.write(line[: rng.randint(1, len(line) - 1)])
                torn += 1
            continue
        crashes += proc.returncode not in (0, 1) or "Traceback" in err
        if kills >= 20:
            break
        out.unlink()  # finished before 20 kills: start the batch again
    records = _records(out)
    got = Counter((r["id"], r["ok"], r.get("value")) for r in records)
    lost, duplicated = sum((expected - got).values()), sum((got - expected).values())
    figures = (
        f"inputs tried {n_inputs}, faults injected {kills + torn} ({kills} SIGKILLs, {torn} torn lines), "
        f"crashes {crashes}, lost {lost}, duplicated {duplicated}"
    )
    print(figures)
    assert kills >= 20 and crashes == lost == duplicated == 0, figures
    assert len({r["key"] for r in records}) == len(records) == n_inputs


# ---- the command line's errors ---------------------------------------------------------


def test_out_pointing_at_a_folder_is_a_one_line_error(targets, tmp_path):
    data = _jsonl(tmp_path / "in.jsonl", [{"input": "alpha"}])
    err = _one_line_error(_cli(f"{targets}:node", str(data), "--out", str(tmp_path)))
    assert "is a folder" in err


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
def test_an_unreadable_jsonl_input_is_a_failure_record_not_a_traceback(targets, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.symlink_to("/proc/self/clear_refs")  # opens, but reading it fails (EINVAL), even as root
    good = _jsonl(tmp_path / "good.jsonl", [{"input": "alpha"}])
    out = tmp_path / "out.jsonl"
    done = _cli(f"{targets}:node", str(bad), str(good), "--out", str(out))
    assert done.returncode == 1 and b"Traceback" not in done.stderr, done.stderr.decode()
    failure, ok = _records(out)
    assert not failure["ok"] and failure["reason"].startswith(f"cannot read {bad}") and ok["value"] == "alpha"


def test_binary_stdin_under_a_strict_utf8_locale_is_a_failure_record_not_a_traceback(targets, tmp_path):
    done = _cli(f"{targets}:node", "-", stdin=b"\xff\xfe\x00\x81binary", env={"PYTHONIOENCODING": "utf-8:strict"})
    assert done.returncode == 1 and b"Traceback" not in done.stderr, done.stderr.decode()
    (record,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert record["id"] == "stdin" and not record["ok"] and "binary" in record["reason"]
