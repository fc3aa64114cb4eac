"""Reader specialization benchmark: the 0.5B GroundedAnswer reader LoRA-tuned on SQuAD 2.0 *train*
articles vs the stock 0.5B, the 1.5B and the cascade over each small tier, on articles it never saw.

    python bench/tune_reader.py --limit 100 --steps 400 --minutes 60             # Normans
    python bench/tune_reader.py --limit 100 --corpus bench/data/squad_v2_rhine/corpus.jsonl \\
        --data bench/data/squad_v2_rhine/questions.jsonl                         # Rhine (reuses the adapter)

Training examples are per passage, in the node's exact prompt (instructions + passage as the system
message, the question as the user turn): ``yes: <answer>`` on the gold passage, ``no`` on the gold
passage of an unanswerable question and on ``--negatives`` retrieved passages of other paragraphs
(:func:`agentkit.tune.reader_training_set`); batches group the questions of one passage, which a
packed batch computes once. The tuned tier is served as users run it: the GGUF LoRA on the original
Q4 model in llama.cpp, the same per-passage span constraint. ``--out`` keeps the adapter (a rerun
reuses it) and the per-tier answers (a rerun resumes). Ends with one JSON line.
"""

from __future__ import annotations

import json
from pathlib import Path

from _common import DATASETS, ROOT, add_tune_arguments, emit, evaluate, parser, print_step, print_table, tune_config

from agentkit import Node, Policy
from agentkit.corpus import Corpus
from agentkit.data import normalize_text, read_jsonl, sample
from agentkit.tasks.grounded import GroundedAnswer
from agentkit.tune import base_model, comparison, reader_training_set, train

SQUAD = DATASETS / "squad_v2_normans"
TRAIN = ROOT / "bench" / "data" / "squad_v2_train10"


def main() -> None:
    p = parser(__doc__.splitlines()[0], SQUAD / "questions.jsonl")
    p.set_defaults(limit=100)
    p.add_argument("--corpus", type=Path, default=SQUAD / "corpus.jsonl", help="the evaluation documents")
    p.add_argument("--train-corpus", type=Path, default=TRAIN / "corpus.jsonl")
    p.add_argument("--train-data", type=Path, default=TRAIN / "questions.jsonl")
    p.add_argument("--train", type=int, default=100_000, help="training questions (of --train-data)")
    p.add_argument("--k", type=int, default=2, help="passages retrieved per question")
    p.add_argument("--negatives", type=int, default=1, help="retrieved passages of other paragraphs per question")
    p.add_argument(
        "--unanswerable-weight", type=int, default=1,
        help="each unanswerable question's example on its own passage counts this many times (SQuAD 2.0's adversarial"
        " 'no' is ~4%% of the examples)",
    )  # fmt: skip
    add_tune_arguments(p, max_len=512)
    p.add_argument("--out", type=Path, default=Path("runs/tune_reader"))
    args = p.parse_args()

    tiers = args.tiers.split(",")
    out = args.out / "squad_v2"
    evaluation = list(read_jsonl(args.data))
    if not (out / "tune.json").is_file():
        train_corpus = Corpus.build(args.train_corpus)
        questions = sample(list(read_jsonl(args.train_data)), args.train, seed=args.seed)
        data = reader_training_set(
            GroundedAnswer(train_corpus, k=args.k),
            questions,
            negatives=args.negatives,
            exclude=[r["input"] for r in evaluation],
            seed=args.seed,
            train_side_only=False,
        )  # fmt: skip  (other articles than the evaluated ones: both sides of the split)
        adversarial = [ex for ex in data.examples if ex.origin.startswith("no_answer:")]
        data.examples += adversarial * (args.unanswerable_weight - 1)
        data.counts["no_answer_repeats"] = len(adversarial) * (args.unanswerable_weight - 1)
        print(f"training examples: {len(data.examples)} {data.counts}")
        train(
            data, base_model(tiers[0]), out, tune_config(args), on_step=print_step,
            bind={"tier_index": 0, "stock_spec": tiers[0], "task": {}},
        )  # fmt: skip
        print()
    meta = json.loads((out / "tune.json").read_text())

    corpus = Corpus.build(args.corpus)
    trained_on = {normalize_text(r["input"]) for r in read_jsonl(args.train_data)}
    items = [r for r in evaluation if normalize_text(r["input"]) not in trained_on]  # none, for SQuAD articles
    node = Node(GroundedAnswer(corpus, k=args.k), tiers, Policy(when_unsure="abstain"), name="reader")
    node, ladders = comparison(node, out)
    args.save = args.save or out / f"answers.{args.data.parent.name}.jsonl"
    report = evaluate(
        node, sample(items, args.limit, seed=args.seed), args, ladders=ladders, thresholds=(0.3, 0.5, 0.7, 0.9)
    )
    every = report["all"]
    rows = []
    for key in sorted(every):
        f, q = every[key], every[key]["quality"]
        rows.append([key, f"{q['f1']:.1f}", f"{q['f1_all']:.1f}", f"{q['abstain_acc']:.3f}",
                     f"{f['escalation_rate']:.3f}", f"{f['s_per_item']:.2f}"])  # fmt: skip
    print_table(rows, ["config (all held-out questions)", "F1 answerable", "F1 all", "abstain acc", "escalated", "s/q"])
    stock, tuned, large = every["tier0"]["quality"], every["tier1"]["quality"], every[f"tier{len(tiers)}"]["quality"]

    def best(prefix: str) -> dict:
        """The ladder's configuration with the best F1 over all questions."""
        key = max((k for k in every if k.startswith(prefix)), key=lambda k: every[k]["quality"]["f1_all"])
        f, q = every[key], every[key]["quality"]
        return {"config": key, "f1": round(q["f1"], 2), "f1_all": round(q["f1_all"], 2),
                "abstain_acc": q["abstain_acc"], "escalation_rate": round(f["escalation_rate"], 4)}  # fmt: skip

    emit({
        "bench": "tune_reader", "data": str(args.data), "n": report["n"],
        "stock_f1": round(stock["f1"], 2), "stock_f1_all": round(stock["f1_all"], 2),
        "stock_abstain_acc": stock["abstain_acc"],
        "tuned_f1": round(tuned["f1"], 2), "tuned_f1_all": round(tuned["f1_all"], 2),
        "tuned_abstain_acc": tuned["abstain_acc"], "tuned_abstain_precision": tuned["abstain_precision"],
        "large_f1": round(large["f1"], 2), "large_f1_all": round(large["f1_all"], 2),
        "large_abstain_acc": large["abstain_acc"],
        "stock_s_per_question": round(every["tier0"]["s_per_item"], 3),
        "tuned_s_per_question": round(every["tier1"]["s_per_item"], 3),
        "best_stock_cascade": best("stock@"), "best_tuned_cascade": best("tuned@"),
        "train_examples": meta["examples"], "train_steps": meta["steps"], "train_s": meta["seconds"],
        "train_s_per_step": meta["s_per_step"], "train_peak_rss_gb": meta["peak_rss_gb"],
    })  # fmt: skip


if __name__ == "__main__":
    main()
