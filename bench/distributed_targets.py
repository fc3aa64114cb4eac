"""Targets of bench/distributed.py, loaded by ``agentkit run`` (and so by every Ray actor) by path.

``sms``: SMS spam on the default ladder (embedded 0.5B → 1.5B), 8 examples retrieved from the train
side of ``$BENCH_DATA``'s split (``$BENCH_SEED``); the benchmark's inputs are its test side.
``sms_knn``: the same task on the ``knn`` tier alone (a BM25 vote, no model): what a batch costs
besides the models.
"""

import os
from pathlib import Path

from agentkit import DEFAULT_LADDER, Classify, Node
from agentkit.data import read_jsonl, split_records

_DATA = Path(
    os.environ.get("BENCH_DATA", Path(__file__).resolve().parents[2] / "shared/datasets/sms_spam_collection/dev.jsonl")
)
_TRAIN = split_records(list(read_jsonl(_DATA)), seed=int(os.environ.get("BENCH_SEED", "0"))).train

_TASK = Classify(
    ["ham", "spam"],
    instructions=(
        "Is this SMS message spam (unsolicited advertising, prizes, scams) or ham (a normal personal message)?"
    ),
    examples=_TRAIN,
    k=8,
)
sms = Node(_TASK, DEFAULT_LADDER, name="sms")
sms_knn = Node(_TASK, ["knn"], name="sms_knn")
