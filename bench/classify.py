"""Classification benchmark: small-only vs large-only vs cascade on a held-out split.

    python bench/classify.py --data ../shared/datasets/sms_spam_collection/dev.jsonl --limit 300

A thin wrapper over ``agentkit eval``'s computation (:func:`agentkit.eval.evaluate_node`): each
item is answered once per tier; the cascade at each threshold is derived from those answers with
the node's own policy rules; the threshold is chosen on a calibration half of the held-out items
and reported on the other half. Retrieved examples come only from the train split (the shared
split function keeps duplicates together).

    python bench/classify.py --data ../shared/datasets/clinc150_oos/val.jsonl --oos oos --k 4 --limit 300

``--oos LABEL``: that label is not scored; an item no tier is confident about is called out of
scope, and the JSON line adds ``in_scope_acc`` and ``oos_recall``.

    python bench/classify.py --data bench/data/clinc150_test.jsonl \
        --pool-data ../shared/datasets/clinc150_oos/train.jsonl --oos oos --k 4 --limit 200

``--pool-data FILE``: examples come from that file (e.g. a dataset's own train split) and the items
are a seeded sample of all of ``--data`` (records whose text is in the pool are left out) — for
held-out sets that are not in ../shared/datasets (bench/data).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from _common import DATASETS, emit, evaluate, headline_figures, operating_figures, parser

from agentkit import Classify, Node, Policy
from agentkit.data import normalize_text, read_jsonl, sample, split_records

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
    "squad_answerability": (
        "Does the passage state the answer to the question? answerable = it does; unanswerable = it does not"
        " (the passage never says it, or says something else)."
    ),
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
    p.add_argument("--knn", type=int, default=0, help="put a knn tier (vote of this many neighbours) first")
    p.add_argument("--oos", default=None, help="out-of-scope label: abstain to it when no tier is confident")
    p.add_argument("--pool-data", type=Path, default=None, help="examples from this file; items: all of --data")
    p.add_argument("--max-error", type=float, default=0.03, help="review bar: at most this share wrong when accepted")
    p.add_argument("--splits", type=int, default=1, help="report the review bar on this many splits")
    args = p.parse_args()

    records = list(read_jsonl(args.data))
    if args.pool_data:
        pool = list(read_jsonl(args.pool_data))
        known = {normalize_text(r["input"]) for r in pool}
        items = [r for r in records if normalize_text(r["input"]) not in known]
        items = sample(items, args.limit, seed=args.seed)
        records = pool + records
    else:
        split = split_records(records, seed=args.seed)
        pool, items = split.train, sample(split.test, args.limit, seed=args.seed)
    pool = pool[: args.pool] if args.pool else pool
    source = (args.pool_data or args.data).parent
    categories = source / "categories.json"
    labels = (
        json.loads(categories.read_text()) if categories.exists() else sorted({str(r["expected"]) for r in records})
    )
    labels = [label for label in labels if label != args.oos]
    task = Classify(
        labels,
        instructions=INSTRUCTIONS.get(source.name, "Classify the text."),
        examples=pool,
        k=args.k,
        static_per_label=args.static,
        shortlist=args.shortlist,
        verbalizer=verbalizer(args.verbalize, labels),
        calibrate=args.calibrate,
        vote_k=args.knn or 4,
        retrieval=args.retrieval,
        abstain_label=args.oos,
    )
    tiers = (["knn"] if args.knn else []) + args.tiers.split(",")
    policy = Policy(when_unsure="abstain") if args.oos else Policy()
    node = Node(task, tiers, policy, name=source.name)
    print(
        f"{args.data} — n={len(items)} held-out, pool={len(pool)}, k={args.k}, static={args.static},"
        f" verbalize={args.verbalize or '-'}, calibrate={args.calibrate}, knn={args.knn}, retrieval={args.retrieval},"
        f" labels={len(labels)}"
    )
    cache = args.save or (Path(tempfile.mkdtemp()) / "answers.jsonl" if args.splits > 1 else None)
    report = evaluate(node, items, args, max_error=args.max_error, cache=cache)
    figures = {"bench": "classify", "data": str(args.data)} | headline_figures(report, 1 if args.knn else 0)
    if args.knn:
        figures["knn_acc"] = round((report.get("test") or report["all"])["tier0"]["score"], 4)
    if args.oos:  # low confidence -> out of scope: in-scope accuracy and OOS recall of the chosen cascade
        section = report.get("test") or report["all"]
        confusion = section[report["calibration"]["picked"] if "calibration" in report else "tier0"]["quality"][
            "confusion"
        ]
        in_scope = {g: row for g, row in confusion.items() if g != args.oos}
        figures["in_scope_acc"] = round(
            sum(row.get(g, 0) for g, row in in_scope.items()) / max(1, sum(sum(r.values()) for r in in_scope.values())),
            4,
        )
        oos_row = confusion.get(args.oos, {})
        figures["oos_recall"] = round(oos_row.get(args.oos, 0) / sum(oos_row.values()), 4) if oos_row else None
    if args.splits > 1:  # the same answers, other calibration/test splits: how much the figures move
        from agentkit.eval import evaluate_node

        runs = [report] + [
            evaluate_node(node, items, seed=args.seed + s, cache=cache, max_error=args.max_error, fit=not args.raw)
            for s in range(1, args.splits)
        ]
        keys = ("accepted_error", "review_rate", "ece")
        per = {k: [operating_figures(r).get(k) for r in runs] for k in keys}
        figures["splits"] = per | {f"mean_{k}": round(sum(v) / len(v), 4) for k, v in per.items() if None not in v}
        print("over", args.splits, "splits:", json.dumps(figures["splits"]))
    emit(figures)


if __name__ == "__main__":
    main()
