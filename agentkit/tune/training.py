"""LoRA training: a peft adapter for a GGUF model's weights (dequantized once to fp32), trained on a
:class:`~agentkit.tune.TrainingSet` with the loss on the reply tokens only, checkpointed as it goes
(interrupt and rerun: it resumes), saved with its training config, data hash and metrics, and
converted for llama.cpp. torch, transformers and peft are imported inside the functions."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from agentkit.embedded import sha256_file
from agentkit.errors import ConfigError, ModelUnavailableError
from agentkit.tune.batches import encode_examples, epoch_order, pack, packed_reply_loss
from agentkit.tune.convert import adapter_to_gguf, merge_to_gguf
from agentkit.tune.examples import TrainingSet

__all__ = ["TuneConfig", "TuneReport", "learning_rate_factor", "lora_config", "peak_rss_gb", "train"]


@dataclass(frozen=True)
class TuneConfig:
    """LoRA settings. The defaults tune a classification node's 0.5B tier in at most 30 minutes on 2
    CPU cores (200 steps of 8 short prompts; Banking77 queries measured at 7.6 s a step, each batch
    packed into one sequence with its shared prompt prefix once — 14.3 s padded, 18.9 s with the
    output layer on every position: ``bench/tune_step.py``; ``minutes`` stops earlier and keeps the
    adapter) in ~6 GB (fp32)."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    layers: int | None = None
    """Adapt only the last ``layers`` decoder layers (None: all). The layers below then need no
    backward pass, so a step costs less (``bench/tune_step.py --layers``)."""
    steps: int = 200
    batch: int = 8
    lr: float = 1e-3
    max_len: int = 256
    """Prompt + reply tokens; longer examples are left out (counted)."""
    warmup: int = 10
    batch_by_prompt: bool = True
    """Batch examples whose prompts agree up to the input (a reader's passage) together (the order is
    random otherwise), so a packed batch computes that part once; a classifier's prompts without
    retrieved examples all agree, so its batches stay fully random."""
    schedule: Literal["linear", "constant"] = "linear"
    """After the warm-up: decay the rate linearly to zero by the end of the steps or the time budget."""
    seed: int = 0
    save_every: int = 20
    threads: int | None = None
    minutes: float | None = 30.0
    """Time budget for the training steps (summed over resumed runs): stop there and keep the adapter."""


@dataclass
class TuneReport:
    adapter: str
    adapter_gguf: str | None
    steps: int
    """Steps taken (fewer than ``config.steps`` when the time budget ran out)."""
    examples: int
    left_out_too_long: int
    losses: list[float]
    seconds: float
    s_per_step: float
    peak_rss_gb: float
    resumed_from: int
    data_sha256: str
    base: str
    base_sha256: str
    config: dict[str, Any]
    counts: dict[str, int]
    bind: dict[str, Any] = field(default_factory=dict)
    """How the tuned model takes its place in the node: the stock tier's index and spec, and the
    task settings the model was trained with (:func:`tuned_tier`, :func:`bind`)."""


def _require_training() -> Any:
    try:
        import peft
        import torch
        import transformers
    except ImportError as e:
        raise ModelUnavailableError(
            f"tuning needs torch, transformers and peft ({e.name} is missing)", hint="pip install 'agentkit[hf]'"
        ) from e
    return torch, transformers, peft


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def train(
    data: TrainingSet,
    base: str | Path,
    out: str | Path,
    config: TuneConfig = TuneConfig(),
    *,
    on_step: Callable[[int, int, float], None] | None = None,
    gguf: bool = True,
    bind: Mapping[str, Any] | None = None,
) -> TuneReport:
    """Train a LoRA adapter for the model file ``base`` (a GGUF, dequantized to fp32) on ``data``;
    write ``out/adapter`` (peft), ``out/adapter.gguf`` (llama.cpp's LoRA), ``out/merged.gguf`` (the
    model with the adapter folded in) and ``out/tune.json``.

    ``out/checkpoint`` holds the adapter, optimizer and data order every ``save_every`` steps and on
    Ctrl-C; calling again with the same data and config resumes from it."""
    torch, transformers, peft = _require_training()
    base, out = Path(base), Path(out)
    if not data.examples:
        raise ConfigError("no training examples", hint="give labelled records or traces with escalations")
    if not base.is_file():
        raise ModelUnavailableError(f"base model not found: {base}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    from agentkit.backends.transformers_hf import dequantized

    folder = dequantized(base, "float32")  # converted once, cached: the same weights the hf tier loads
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    rows, groups, too_long = encode_examples(tok, data.examples, config.max_len)
    if not rows:
        raise ConfigError(f"every example is longer than max_len={config.max_len} tokens")
    lora = lora_config(peft, config, model.config.num_hidden_layers)
    fingerprint = {"data": data.digest(), "config": _resumable(asdict(config)), "base": base.name}
    ckpt = out / "checkpoint"
    state = _load_checkpoint(ckpt, fingerprint, torch)
    if state is not None:
        model = peft.PeftModel.from_pretrained(model, str(ckpt / "adapter"), is_trainable=True)
    else:
        model = peft.get_peft_model(model, lora)
    model.train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    rng = random.Random(config.seed)
    order: list[int] = []
    losses: list[float] = []
    step = 0
    spent = 0.0  # seconds of training steps in earlier runs of this checkpoint
    if state is not None:
        optim.load_state_dict(state["optim"])
        order, losses, step, spent = state["order"], state["losses"], state["step"], state.get("spent", 0.0)
        rng.setstate(state["rng"])
    resumed = step

    def save_checkpoint() -> None:
        tmp = out / "checkpoint.tmp"
        model.save_pretrained(str(tmp / "adapter"))
        torch.save(
            {"optim": optim.state_dict(), "order": order, "losses": losses,
             "step": step, "rng": rng.getstate(), "fingerprint": fingerprint,
             "spent": spent + time.perf_counter() - t_steps},
            tmp / "state.pt",
        )  # fmt: skip
        if ckpt.exists():
            import shutil

            shutil.rmtree(ckpt)
        tmp.rename(ckpt)

    budget = config.minutes * 60 if config.minutes else math.inf
    t_steps = time.perf_counter()
    try:
        while step < config.steps and spent + time.perf_counter() - t_steps < budget:
            if len(order) < config.batch:
                order += epoch_order(groups if config.batch_by_prompt else list(range(len(rows))), rng)
            picked, order = order[: config.batch], order[config.batch :]
            progress = max(step / config.steps, (spent + time.perf_counter() - t_steps) / budget)
            for group in optim.param_groups:
                group["lr"] = config.lr * learning_rate_factor(config, step, progress)
            loss = packed_reply_loss(model, pack([rows[i] for i in picked], torch))
            loss.backward()
            optim.step()
            optim.zero_grad()
            step += 1
            losses.append(round(float(loss.detach()), 4))
            if on_step:
                on_step(step, config.steps, losses[-1])
            if step % config.save_every == 0 and step < config.steps:
                save_checkpoint()
    except KeyboardInterrupt:
        save_checkpoint()
        raise
    stepping = time.perf_counter() - t_steps
    model.save_pretrained(str(out / "adapter"))
    seconds = time.perf_counter() - t0
    gguf_path = adapter_to_gguf(out / "adapter", out / "adapter.gguf", base) if gguf else None
    if gguf_path is not None:
        (out / "merged.gguf").unlink(missing_ok=True)  # a resumed or repeated run: not the old weights
        merge_to_gguf(gguf_path, base, out / "merged.gguf")
    report = TuneReport(
        adapter=str(out / "adapter"),
        adapter_gguf=str(gguf_path) if gguf_path else None,
        steps=step,
        examples=len(rows),
        left_out_too_long=too_long,
        losses=losses,
        seconds=round(seconds, 1),
        s_per_step=round(stepping / max(1, step - resumed), 2),
        peak_rss_gb=round(peak_rss_gb(), 2),
        resumed_from=resumed,
        data_sha256=data.digest(),
        base=str(base),
        base_sha256=sha256_file(base),
        config=asdict(config),
        counts=data.counts,
        bind=dict(bind or {}),
    )
    (out / "tune.json").write_text(json.dumps(asdict(report), indent=2), encoding="utf-8")
    if ckpt.exists():
        import shutil

        shutil.rmtree(ckpt)
    return report


def learning_rate_factor(config: TuneConfig, step: int, progress: float) -> float:
    """The share of ``config.lr`` for ``step``: a linear warm-up over ``warmup`` steps, then (``schedule
    = "linear"``) a linear decay to zero at the end of the run — ``progress`` is the larger of the
    steps and the time budget used, so a run the budget cuts short still ends on a small rate."""
    warm = min(1.0, (step + 1) / max(1, config.warmup))
    if config.schedule == "constant":
        return warm
    return warm * max(0.0, 1.0 - progress)


def lora_config(peft: Any, config: TuneConfig, n_layers: int | None = None) -> Any:
    """The peft ``LoraConfig`` that ``config`` trains on a model of ``n_layers`` decoder layers."""
    last = None
    if config.layers is not None:
        if not n_layers or not 0 < config.layers <= n_layers:
            raise ConfigError(f"layers={config.layers}: the model has {n_layers} decoder layers")
        last = list(range(n_layers - config.layers, n_layers))
    return peft.LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        layers_to_transform=last,
        task_type="CAUSAL_LM",
    )


def _resumable(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a checkpoint must share to be resumed (not the time budget, threads, save interval)."""
    return {k: v for k, v in config.items() if k not in ("minutes", "save_every", "threads")}


def _load_checkpoint(ckpt: Path, fingerprint: dict[str, Any], torch: Any) -> dict[str, Any] | None:
    """The saved training state in ``ckpt`` (tensors, numbers, strings and containers of them: loaded
    without unpickling code), or None; a :class:`ConfigError` if it is another run's."""
    state_file = ckpt / "state.pt"
    if not state_file.is_file():
        return None
    state: dict[str, Any] = torch.load(state_file, weights_only=True)
    saved = dict(state.get("fingerprint") or {})
    saved["config"] = _resumable(saved.get("config") or {})
    if saved != fingerprint:
        raise ConfigError(
            f"{ckpt} is a checkpoint of another run (different data or settings)",
            hint="use another --out folder, or delete the checkpoint to start over",
        )
    return state
