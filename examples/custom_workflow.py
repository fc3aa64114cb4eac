"""A custom workflow in plain Python — no graph needed: agentkit nodes are callables with results.

    python examples/custom_workflow.py examples/invoices/sroie-002.txt examples/invoices/sroie-003.txt

Cleanse a receipt's OCR text, extract its four SROIE fields with the labelled receipt most like it in the
prompt, and keep every result — accepted, escalated, or failed with its reasons — in a trace file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agentkit import Cleanse, Extract, Node, collect, read_jsonl
from schemas.receipt import Receipt

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--trace", type=Path, default=Path("runs/receipts-trace.jsonl"))
    args = p.parse_args()

    cleanse = Node(Cleanse(), ["rules"])
    extract = Node(
        Extract(
            Receipt,
            instructions="Extract the receipt's company name, date, address and total, copied as printed.",
            examples=list(read_jsonl(HERE / "data" / "receipts_labelled.jsonl")),
            k=1,
            verbatim={"total": "amount", "date": "date"},  # picked from the amounts/dates printed on it
        )
    )
    with collect(args.trace) as trace:
        for path in args.files:
            clean = cleanse.run(path.read_bytes(), input_id=str(path))
            result = extract.run(clean.value, input_id=str(path)) if clean.ok else clean
            status = f"{result.tier} conf={result.confidence:.2f}" if result.ok else f"FAILED: {result.reason}"
            print(f"{path}: {status}\n  {json.dumps(result.value)}")
    print(trace.summary())


if __name__ == "__main__":
    main()
