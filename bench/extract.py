"""Receipt extraction benchmark (SROIE): small-only vs large-only vs cascade, with and without Cleanse.

    python bench/extract.py --data ../shared/datasets/sroie2019/dev.jsonl --limit 100

All-four-fields-right rate and per-field accuracy (normalized match: dates day-first, amounts as
Decimal, text case- and whitespace-insensitive; exact match reported too). Retrieved examples come
only from the train split.
"""

from __future__ import annotations

import time

from _common import DATASETS, Progress, emit, fmt_ci, parser, print_table

from agentkit import Cleanse, Extract, Policy, Tier
from agentkit.data import compare_fields, parse_amount, parse_date, read_jsonl, split_records
from agentkit.evaluate import answer_all, cascade, wilson
from schemas.receipt import FIELD_KINDS, Receipt

FIELDS = list(FIELD_KINDS)


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
    items = split.test[: args.limit]
    cleanse = Cleanse()
    tiers = [Tier(s) for s in args.tiers.split(",")]
    names = [t.name for t in tiers]
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.cleanse]
    headline: dict = {
        "bench": "extract",
        "data": str(args.data),
        "n": len(items),
        "verbatim": args.verbatim,
        "k": args.k,
    }
    rows = []
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
        t0 = time.perf_counter()
        table = answer_all(task, tiers, [prep(r["input"]) for r in items], on_item=Progress(len(items), label))
        wall = time.perf_counter() - t0

        def score(values: list, tag: str, extra: dict, label: str = label) -> dict:
            n = len(items)
            per = {f: 0 for f in FIELDS}
            per_exact = {f: 0 for f in FIELDS}
            all_right = 0
            for v, item in zip(values, items, strict=True):
                cmp = compare_fields(v, item["expected"], FIELD_KINDS)
                for f in FIELDS:
                    per[f] += cmp[f]["normalized"]
                    per_exact[f] += cmp[f]["exact"]
                all_right += all(c["normalized"] for c in cmp.values())
            lo, hi = wilson(all_right, n)
            rows.append(
                [f"{label}/{tag}", fmt_ci(all_right / n, (lo, hi))]
                + [f"{per[f] / n:.2f} ({per_exact[f] / n:.2f})" for f in FIELDS]
                + [extra.get("esc", "-"), f"{extra['cost'] * 1e6:.0f}", f"{extra['s']:.1f}"]
            )
            return {"all_fields": all_right / n, **{f: per[f] / n for f in FIELDS}}

        results = {}
        for t, name in enumerate(names):
            vals = [row[t].value if row[t].valid else None for row in table]
            cost = sum(row[t].cost_usd for row in table) / len(table)
            secs = sum(row[t].seconds for row in table) / len(table)
            results[name] = score(vals, name, {"cost": cost, "s": secs})
        if len(tiers) > 1:
            for th in (0.5, 0.8, 0.9):
                outs = [cascade(row, Policy(threshold=th)) for row in table]
                results[f"cascade@{th}"] = score(
                    [o.value for o in outs],
                    f"cascade@{th}",
                    {
                        "esc": f"{sum(o.escalated for o in outs) / len(outs):.2f}",
                        "cost": sum(o.cost_usd for o in outs) / len(outs),
                        "s": sum(o.seconds for o in outs) / len(outs),
                    },
                )
        headline[label] = {k: {m: round(x, 4) for m, x in v.items()} for k, v in results.items()}
        headline[f"{label}_wall_s"] = round(wall, 1)
    print(f"\n{args.data} — n={len(items)} held-out receipts, k={args.k}; per field: normalized (exact)")
    print_table(rows, ["config", "all 4 right [95% CI]", *FIELDS, "escalated", "µ$/item", "s/item"])
    emit(headline)


if __name__ == "__main__":
    main()
