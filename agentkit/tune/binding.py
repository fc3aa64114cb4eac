"""A tuned model and its node: which tier a tuning replaces (the node's first llama.cpp tier) and
the GGUF model it starts from, the task settings the tuned tier is trained and served with, and —
from a finished :func:`~agentkit.tune.train` folder — the tuned tier, in place of the stock one or
beside it for a side-by-side evaluation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agentkit.backends.spec import TierSpec
from agentkit.errors import ConfigError
from agentkit.node import Node
from agentkit.task import Task
from agentkit.tasks.grounded import GroundedAnswer
from agentkit.tier import Tier
from agentkit.tune.convert import merge_to_gguf
from agentkit.tune.training import TuneConfig

__all__ = ["NodeTuning", "base_model", "bind", "comparison", "node_tuning", "tunable_tier", "tuned_tier"]

_READER_MAX_LEN = 768
"""Prompt + reply tokens per example for a reader: its prompt holds a passage."""


@dataclass(frozen=True)
class NodeTuning:
    """What tuning a node trains and how the result takes the stock tier's place (:func:`node_tuning`)."""

    node: Node
    tier_index: int
    """The tier the tuned model replaces: the node's first llama.cpp tier (:func:`tunable_tier`)."""
    base: Path
    """The GGUF file that tier serves: what training starts from (:func:`base_model`)."""
    task: Task
    """The node's task with ``task_settings`` applied: the prompts the tuned tier is trained on and sent."""
    task_settings: dict[str, Any]
    max_len: int
    """Prompt + reply tokens per example that suit the task (:attr:`TuneConfig.max_len`)."""

    @property
    def stock_spec(self) -> str:
        return str(self.node.tiers[self.tier_index].spec)

    def binding(self) -> dict[str, Any]:
        """:func:`~agentkit.tune.train`'s ``bind``: kept in ``tune.json`` for :func:`tuned_tier` and :func:`bind`."""
        return {"tier_index": self.tier_index, "stock_spec": self.stock_spec, "task": dict(self.task_settings)}


def node_tuning(node: Node, **knobs: Any) -> NodeTuning:
    """How to tune ``node``'s small tier, its tuned tier running with the task ``knobs`` (e.g. ``k=0``)
    the task has. A :class:`~agentkit.GroundedAnswer` reader keeps its task as it is (its ``k`` is
    passages retrieved) and gets longer examples."""
    index = tunable_tier(node)
    base = base_model(node.tiers[index].spec)
    reader = isinstance(node.task, GroundedAnswer)
    settings = {} if reader else {key: v for key, v in knobs.items() if hasattr(node.task, key)}
    max_len = _READER_MAX_LEN if reader else TuneConfig().max_len
    return NodeTuning(node, index, base, node.task.variant(**settings), settings, max_len)


def base_model(tier_spec: str | TierSpec) -> Path:
    """The GGUF file behind a llama.cpp tier spec (``embedded:NAME`` or ``gguf:PATH``): what tuning starts from."""
    spec = TierSpec.parse(tier_spec) if isinstance(tier_spec, str) else tier_spec
    if spec.kind == "embedded":
        from agentkit.embedded import model_path

        return model_path(spec.target)
    if spec.model_file is not None:
        return spec.model_file
    raise ConfigError(
        f"cannot tune tier {str(tier_spec)!r}: tuning starts from a GGUF model",
        hint="tune an embedded:NAME or gguf:PATH tier",
    )


def tunable_tier(node: Node) -> int:
    """Index of the node's first llama.cpp tier (a ``knn`` or ``rules`` rung before it is skipped)."""
    for i, tier in enumerate(node.tiers):
        spec = _spec_of(tier)
        if spec is not None and spec.kind in ("embedded", "gguf"):
            return i
    raise ConfigError(f"node {node.name!r} has no embedded:/gguf: tier to tune")


def tuned_tier(
    out: str | Path, *, engine: Literal["llamacpp", "hf", "vllm-offline"] = "llamacpp", merged: bool = True
) -> Tier:
    """The tuned model in ``out`` (a :func:`train` folder) as a tier: through llama.cpp (as served)
    the merged model (``merged.gguf``, written from the adapter if missing: :func:`merge_to_gguf`)
    or, ``merged=False``, the GGUF LoRA on the original quantized model; or the peft adapter
    through transformers or in-process vLLM (``enable_lora``). A vLLM *server* serves the same
    adapter folder with ``--enable-lora --lora-modules NAME=ADAPTER_DIR``; its tier is then
    ``vllm:URL?model=NAME``."""
    out = Path(out).resolve()
    meta = _tune_meta(out)
    stock = TierSpec.parse(meta["bind"]["stock_spec"])
    if engine == "llamacpp":
        if not meta.get("adapter_gguf"):
            raise ConfigError(f"{out} has no adapter.gguf", hint="train with gguf=True")
        if merged:
            path = out / "merged.gguf"
            if not path.is_file():
                merge_to_gguf(meta["adapter_gguf"], base_model(stock), path)
            spec = TierSpec("gguf", str(path), stock.options)
        else:
            spec = stock.replace(adapter=meta["adapter_gguf"])
    elif engine in ("hf", "vllm-offline"):
        model = stock.target if stock.kind == "embedded" else str(base_model(stock))
        spec = TierSpec(engine, model, (("adapter", meta["adapter"]),))
    else:
        raise ConfigError(f"unknown engine {engine!r} for a tuned tier", hint="llamacpp, hf or vllm-offline")
    return Tier(str(spec), task=dict(meta["bind"].get("task", {})), name=f"tuned:{out.name}")


def bind(node: Node, out: str | Path, *, merged: bool = True) -> Node:
    """A new node: ``node`` with the tuned model in ``out`` in place of the stock tier it was trained from
    (without the node's calibration, which was fitted on the stock tier: fit one again with ``agentkit eval``)."""
    index = _stock_index(node, _tune_meta(Path(out)), " to replace")
    tiers = list(node.tiers)
    tiers[index] = tuned_tier(out, merged=merged)
    return node.replace(tiers=tiers, calibration=None)


def comparison(node: Node, out: str | Path, *, merged: bool = True) -> tuple[Node, dict[str, list[int]]]:
    """A copy of ``node`` whose ladder holds the stock *and* the tuned small tier, and the two
    sub-ladders to compare (``stock``, ``tuned``): each small tier under the same tiers above it,
    evaluated side by side in one :func:`~agentkit.eval.evaluate_node` run."""
    index = _stock_index(node, _tune_meta(Path(out)))
    tiers = [*node.tiers[: index + 1], tuned_tier(out, merged=merged), *node.tiers[index + 1 :]]
    twin = Node(node.task, tiers, node.policy, name=node.name)
    rest = list(range(index + 2, len(tiers)))
    below = list(range(index))
    return twin, {"stock": [*below, index, *rest], "tuned": [*below, index + 1, *rest]}


def _tune_meta(out: Path) -> dict[str, Any]:
    path = out / "tune.json"
    if not path.is_file():
        raise ConfigError(f"{out} is not a tuning folder (no tune.json)", hint="agentkit tune ... --out DIR")
    meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if not meta.get("bind", {}).get("stock_spec"):
        raise ConfigError(f"{path} does not say which tier it tunes")
    return meta


def _spec_of(tier: Tier) -> TierSpec | None:
    """A tier's parsed spec; None for a tier around a given engine, named freely."""
    try:
        return tier.parsed
    except ConfigError:
        return None


def _stock_index(node: Node, meta: dict[str, Any], purpose: str = "") -> int:
    """Where in ``node``'s ladder the stock tier of a tuning (its ``tune.json``: ``meta``) is."""
    index = int(meta["bind"]["tier_index"])
    stock = TierSpec.parse(meta["bind"]["stock_spec"])
    if index >= len(node.tiers) or _spec_of(node.tiers[index]) != stock:
        raise ConfigError(f"node {node.name!r} has no tier {meta['bind']['stock_spec']!r} at {index}{purpose}")
    return index
