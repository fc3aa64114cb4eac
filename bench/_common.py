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
    p.add_argument(
        "--threshold", type=float, default=None, help="cascade threshold to headline (default: best sweep point)"
    )
    return p


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


def fmt_ci(acc: float, ci: tuple[float, float]) -> str:
    return f"{acc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def emit(summary: dict[str, Any]) -> None:
    """The one JSON line of headline figures other tools read."""
    print(json.dumps(summary, sort_keys=True))
