"""Node settings in a TOML file (``agentkit.toml``): tier ladder, policy, retrieval knobs.

Eval writes calibrated thresholds here and tuning names its tuned tier here; ``agentkit run``
and user code apply the file to their nodes::

    [nodes.spam]
    tiers = ["embedded:qwen2.5-0.5b", "embedded:qwen2.5-1.5b"]
    threshold = 0.93
    review_threshold = 0.97
    calibration = "eval/calibration.json"   # relative to this file

    [nodes.spam.task]
    k = 2

A file can replace a node's ladder, and so decide where its inputs are sent. :func:`apply` says, for
each node, which tiers the file replaced; a file that was found rather than named (``explicit=False``:
``./agentkit.toml`` picked up by ``agentkit run``) may not send inputs off this machine — a server, vLLM
or API tier whose host is not a loopback address is refused until the file is named explicitly.

:func:`save` rewrites only the ``[nodes.NAME]`` and ``[nodes.NAME.task]`` tables of the nodes it saves;
every other line of the file (comments, other tables, ``pyproject.toml``'s own) stays byte for byte.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agentkit.backends.spec import TierSpec
from agentkit.errors import ConfigError
from agentkit.node import Node
from agentkit.policy import Policy
from agentkit.tier import Tier

__all__ = [
    "apply",
    "configured",
    "load",
    "node_settings",
    "off_machine",
    "save",
    "save_threshold",
    "tier_setting",
]

_POLICY_FIELDS = {f.name for f in dataclasses.fields(Policy)}


def tier_setting(tier: Tier) -> str | dict[str, Any]:
    """A tier as a config file writes it: its spec, or a table when it has task settings of its own."""
    return {"spec": tier.spec, "task": dict(tier.task)} if tier.task else tier.spec


def node_settings(node: Node) -> dict[str, Any]:
    """What a config file records for ``node``."""
    policy = {k: v for k, v in dataclasses.asdict(node.policy).items() if v is not None}  # None: no TOML form
    out: dict[str, Any] = {"tiers": [tier_setting(t) for t in node.tiers], **policy}
    task = {k: getattr(node.task, k) for k in sorted(node.task.knobs) if getattr(node.task, k, None) is not None}
    if all(word == label for label, word in task.get("verbalizer", {}).items()):
        task.pop("verbalizer", None)  # labels written as themselves: the default, not worth a line
    if task:
        out["task"] = task
    if node.calibration is not None and node.calibration.source is not None:
        out["calibration"] = str(node.calibration.source)
    return out


# ---- reading ----------------------------------------------------------------------------


def load(path: str | Path, *, explicit: bool = True) -> dict[str, dict[str, Any]]:
    """``{node name: settings}`` from a TOML file; unknown keys, bad tier specs and bad policy values
    are a :class:`ConfigError` naming the file and the node, not ignored. ``explicit=False`` (a file
    found, not named by the user): a tier that sends inputs off this machine (:func:`off_machine`) is
    refused too."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    nodes = data.get("nodes", {})
    if not isinstance(nodes, dict):
        raise ConfigError(f"{path}: 'nodes' must be a table of node tables, e.g. [nodes.spam]")
    for name, settings in nodes.items():
        if not isinstance(settings, dict):
            raise ConfigError(f"{path}: node {name!r} must be a table ([nodes.{_key(name)}])")
        unknown = set(settings) - _POLICY_FIELDS - {"tiers", "task", "calibration"}  # the task checks its own
        if unknown:
            raise ConfigError(f"{path}: node {name!r} has unknown settings {sorted(unknown)}")
        _check_policy(path, name, settings)
        if "calibration" in settings:  # a file named relative to the config file
            settings["calibration"] = str((Path(path).parent / str(settings["calibration"])).resolve())
        for spec in _specs(path, name, settings):
            where = off_machine(spec)
            if where and not explicit:
                raise ConfigError(
                    f"{path} was found, not named, and sets node {name!r} to send its inputs to {where}"
                    f" ({spec.redacted()}), off this machine; such a file is not applied",
                    hint=f"if you mean it, name the file: --config {path}",
                )
    return dict(nodes)


def _check_policy(path: str | Path, name: str, settings: Mapping[str, Any]) -> None:
    policy = {k: v for k, v in settings.items() if k in _POLICY_FIELDS}
    try:
        Policy(**policy)
    except (ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: node {name!r}: {e}") from e


def _specs(path: str | Path, name: str, settings: Mapping[str, Any]) -> list[TierSpec]:
    """The specs of the tiers the file gives the node (none when it keeps the node's own)."""
    if "tiers" not in settings:
        return []
    tiers = settings["tiers"]
    if not isinstance(tiers, list) or not tiers:
        raise ConfigError(f"{path}: node {name!r}: tiers must be a non-empty list of tier specs")
    specs = []
    for tier in tiers:
        text = tier.get("spec") if isinstance(tier, dict) else tier
        try:
            specs.append(TierSpec.parse(text))  # type: ignore[arg-type]  # parse says what is wrong with a non-string
        except ConfigError as e:
            raise ConfigError(f"{path}: node {name!r}: {e}") from e
    return specs


def off_machine(spec: TierSpec) -> str | None:
    """The host a tier sends its inputs to when that host is not this machine (a server, vLLM or API
    tier whose URL's host is not a loopback address; an ``api:`` tier with no ``base_url`` goes to
    OpenAI); ``None`` for a tier on this machine."""
    if spec.kind in ("server", "vllm"):
        url = spec.target
    elif spec.kind == "api":
        url = spec.text("base_url") or "https://api.openai.com/v1"
    else:
        return None
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        host = ""
    if host == "localhost" or host.endswith(".localhost"):
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return host or url


# ---- applying ---------------------------------------------------------------------------


def configured(node: Node, settings: Mapping[str, Any]) -> Node:
    """A new node: ``node`` with ``settings`` (one node's table of a config file) applied. The task is
    built again through its constructor (:meth:`~agentkit.task.Task.variant`), never changed in place."""
    policy = {k: v for k, v in settings.items() if k in _POLICY_FIELDS}
    try:
        tiers = [Tier.parse(t) for t in settings["tiers"]] if "tiers" in settings else node.tiers
        task = node.task.variant(**settings.get("task", {}))
        # a new ladder drops a calibration fitted on the old one, unless the file gives one
        calibration = settings.get("calibration", None if "tiers" in settings else node.calibration)
        return node.replace(
            task=task, tiers=tiers, policy=dataclasses.replace(node.policy, **policy), calibration=calibration
        )
    except (ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"node {node.name!r}: {e}") from e


def apply(path: str | Path, nodes: Iterable[Node], *, explicit: bool = True) -> list[str]:
    """Configure ``nodes`` (matched by name) from the file. Returns one line per node configured: its
    name, and the tiers it had and has when the file replaced its ladder (credentials shown as ``***``),
    e.g. ``spam (tiers embedded:qwen2.5-0.5b -> server:http://127.0.0.1:8000/v1)``. ``explicit``: the
    user named the file (see :func:`load`). Each node takes on the settings of :func:`configured` as one
    whole (a compiled graph holds its node objects, so they are updated rather than replaced); tasks
    and tiers are never changed in place."""
    config = load(path, explicit=explicit)
    done = []
    for node in nodes:
        if node.name in config:
            try:
                new = configured(node, config[node.name])
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from e
            before, after = _shown(node.tiers), _shown(new.tiers)
            node.adopt(new)
            done.append(node.name if before == after else f"{node.name} (tiers {before} -> {after})")
    return done


def _shown(tiers: Iterable[Tier]) -> str:
    return ", ".join(t.shown_spec for t in tiers)


# ---- writing ----------------------------------------------------------------------------


def save_threshold(
    path: str | Path,
    node: Node,
    threshold: float,
    *,
    review_threshold: float | None = None,
    calibration: str | Path | None = None,
) -> dict[str, Any]:
    """Write ``node``'s settings with ``threshold`` (a calibrated one, from ``agentkit eval``), and the
    review bar and calibration file it was chosen with (the file named relative to ``path``; none: the
    threshold is on raw confidences, and no calibration is written); returns them."""
    settings = node_settings(node) | {"threshold": threshold}
    for chosen in ("calibration", "review_threshold"):  # chosen together with the threshold, or not at all
        settings.pop(chosen, None)
    if review_threshold is not None:
        settings["review_threshold"] = review_threshold
    if calibration is not None:
        settings["calibration"] = str(Path(calibration).resolve())
    save(path, {node.name: settings})
    return settings


def save(path: str | Path, nodes: Iterable[Node] | Mapping[str, Mapping[str, Any]]) -> None:
    """Write (or update) the settings of ``nodes`` in the file. Only their ``[nodes.NAME]`` and
    ``[nodes.NAME.task]`` tables are rewritten, in place (new ones at the end); every other line, comment
    and table stays as it was, byte for byte. The file is replaced in one step, and only when the result
    reads back as what was saved (a node written another way, e.g. as a key of a ``[nodes]`` table, is a
    :class:`ConfigError` and the file is left alone)."""
    path = Path(path)
    new = nodes if isinstance(nodes, Mapping) else {n.name: node_settings(n) for n in nodes}
    new = {name: _relative_calibration(path, settings) for name, settings in new.items()}
    try:
        text = path.read_bytes().decode("utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    _parse(path, text)  # nothing is written into a file that is not TOML
    newline = "\r\n" if "\r\n" in text else "\n"
    for name, settings in new.items():
        text = _replace_node(text, name, settings, newline)
    written = _parse(path, text).get("nodes", {})
    for name, settings in new.items():
        if written.get(name) != tomllib.loads(_node_tables(name, settings, "\n"))["nodes"][name]:
            raise ConfigError(
                f"cannot update node {name!r} in {path}: it is written there in a form this writer does not edit",
                hint=f"write it as [nodes.{_key(name)}] and [nodes.{_key(name)}.task] tables",
            )
    _write(path, text)


def _relative_calibration(path: Path, settings: Mapping[str, Any]) -> Mapping[str, Any]:
    """``settings`` with its calibration file named relative to the config file at ``path`` (as it is read)."""
    if "calibration" not in settings:
        return settings
    where = os.path.relpath(Path(settings["calibration"]).resolve(), path.resolve().parent)
    return {**settings, "calibration": Path(where).as_posix()}


def _parse(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"cannot update config {path}: {e}") from e


def _write(path: Path, text: str) -> None:
    """``text`` in place of the file in one step (a crash leaves the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _node_tables(name: str, settings: Mapping[str, Any], newline: str) -> str:
    """The ``[nodes.NAME]`` table (and ``[nodes.NAME.task]``) for ``settings``, ending with a newline."""
    lines = [f"[nodes.{_key(name)}]"]  # a None (a setting left at its default) has no TOML form: not written
    lines += [f"{_key(k)} = {_value(v)}" for k, v in settings.items() if k != "task" and v is not None]
    if settings.get("task"):
        lines += ["", f"[nodes.{_key(name)}.task]"]
        lines += [f"{_key(k)} = {_value(v)}" for k, v in settings["task"].items() if v is not None]
    return newline.join(lines) + newline


def _replace_node(text: str, name: str, settings: Mapping[str, Any], newline: str) -> str:
    """``text`` with node ``name``'s two tables replaced by ``settings`` (appended if it has none)."""
    lines = text.splitlines(keepends=True)
    sections = _sections(lines)
    ours = [i for i, (_, _, key) in enumerate(sections) if key in (("nodes", name), ("nodes", name, "task"))]
    body = _node_tables(name, settings, newline)
    if not ours:
        if text and not text.endswith(("\n", "\r")):
            text += newline
        if text.strip() and not text.endswith(newline * 2):
            text += newline
        return text + body
    out: list[str] = []
    for i, (start, end, _) in enumerate(sections):
        if i not in ours:
            out += lines[start:end]
            continue
        if i == ours[0]:
            out.append(body)
        tail = _tail(lines[start + 1 : end])  # comments and blank lines after its last setting
        if any(line.strip() for line in tail) or i == ours[-1]:
            out += tail
    return "".join(out)


def _tail(lines: list[str]) -> list[str]:
    n = len(lines)
    while n and (not lines[n - 1].strip() or lines[n - 1].lstrip().startswith("#")):
        n -= 1
    return lines[n:]


def _sections(lines: list[str]) -> list[tuple[int, int, tuple[str, ...] | None]]:
    """The file as ``(first line, end line, table key)`` runs: what comes before the first table header
    (key ``None``), then each table from its header to the next. A line is a header only outside a
    string or a value spanning lines (an array), so a ``[...]`` line inside one is never taken for one.
    An array of tables' header (``[[...]]``) has the key ``None``: it is never rewritten."""
    starts: list[tuple[int, tuple[str, ...] | None]] = [(0, None)]
    string: str | None = None  # the delimiter of a multi-line string open at this line's start
    depth = 0  # brackets open at this line's start
    for i, line in enumerate(lines):
        if string is None and depth == 0 and line.lstrip().startswith("["):
            starts.append((i, _header_key(line)))
            continue
        string, depth = _scan(line, string, depth)
    bounds = [s for s, _ in starts[1:]] + [len(lines)]
    return [(s, e, key) for (s, key), e in zip(starts, bounds, strict=True) if e > s or s == 0]


def _header_key(line: str) -> tuple[str, ...] | None:
    """``("nodes", "spam")`` for ``[nodes.spam]`` (any quoting, a comment after it); ``None`` otherwise."""
    if line.lstrip().startswith("[["):
        return None
    try:
        table: Any = tomllib.loads(line)
    except tomllib.TOMLDecodeError:
        return None
    key: list[str] = []
    while isinstance(table, dict) and len(table) == 1:
        ((part, table),) = table.items()
        key.append(part)
    return tuple(key) if table == {} and key else None


_STRING_START = re.compile(r'"""|\'\'\'|"|\'|#|[\[\]{}]')


def _scan(line: str, string: str | None, depth: int) -> tuple[str | None, int]:
    """The multi-line string and bracket depth open after ``line``, given those open before it."""
    i = 0
    while i < len(line):
        if string is not None:  # inside a multi-line string: find its end
            j = i
            while True:
                j = line.find(string, j)
                if j < 0:
                    return string, depth
                if string == "'''" or not _escaped(line, j):
                    break
                j += 1
            i, string = j + 3, None
            continue
        m = _STRING_START.search(line, i)
        if m is None:
            break
        token, i = m.group(), m.end()
        if token == "#":
            break
        if token in ('"""', "'''"):
            string = token
        elif token in ('"', "'"):
            j = i
            while j < len(line) and (line[j] != token or (token == '"' and _escaped(line, j))):
                j += 1
            i = j + 1
        else:
            depth += 1 if token in "[{" else -1
    return string, max(depth, 0)


def _escaped(line: str, j: int) -> bool:
    """The character at ``j`` follows an odd number of backslashes (in a basic string)."""
    n = 0
    while j - n - 1 >= 0 and line[j - n - 1] == "\\":
        n += 1
    return n % 2 == 1


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else _value(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if c < " " or c == "\x7f" else c) for c in v) + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(str(k))} = {_value(x)}" for k, x in v.items()) + " }"
    raise ConfigError(f"cannot write {type(v).__name__} to a config file")
