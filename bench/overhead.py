"""agentkit's llama.cpp engine vs a raw Outlines generator: same model, prompt and constraint.

    python bench/overhead.py --data ../shared/datasets/sms_spam_collection/dev.jsonl --limit 20

Three ways to answer the same constrained prompts with the 0.5B model, greedy:
  raw-outlines   outlines.from_llamacpp + outlines.Generator (resets the KV cache every call)
  agentkit-nocache  agentkit's engine with prefix reuse off
  agentkit       agentkit's engine (the node's fixed prefix stays in the KV cache)
for a label choice and for a JSON object. Prints per-call seconds and the ratios, then one JSON line.
"""

from __future__ import annotations

import json
import time
from typing import Literal

import pydantic
from _common import DATASETS, emit, parser, print_table

from agentkit import Classify, Constraint
from agentkit.backends.llamacpp import LlamaCppEngine, load_llama
from agentkit.data import read_jsonl, sample, split_records
from agentkit.embedded import model_path


class Verdict(pydantic.BaseModel):
    label: Literal["ham", "spam"]
    reason: str = pydantic.Field(max_length=40)


def main() -> None:
    p = parser(__doc__.splitlines()[0], DATASETS / "sms_spam_collection" / "dev.jsonl")
    p.add_argument("--static", type=int, default=8, help="examples per label in the fixed prefix")
    args = p.parse_args()
    import outlines

    split = split_records(read_jsonl(args.data), seed=args.seed)
    items = [r["input"] for r in sample(split.test, args.limit, seed=args.seed)]
    task = Classify(
        ["ham", "spam"],
        instructions="Is this SMS spam or ham?",
        examples=split.train,
        k=0,
        static_per_label=args.static,
    )
    path = model_path("qwen2.5-0.5b")
    cached = LlamaCppEngine(path)
    nocache = LlamaCppEngine(path, prefix_cache=False)
    raw = outlines.from_llamacpp(load_llama(path, n_ctx=4096, n_threads=2, verbose=False), chat_mode=False)
    fixed = len(task.fixed_messages())

    constraints = {
        "choice": (Constraint.choice(["ham", "spam"]), Literal["ham", "spam"], 4),
        "json": (Constraint.json_schema(Verdict.model_json_schema()), Verdict, 40),
    }
    rows, out = [], {"bench": "overhead", "n": len(items)}
    for cname, (constraint, output_type, max_tokens) in constraints.items():
        gen = outlines.Generator(raw, output_type)
        timings: dict[str, float] = {}
        answers: dict[str, list[str]] = {}
        for name, engine in (("agentkit", cached), ("agentkit-nocache", nocache)):
            engine.generate(task.messages(items[0])[0], constraint, max_tokens=max_tokens, prefix=fixed)  # warm up
            t0 = time.perf_counter()
            answers[name] = [
                engine.generate(task.messages(x)[0], constraint, max_tokens=max_tokens, prefix=fixed).text
                for x in items
            ]
            timings[name] = (time.perf_counter() - t0) / len(items)
        prompts = [cached._formatter(True)(messages=task.messages(x)[0]).prompt for x in items]
        gen(prompts[0], max_tokens=max_tokens, temperature=0.0)  # warm up
        t0 = time.perf_counter()
        answers["raw-outlines"] = [gen(pr, max_tokens=max_tokens, temperature=0.0) for pr in prompts]
        timings["raw-outlines"] = (time.perf_counter() - t0) / len(items)
        agree = sum(
            json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
            for a, b in zip(answers["agentkit"], answers["raw-outlines"], strict=True)
        ) / len(items)
        for name, sec in timings.items():
            rows.append([cname, name, f"{sec:.3f}", f"{sec / timings['agentkit']:.2f}x"])
        out[cname] = {
            "s_per_call": {k: round(v, 4) for k, v in timings.items()},
            "raw_over_agentkit": round(timings["raw-outlines"] / timings["agentkit"], 3),
            "prefix_reuse_gain": round(timings["agentkit-nocache"] / timings["agentkit"], 3),
            "same_output_as_raw": round(agree, 3),
        }
    print(f"\nn={len(items)} prompts, fixed prefix = system + {args.static} examples per label")
    print_table(rows, ["constraint", "engine", "s/call", "vs agentkit"])
    emit(out)


if __name__ == "__main__":
    main()
