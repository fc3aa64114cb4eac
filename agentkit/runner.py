"""Run a target — a :class:`~agentkit.node.Node` or a compiled LangGraph workflow — over many
inputs, writing one JSON line per input. Nothing is lost: every input ends as a result or a
failure record with its reason; a run that is killed (even with SIGKILL) and started again
with the same output file continues where it stopped, writing no input twice.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from agentkit.errors import ConfigError
from agentkit.result import collect
from agentkit.stats import summarize

_SHIPPED = {"invoice": "workflows.invoice:graph", "email": "workflows.email:graph"}
"""Workflow names ``agentkit run`` knows; anything else is ``path/to/file.py:attribute``."""


@dataclass
class Item:
    """One input: an id (stable across runs, used to resume) and its content."""

    id: str
    value: str | bytes | dict[str, Any]
    path: str | None = None


def load_target(spec: str) -> Any:
    """A shipped workflow name, ``module.path:attr`` or ``path/to/file.py:attr`` (like langgraph.json)."""
    spec = _SHIPPED.get(spec, spec)
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise ConfigError(f"cannot load {spec!r}", hint=f"one of {sorted(_SHIPPED)} or path/to/file.py:graph")
    if where.endswith(".py"):
        file = Path(where)
        if not file.is_file():
            raise ConfigError(f"no such file: {file}")
        module_spec = importlib.util.spec_from_file_location(file.stem, file)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules.setdefault(file.stem, module)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ConfigError(f"cannot import {where!r}: {e}") from e
    if not hasattr(module, attr):
        raise ConfigError(f"{where} has no attribute {attr!r}")
    target = getattr(module, attr)
    return target() if callable(target) and not hasattr(target, "invoke") and not hasattr(target, "run") else target


def nodes_of(target: Any) -> list[Any]:
    """The agentkit :class:`~agentkit.node.Node` objects in ``target`` (a Node, or the nodes of a
    compiled LangGraph graph), so a config file can be applied to them."""
    from agentkit.node import Node

    if isinstance(target, Node):
        return [target]
    specs = getattr(getattr(target, "builder", None), "nodes", {}) or {}
    found = [getattr(spec.runnable, "func", None) for spec in specs.values()]
    return [f for f in found if isinstance(f, Node)]


def load_records(path: str | Path, limit: int | None = None, *, need_expected: bool = True) -> list[dict[str, Any]]:
    """Labelled records (``input``, ``expected``) from a JSONL file, with a clear error for a bad one
    (``need_expected=False``: any JSON objects, e.g. trace records)."""
    from agentkit.data import read_jsonl

    try:
        records = list(read_jsonl(path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    for n, r in enumerate(records, 1):
        if not isinstance(r, dict):
            raise ConfigError(f"{path}: record {n} is not a JSON object")
        if need_expected and ("input" not in r or "expected" not in r):
            raise ConfigError(f"{path}: record {n} needs 'input' and 'expected'")
    return records[:limit] if limit else records


def iter_inputs(specs: Sequence[str], stdin: TextIO | None = None) -> Iterator[Item]:
    """Items from files, folders (recursively, sorted), JSONL files (one item per record; ``input``
    and optional ``id``) and ``-`` (stdin: JSONL records, or else one text)."""
    for spec in specs:
        if spec == "-":
            yield from _stdin_items(stdin or sys.stdin)
            continue
        path = Path(spec)
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
                yield from _file_items(f)
        elif path.is_file():
            yield from _file_items(path)
        else:
            yield Item(id=spec, value=_InputErrorValue(f"no such file or folder: {spec}"), path=spec)


class _InputErrorValue(str):
    """An input that could not be read; its text is the reason (recorded as a failure)."""


def _file_items(path: Path) -> Iterator[Item]:
    if path.suffix.lower() == ".jsonl":
        with path.open("rb") as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                item_id = f"{path}:{n}"
                try:
                    rec = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    yield Item(item_id, _InputErrorValue(f"line {n} is not JSON: {e}"), str(path))
                    continue
                if isinstance(rec, dict) and "input" in rec:
                    yield Item(str(rec.get("id", item_id)), rec["input"], str(path))
                else:
                    yield Item(item_id, _InputErrorValue(f"line {n} has no 'input' field"), str(path))
        return
    try:
        data = path.read_bytes()
    except OSError as e:
        yield Item(str(path), _InputErrorValue(f"cannot read {path}: {e}"), str(path))
        return
    yield Item(str(path), data, str(path))


def _stdin_items(stream: TextIO) -> Iterator[Item]:
    text = stream.read()
    lines = [line for line in text.splitlines() if line.strip()]
    records: list[Any] = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            records = []
            break
        if not isinstance(rec, dict) or "input" not in rec:
            records = []
            break
        records.append(rec)
    if records:
        for n, rec in enumerate(records, 1):
            yield Item(str(rec.get("id", f"stdin:{n}")), rec["input"])
    else:
        yield Item("stdin", text)


# ---- running one item -------------------------------------------------------------------


def run_one(target: Any, item: Item, *, debug: bool = False) -> dict[str, Any]:
    """The JSON record for one input. Never raises for a bad input or a failing node."""
    t0 = time.perf_counter()
    record: dict[str, Any] = {"id": item.id}
    if isinstance(item.value, _InputErrorValue):
        return record | {"ok": False, "reason": str(item.value), "cost_usd": 0.0, "latency_s": 0.0}
    try:
        with collect() as trace:
            if hasattr(target, "run") and hasattr(target, "task"):  # an agentkit Node
                result = target.run(_as_text(item.value), input_id=item.id)
                record |= {
                    "ok": result.ok,
                    "value": result.value,
                    "tier": result.tier,
                    "confidence": result.confidence,
                    "accepted": result.accepted,
                    "reason": result.reason,
                }
            elif hasattr(target, "invoke"):  # a compiled LangGraph graph
                state = target.invoke({"input": item.value, "source": item.path or item.id})
                record |= _workflow_record(state)
            else:
                raise ConfigError(f"cannot run a {type(target).__name__}: expected a Node or a compiled graph")
    except KeyboardInterrupt:
        raise
    except Exception as e:  # a failure record, never a lost input
        if debug:
            raise
        record |= {"ok": False, "reason": f"{type(e).__name__}: {e}"}
        trace_results: list[Any] = []
    else:
        trace_results = trace.results
    record["nodes"] = [_node_entry(r) for r in trace_results]
    record["escalated"] = any(r.escalated for r in trace_results)
    record["cost_usd"] = sum(r.cost_usd for r in trace_results)
    record["latency_s"] = round(time.perf_counter() - t0, 4)
    return record


def _node_entry(result: Any) -> dict[str, Any]:
    """One node's part of a record; when it escalated, why (each attempt it did not accept)."""
    entry = {"node": result.node, "ok": result.ok, "tier": result.tier, "confidence": result.confidence,
             "cost_usd": result.cost_usd}  # fmt: skip
    if result.escalated:
        entry["escalated_because"] = [
            f"{a.tier}: {a.outcome}: {a.reason}"[:300] for a in result.attempts if a.outcome != "accepted"
        ]
    return entry


def _as_text(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value  # the node records "binary, not UTF-8 text"
    return value


def _workflow_record(state: Any) -> dict[str, Any]:
    """A workflow reports ``output`` and, optionally, ``ok``/``status``/``reason`` in its final state."""
    if not isinstance(state, dict):
        state = dict(state)
    ok = state.get("ok")
    if ok is None:
        ok = state.get("status", "ok") not in ("failed", "error")
    return {
        "ok": bool(ok),
        "status": state.get("status"),
        "value": state.get("output"),
        "reason": state.get("reason", ""),
    }


# ---- the resumable run ------------------------------------------------------------------


def completed_ids(out: Path) -> set[str]:
    """Ids already written to ``out``; a torn last line (a killed run) is cut off first."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # the run died mid-line: drop the fragment, that item runs again
        with out.open("r+b") as fh:
            fh.truncate(end)
    done = set()
    for line in data[:end].splitlines():
        try:
            done.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


@dataclass
class RunSummary:
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    interrupted: bool = False

    def figures(self) -> dict[str, Any]:
        """:func:`agentkit.stats.summarize` of the records written, with what was resumed past."""
        return summarize(self.records) | {"resumed_past": self.skipped, "interrupted": self.interrupted}


def run_batch(
    target: Any,
    items: Iterable[Item],
    out: Path | None,
    *,
    stream: TextIO | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    debug: bool = False,
) -> RunSummary:
    """Run ``target`` on every item not already in ``out``; each record is appended (and
    fsync'd) before the next item starts. Ctrl-C stops after writing what is done."""
    summary = RunSummary()
    done = completed_ids(out) if out is not None else set()
    sink: TextIO
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        sink = out.open("a", encoding="utf-8")
    else:
        sink = stream or sys.stdout
    seen: set[str] = set()
    try:
        for item in items:
            if item.id in done or item.id in seen:
                summary.skipped += item.id in done
                continue
            seen.add(item.id)
            record = run_one(target, item, debug=debug)
            sink.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            sink.flush()
            if out is not None:
                os.fsync(sink.fileno())
            summary.records.append(record)
            if on_record:
                on_record(record)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        if out is not None:
            sink.close()
    return summary


__all__ = [
    "Item",
    "RunSummary",
    "completed_ids",
    "iter_inputs",
    "load_records",
    "load_target",
    "nodes_of",
    "run_batch",
    "run_one",
]
