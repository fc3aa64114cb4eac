"""Node settings in a TOML file (``agentkit.toml``): tier ladder, policy, retrieval knobs.

Eval writes calibrated thresholds here and tuning names its tuned tier here; ``agentkit run``
and user code apply the file to their nodes::

    [nodes.spam]
    tiers = ["embedded:qwen2.5-0.5b", "embedded:qwen2.5-1.5b"]
    threshold = 0.93

    [nodes.spam.task]
    k = 2
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agentkit.errors import ConfigError
from agentkit.node import Node
from agentkit.policy import Policy
from agentkit.tier import Tier

__all__ = ["apply", "configured", "load", "node_settings", "save", "save_threshold", "tier_setting"]

_POLICY_FIELDS = {f.name for f in dataclasses.fields(Policy)}


def tier_setting(tier: Tier) -> str | dict[str, Any]:
    """A tier as a config file writes it: its spec, or a table when it has task settings of its own."""
    return {"spec": tier.spec, "task": dict(tier.task)} if tier.task else tier.spec


def node_settings(node: Node) -> dict[str, Any]:
    """What a config file records for ``node``."""
    out: dict[str, Any] = {"tiers": [tier_setting(t) for t in node.tiers], **dataclasses.asdict(node.policy)}
    task = {k: getattr(node.task, k) for k in sorted(node.task.knobs) if getattr(node.task, k, None) is not None}
    if all(word == label for label, word in task.get("verbalizer", {}).items()):
        task.pop("verbalizer", None)  # labels written as themselves: the default, not worth a line
    if task:
        out["task"] = task
    return out


def load(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{node name: settings}`` from a TOML file; unknown keys are an error, not ignored."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    nodes = data.get("nodes", {})
    for name, settings in nodes.items():
        unknown = set(settings) - _POLICY_FIELDS - {"tiers", "task"}  # task settings are the task's to check
        if unknown:
            raise ConfigError(f"{path}: node {name!r} has unknown settings {sorted(unknown)}")
    return dict(nodes)


def configured(node: Node, settings: Mapping[str, Any]) -> Node:
    """A new node: ``node`` with ``settings`` (one node's table of a config file) applied. The task is
    built again through its constructor (:meth:`~agentkit.task.Task.variant`), never changed in place."""
    tiers = [Tier.parse(t) for t in settings["tiers"]] if "tiers" in settings else node.tiers
    policy = {k: v for k, v in settings.items() if k in _POLICY_FIELDS}
    try:
        task = node.task.variant(**settings.get("task", {}))
    except ConfigError as e:
        raise ConfigError(f"node {node.name!r}: {e}") from e
    return node.replace(task=task, tiers=tiers, policy=dataclasses.replace(node.policy, **policy))


def apply(path: str | Path, nodes: Iterable[Node]) -> list[str]:
    """Configure ``nodes`` (matched by name) from the file; returns the names configured. Each node takes
    on the settings of :func:`configured` as one whole (a compiled graph holds its node objects, so
    they are updated rather than replaced); tasks and tiers are never changed in place."""
    config = load(path)
    done = []
    for node in nodes:
        if node.name in config:
            node.adopt(configured(node, config[node.name]))
            done.append(node.name)
    return done


def save_threshold(path: str | Path, node: Node, threshold: float) -> dict[str, Any]:
    """Write ``node``'s settings with ``threshold`` (a calibrated one, from ``agentkit eval``); returns them."""
    settings = node_settings(node) | {"threshold": threshold}
    save(path, {node.name: settings})
    return settings


def save(path: str | Path, nodes: Iterable[Node] | Mapping[str, Mapping[str, Any]]) -> None:
    """Write (or update) the settings of ``nodes`` in the file, keeping other nodes' entries."""
    path = Path(path)
    existing = load(path) if path.exists() else {}
    new = nodes if isinstance(nodes, Mapping) else {n.name: node_settings(n) for n in nodes}
    existing.update({k: dict(v) for k, v in new.items()})
    lines: list[str] = []
    for name, settings in existing.items():
        lines.append(f"[nodes.{_key(name)}]")
        lines += [f"{_key(k)} = {_value(v)}" for k, v in settings.items() if k != "task"]
        if settings.get("task"):
            lines.append(f"\n[nodes.{_key(name)}.task]")
            lines += [f"{_key(k)} = {_value(v)}" for k, v in settings["task"].items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _value(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        escaped = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(str(k))} = {_value(x)}" for k, x in v.items()) + " }"
    raise ConfigError(f"cannot write {type(v).__name__} to a config file")
