"""Classification benchmark: small-only vs large-only vs cascade on a held-out split.

    python bench/classify.py --data ../shared/datasets/sms_spam_collection/dev.jsonl --limit 300

Each item is answered once per tier; the cascade at each threshold is computed from those
answers with the node's own policy rules (exact and cheap). Retrieved examples come only
from the train split (the shared split function keeps duplicates together).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from _common import DATASETS, Progress, emit, fmt_ci, parser, print_table

from agentkit import Classify, Policy, Tier
from agentkit.data import read_jsonl, split_records
from agentkit.evaluate import answer_all, summarize

INSTRUCTIONS = {
    "sms_spam_collection": (
        "Is this SMS message spam (unsolicited advertising, prizes, scams) or ham (a normal personal message)?"
    ),
    "enron_email_intent": (
        "Does this sentence from an e-mail ask the reader to do something (a request, a question to answer,"
        " an action)? ask = it does, not_ask = it does not."
    ),
    "banking77": "Which banking intent does the customer's message express?",
    "clinc150_oos": "Which intent does the user's request express?",
}


def verbalizer(spec: str, labels: list[str]) -> dict[str, str] | None:
    if not spec:
        return None
    if spec == "spaces":
        return {label: label.replace("_", " ") for label in labels}
    return dict(pair.split("=", 1) for pair in spec.split(","))


def main() -> None:
    p = parser(__doc__.splitlines()[0], DATASETS / "sms_spam_collection" / "dev.jsonl")
    p.add_argument("--k", type=int, default=8, help="retrieved examples per prompt")
    p.add_argument("--static", type=int, default=0, help="examples per label in the cached prefix")
    p.add_argument("--shortlist", type=int, default=12, help="score only retrieved labels above this many labels")
    p.add_argument("--pool", type=int, default=None, help="cap on the example pool")
    p.add_argument("--verbalize", default="", help="label=word pairs (ask=yes,not_ask=no), or 'spaces' (a_b -> a b)")
    p.add_argument("--calibrate", action="store_true", help="contextual calibration")
    p.add_argument("--retrieval", default="bm25", choices=["bm25", "dense", "hybrid"])
    p.add_argument("--save", type=Path, default=None, help="write every tier's answer per item (JSONL)")
    p.add_argument("--knn", type=int, default=0, help="put a knn tier (vote of this many neighbours) first")
    args = p.parse_args()

    records = list(read_jsonl(args.data))
    split = split_records(records, seed=args.seed)
    pool = split.train[: args.pool] if args.pool else split.train
    items = split.test[: args.limit]
    categories = args.data.parent / "categories.json"
    labels = (
        json.loads(categories.read_text()) if categories.exists() else sorted({str(r["expected"]) for r in records})
    )
    task = Classify(
        labels,
        instructions=INSTRUCTIONS.get(args.data.parent.name, "Classify the text."),
        examples=pool,
        k=args.k,
        static_per_label=args.static,
        shortlist=args.shortlist,
        verbalizer=verbalizer(args.verbalize, labels),
        calibrate=args.calibrate,
        vote_k=args.knn or 4,
        retrieval=args.retrieval,
    )
    tiers = [Tier(s) for s in (["knn"] if args.knn else []) + args.tiers.split(",")]
    t0 = time.perf_counter()
    table = answer_all(task, tiers, [r["input"] for r in items], on_item=Progress(len(items), args.data.parent.name))
    wall = time.perf_counter() - t0
    if args.save:
        with args.save.open("w") as fh:
            for item, row in zip(items, table, strict=True):
                answers = [{"tier": t.name, **vars(a)} for t, a in zip(tiers, row, strict=True)]
                fh.write(json.dumps({"input": item["input"], "expected": item["expected"], "answers": answers}) + "\n")

    def correct(value: object, i: int) -> bool:
        return value == items[i]["expected"]

    thresholds = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99]
    s = summarize(table, correct, Policy(), thresholds)
    names = [t.name for t in tiers]
    rows = [
        [
            name,
            fmt_ci(r["acc"], r["ci95"]),
            f"{r['invalid']:.3f}",
            "-",
            f"{r['cost_per_item'] * 1e6:.1f}",
            f"{r['s_per_item']:.2f}",
        ]
        for name, r in zip(names, s["tiers"], strict=True)
    ]
    rows += [
        [
            f"cascade@{c['threshold']}",
            fmt_ci(c["acc"], c["ci95"]),
            "-",
            f"{c['escalation_rate']:.3f}",
            f"{c['cost_per_item'] * 1e6:.1f}",
            f"{c['s_per_item']:.2f}",
        ]
        for c in s["cascade"]
    ]
    print(
        f"\n{args.data} — n={len(items)} held-out, pool={len(pool)}, k={args.k}, static={args.static},"
        f" verbalize={args.verbalize or '-'}, calibrate={args.calibrate}, knn={args.knn}, retrieval={args.retrieval},"
        f" labels={len(labels)}"
    )
    print_table(rows, ["config", "accuracy [95% CI]", "invalid", "escalated", "µ$/item", "s/item"])
    large = s["tiers"][-1]
    small = s["tiers"][1 if args.knn else 0]
    if args.threshold is not None:
        pick = min(s["cascade"], key=lambda c: abs(c["threshold"] - args.threshold))
    else:  # the cheapest sweep point within 1 point of the best cascade accuracy
        top = max(c["acc"] for c in s["cascade"])
        pick = min((c for c in s["cascade"] if c["acc"] >= top - 0.01), key=lambda c: c["cost_per_item"])
    emit(
        {
            "bench": "classify",
            "data": str(args.data),
            "n": len(items),
            "small_acc": round(small["acc"], 4),
            "knn_acc": round(s["tiers"][0]["acc"], 4) if args.knn else None,
            "large_acc": round(large["acc"], 4),
            "cascade_acc": round(pick["acc"], 4),
            "cascade_threshold": pick["threshold"],
            "escalation_rate": round(pick["escalation_rate"], 4),
            "answered_by": dict(zip(names, (round(x, 4) for x in pick["answered_by"]), strict=True)),
            "cost_vs_large": round(pick["cost_per_item"] / large["cost_per_item"], 4)
            if large["cost_per_item"]
            else None,
            "s_per_item": round(pick["s_per_item"], 3),
            "small_s_per_item": round(small["s_per_item"], 3),
            "wall_s": round(wall, 1),
        }
    )


if __name__ == "__main__":
    main()
