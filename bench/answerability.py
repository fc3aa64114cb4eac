"""Answerability ceiling: how well each tier tells an answerable question from an unanswerable one.

    python bench/answerability.py --limit 208          # Normans, every question on its own paragraph

Each question is put to each tier with the paragraph it was written against (the gold passage,
so retrieval plays no part) as a yes/no classification: "does the passage state the answer?".
P(yes) from the tier's label scores ranks the questions; the ranking's AUC and the share of
answerable questions still answered when 80% of the unanswerable ones are refused say how far
an abstention rule built on that tier's judgement can go: a ``GroundedAnswer`` that abstains
correctly on 80% by it keeps about that share of its answers (less, with retrieval misses).
``--write-pairs FILE`` writes the (passage, question) records instead, the format
``bench/tune.py --data`` trains on:

    python bench/answerability.py --corpus bench/data/squad_v2_train10/corpus.jsonl \
        --data bench/data/squad_v2_train10/questions.jsonl \
        --write-pairs runs/answerability/squad_answerability/train.jsonl --answerable-per-unanswerable 2
    python bench/answerability.py --write-pairs runs/answerability/normans.jsonl
    python bench/tune.py --data runs/answerability/squad_answerability/train.jsonl --limit 208 --train 740 \
        --eval-data runs/answerability/normans.jsonl --k 0 --static 0 --verbalize answerable=yes,unanswerable=no \
        --layers 12 --targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --lr 1e-3 \
        --max-len 512 --minutes 25 --out runs/ans1
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from _common import DATASETS, emit, parser, print_table
from classify import INSTRUCTIONS

from agentkit import Classify, Node, Policy
from agentkit.data import read_jsonl, sample

SQUAD = DATASETS / "squad_v2_normans"
NAME = "squad_answerability"


def pairs(corpus: Path, questions: Path) -> list[dict[str, Any]]:
    """One record per question: its gold paragraph and the question, labelled (un)answerable."""
    paragraphs = {r["doc_id"]: r for r in read_jsonl(corpus)}
    out = []
    for q in read_jsonl(questions):
        p = paragraphs[q["gold_doc_id"]]
        title = str(p.get("title") or "").replace("_", " ")
        text = f"Passage ({title}):\n{p['text']}\n\nQuestion: {' '.join(q['input'].split())}"
        out.append({"id": q["id"], "input": text,
                    "expected": "answerable" if q["expected"]["answerable"] else "unanswerable"})  # fmt: skip
    return out


def auc(scores: list[float], positive: list[bool]) -> float:
    """P(a random positive scores above a random negative), ties half."""
    pos = [s for s, y in zip(scores, positive, strict=True) if y]
    neg = [s for s, y in zip(scores, positive, strict=True) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / max(1, len(pos) * len(neg))


def kept_at(scores: list[float], positive: list[bool], refused: float = 0.8) -> float:
    """Share of positives scoring above the threshold that refuses ``refused`` of the negatives."""
    neg = sorted(s for s, y in zip(scores, positive, strict=True) if not y)
    pos = [s for s, y in zip(scores, positive, strict=True) if y]
    if not neg or not pos:
        return float("nan")
    threshold = neg[min(len(neg) - 1, int(refused * len(neg)))]
    return sum(s > threshold for s in pos) / len(pos)


def main() -> None:
    p = parser(__doc__.splitlines()[0], SQUAD / "questions.jsonl")
    p.add_argument("--corpus", type=Path, default=SQUAD / "corpus.jsonl", help="paragraphs (doc_id, title, text)")
    p.add_argument("--write-pairs", type=Path, default=None, help="write the records here and stop")
    p.add_argument("--answerable-per-unanswerable", type=float, default=None,
                   help="with --write-pairs: every unanswerable question and this many answerable ones per "
                        "unanswerable (a seeded sample), as a training set")  # fmt: skip
    p.set_defaults(limit=208)
    args = p.parse_args()

    records = pairs(args.corpus, args.data)
    if args.write_pairs:
        if args.answerable_per_unanswerable is not None:
            refused = [r for r in records if r["expected"] == "unanswerable"]
            answered = [r for r in records if r["expected"] == "answerable"]
            n = round(args.answerable_per_unanswerable * len(refused))
            records = sample(refused + sample(answered, n, seed=args.seed), None, seed=args.seed)
        args.write_pairs.parent.mkdir(parents=True, exist_ok=True)
        args.write_pairs.write_text("".join(json.dumps(r) + "\n" for r in records))
        print(f"{len(records)} records -> {args.write_pairs}")
        return
    items = sample(records, args.limit, seed=args.seed)
    answerable = [r["expected"] == "answerable" for r in items]
    task = Classify(["answerable", "unanswerable"], instructions=INSTRUCTIONS[NAME], k=0,
                    verbalizer={"answerable": "yes", "unanswerable": "no"})  # fmt: skip
    print(f"{args.data} — n={len(items)}, unanswerable={answerable.count(False)}")
    rows, figures = [], {}
    for spec in args.tiers.split(","):
        node = Node(task, [spec], Policy(threshold=0.0), name=NAME)
        scores, seconds = [], 0.0
        for r in items:
            t0 = time.perf_counter()
            result = node.run(r["input"], input_id=r["id"])
            seconds += time.perf_counter() - t0
            conf = result.confidence if result.confidence is not None else 0.5
            scores.append(conf if result.value == "answerable" else 1.0 - conf)
        accuracy = sum((s > 0.5) == y for s, y in zip(scores, answerable, strict=True)) / len(items)
        row = {"auc": round(auc(scores, answerable), 3), "kept_at_80": round(kept_at(scores, answerable), 3),
               "accuracy": round(accuracy, 3), "s_per_question": round(seconds / len(items), 2)}  # fmt: skip
        figures[spec] = row
        rows.append([spec, row["auc"], row["kept_at_80"], row["accuracy"], row["s_per_question"]])
    print_table(rows, ["tier", "AUC", "answerable kept at 80% refused", "accuracy at 0.5", "s/question"])
    emit({"bench": "answerability", "data": str(args.data), "n": len(items),
          "unanswerable": answerable.count(False), "tiers": figures})  # fmt: skip


if __name__ == "__main__":
    main()
