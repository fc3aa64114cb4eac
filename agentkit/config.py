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
from agentkit.task import TASK_KNOBS
from agentkit.tier import Tier

__all__ = ["TASK_KNOBS", "apply", "load", "node_settings", "save", "tier_setting"]

_POLICY_FIELDS = {f.name for f in dataclasses.fields(Policy)}


def tier_setting(tier: Tier) -> str | dict[str, Any]:
    """A tier as a config file writes it: its spec, or a table when it has task settings of its own."""
    return {"spec": tier.spec, "task": dict(tier.task)} if tier.task else tier.spec


def node_settings(node: Node) -> dict[str, Any]:
    """What a config file records for ``node``."""
    out: dict[str, Any] = {"tiers": [tier_setting(t) for t in node.tiers], **dataclasses.asdict(node.policy)}
    task = {k: getattr(node.task, k) for k in TASK_KNOBS if getattr(node.task, k, None) is not None}
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
        unknown = set(settings) - _POLICY_FIELDS - {"tiers", "task"}
        unknown |= {f"task.{k}" for k in settings.get("task", {}) if k not in TASK_KNOBS}
        if unknown:
            raise ConfigError(f"{path}: node {name!r} has unknown settings {sorted(unknown)}")
    return nodes


def apply(path: str | Path, nodes: Iterable[Node]) -> list[str]:
    """Configure ``nodes`` (matched by name) from the file; returns the names configured."""
    config = load(path)
    done = []
    for node in nodes:
        settings = config.get(node.name)
        if settings is None:
            continue
        if "tiers" in settings:
            node.tiers = [Tier.parse(t) for t in settings["tiers"]]
        policy = {k: v for k, v in settings.items() if k in _POLICY_FIELDS}
        if policy:
            node.policy = dataclasses.replace(node.policy, **policy)
        for knob, value in settings.get("task", {}).items():
            if not hasattr(node.task, knob):
                raise ConfigError(f"node {node.name!r}: its task has no setting {knob!r}")
            setattr(node.task, knob, value)
        if settings.get("task"):
            node.task._forget()
        done.append(node.name)
    return done


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
