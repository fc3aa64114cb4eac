"""Specialization benchmark: stock small tier vs the same model LoRA-tuned on the train side, the
large tier, and the cascade over each small tier — side by side on held-out records.

    python bench/tune.py --data ../shared/datasets/banking77/train.jsonl --limit 100 --train 960 --steps 120

The stock tier runs in its best measured configuration (``--k`` retrieved examples, ``--retrieval``,
labels listed, shortlist); the tuned tier is served as users run it — the GGUF LoRA on the original
Q4 model in llama.cpp — with no retrieved or fixed examples and no label list in its prompt
(only the retrieval shortlist of labels to score). Training examples come only from the train side of the
split (gold labels), evaluation items only from the test side, or from ``--eval-data`` (another file, less any
text trained on). ``--out`` keeps the adapter (a rerun reuses it) and the per-tier answers (a rerun resumes).
Ends with one JSON line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from _common import DATASETS, add_tune_arguments, emit, evaluate, parser, print_step, print_table, tune_config
from classify import INSTRUCTIONS, verbalizer

from agentkit import Classify, Node, Policy
from agentkit.data import normalize_text, read_jsonl, sample, split_records
from agentkit.tune import base_model, comparison, train, training_set


def main() -> None:
    p = parser(__doc__.splitlines()[0], DATASETS / "banking77" / "train.jsonl")
    p.set_defaults(limit=100)
    p.add_argument("--k", type=int, default=4, help="retrieved examples for the stock tiers")
    p.add_argument("--retrieval", default="dense", choices=["bm25", "dense", "hybrid"])
    p.add_argument("--static", type=int, default=0, help="examples per label in the stock prefix")
    p.add_argument("--verbalize", default="", help="as bench/classify.py (the stock and large tiers' label words)")
    p.add_argument("--tuned-verbalize", default=None,
                   help="the label words the tuned tier is trained on and writes (default: --verbalize's)")  # fmt: skip
    p.add_argument("--train", type=int, default=960, help="training examples (train side)")
    add_tune_arguments(p)
    p.add_argument("--out", type=Path, default=Path("runs/tune"))
    p.add_argument("--eval-data", type=Path, default=None,
                   help="evaluate on this file's records instead of the test side of --data's split "
                        "(e.g. bench/data/banking77_test.jsonl, records not in ../shared/datasets)")  # fmt: skip
    p.add_argument(
        "--lora",
        action="store_true",
        help="serve the tuned tier as the GGUF LoRA on the stock model, not the merged model",
    )
    p.add_argument("--tuned-shortlist", default=None,
                   help="the tuned tier's shortlist: N labels of the retrieved examples, or 'none': score every "
                        "label (no retrieval; pruned label scoring decodes only the likely ones)")  # fmt: skip
    p.add_argument("--scoring", default="sequence", choices=["sequence", "choice"],
                   help="how the stock and large tiers score labels (Classify(scoring=...))")  # fmt: skip
    p.add_argument("--tuned-scoring", default="choice", choices=["choice", "sequence"],
                   help="how the tuned tier scores labels (Classify(scoring=...)); a tuning folder's own "
                        "setting is replaced")  # fmt: skip
    args = p.parse_args()

    records = list(read_jsonl(args.data))
    split = split_records(records, seed=args.seed)
    labels = sorted({str(r["expected"]) for r in records})
    name = args.data.parent.name
    task = Classify(
        labels,
        instructions=INSTRUCTIONS.get(name, "Classify the text."),
        examples=split.train,
        k=args.k,
        static_per_label=args.static,
        verbalizer=verbalizer(args.verbalize, labels),
        retrieval=args.retrieval,
        scoring=args.scoring,
    )
    stock = Node(task, args.tiers.split(","), Policy(threshold=0.8), name=name)
    out = args.out / name
    words = verbalizer(args.verbalize if args.tuned_verbalize is None else args.tuned_verbalize, labels)
    tuned_settings = {"k": 0, "list_labels": False, "verbalizer": words or {label: label for label in labels},
                      "scoring": args.tuned_scoring}  # fmt: skip
    tuned_settings |= {"static_per_label": 0} if args.static else {}
    if not (out / "tune.json").is_file():
        pool = sample(split.train, args.train, seed=args.seed)  # a mix of labels, not the file's first ones
        data = training_set(task.variant(**tuned_settings), records=pool, seed=args.seed)
        report = train(
            data, base_model(stock.tiers[0].spec), out, tune_config(args), on_step=print_step,
            bind={"tier_index": 0, "stock_spec": stock.tiers[0].spec, "task": tuned_settings},
        )  # fmt: skip
        print()
    meta = json.loads((out / "tune.json").read_text())
    node, ladders = comparison(stock, out, merged=not args.lora)
    at = next(i for i, t in enumerate(node.tiers) if t.name.startswith("tuned:"))
    tuned_task = {**node.tiers[at].task, "scoring": args.tuned_scoring}
    if args.tuned_shortlist is not None:
        tuned_task["shortlist"] = None if args.tuned_shortlist == "none" else int(args.tuned_shortlist)
    node.tiers[at] = dataclasses.replace(node.tiers[at], task=tuned_task)
    held_out = split.test
    if args.eval_data:
        trained_on = {normalize_text(r["input"]) for r in split.train}
        held_out = [r for r in read_jsonl(args.eval_data) if normalize_text(r["input"]) not in trained_on]
    args.save = args.save or out / (f"answers.{args.eval_data.stem}.jsonl" if args.eval_data else "answers.jsonl")
    report = evaluate(node, sample(held_out, args.limit, seed=args.seed), args, ladders=ladders)
    every = report["all"]
    rows = []
    for key in sorted(every):
        f = every[key]
        rows.append([key, f"{f['score']:.3f}", f"{f['escalation_rate']:.3f}", f"{f['cost_per_item'] * 1e6:.1f}",
                     f"{f['s_per_item']:.2f}"])  # fmt: skip
    print_table(rows, ["config (all held-out items)", "accuracy", "escalated", "µ$/item", "s/item"])

    def best_at(prefix: str, score: float) -> float | None:
        """Lowest escalation rate of a ladder's cascade reaching ``score`` (None if none does)."""
        rates = [f["escalation_rate"] for k, f in every.items() if k.startswith(prefix) and f["score"] >= score]
        return min(rates) if rates else None

    stock_small, tuned_small = every["tier0"], every["tier1"]
    reach = min(max(f["score"] for k, f in every.items() if k.startswith(p)) for p in ("stock@", "tuned@"))
    emit({
        "n": report["n"], "data": str(args.data), "eval_data": str(args.eval_data or args.data),
        "split": report.get("split"),
        "stock_small_acc": round(stock_small["score"], 4), "stock_small_ci95": stock_small.get("ci95"),
        "tuned_small_acc": round(tuned_small["score"], 4), "tuned_small_ci95": tuned_small.get("ci95"),
        "large_acc": round(every[f"tier{len(node.tiers) - 1}"]["score"], 4),
        "stock_s_per_item": round(stock_small["s_per_item"], 3),
        "tuned_s_per_item": round(tuned_small["s_per_item"], 3),
        "speedup": round(stock_small["s_per_item"] / max(tuned_small["s_per_item"], 1e-9), 2),
        "matched_acc": round(reach, 4),
        "stock_cascade_escalation_at_matched": best_at("stock@", reach),
        "tuned_cascade_escalation_at_matched": best_at("tuned@", reach),
        "train_examples": meta["examples"], "train_steps": meta["steps"], "train_s": meta["seconds"],
        "train_s_per_step": meta["s_per_step"], "train_peak_rss_gb": meta["peak_rss_gb"],
    })  # fmt: skip


if __name__ == "__main__":
    main()
