"""Receipt extraction benchmark (SROIE): small-only vs large-only vs cascade, with and without Cleanse.

    python bench/extract.py --data ../shared/datasets/sroie2019/dev.jsonl --limit 100

All-four-fields-right rate and per-field accuracy (normalized match: dates day-first, amounts as
Decimal, text case- and whitespace-insensitive; exact match reported too). Retrieved examples come
only from the train split.
"""

from __future__ import annotations

from _common import DATASETS, emit, evaluate, parser

from agentkit import Cleanse, Extract, Node, Policy
from agentkit.data import parse_amount, parse_date, read_jsonl, sample, split_records
from schemas.receipt import FIELD_KINDS, Receipt


def total_in_text(value: Receipt, text: str) -> str | None:
    amount = parse_amount(value.total)
    if amount is None:
        return f"total {value.total!r} is not an amount"
    return None if value.total.strip() in text else f"total {value.total!r} does not occur in the receipt"


def date_parses(value: Receipt, text: str) -> str | None:
    return None if parse_date(value.date) else f"date {value.date!r} is not a date"


def main() -> None:
    p = parser(__doc__.splitlines()[0], DATASETS / "sroie2019" / "dev.jsonl")
    p.add_argument("--k", type=int, default=1, help="retrieved example receipts per prompt")
    p.add_argument("--cleanse", choices=["both", "on", "off"], default="both")
    p.add_argument("--verbatim", action="store_true", help="total and date picked from candidates in the text")
    args = p.parse_args()

    split = split_records(read_jsonl(args.data), seed=args.seed)
    items = sample(split.test, args.limit, seed=args.seed)
    cleanse = Cleanse()
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.cleanse]
    headline: dict = {
        "bench": "extract",
        "data": str(args.data),
        "n": len(items),
        "verbatim": args.verbatim,
        "k": args.k,
    }
    for use_cleanse in modes:
        prep = cleanse.apply_rules if use_cleanse else (lambda t: t)
        pool = [{"input": prep(r["input"]), "expected": r["expected"]} for r in split.train]
        task = Extract(
            Receipt,
            instructions="Extract the receipt's company name, date, address and total, copied as printed.",
            examples=pool,
            k=args.k,
            validators=[total_in_text, date_parses],
            max_tokens=200,
            verbatim={"total": "amount", "date": "date"} if args.verbatim else None,
        )
        label = "cleanse" if use_cleanse else "raw"
        node = Node(task, args.tiers.split(","), Policy(), name=f"sroie/{label}")
        records = [{"id": str(r["id"]), "input": prep(r["input"]), "expected": r["expected"]} for r in items]
        cache = args.save.with_suffix(f".{label}.jsonl") if args.save else None  # one answer file per variant
        report = evaluate(node, records, args, kinds=FIELD_KINDS, thresholds=(0.5, 0.8, 0.9), cache=cache)
        section = report.get("test") or report["all"]
        pick = report.get("calibration", {}).get("picked", "tier0")
        headline[label] = {
            "split": report.get("split"),
            "config": pick,
            "all_fields": round(section[pick]["quality"]["all_fields"], 4),
            "fields": {f: round(v["normalized"], 4) for f, v in section[pick]["quality"]["fields"].items()},
            "small_all_fields": round(section["tier0"]["quality"]["all_fields"], 4),
            "escalation_rate": round(section[pick]["escalation_rate"], 4),
            "s_per_item": round(section[pick]["s_per_item"], 2),
            "wall_s": round(report["wall_s"], 1),
        }
    emit(headline)


if __name__ == "__main__":
    main()
