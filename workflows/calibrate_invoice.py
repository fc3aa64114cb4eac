"""Fit the invoice workflow's confidence calibration on the labelled receipts (the SROIE train side).

    python -m workflows.calibrate_invoice --limit 80
    python -m workflows.calibrate_invoice --samples workflows/data/invoice_calibration_samples.jsonl  # refit only

Each receipt is extracted by the workflow's first tier with the examples of the other folds only (so a
receipt never confirms itself), every labelled field is compared with its gold value, and per field and
state an isotonic map from the raw field confidence to the share right is fitted and written to
``workflows/data/invoice_calibration.json`` (with the hash of the samples it was fitted on); the samples
are kept beside it, so a refit needs no model. The test side of the split is never read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agentkit import DEFAULT_LADDER, read_jsonl
from agentkit.calibration import FieldCalibration, FieldSample
from agentkit.data import normalize_text, sample, values_match
from workflows.invoice import CALIBRATION, EXAMPLES, _receipt_as_invoice, extraction_node

KINDS = {"issuer": "issuer", "issuer_address": "text", "issue_date": "date", "total": "amount"}
"""The labelled fields and how each is compared with its gold value."""


def field_right(kind: str, predicted: Any, gold: Any) -> bool:
    """As bench/workflows.py compares: an issuer may be a short form of the printed name, or the reverse."""
    if kind == "issuer":
        p, g = normalize_text(str(predicted or "")), normalize_text(str(gold or ""))
        return bool(p) and (p in g or g in p)
    return values_match(kind, predicted, gold)


def samples_of(
    details: Mapping[str, Any], value: Mapping[str, Any] | None, gold: Mapping[str, Any]
) -> list[FieldSample]:
    states = details.get("field_states") or {}
    out = []
    for name, kind in KINDS.items():
        if gold.get(name) in (None, ""):
            continue
        raw, state = states.get(name, (0.0, "null"))
        out.append(FieldSample(name, state, float(raw), field_right(kind, (value or {}).get(name), gold[name])))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=80, help="labelled receipts to extract")
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(CALIBRATION))
    p.add_argument("--samples", default=None, help="fit on these samples (JSONL) instead of extracting")
    args = p.parse_args()
    samples_file = Path(args.out).with_name(Path(args.out).stem + "_samples.jsonl")
    if args.samples:
        rows = [FieldSample(**r) for r in read_jsonl(args.samples)]
        meta = (
            json.loads(Path(args.out).read_text(encoding="utf-8")).get("meta", {}) if Path(args.out).is_file() else {}
        )
        fit(rows, args.out, meta)
        return
    pool = list(read_jsonl(EXAMPLES))
    picked = sample(pool, args.limit, seed=args.seed)
    tier = DEFAULT_LADDER[0]
    rows: list[FieldSample] = []
    for fold in range(args.folds):
        held = picked[fold :: args.folds]
        node = extraction_node([tier], examples=[r for r in pool if r not in held], calibration=None)
        for r in held:
            result = node.run(r["input"])
            attempt = result.attempts[-1]
            gold = _receipt_as_invoice(r)["expected"]
            rows += samples_of(attempt.details, attempt.value, gold)
            print(f"\r{fold + 1}/{args.folds} {r['id']}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    with samples_file.open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(vars(s)) + "\n" for s in rows)
    fit(rows, args.out, {"tier": str(tier), "receipts": len(picked), "folds": args.folds})


def fit(rows: list[FieldSample], out: str, meta: Mapping[str, Any]) -> None:
    cal = FieldCalibration.fit(rows, meta=meta)
    cal.save(out)
    right = {f: sum(s.right for s in rows if s.field == f) / max(1, sum(s.field == f for s in rows)) for f in KINDS}
    print(json.dumps({"out": out, "samples": len(rows), "data": cal.data[:12], "right": right}))


if __name__ == "__main__":
    main()
