"""Shared bits of the benchmark scripts: argument parsing, tiers, a progress line, table printing."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
sys.path.insert(0, str(ROOT))


def parser(description: str, default_data: Path) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", type=Path, default=default_data, help="JSONL with input/expected")
    p.add_argument("--limit", type=int, default=300, help="evaluation items (held-out split)")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--tiers", default="embedded:qwen2.5-0.5b,embedded:qwen2.5-1.5b", help="ladder, cheapest first")
    p.add_argument("--target", type=float, default=None, help="calibrate: cheapest threshold reaching this score")
    p.add_argument("--thresholds", default="", help="comma-separated threshold sweep (default: agentkit eval's)")
    p.add_argument("--raw", action="store_true", help="leave each tier's confidence uncalibrated")
    p.add_argument("--save", type=Path, default=None, help="every tier's answer per item (JSONL; a rerun resumes)")
    p.add_argument("--report", type=Path, default=None, help="also write report.json and report.html here")
    return p


def add_tune_arguments(p: argparse.ArgumentParser, *, max_len: int | None = None) -> None:
    """The LoRA settings of the tuning benchmarks, defaulting to the library's own (not copies)."""
    from agentkit.tune import TuneConfig

    defaults = TuneConfig()
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch", type=int, default=defaults.batch)
    p.add_argument("--rank", type=int, default=defaults.rank)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--layers", type=int, default=None, help="adapt only the last N decoder layers")
    p.add_argument("--targets", default=",".join(defaults.target_modules), help="modules the adapter adapts")
    p.add_argument("--max-len", type=int, default=max_len or defaults.max_len,
                   help="prompt + reply tokens; longer examples are left out")  # fmt: skip
    p.add_argument("--minutes", type=float, default=30.0, help="time budget for the training steps")


def tune_config(args: argparse.Namespace) -> Any:
    """The :class:`agentkit.tune.TuneConfig` of :func:`add_tune_arguments`' options (alpha = 2 × rank)."""
    from agentkit.tune import TuneConfig

    return TuneConfig(steps=args.steps, batch=args.batch, rank=args.rank, alpha=2 * args.rank, lr=args.lr,
                      minutes=args.minutes, layers=args.layers, max_len=args.max_len,
                      target_modules=tuple(args.targets.split(",")))  # fmt: skip


def print_step(step: int, total: int, loss: float) -> None:
    """A training progress line (``on_step`` of :func:`agentkit.tune.train`)."""
    print(f"\rstep {step}/{total} loss {loss:.3f}", end="", flush=True)


def evaluate(node: Any, records: list[dict], args: argparse.Namespace, **kw: Any) -> dict[str, Any]:
    """``agentkit eval``'s computation on ``node`` (one way to get every number), printed like it."""
    from agentkit.eval import evaluate_node
    from agentkit.eval.report import print_report, write_html, write_json

    progress = Progress(len(records), args.data.parent.name)
    kw.setdefault("cache", args.save)
    kw.setdefault("fit", not getattr(args, "raw", False))
    if getattr(args, "thresholds", ""):
        kw.setdefault("thresholds", [float(x) for x in args.thresholds.split(",")])
    report = evaluate_node(
        node, records, target=args.target, seed=args.seed, on_item=lambda i, n: progress(i - 1), **kw
    )
    report["data"] = str(args.data)
    print_report(report)
    if args.report:
        write_json(report, args.report / "report.json")
        write_html(report, args.report / "report.html")
    return report


def headline_figures(report: dict[str, Any], first_model_tier: int = 0) -> dict[str, Any]:
    """The JSON keys every classification benchmark ends with (on the test split, calibrated pick)."""
    section = report.get("test") or report["all"]
    pick = report.get("calibration", {}).get("picked")
    small = section[f"tier{first_model_tier}"]
    large = section[f"tier{len(report['tiers']) - 1}"]
    chosen = section[pick] if pick else small
    return {
        "n": report["n"],
        "split": report.get("split"),
        "small_acc": round(small["score"], 4),
        "large_acc": round(large["score"], 4),
        "cascade_acc": round(chosen["score"], 4),
        "cascade_threshold": report.get("calibration", {}).get("threshold"),
        "escalation_rate": round(chosen["escalation_rate"], 4),
        "answered_by": dict(zip(report["tiers"], (round(x, 4) for x in chosen["answered_by"]), strict=True)),
        "cost_vs_large": round(chosen["cost_per_item"] / large["cost_per_item"], 4) if large["cost_per_item"] else None,
        "s_per_item": round(chosen["s_per_item"], 3),
        "small_s_per_item": round(small["s_per_item"], 3),
        "apgr": report.get("headline", {}).get("apgr"),
        "wall_s": round(report["wall_s"], 1),
    } | operating_figures(report)


def operating_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The chosen cascade with its review bar, on the test split: accepted share, error among the accepted,
    review rate, and the calibration error of its answers' confidence, raw and calibrated."""
    op = report.get("operating_point")
    if not op:
        return {"calibrated": report.get("confidence", {}).get("calibrated")}
    t = op["on_test"]
    r = 4
    return {
        "calibrated": report["confidence"]["calibrated"],
        "review_threshold": round(op["review_threshold"], r),
        "max_error": op["max_error"],
        "accepted_share": round(t["accepted_share"], r),
        "accepted_error": None if t["accepted_error"] is None else round(t["accepted_error"], r),
        "review_rate": round(t["review_rate"], r),
        "ece": None if op["ece"] is None else round(op["ece"], r),
        "ece_raw": None if op["ece_raw"] is None else round(op["ece_raw"], r),
    }


class Progress:
    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.t0 = total, label, time.perf_counter()

    def __call__(self, i: int) -> None:
        done = i + 1
        rate = (time.perf_counter() - self.t0) / done
        print(f"\r{self.label}: {done}/{self.total}  {rate:.2f} s/item", end="", file=sys.stderr, flush=True)
        if done == self.total:
            print(file=sys.stderr)


def print_table(rows: list[list[Any]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


def emit(summary: dict[str, Any]) -> None:
    """The one JSON line of headline figures other tools read."""
    print(json.dumps(summary, sort_keys=True))
