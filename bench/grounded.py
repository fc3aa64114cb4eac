"""Grounded answering benchmark (SQuAD 2.0 style): small-only vs large-only vs cascade.

    python bench/grounded.py --corpus ../shared/datasets/squad_v2_normans/corpus.jsonl \
        --data ../shared/datasets/squad_v2_normans/questions.jsonl --limit 208

A thin wrapper over ``agentkit eval``'s computation: every question is answered once per tier;
the cascade at each threshold is derived from those answers with the node's rules (abstain when
no tier is confident); the threshold is chosen on a calibration half and reported on the other.
Scores follow SQuAD 2.0: an abstention is right on an unanswerable question, wrong on an
answerable one.
"""

from __future__ import annotations

import tempfile
import time

from _common import DATASETS, emit, evaluate, parser

from agentkit import Node, Policy, Tier
from agentkit.corpus import Corpus
from agentkit.data import read_jsonl, sample
from agentkit.tasks.grounded import GroundedAnswer

SQUAD = DATASETS / "squad_v2_normans"


def main() -> None:
    p = parser(__doc__.splitlines()[0], SQUAD / "questions.jsonl")
    p.add_argument("--corpus", default=str(SQUAD / "corpus.jsonl"), help="documents (file or folder)")
    p.add_argument("--k", type=int, default=3, help="passages retrieved per question")
    p.add_argument("--mode", default="auto", choices=["auto", "per_passage", "joint"])
    p.add_argument("--verify", nargs="?", const="answer", default=False, choices=["answer", "passage"],
                   help="check each extracted answer with a yes/no question (GroundedAnswer(verify=)): 'answer' "
                        "(default): does the passage state this answer; 'passage': does it state one")  # fmt: skip
    p.add_argument("--verify-from", type=int, default=0,
                   help="with --verify: only tiers from this index on check (Tier(task={'verify': ...}))")  # fmt: skip
    p.add_argument("--escalate-abstentions", action="store_true", help="a cheaper tier's abstention asks the next tier")
    p.set_defaults(limit=208)
    args = p.parse_args()

    items = sample(read_jsonl(args.data), args.limit, seed=args.seed)  # questions of every paragraph
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        corpus = Corpus.build(args.corpus, path=tmp)
        corpus = Corpus.load(tmp)  # what a run does: the index is read back from disk
        index_s = time.perf_counter() - t0
    recall = sum(
        any(h.doc_id == it.get("gold_doc_id") for h, _ in corpus.search(it["input"], args.k)) for it in items
    ) / len(items)
    task = GroundedAnswer(corpus, k=args.k, mode=args.mode, verify=args.verify)
    policy = Policy(when_unsure="abstain", escalate_abstentions=args.escalate_abstentions)
    tiers = [Tier(spec, task={"verify": False}) if i < args.verify_from else Tier(spec)
             for i, spec in enumerate(args.tiers.split(","))]  # fmt: skip
    node = Node(task, tiers, policy)
    n_unans = sum(not it["expected"]["answerable"] for it in items)
    print(
        f"{args.data} — n={len(items)} ({n_unans} unanswerable), corpus={len(corpus)} passages"
        f" (indexed in {index_s:.1f} s), k={args.k}, mode={args.mode}, verify={args.verify} from tier"
        f" {args.verify_from},"
        f" recall@{args.k}={recall:.3f}"
    )
    report = evaluate(node, items, args, thresholds=(0.3, 0.5, 0.6, 0.7, 0.8, 0.9))
    section = report.get("test") or report["all"]
    pick = report.get("calibration", {}).get("picked", "tier0")
    chosen, q = section[pick], section[pick]["quality"]
    emit(
        {
            "bench": "grounded",
            "data": str(args.data),
            "n": report["n"],
            "split": report.get("split"),
            "k": args.k,
            "verify": args.verify,
            "verify_from": args.verify_from,
            "escalate_abstentions": args.escalate_abstentions,
            "recall_at_k": round(recall, 4),
            "config": pick,
            "f1": round(q["f1"], 2),
            "f1_all": round(q["f1_all"], 2),
            "em": round(q["em"], 2),
            "abstain_acc": q["abstain_acc"],
            "abstain_precision": q["abstain_precision"],
            "escalation_rate": round(chosen["escalation_rate"], 4),
            "small_share": round(chosen["answered_by"][0], 4),
            "s_per_question": round(chosen["s_per_item"], 3),
            "small_f1": round(section["tier0"]["quality"]["f1"], 2),
            "large_f1": round(section[f"tier{len(report['tiers']) - 1}"]["quality"]["f1"], 2),
            "wall_s": round(report["wall_s"], 1),
        }
    )


if __name__ == "__main__":
    main()
