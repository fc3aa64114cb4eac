"""Run a target — a :class:`~agentkit.node.Node` or a compiled LangGraph workflow — over many
inputs, writing one JSON line per input. Nothing is lost: every input ends as a result or a
failure record with its reason; a run that is killed (even with SIGKILL) and started again
with the same output file continues where it stopped, writing no input twice.

Each record carries a resume key: a hash of the input's content (for a whole file, also its name),
the target's name and configuration hash, and the input's occurrence number among identical
inputs — so a changed input runs again, repeated inputs are all kept, and the user's ``id`` is
only a field. Every record names the target and its configuration hash; an output file written
with another target or configuration is refused, as is a file that is not ``agentkit run``
output. The output file is locked while a run writes to it.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.util
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, TextIO

from agentkit.errors import AgentkitError, ConfigError
from agentkit.result import collect
from agentkit.stats import summarize

_SHIPPED = {"invoice": "workflows.invoice:graph", "email": "workflows.email:graph"}
"""Workflow names ``agentkit run`` knows; anything else is ``path/to/file.py:attribute``."""

_RECORD_START = b'{"key": "'
"""How every record begins (the key is its first field): a torn last line that begins so is a
record a killed run was writing, and is cut off; any other last line is left alone."""


@dataclass
class Item:
    """One input: its id (the user's, as given, or where it was read: ``path``, ``path:line``,
    ``stdin``), kept in its record, and its content, from which the resume key comes."""

    id: Any
    value: str | bytes | dict[str, Any]
    path: str | None = None


def _split_target(spec: str) -> tuple[str, str]:
    """A target spec as (where, attribute): a shipped workflow name resolved, else ``where:attr``."""
    spec = _SHIPPED.get(spec, spec)
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise ConfigError(f"cannot load {spec!r}", hint=f"one of {sorted(_SHIPPED)} or path/to/file.py:graph")
    return where, attr


def load_target(spec: str) -> Any:
    """A shipped workflow name, ``module.path:attr`` or ``path/to/file.py:attr`` (like langgraph.json)."""
    where, attr = _split_target(spec)
    if where.endswith(".py"):
        file = Path(where)
        if not file.is_file():
            raise ConfigError(f"no such file: {file}")
        module_spec = importlib.util.spec_from_file_location(file.stem, file)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules.setdefault(file.stem, module)
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise ConfigError(f"cannot load {file}: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise ConfigError(f"cannot import {where!r}: {type(e).__name__}: {e}") from e
    if not hasattr(module, attr):
        raise ConfigError(f"{where} has no attribute {attr!r}")
    target = getattr(module, attr)
    if callable(target) and not hasattr(target, "invoke") and not hasattr(target, "run"):
        try:
            return target()
        except Exception as e:
            raise ConfigError(f"{spec}: building the target failed: {type(e).__name__}: {e}") from e
    return target


@dataclass(frozen=True)
class TargetSource:
    """Where a target comes from: its spec (a shipped workflow, ``module:attr`` or an absolute
    ``file.py:attr``) and the node settings file applied to it, so that another process — a Ray
    actor on this machine or another — loads the same target with the same settings."""

    spec: str
    config: Path | None = None
    explicit: bool = True
    """Whether the user named the settings file (a file found in the working folder may only use
    tiers on this machine: :func:`agentkit.config.load`)."""

    @classmethod
    def find(cls, spec: str, config: str | Path | None = None) -> TargetSource:
        """The source of ``spec`` with ``config`` (default: ``./agentkit.toml`` when it exists), paths
        made absolute so they mean the same from any working folder."""
        where, attr = _split_target(spec)
        if where.endswith(".py"):
            spec = f"{Path(where).absolute()}:{attr}"
        found = Path("agentkit.toml") if config is None and Path("agentkit.toml").is_file() else None
        chosen = Path(config) if config is not None else found
        return cls(spec, chosen.absolute() if chosen is not None else None, explicit=config is not None)

    def load(self) -> tuple[Any, list[str]]:
        """The target with its node settings applied, and one line per node the settings changed
        (:func:`agentkit.config.apply`)."""
        from agentkit import config as node_config

        target = load_target(self.spec)
        if self.config is None:
            return target, []
        return target, node_config.apply(self.config, nodes_of(target), explicit=self.explicit)


def nodes_of(target: Any) -> list[Any]:
    """The agentkit :class:`~agentkit.node.Node` objects in ``target`` (a Node, or the nodes of a
    compiled LangGraph graph), so a config file can be applied to them."""
    from agentkit.node import Node

    if isinstance(target, Node):
        return [target]
    specs = getattr(getattr(target, "builder", None), "nodes", {}) or {}
    found = [getattr(spec.runnable, "func", None) for spec in specs.values()]
    return [f for f in found if isinstance(f, Node)]


def target_fingerprint(target: Any) -> tuple[str, str]:
    """The target's name and configuration hash, which every record of a run carries: a Node's own
    :meth:`~agentkit.node.Node.config_hash`; for a graph, a hash of its nodes (an agentkit node's
    configuration hash, any other node's function name) and its edges."""
    from agentkit.node import Node

    if isinstance(target, Node):
        return target.name, target.config_hash()
    builder = getattr(target, "builder", None)
    nodes: dict[str, str] = {}
    for name, spec in (getattr(builder, "nodes", None) or {}).items():
        runnable = getattr(spec, "runnable", None)
        func = getattr(runnable, "func", None) or getattr(runnable, "afunc", None)
        node = func if isinstance(func, Node) else getattr(func, "__self__", None)  # node.acall: its node
        if isinstance(node, Node):
            nodes[str(name)] = f"{node.name}@{node.config_hash()}"
        else:
            nodes[str(name)] = str(getattr(func, "__qualname__", None) or type(func).__name__)
    edges = sorted(str(e) for e in (getattr(builder, "edges", None) or ()))
    branches = sorted(f"{s}:{b}" for s, named in (getattr(builder, "branches", None) or {}).items() for b in named)
    blob = json.dumps({"nodes": nodes, "edges": edges, "branches": branches}, sort_keys=True, ensure_ascii=True)
    name = str(getattr(target, "name", None) or type(target).__name__)
    return name, hashlib.sha256(blob.encode()).hexdigest()[:16]


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


# ---- reading inputs ---------------------------------------------------------------------


def iter_inputs(specs: Sequence[str], stdin: IO[Any] | None = None) -> Iterator[Item]:
    """Items from files, folders (recursively, sorted), JSONL files (one item per record; ``input``
    and optional ``id``) and ``-`` (stdin: JSONL records, or else one input). An input that cannot
    be read is an item too, whose record is a failure with the reason."""
    for spec in specs:
        if spec == "-":
            yield from _stdin_items(stdin or sys.stdin)
            continue
        path = Path(spec)
        try:
            is_dir, is_file = path.is_dir(), path.is_file()
        except OSError as e:
            yield Item(spec, _InputErrorValue(f"cannot read {spec}: {e.strerror or e}", spec), spec)
            continue
        if is_dir:
            try:
                files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            except OSError as e:
                yield Item(spec, _InputErrorValue(f"cannot list {spec}: {e.strerror or e}", spec), spec)
                continue
            for f in files:
                yield from _file_items(f)
        elif is_file:
            yield from _file_items(path)
        else:
            yield Item(spec, _InputErrorValue(f"no such file or folder: {spec}", spec), spec)


class _InputErrorValue(str):
    """An input that could not be read; its text is the reason (recorded as a failure), ``content``
    what identifies the input (its path, or the line that is not a record)."""

    content: bytes

    def __new__(cls, reason: str, content: str | bytes) -> _InputErrorValue:
        value = super().__new__(cls, reason)
        value.content = content if isinstance(content, bytes) else _raw(content)
        return value

    def __reduce__(self) -> tuple[type[_InputErrorValue], tuple[str, bytes]]:  # pickled to other processes
        return (_InputErrorValue, (str(self), self.content))


def _file_items(path: Path) -> Iterator[Item]:
    if path.suffix.lower() == ".jsonl":
        yield from _jsonl_items(path)
        return
    try:
        data = path.read_bytes()
    except OSError as e:
        yield Item(str(path), _InputErrorValue(f"cannot read {path}: {e.strerror or e}", str(path)), str(path))
        return
    yield Item(str(path), data, str(path))


def _jsonl_items(path: Path) -> Iterator[Item]:
    n = 0
    try:
        with path.open("rb") as fh:
            for n, raw in enumerate(fh, 1):  # noqa: B007 - n is read after the loop
                if raw.strip():
                    yield _record_item(raw, n, str(path), f"{path}:{n}")
    except OSError as e:
        where = f" after line {n}" if n else ""
        reason = f"cannot read {path}{where}: {e.strerror or e}"
        yield Item(str(path), _InputErrorValue(reason, f"{path}\0{n}"), str(path))


def _record_item(raw: bytes, n: int, path: str | None, position: str) -> Item:
    """One JSONL line as an item: its ``input``, its ``id`` as given (a missing or null id: its position)."""
    try:
        rec = json.loads(raw)
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested too deep
        return Item(position, _InputErrorValue(f"line {n} is not JSON: {e}", raw), path)
    if not isinstance(rec, dict) or "input" not in rec:
        return Item(position, _InputErrorValue(f"line {n} has no 'input' field", raw), path)
    item_id = rec.get("id")
    return Item(position if item_id is None else item_id, rec["input"], path)


def _stdin_items(stream: IO[Any]) -> Iterator[Item]:
    """Stdin read as bytes (whatever the locale): JSONL records if every line is one, else one input
    (text, or bytes that are not UTF-8, which the target records as binary)."""
    buffer = getattr(stream, "buffer", None)
    try:
        data: str | bytes = buffer.read() if buffer is not None else stream.read()
    except (OSError, ValueError) as e:
        yield Item("stdin", _InputErrorValue(f"cannot read stdin: {e}", "stdin"))
        return
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            yield Item("stdin", data)
            return
    lines = [line for line in data.splitlines() if line.strip()]
    records: list[dict[str, Any]] = []
    for line in lines:
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            break
        if not isinstance(rec, dict) or "input" not in rec:
            break
        records.append(rec)
    if lines and len(records) == len(lines):
        for n, rec in enumerate(records, 1):
            yield Item(f"stdin:{n}" if rec.get("id") is None else rec["id"], rec["input"])
    else:
        yield Item("stdin", data)


# ---- resume keys ------------------------------------------------------------------------


def _raw(text: str) -> bytes:
    """Any str as bytes, lone surrogates (a file name that is not UTF-8) included."""
    return text.encode("utf-8", "surrogatepass")


def _content_digest(item: Item) -> str:
    """What identifies an input's content: its text, bytes (with the file's name, which a workflow
    reads the type from) or JSON value; for an unreadable input, its path or line."""
    h = hashlib.sha256()
    value = item.value
    if isinstance(value, _InputErrorValue):
        h.update(b"unreadable\0" + value.content)
    elif isinstance(value, bytes):
        h.update(b"file\0" + _raw(Path(item.path).name if item.path else "") + b"\0" + value)
    elif isinstance(value, str):
        h.update(b"text\0" + _raw(value))
    else:
        try:
            blob = json.dumps(value, sort_keys=True, ensure_ascii=True, default=repr)
        except (TypeError, ValueError):  # keys that are not strings, a circular value
            blob = repr(value)
        h.update(b"json\0" + _raw(blob))
    return h.hexdigest()


def resume_keys(items: Sequence[Item], name: str, config_hash: str) -> list[str]:
    """Each item's resume key: its content, the target's name and configuration hash, and its
    occurrence number among identical inputs (so that repeated inputs are each kept)."""
    seen: Counter[str] = Counter()
    keys = []
    for item in items:
        digest = _content_digest(item)
        blob = _raw(f"{name}\0{config_hash}\0{digest}\0{seen[digest]}")
        seen[digest] += 1
        keys.append(hashlib.sha256(blob).hexdigest()[:32])
    return keys


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
                input_id = None if item.id is None else str(item.id)
                result = target.run(_as_text(item.value), input_id=input_id)
                record |= {
                    "ok": result.ok,
                    "status": result.status,
                    "value": result.value,
                    "tier": result.tier,
                    "confidence": result.confidence,
                    "accepted": result.accepted,
                    "reason": result.reason,
                }
            elif hasattr(target, "invoke"):  # a compiled LangGraph graph
                state = target.invoke({"input": item.value, "source": item.path or str(item.id)})
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
    """A workflow reports ``output`` and, optionally, ``ok``/``status``/``reason`` in its final state.
    Without ``ok`` or ``status`` it succeeded if it set an ``output``; a graph that set nothing failed."""
    if not isinstance(state, dict):
        state = dict(state)
    ok = state.get("ok")
    reason = state.get("reason", "")
    if ok is None and "status" in state:
        ok = state["status"] not in ("failed", "error")
    if ok is None:
        ok = state.get("output") is not None
        if not ok:
            others = sorted(str(k) for k, v in state.items() if k not in ("input", "source") and v is not None)
            reason = f"the graph set no 'output' (it set {', '.join(others)})" if others else "the graph set nothing"
    return {"ok": bool(ok), "status": state.get("status"), "value": state.get("output"), "reason": reason}


def encode_record(record: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The record and its JSON line. A record that cannot be written as JSON (keys that are not
    strings, a circular value) becomes a failure record saying so; text that is not valid UTF-8
    (a lone surrogate in an id or a file name) is written escaped, so the line is always UTF-8."""
    try:
        text = json.dumps(record, ensure_ascii=False, default=str)
    except Exception as e:
        record = _unwritable(record, f"{type(e).__name__}: {e}")
        text = json.dumps(record, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(record, ensure_ascii=True, default=str)
    return record, text + "\n"


def _unwritable(record: dict[str, Any], why: str) -> dict[str, Any]:
    failure: dict[str, Any] = {"key": record["key"], "id": record.get("id")}
    try:
        json.dumps(failure, default=str)
    except Exception:
        failure["id"] = repr(failure["id"])
    failure |= {"ok": False, "reason": f"the result cannot be written as JSON ({why})"[:2000]}
    for k in ("escalated", "cost_usd", "latency_s", "target", "config_hash"):
        if k in record:
            failure[k] = record[k]
    return failure


# ---- the output file and the resumable run ----------------------------------------------


def _parse(line: bytes) -> dict[str, Any] | None:
    """A line of an output file as a record (a JSON object with a resume key), or None."""
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("key"), str) else None


class Checkpoint:
    """The output file of a run, held while the run writes: locked (a second run on it fails
    clearly), checked (each line a record of this target and configuration, else it is refused),
    a torn last record (a killed run's) cut off, then appended to, each record fsync'd.
    ``last`` maps each key in the file to whether its last record succeeded."""

    def __init__(self, path: str | Path, name: str, config_hash: str) -> None:
        self.path = Path(path)
        self.name = name
        self.config_hash = config_hash
        self.last: dict[str, bool] = {}
        self._fh: BinaryIO | None = None

    def __enter__(self) -> Checkpoint:
        self.open()
        return self

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        path = self.path
        if path.is_dir():
            raise ConfigError(f"cannot write results to {path}: it is a folder", hint="give a file, e.g. out.jsonl")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = path.open("a+b")
        except OSError as e:
            raise ConfigError(f"cannot open {path}: {e.strerror or e}") from e
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            fh.close()
            if isinstance(e, BlockingIOError):
                raise ConfigError(
                    f"{path} is being written by another agentkit run",
                    hint="wait for it to finish, or give another --out",
                ) from None
            raise ConfigError(f"cannot lock {path}: {e.strerror or e}") from e
        try:
            self._read(fh)
        except BaseException:
            fh.close()
            raise
        self._fh = fh

    def _read(self, fh: BinaryIO) -> None:
        fh.seek(0)
        end, tail, n = 0, b"", 0
        for n, line in enumerate(fh, 1):  # noqa: B007 - n is read after the loop
            if not line.endswith(b"\n"):
                tail = line
                break
            end += len(line)
            if line.strip():
                self._take(line, n)
        if not tail:
            return
        if _parse(tail) is None:
            if tail.strip() and not (tail.startswith(_RECORD_START) or _RECORD_START.startswith(tail.strip())):
                self._take(tail, n)  # refused: not agentkit run output
            fh.truncate(end)  # the record a killed run was writing: that input runs again
        else:
            self._take(tail, n)
            fh.write(b"\n")  # a whole record that only lacks its newline is kept
        fh.flush()
        os.fsync(fh.fileno())

    def _take(self, line: bytes, n: int) -> None:
        rec = _parse(line)
        if rec is None:
            raise ConfigError(
                f"{self.path} is not agentkit run output (line {n} is not a record with a resume key)",
                hint="give another --out; nothing was written to this one",
            )
        if rec.get("target") != self.name or rec.get("config_hash") != self.config_hash:
            raise ConfigError(
                f"{self.path} holds results of {rec.get('target')!r} with config {rec.get('config_hash')}, "
                f"this run is {self.name!r} with config {self.config_hash}",
                hint="give another --out for these settings, or delete the file to start again",
            )
        self.last[rec["key"]] = bool(rec.get("ok"))

    def write(self, line: str) -> None:
        """Append one record's line (UTF-8) and fsync it."""
        assert self._fh is not None, "the checkpoint is not open"
        try:
            self._fh.write(line.encode("utf-8"))
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as e:
            raise AgentkitError(f"cannot write to {self.path}: {e.strerror or e}") from e

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the lock
            self._fh = None


@dataclass
class RunSummary:
    """What a run did: the records it wrote, the inputs it found already done (``skipped``; of them
    ``kept_failures`` had failed and were not retried), the earlier failures it ran again
    (``retried``) and the ids that more than one input share (``repeated_ids``)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    kept_failures: int = 0
    retried: int = 0
    repeated_ids: list[str] = field(default_factory=list)
    interrupted: bool = False

    def figures(self) -> dict[str, Any]:
        """:func:`agentkit.stats.summarize` of the records written, with what was resumed past."""
        return summarize(self.records) | {
            "resumed_past": self.skipped,
            "kept_failures": self.kept_failures,
            "retried": self.retried,
            "interrupted": self.interrupted,
        }


Executor = Callable[[Any, Sequence[tuple[str, Item]]], Iterable[dict[str, Any]]]
"""How a batch's inputs are run: given the target and the (resume key, input) pairs to run, it yields
one record per pair — ``{"key": key} | run_one(...)`` — in any order. A key may come back more than
once (a distributed executor retries the work of a worker that died): the first record counts. A key
that never comes back gets a failure record. :func:`run_locally` runs them one by one in this
process; :class:`agentkit.distributed.RayExecutor` runs them on a Ray cluster."""


def run_locally(target: Any, todo: Sequence[tuple[str, Item]], *, debug: bool = False) -> Iterator[dict[str, Any]]:
    """The default :data:`Executor`: each input in turn, in this process."""
    for key, item in todo:
        yield {"key": key} | run_one(target, item, debug=debug)


def run_batch(
    target: Any,
    items: Iterable[Item],
    out: Path | None,
    *,
    stream: TextIO | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
    retry_failed: bool = False,
    debug: bool = False,
    executor: Executor | None = None,
) -> RunSummary:
    """Run ``target`` on every item not already in ``out`` (matched by resume key); each record is
    appended (and fsync'd) as it comes. Inputs whose last record failed are kept as they are, or run
    again with ``retry_failed`` (the new record follows the old one, marked ``retried``; the last
    record of a key is the one that counts). ``on_plan`` is told how many inputs will run.
    ``executor`` (default: :func:`run_locally`) decides where they run. Ctrl-C stops after writing
    what is done."""
    items = list(items)
    name, config_hash = target_fingerprint(target)
    keys = resume_keys(items, name, config_hash)
    summary = RunSummary()
    ids = Counter(str(item.id) for item in items)
    summary.repeated_ids = [i for i, count in ids.items() if count > 1]
    checkpoint = Checkpoint(out, name, config_hash) if out is not None else None
    sink = stream or sys.stdout
    if checkpoint is not None:
        checkpoint.open()
    try:
        last = checkpoint.last if checkpoint is not None else {}
        todo: dict[str, Item] = {}
        for key, item in zip(keys, items, strict=True):
            if key in last and (last[key] or not retry_failed):
                summary.skipped += 1
                summary.kept_failures += not last[key]
                continue
            summary.retried += key in last
            todo[key] = item
        if on_plan:
            on_plan(len(todo))

        def write(record: dict[str, Any]) -> None:
            key = record["key"]
            record = record | {"target": name, "config_hash": config_hash}
            if key in last:
                record["retried"] = True
            record, line = encode_record(record)
            if checkpoint is not None:
                checkpoint.write(line)
                last[key] = bool(record["ok"])
            else:
                _write_text(sink, line, record)
            summary.records.append(record)
            if on_record:
                on_record(record)

        records: Iterable[dict[str, Any]]
        if executor is None:
            records = run_locally(target, list(todo.items()), debug=debug)
        else:
            records = executor(target, list(todo.items()))
        for record in records:
            if record.get("key") not in todo:
                continue  # a second record of an input whose worker died and was retried: the first counts
            del todo[record["key"]]
            write(record)
        for key, item in list(todo.items()):  # nothing came back for these: a record says so
            reason = "no result came back for this input from the worker that ran it (see the cluster's logs)"
            write({"key": key, "id": item.id, "ok": False, "reason": reason, "cost_usd": 0.0, "latency_s": 0.0})
            del todo[key]
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        if checkpoint is not None:
            checkpoint.close()
    return summary


def _write_text(sink: TextIO, line: str, record: dict[str, Any]) -> None:
    """A record on a text stream (stdout), escaped to ASCII where the stream cannot encode it."""
    try:
        sink.write(line)
    except UnicodeEncodeError:
        sink.write(json.dumps(record, ensure_ascii=True, default=str) + "\n")
    sink.flush()


__all__ = [
    "Checkpoint",
    "Executor",
    "Item",
    "RunSummary",
    "TargetSource",
    "encode_record",
    "iter_inputs",
    "load_records",
    "load_target",
    "nodes_of",
    "resume_keys",
    "run_batch",
    "run_locally",
    "run_one",
    "target_fingerprint",
]
