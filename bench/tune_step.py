"""LoRA step time: the output layer on every position vs on the reply positions only (``reply_loss``),
vs the batch packed into one sequence with its shared prompt prefix once (``packed_reply_loss``, what
``train`` runs), and (``--layers N``) an adapter on the last N decoder layers only.

    python bench/tune_step.py --data ../shared/datasets/banking77/train.jsonl --limit 48 --batch 8 --layers 8

The same batches of real training examples (the node's prompt format, train side of the split), the
same model, alternating the computations step by step; prints seconds per step, the ratios, the
losses (the first two must agree) and peak memory, then one JSON line.
"""

from __future__ import annotations

import statistics
import time

from _common import DATASETS, emit, parser, print_table
from classify import INSTRUCTIONS

from agentkit import Classify
from agentkit.data import read_jsonl, sample, split_records
from agentkit.tune import (
    TuneConfig,
    base_model,
    encode_examples,
    lora_config,
    pack,
    packed_reply_loss,
    pad_batch,
    pad_id,
    peak_rss_gb,
    reply_loss,
    training_set,
)


def main() -> None:
    p = parser(__doc__.splitlines()[0], DATASETS / "banking77" / "train.jsonl")
    p.set_defaults(limit=48)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--layers", type=int, default=0, help="also time an adapter on the last N layers only")
    args = p.parse_args()

    import peft
    import torch
    import transformers

    from agentkit.backends.transformers_hf import dequantized

    records = list(read_jsonl(args.data))
    labels = sorted({str(r["expected"]) for r in records})
    task = Classify(labels, instructions=INSTRUCTIONS.get(args.data.parent.name, "Classify the text."), k=0,
                    list_labels=False)  # fmt: skip
    pool = sample(split_records(records, seed=args.seed).train, args.limit, seed=args.seed)
    data = training_set(task, records=pool, seed=args.seed)
    folder = dequantized(base_model(args.tiers.split(",")[0]), "float32")
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    # what `train` trains, without dropout so that the two loss computations see the same network
    config = TuneConfig(rank=args.rank, alpha=2 * args.rank, dropout=0.0)
    n_layers = model.config.num_hidden_layers
    model = peft.get_peft_model(model, lora_config(peft, config))
    if args.layers:
        top = TuneConfig(rank=args.rank, alpha=2 * args.rank, dropout=0.0, layers=args.layers)
        model.add_adapter("top", lora_config(peft, top, n_layers))
    model.train()

    def use(adapter: str) -> None:  # only this adapter's weights train
        model.set_adapter(adapter)
        for name, param in model.named_parameters():
            param.requires_grad = "lora_" in name and f".{adapter}." in name

    rows, _, _ = encode_examples(tok, data.examples, config.max_len)
    pad = pad_id(tok)
    batches = [rows[i : i + args.batch] for i in range(0, len(rows) - args.batch + 1, args.batch)]

    def full(batch):
        use("default")
        ids, lab, mask = pad_batch(batch, pad, torch)
        return model(input_ids=ids, attention_mask=mask, labels=lab).loss

    def reply(batch):
        use("default")
        return reply_loss(model, *pad_batch(batch, pad, torch))

    def packed(batch):
        use("default")
        return packed_reply_loss(model, pack(batch, torch))

    def packed_top(batch):
        use("top")
        return packed_reply_loss(model, pack(batch, torch))

    ways = [("full logits", full), ("reply positions", reply), ("reply positions, packed", packed)]
    if args.layers:
        ways.append((f"packed, last {args.layers} of {n_layers} layers", packed_top))
    times: dict[str, list[float]] = {k: [] for k, _ in ways}
    losses: dict[str, list[float]] = {k: [] for k in times}
    for batch in batches:
        for name, fn in ways:
            t0 = time.perf_counter()
            loss = fn(batch)
            loss.backward()
            model.zero_grad()
            times[name].append(time.perf_counter() - t0)
            losses[name].append(float(loss.detach()))
    tokens = statistics.mean(max(len(t) for t, _ in b) * len(b) for b in batches)
    packed_tokens = statistics.mean(pack(b, torch).ids.shape[1] for b in batches)
    rows_out = [[k, f"{statistics.median(v):.2f}", f"{statistics.mean(losses[k]):.4f}"] for k, v in times.items()]
    print(f"{len(batches)} steps of {args.batch} examples each way, ~{tokens:.0f} padded tokens per step,"
          f" ~{packed_tokens:.0f} packed")  # fmt: skip
    print_table(rows_out, ["loss computed on", "s/step (median)", "mean loss"])
    medians = [statistics.median(v) for v in times.values()]
    full_s, reply_s, packed_s = medians[:3]
    top_s = medians[3] if args.layers else None
    print(f"reply positions vs full logits {full_s / reply_s:.2f}×; packed vs padded {reply_s / packed_s:.2f}×"
          + (f"; last {args.layers} layers vs all (packed) {packed_s / top_s:.2f}×" if top_s else "")
          + f"; peak RSS {peak_rss_gb():.2f} GB")  # fmt: skip
    full_l, reply_l, packed_l = list(losses.values())[:3]
    emit({
        "bench": "tune_step", "data": str(args.data), "steps": len(batches), "batch": args.batch,
        "full_s_per_step": round(full_s, 3), "reply_s_per_step": round(reply_s, 3),
        "speedup": round(full_s / reply_s, 3), "packed_s_per_step": round(packed_s, 3),
        "packed_speedup": round(reply_s / packed_s, 3),
        "padded_tokens": round(tokens), "packed_tokens": round(packed_tokens),
        "layers": args.layers or None,
        "top_layers_s_per_step": round(top_s, 3) if top_s else None,
        "top_layers_speedup": round(packed_s / top_s, 3) if top_s else None,
        "max_loss_diff": round(max(abs(a - b) for a, b in zip(full_l, reply_l, strict=True)), 6),
        "max_packed_loss_diff": round(max(abs(a - b) for a, b in zip(reply_l, packed_l, strict=True)), 6),
        "peak_rss_gb": round(peak_rss_gb(), 2),
    })  # fmt: skip


if __name__ == "__main__":
    main()
