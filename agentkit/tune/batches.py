"""Training examples as token rows, batched — padded, or packed into one sequence with each shared
prompt prefix once — and the causal-LM loss on their reply tokens. torch is passed in or imported
inside the functions."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agentkit.tune.examples import TrainingExample

__all__ = [
    "PackedBatch",
    "encode_examples",
    "epoch_order",
    "pack",
    "packed_reply_loss",
    "pad_batch",
    "pad_id",
    "reply_loss",
]


def pad_id(tok: Any) -> int:
    """The token batches are padded with (the end-of-sequence token when the tokenizer has no pad)."""
    return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


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


def encode_examples(
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


def pad_batch(batch: Sequence[tuple[list[int], int]], pad: int, torch: Any) -> tuple[Any, Any, Any]:
    """``(ids, labels, mask)`` of ``(tokens, prompt_length)`` rows padded with ``pad`` to the longest:
    the labels ``-100`` (no loss) but on the reply tokens."""
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
    """Pack ``(tokens, prompt_length)`` rows (see :func:`encode_examples`) into one :class:`PackedBatch`."""
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
