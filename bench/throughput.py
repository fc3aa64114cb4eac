"""Throughput: items per minute on one classification workload, side by side — the embedded
llama.cpp engine, a vLLM server sequentially and with several items in flight, and vLLM in-process.

    python bench/throughput.py --data ../shared/datasets/sms_spam_collection/dev.jsonl --limit 48

Starts vLLM's OpenAI-compatible server itself (from ``make vllm``'s environment, on 127.0.0.1, on the
embedded 0.5B model converted once to safetensors) unless ``--url`` names a running one. Every
configuration answers the same held-out items with the same node (a choice between the labels, no
retrieved examples, so each item is a short prompt); agreement with the gold label is printed too,
so a faster configuration cannot hide a worse one. ``--offline`` adds the vllm-offline tier (run in
the vLLM environment by a child process). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DATASETS, ROOT, emit, parser, print_table

from agentkit import Classify, Node
from agentkit.data import read_jsonl, sample, split_records
from agentkit.testing import VLLM_ENV, serving, vllm_server_command

BENCH_ENV = VLLM_ENV | {"VLLM_CPU_KVCACHE_SPACE": "2"}  # room for the batched runs


def node_for(tier: str, labels: list[str]) -> Node:
    return Node(Classify(labels, instructions="Is this SMS message spam or ham?"), [tier])


def run(label: str, node: Node, texts: list[str], expected: list[str], concurrency: int) -> dict:
    node.run(texts[0])  # warm: model loaded, canary sent, constraint compiled
    t0 = time.perf_counter()
    results = node.batch(texts, concurrency=concurrency)
    wall = time.perf_counter() - t0
    right = sum(r.value == e for r, e in zip(results, expected, strict=True))
    failed = sum(not r.ok for r in results)
    return {"config": label, "items": len(texts), "concurrency": concurrency, "wall_s": round(wall, 2),
            "items_per_min": round(60 * len(texts) / wall, 1), "accuracy": round(right / len(texts), 3),
            "failed": failed}  # fmt: skip


def main() -> None:
    p = parser(__doc__.splitlines()[0], DATASETS / "sms_spam_collection" / "dev.jsonl")
    p.set_defaults(limit=48)
    p.add_argument("--url", default=None, help="a running vLLM server's /v1 URL (default: start one)")
    p.add_argument("--concurrency", type=int, default=8, help="items in flight for the batched runs")
    p.add_argument("--offline", action="store_true", help="also vllm-offline (in the vLLM environment)")
    p.add_argument("--vllm-python", default=str(ROOT / ".vllm-venv" / "bin" / "python"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    records = sample(split_records(list(read_jsonl(args.data)), seed=args.seed).test, args.limit, seed=args.seed)
    texts = [r["input"] for r in records]
    expected = [str(r["expected"]) for r in records]
    labels = sorted(set(expected))

    if args.child:  # inside the vLLM environment: the offline tier only
        node = node_for(f"vllm-offline:{args.child}?context=2048", labels)
        print(json.dumps([run("vllm-offline", node, texts, expected, c) for c in (1, args.concurrency)]))
        return

    rows = [run("embedded llama.cpp 0.5B", node_for("embedded:qwen2.5-0.5b", labels), texts, expected, 1)]
    from agentkit.embedded import cache_dir, model_path

    hf = cache_dir() / "hf" / "qwen2.5-0.5b"
    if args.url or Path(args.vllm_python).is_file():
        subprocess.run([args.vllm_python, str(ROOT / "agentkit" / "gguf_to_hf.py"), str(model_path("qwen2.5-0.5b")),
                        str(hf)], check=True, capture_output=True)  # fmt: skip
    if args.url:
        rows += server_rows(args.url, labels, texts, expected, args.concurrency)
    else:
        cmd = vllm_server_command(args.vllm_python, hf, max_model_len=2048)
        log = Path(tempfile.mkdtemp()) / "vllm.log"
        with serving(cmd, log, env={**os.environ, **BENCH_ENV}, timeout_s=600) as url:
            rows += server_rows(url, labels, texts, expected, args.concurrency)
    if args.offline:
        child = subprocess.run(
            [args.vllm_python, __file__, "--data", str(args.data), "--limit", str(args.limit), "--seed",
             str(args.seed), "--concurrency", str(args.concurrency), "--child", str(hf)],
            capture_output=True, text=True, env={**os.environ, **BENCH_ENV},
        )  # fmt: skip
        if child.returncode != 0:
            sys.exit(f"vllm-offline run failed: {child.stderr[-3000:]}")
        rows += json.loads(child.stdout.strip().splitlines()[-1])

    base = rows[0]["items_per_min"]
    header = ["config", "concurrency", "items", "wall s", "items/min", "× embedded", "accuracy", "failed"]
    print_table([[r["config"], r["concurrency"], r["items"], r["wall_s"], r["items_per_min"],
                  f"{r['items_per_min'] / base:.2f}", r["accuracy"], r["failed"]] for r in rows], header)  # fmt: skip
    by = {(r["config"], r["concurrency"]): r["items_per_min"] for r in rows}
    emit({"n": len(texts), "cpus": os.cpu_count(), "configs": rows,
          "embedded_items_per_min": base,
          "vllm_seq_items_per_min": by.get(("vllm server", 1)),
          "vllm_batch_items_per_min": by.get(("vllm server", args.concurrency)),
          "batch_vs_seq": round(by[("vllm server", args.concurrency)] / by[("vllm server", 1)], 2)})  # fmt: skip


def server_rows(url: str, labels: list[str], texts: list[str], expected: list[str], concurrency: int) -> list[dict]:
    node = node_for(f"vllm:{url}?model=qwen-0.5b", labels)
    return [run("vllm server", node, texts, expected, c) for c in (1, concurrency)]


if __name__ == "__main__":
    main()
