"""Specialization: LoRA-tune a node's small tier from labelled data and the node's own escalation
records, and bind the tuned model to the node (``pip install 'agentkit[hf]'``).

1. :func:`training_set` builds examples in the node's exact prompt format — the messages its task
   sends for an input (retrieved examples as for a new input: never the example itself), and the
   reply its engine would be scored on — from gold labels (a labelled
   JSONL) and from the node's traces: answers a *larger* tier gave confidently after the small tier
   escalated (distillation). Each example says which it is. Inputs are deduplicated (gold wins),
   and only the train side of :func:`~agentkit.data.split_of` is used, so the evaluation side is
   never trained on; records given as ``exclude`` are dropped too.
2. :func:`train` loads the small tier's weights (its GGUF, dequantized once to fp32), trains a
   LoRA adapter (peft) with the loss on the reply tokens only, checkpoints as it goes (interrupt
   and rerun: it resumes), and saves the adapter with its training config, data hash and metrics.
3. :func:`adapter_to_gguf` writes the adapter as a GGUF LoRA (with the ``gguf`` package's own
   tensor-name map), which llama.cpp applies to the original quantized model:
   ``embedded:qwen2.5-0.5b?lora=ADAPTER.gguf``, and :func:`merge_to_gguf` folds it into a copy of
   that model (``gguf:OUT/merged.gguf``, what :func:`tuned_tier` serves: no per-token LoRA work).
   The same adapter folder serves through transformers (``hf:qwen2.5-0.5b?adapter=DIR``) and
   vLLM (``vllm-offline:...?adapter=DIR``).

torch, transformers and peft are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agentkit.data import normalize_text, split_of
from agentkit.embedded import sha256_file
from agentkit.engine import Message
from agentkit.errors import ConfigError, InputError, ModelUnavailableError
from agentkit.task import Task

if TYPE_CHECKING:
    from agentkit.tasks.grounded import GroundedAnswer


@dataclass
class TrainingExample:
    input: str
    reply: str
    """What the model is trained to write (a label's word, a JSON object)."""
    source: Literal["gold", "distilled"]
    messages: list[Message]
    """The node's prompt for ``input``, as its task builds it."""
    origin: str = ""
    """Where it came from: the labelled file, or the trace and the tier that answered."""


@dataclass
class TrainingSet:
    examples: list[TrainingExample]
    counts: dict[str, int] = field(default_factory=dict)
    """gold, distilled, duplicates dropped, held out (evaluation side), excluded, unusable."""

    def digest(self) -> str:
        """sha256 of the examples (prompts and replies): names the data an adapter was trained on."""
        h = hashlib.sha256()
        for ex in self.examples:
            h.update(json.dumps([ex.messages, ex.reply], ensure_ascii=False).encode())
        return h.hexdigest()

    def write(self, path: str | Path) -> None:
        with Path(path).open("w", encoding="utf-8") as f:
            for ex in self.examples:
                f.write(json.dumps(asdict(ex), ensure_ascii=False) + "\n")


def reply_text(task: Task, value: Any) -> str:
    """The reply a model writes for ``value`` under ``task`` (a classifier's label word; JSON otherwise)."""
    verbalizer = getattr(task, "verbalizer", None)
    if verbalizer is not None:
        if str(value) not in verbalizer:
            raise InputError(f"{value!r} is not one of the labels")
        return verbalizer[str(value)]
    return json.dumps(value, ensure_ascii=False)


def distillable(trace: Mapping[str, Any], node: str | None = None) -> bool:
    """Whether a result record (of the node named ``node``, if given) is an answer a later tier gave
    confidently after the first tier escalated: a label to distil into the first tier."""
    if node is not None and trace.get("node") != node:
        return False
    attempts = trace.get("attempts") or []
    first = attempts[0]["tier"] if attempts else None
    return bool(trace.get("ok")) and trace.get("accepted") == "confident" and trace.get("tier") not in (None, first)


def training_set(
    task: Task,
    *,
    records: Iterable[Mapping[str, Any]] = (),
    traces: Iterable[Mapping[str, Any]] = (),
    node: str | None = None,
    exclude: Iterable[str] = (),
    seed: int = 0,
) -> TrainingSet:
    """Examples for ``task`` from labelled ``records`` (``input``, ``expected``) and from ``traces``
    (result records, as :func:`agentkit.collect` writes them) of the node named ``node``.

    A trace gives an example when the node escalated and a later tier's answer was accepted
    confidently: that answer is the label (distillation). Only inputs on the train side of
    ``split_of(seed=seed)`` are used; ``exclude`` (e.g. the evaluation inputs) are dropped. A
    :class:`~agentkit.GroundedAnswer` task gets :func:`reader_training_set`'s examples."""
    if task.kind == "grounded_answer":  # per-passage examples, from question records
        return reader_training_set(task, records, traces=traces, node=node, exclude=exclude, seed=seed)  # type: ignore[arg-type]
    if not hasattr(task, "prompt"):
        raise ConfigError(f"a {task.kind} task cannot be tuned yet", hint="Classify, Extract and GroundedAnswer can")
    counts = dict.fromkeys(("gold", "distilled", "duplicates", "held_out", "excluded", "unusable"), 0)
    excluded = {normalize_text(t) for t in exclude}
    seen: dict[str, TrainingExample] = {}

    def add(text: str, value: Any, source: Literal["gold", "distilled"], origin: str) -> None:
        key = normalize_text(text)
        if key in excluded:
            counts["excluded"] += 1
            return
        if split_of(text, seed=seed) != "train":
            counts["held_out"] += 1
            return
        if key in seen and not (source == "gold" and seen[key].source == "distilled"):
            counts["duplicates"] += 1
            return
        try:
            reply = reply_text(task, value)
            msgs = task.prompt(task.check_input(text), unseen=True)  # type: ignore[attr-defined]
        except InputError:
            counts["unusable"] += 1
            return
        if key in seen:
            counts["duplicates"] += 1  # a distilled answer replaced by the gold label
        seen[key] = TrainingExample(text, reply, source, msgs, origin)

    for r in records:
        if "input" in r and "expected" in r:
            add(str(r["input"]), r["expected"], "gold", str(r.get("id", "")))
    for t in traces:
        if distillable(t, node):
            add(str(t.get("input_text", "")), t.get("value"), "distilled", f"trace:{t.get('tier')}")
    examples = list(seen.values())
    counts["gold"] = sum(e.source == "gold" for e in examples)
    counts["distilled"] = sum(e.source == "distilled" for e in examples)
    return TrainingSet(examples, counts)


def reader_training_set(
    task: GroundedAnswer,
    records: Iterable[Mapping[str, Any]] = (),
    *,
    traces: Iterable[Mapping[str, Any]] = (),
    node: str | None = None,
    negatives: int = 1,
    exclude: Iterable[str] = (),
    seed: int = 0,
    train_side_only: bool = True,
) -> TrainingSet:
    """Per-passage examples for a :class:`~agentkit.GroundedAnswer` reader from question records
    (SQuAD 2.0 style: ``input`` the question, ``expected`` ``{"answerable", "answers"}``,
    ``gold_doc_id`` the document it was written on; the documents must be in ``task.corpus``).

    Each question gives its gold passage — ``yes: <first gold answer>`` on the passage that holds it,
    ``no`` for an unanswerable question (written against that passage) — and up to ``negatives`` of
    the passages retrieved for it from other documents, ``no`` (what the reader must refuse when
    retrieval misses). The prompt is the one the node sends (:meth:`GroundedAnswer.passage_messages`).
    From ``traces`` of the node named ``node``: an answer a later tier gave confidently after the
    small tier escalated, on the passage it cited (distillation; a gold example for the same question
    and passage wins). Only questions on the train side of ``split_of(seed=seed)`` are used
    (``train_side_only=False``: all, for records that are a training set of their own, e.g. other
    articles than those evaluated on); ``exclude`` are dropped."""
    from agentkit.tasks.grounded import supported

    counts = dict.fromkeys(("gold", "distilled", "duplicates", "held_out", "excluded", "unusable"), 0)
    counts |= {"answer": 0, "no_answer": 0, "retrieved_negative": 0}  # what the gold examples are
    excluded = {normalize_text(t) for t in exclude}
    seen: dict[tuple[str, str], TrainingExample] = {}
    by_doc: dict[str, list[Any]] = {}
    for p in task.corpus.passages:
        by_doc.setdefault(p.doc_id, []).append(p)

    def add(question: str, passage: Any, reply: str, kind: str) -> None:
        key = (normalize_text(question), passage.id)
        source: Literal["gold", "distilled"] = "distilled" if kind == "distilled" else "gold"
        if key in seen:  # a gold example replaces a distilled one; otherwise the first stays
            counts["duplicates"] += 1
            if not (source == "gold" and seen[key].source == "distilled"):
                return
        msgs = task.passage_messages(passage, question)
        seen[key] = TrainingExample(question, reply, source, msgs, f"{kind}:{passage.id}")
        counts[kind] += 1

    def usable(question: str) -> bool:
        if normalize_text(question) in excluded:
            counts["excluded"] += 1
            return False
        if train_side_only and split_of(question, seed=seed) != "train":
            counts["held_out"] += 1
            return False
        return True

    for t in traces:
        value = t.get("value")
        if not distillable(t, node) or not isinstance(value, dict):
            continue
        question = " ".join(str(t.get("input_text", "")).split())
        cited = [task.corpus.get(c) for c in value.get("citations") or []]
        answer = str(value.get("answer") or "").strip()
        if not value.get("answerable") or not cited or cited[0] is None or not supported(answer, cited[0].text):
            continue
        if usable(question):
            add(question, cited[0], f"yes: {answer}", "distilled")

    for r in records:
        question = " ".join(str(r.get("input", "")).split())
        expected = r.get("expected") or {}
        if not usable(question):
            continue
        passages = by_doc.get(str(r.get("gold_doc_id", "")), [])
        answers = [str(a) for a in expected.get("answers") or [] if str(a).strip()]
        if not question or not passages or (expected.get("answerable") and not answers):
            counts["unusable"] += 1
            continue
        if expected.get("answerable"):
            holder = next((p for p in passages if supported(answers[0], p.text)), None)
            if holder is None:
                counts["unusable"] += 1
                continue
            add(question, holder, f"yes: {answers[0].strip()}", "answer")
        else:
            for p in passages:
                add(question, p, "no", "no_answer")
        others = [
            p
            for p, _ in task.corpus.search(question, task.k + len(passages))
            if p.doc_id != r["gold_doc_id"] and not any(supported(a, p.text) for a in answers)
        ]  # fmt: skip  (a passage that holds a gold answer too is no negative)
        for p in others[:negatives]:
            add(question, p, "no", "retrieved_negative")
    examples = list(seen.values())
    counts["gold"] = sum(e.source == "gold" for e in examples)
    counts["distilled"] = sum(e.source == "distilled" for e in examples)
    return TrainingSet(examples, counts)


# ---- training -----------------------------------------------------------------------------------


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


def _peak_rss_gb() -> float:
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
    rows, groups, too_long = _encode(tok, data.examples, config.max_len)
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
        peak_rss_gb=round(_peak_rss_gb(), 2),
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


def pad_id(tok: Any) -> int:
    """The token batches are padded with (the end-of-sequence token when the tokenizer has no pad)."""
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def epoch_order(groups: Sequence[Any], rng: random.Random) -> list[int]:
    """One pass over the rows in random order, rows of the same group (``groups[i]``: row i's) kept
    together: the groups in random order, each group's rows shuffled."""
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    blocks = list(members.values())
    for block in blocks:
        rng.shuffle(block)
    rng.shuffle(blocks)
    return [i for block in blocks for i in block]


def _encode(
    tok: Any, examples: Sequence[TrainingExample], max_len: int
) -> tuple[list[tuple[list[int], int]], list[str], int]:
    """``(tokens, prompt_length)`` per example: the chat prompt, then the reply and the end-of-turn
    marker, tokenized the way the engines score a reply (prompt and reply separately); each row's
    group (its prompt before the input: what batches share); how many were too long."""
    sentinel = "\x00reply\x00"
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": sentinel}]
    rendered = tok.apply_chat_template(probe, add_generation_prompt=False, tokenize=False)
    eot = rendered.split(sentinel, 1)[1].rstrip() if sentinel in rendered else (tok.eos_token or "")
    rows, groups, too_long = [], [], 0
    for ex in examples:
        prompt = tok.apply_chat_template(ex.messages, add_generation_prompt=True, tokenize=False)
        p = list(tok(prompt, add_special_tokens=False).input_ids)
        r = list(tok(ex.reply + eot, add_special_tokens=False).input_ids)
        if len(p) + len(r) > max_len:
            too_long += 1
            continue
        rows.append((p + r, len(p)))
        groups.append(json.dumps(ex.messages[:-1], ensure_ascii=False))
    return rows, groups, too_long


def _pad(batch: Sequence[tuple[list[int], int]], pad: int, torch: Any) -> tuple[Any, Any, Any]:
    width = max(len(t) for t, _ in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (t, n_prompt) in enumerate(batch):
        ids[i, : len(t)] = torch.tensor(t)
        labels[i, n_prompt : len(t)] = torch.tensor(t[n_prompt:])  # loss on the reply tokens only
        mask[i, : len(t)] = 1
    return ids, labels, mask


@dataclass
class PackedBatch:
    """A batch as one sequence in which every token prefix that examples share is computed once:
    the rows form a prefix tree (all of a classifier's rows share its system prompt; a reader's rows
    share the instructions, and those on the same passage the passage too), each tree node's tokens
    are written once, and a token attends to its own node and that node's ancestors only (a tree
    mask), at the position it has in its own row. The loss is the padded batch's loss, without the
    shared prefixes computed once per row or any padding (:func:`pack`)."""

    ids: Any
    positions: Any
    allowed: Any
    """(1, 1, L, L) bool: query position may attend to key position."""
    sources: Any
    """Packed positions whose hidden state predicts a reply token."""
    targets: Any
    """The reply tokens they predict."""


def pack(batch: Sequence[tuple[list[int], int]], torch: Any) -> PackedBatch:
    """Pack ``(tokens, prompt_length)`` rows (see :func:`_encode`) into one :class:`PackedBatch`."""
    ids: list[int] = []
    positions: list[int] = []
    node_of: list[int] = []  # packed index -> tree node
    parents: list[int] = []  # tree node -> parent node (-1: a root)
    where: list[list[int]] = [[0] * len(t) for t, _ in batch]  # row, token -> packed index

    def emit(rows: list[int], start: int, end: int, parent: int) -> int:
        node = len(parents)
        parents.append(parent)
        tokens = batch[rows[0]][0]
        for j in range(start, end):
            for r in rows:
                where[r][j] = len(ids)
            ids.append(tokens[j])
            positions.append(j)
            node_of.append(node)
        return node

    def grow(rows: list[int], depth: int, parent: int) -> None:
        """Rows that agree on their first ``depth`` tokens (already written under ``parent``)."""
        seqs = [batch[r][0] for r in rows]
        shared = len(os.path.commonprefix([t[depth:] for t in seqs])) + depth
        if shared > depth:
            parent = emit(rows, depth, shared, parent)
        branches: dict[int, list[int]] = {}
        for r, t in zip(rows, seqs, strict=True):
            if len(t) > shared:
                branches.setdefault(t[shared], []).append(r)
        for branch in branches.values():
            grow(branch, shared, parent)

    grow(list(range(len(batch))), 0, -1)
    ancestry = torch.eye(len(parents), dtype=torch.bool)  # ancestry[n, m]: m is n or an ancestor of n
    for n, parent in enumerate(parents):  # parents come before their children
        if parent >= 0:
            ancestry[n] |= ancestry[parent]
    nodes = torch.tensor(node_of)
    n = len(ids)
    allowed = torch.ones(n, n, dtype=torch.bool).tril() & ancestry[nodes][:, nodes]
    sources, targets = [], []
    for r, (tokens, n_prompt) in enumerate(batch):
        for j in range(max(1, n_prompt), len(tokens)):  # token j is predicted by token j - 1
            sources.append(where[r][j - 1])
            targets.append(tokens[j])
    return PackedBatch(
        ids=torch.tensor([ids]),
        positions=torch.tensor([positions]),
        allowed=allowed[None, None],
        sources=torch.tensor(sources),
        targets=torch.tensor(targets),
    )


def packed_reply_loss(model: Any, batch: PackedBatch) -> Any:
    """:func:`reply_loss` on a :class:`PackedBatch` (the same value, computed on fewer tokens)."""
    import torch
    import torch.nn.functional as F

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    mask = batch.allowed
    if getattr(causal.config, "_attn_implementation", "sdpa") == "eager":  # eager adds a float mask
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    hidden = causal.model(input_ids=batch.ids, attention_mask=mask, position_ids=batch.positions).last_hidden_state
    logits = causal.lm_head(hidden[0, batch.sources]).float()
    return F.cross_entropy(logits, batch.targets)


def reply_loss(model: Any, ids: Any, labels: Any, mask: Any) -> Any:
    """The causal-LM loss on the reply tokens, with the output layer applied only where a reply token
    is predicted. The same value as ``model(..., labels=labels).loss``, without the logits of every
    prompt position: with a 150k-token vocabulary those are about a quarter of a step's compute."""
    import torch.nn.functional as F

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal.model(input_ids=ids, attention_mask=mask).last_hidden_state
    target = labels[:, 1:]
    where = target != -100
    logits = causal.lm_head(hidden[:, :-1][where]).float()
    return F.cross_entropy(logits, target[where])


def _resumable(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a checkpoint must share to be resumed (not the time budget, threads, save interval)."""
    return {k: v for k, v in config.items() if k not in ("minutes", "save_every", "threads")}


def _load_checkpoint(ckpt: Path, fingerprint: dict[str, Any], torch: Any) -> dict[str, Any] | None:
    state_file = ckpt / "state.pt"
    if not state_file.is_file():
        return None
    state = torch.load(state_file, weights_only=False)
    saved = dict(state.get("fingerprint") or {})
    saved["config"] = _resumable(saved.get("config") or {})
    if saved != fingerprint:
        raise ConfigError(
            f"{ckpt} is a checkpoint of another run (different data or settings)",
            hint="use another --out folder, or delete the checkpoint to start over",
        )
    return state


# ---- the adapter for llama.cpp --------------------------------------------------------------------


def adapter_to_gguf(adapter_dir: str | Path, out: str | Path, base: str | Path) -> Path:
    """Write a peft LoRA adapter as a GGUF LoRA adapter for the GGUF model ``base`` (llama.cpp's
    ``lora_path``): tensors renamed with the ``gguf`` package's map for the base's architecture,
    ``lora_a``/``lora_b`` in float32, ``adapter.lora.alpha`` from the adapter's config."""
    try:
        import gguf
        import numpy as np
        from safetensors.numpy import load_file
    except ImportError as e:
        raise ModelUnavailableError(
            "converting an adapter needs gguf and safetensors", hint="pip install 'agentkit[hf]'"
        ) from e
    adapter_dir, out = Path(adapter_dir), Path(out)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("use_dora") or cfg.get("use_rslora"):
        raise ConfigError("only plain LoRA adapters convert to GGUF (not DoRA / rsLoRA)")
    reader = gguf.GGUFReader(str(base))
    arch = _field(reader, "general.architecture")
    n_layers = int(_field(reader, f"{arch}.block_count"))
    arch_id = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[arch]
    names = gguf.get_tensor_name_map(arch_id, n_layers)
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(cfg["lora_alpha"]))
    written = 0
    for key in sorted(tensors):
        module, _, part = key.removeprefix("base_model.model.").rpartition(".lora_")
        if part not in ("A.weight", "B.weight"):
            raise ConfigError(f"unexpected adapter tensor {key}")
        target = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if target is None:
            raise ConfigError(f"no GGUF name for {module} in a {arch} model")
        suffix = ".lora_a" if part == "A.weight" else ".lora_b"
        writer.add_tensor(target + suffix, np.ascontiguousarray(tensors[key].astype(np.float32)))
        written += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if not written:
        raise ConfigError(f"{adapter_dir} holds no LoRA tensors")
    return out


def merge_to_gguf(adapter_gguf: str | Path, base: str | Path, out: str | Path) -> Path:
    """Fold a GGUF LoRA into a copy of its GGUF model: each adapted weight becomes
    ``W + alpha/r * B @ A`` (``W`` dequantized), stored as Q8_0; every other tensor and all metadata
    are copied as they are. The merged model answers as the adapter on the base does (to within
    Q8_0 rounding) without llama.cpp's two extra matrix products per adapted weight and token."""
    try:
        import gguf
        import numpy as np
    except ImportError as e:
        raise ModelUnavailableError("merging an adapter needs gguf", hint="pip install 'agentkit[hf]'") from e
    adapter_gguf, base, out = Path(adapter_gguf), Path(base), Path(out)
    lora = gguf.GGUFReader(str(adapter_gguf))
    alpha = float(_field(lora, gguf.Keys.Adapter.LORA_ALPHA))
    parts = {t.name: np.asarray(t.data, dtype=np.float32) for t in lora.tensors}
    reader = gguf.GGUFReader(str(base))
    arch = _field(reader, "general.architecture")
    tmp = out.with_name(out.name + ".part")
    writer = gguf.GGUFWriter(str(tmp), arch)
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == "general.alignment":
            writer.add_custom_alignment(int(f.contents()))
            continue
        vtype = f.types[0]
        sub_type = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, f.contents(), vtype, sub_type=sub_type)
    writer.add_string("agentkit.merged_adapter.sha256", sha256_file(adapter_gguf))
    merged = 0
    q8 = gguf.GGMLQuantizationType.Q8_0
    for t in reader.tensors:
        a, b = parts.get(t.name + ".lora_a"), parts.get(t.name + ".lora_b")
        if a is None or b is None:
            quantized = t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type if quantized else None)
            continue
        weight = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        delta = (alpha / a.shape[0]) * (b @ a)
        if delta.shape != weight.shape:
            raise ConfigError(f"adapter tensor for {t.name} has shape {delta.shape}, the model {weight.shape}")
        writer.add_tensor(t.name, gguf.quants.quantize(weight + delta, q8), raw_dtype=q8)
        merged += 1
    if not merged:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"{adapter_gguf} adapts no tensor of {base.name}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)
    return out


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        raise ConfigError(f"the base GGUF has no {key}")
    value = f.parts[f.data[0]]
    return bytes(value).decode() if value.dtype.kind == "u" and value.dtype.itemsize == 1 else value[0]


# ---- binding the tuned model to a node ------------------------------------------------------------


def base_model(tier_spec: str) -> Path:
    """The GGUF file behind a llama.cpp tier spec (``embedded:NAME`` or ``gguf:PATH``): what tuning starts from."""
    kind, _, rest = tier_spec.partition(":")
    target = rest.partition("?")[0]
    if kind == "embedded":
        from agentkit.embedded import model_path

        return model_path(target)
    if kind == "gguf":
        return Path(target).expanduser().resolve()
    raise ConfigError(
        f"cannot tune tier {tier_spec!r}: tuning starts from a GGUF model",
        hint="tune an embedded:NAME or gguf:PATH tier",
    )


def tunable_tier(node: Any) -> int:
    """Index of the node's first llama.cpp tier (a ``knn`` or ``rules`` rung before it is skipped)."""
    for i, tier in enumerate(node.tiers):
        if tier.spec.startswith(("embedded:", "gguf:")):
            return i
    raise ConfigError(f"node {node.name!r} has no embedded:/gguf: tier to tune")


def tuned_tier(
    out: str | Path, *, engine: Literal["llamacpp", "hf", "vllm-offline"] = "llamacpp", merged: bool = True
) -> Any:
    """The tuned model in ``out`` (a :func:`train` folder) as a tier: through llama.cpp (as served)
    the merged model (``merged.gguf``, written from the adapter if missing: :func:`merge_to_gguf`)
    or, ``merged=False``, the GGUF LoRA on the original quantized model; or the peft adapter
    through transformers or in-process vLLM (``enable_lora``). A vLLM *server* serves the same
    adapter folder with ``--enable-lora --lora-modules NAME=ADAPTER_DIR``; its tier is then
    ``vllm:URL?model=NAME``."""
    from agentkit.tier import Tier

    out = Path(out).resolve()
    meta = _tune_meta(out)
    stock = meta["bind"]["stock_spec"]
    kind, _, rest = stock.partition(":")
    target, _, query = rest.partition("?")
    if engine == "llamacpp":
        if not meta.get("adapter_gguf"):
            raise ConfigError(f"{out} has no adapter.gguf", hint="train with gguf=True")
        if merged:
            path = out / "merged.gguf"
            if not path.is_file():
                merge_to_gguf(meta["adapter_gguf"], base_model(stock), path)
            spec = f"gguf:{path}" + (f"?{query}" if query else "")
        else:
            spec = f"{kind}:{target}?" + "&".join([*filter(None, [query]), f"lora={meta['adapter_gguf']}"])
    elif engine in ("hf", "vllm-offline"):
        spec = f"{engine}:{target if kind == 'embedded' else base_model(stock)}?adapter={meta['adapter']}"
    else:
        raise ConfigError(f"unknown engine {engine!r} for a tuned tier", hint="llamacpp, hf or vllm-offline")
    return Tier(spec, task=dict(meta["bind"].get("task", {})), name=f"tuned:{out.name}")


def bind(node: Any, out: str | Path, *, merged: bool = True) -> Any:
    """Put the tuned model in ``out`` in place of the stock tier it was trained from; returns it."""
    meta = _tune_meta(Path(out))
    index = int(meta["bind"]["tier_index"])
    if index >= len(node.tiers) or node.tiers[index].spec != meta["bind"]["stock_spec"]:
        raise ConfigError(f"node {node.name!r} has no tier {meta['bind']['stock_spec']!r} at {index} to replace")
    tier = tuned_tier(out, merged=merged)
    node.tiers[index] = tier
    return tier


def comparison(node: Any, out: str | Path, *, merged: bool = True) -> tuple[Any, dict[str, list[int]]]:
    """A copy of ``node`` whose ladder holds the stock *and* the tuned small tier, and the two
    sub-ladders to compare (``stock``, ``tuned``): each small tier under the same tiers above it,
    evaluated side by side in one :func:`~agentkit.evaluate.evaluate_node` run."""
    from agentkit.node import Node

    meta = _tune_meta(Path(out))
    index = int(meta["bind"]["tier_index"])
    if index >= len(node.tiers) or node.tiers[index].spec != meta["bind"]["stock_spec"]:
        raise ConfigError(f"node {node.name!r} has no tier {meta['bind']['stock_spec']!r} at {index}")
    tiers = [*node.tiers[: index + 1], tuned_tier(out, merged=merged), *node.tiers[index + 1 :]]
    twin = Node(node.task, tiers, node.policy, name=node.name)
    rest = list(range(index + 2, len(tiers)))
    below = list(range(index))
    return twin, {"stock": [*below, index, *rest], "tuned": [*below, index + 1, *rest]}


def _tune_meta(out: Path) -> dict[str, Any]:
    path = out / "tune.json"
    if not path.is_file():
        raise ConfigError(f"{out} is not a tuning folder (no tune.json)", hint="agentkit tune ... --out DIR")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if not meta.get("bind", {}).get("stock_spec"):
        raise ConfigError(f"{path} does not say which tier it tunes")
    return meta
