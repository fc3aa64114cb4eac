"""Fit the email workflow classifier's confidence calibration, threshold and review bar on its labelled messages.

    python -m workflows.calibrate_email --max-error 0.03

Every labelled message is answered once by each tier of the classifier with every labelled message but itself
among its examples (leave-one-out: the pool is both the examples and the evaluation). On ``--share`` of the
messages (default: all of them) each tier's confidence is calibrated and the threshold and the review bar (at
most ``--max-error`` wrong among the answers accepted without review) are chosen; the rest, if any, measures
them (with 200 messages a half is too few to fit on: the figures move by several points between halves). The
calibration is written to ``workflows/data/email_calibration.json`` with the threshold and review bar in its
``meta``, which :func:`workflows.email.classifier_node` uses. The held-out messages in ``examples/emails`` are
never read: ``python bench/workflows.py email`` measures the workflow on them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agentkit import DEFAULT_LADDER
from agentkit.data import read_jsonl
from agentkit.eval import evaluate_node
from agentkit.eval.report import print_report
from workflows.email import CALIBRATION, EXAMPLES, classifier_node


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-error", type=float, default=0.03, help="at most this share wrong among accepted answers")
    p.add_argument("--out", type=Path, default=CALIBRATION)
    p.add_argument("--cache", type=Path, default=Path("runs/calibrate_email/answers.jsonl"), help="answers (resumes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--share", type=float, default=1.0, help="share of the messages to fit on (the rest measures)")
    args = p.parse_args()
    node = classifier_node(DEFAULT_LADDER, calibration=None)
    records = list(read_jsonl(EXAMPLES))
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    report = evaluate_node(
        node, records, cache=args.cache, seed=args.seed, leave_one_out=True, max_error=args.max_error,
        calibration_share=args.share,
        on_item=lambda done, total: print(f"\r{done}/{total}", end="", flush=True),
    )  # fmt: skip
    print()
    print_report(report)
    fitted = report.get("fitted")
    if fitted is None:
        raise SystemExit(f"not calibrated: {report['confidence']['note']}")
    op = report["operating_point"]
    fitted.meta |= {
        "threshold": op["threshold"],
        "review_threshold": op["review_threshold"],
        "max_error": args.max_error,
        "split": report["split"],
        "on_test": {k: op["on_test"][k] for k in ("score", "accepted_share", "accepted_error", "review_rate")},
    }
    print(f"written {fitted.save(args.out)}: threshold {op['threshold']:g}, review below {op['review_threshold']:.3f}")


if __name__ == "__main__":
    main()
