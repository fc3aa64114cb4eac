"""Specialization: LoRA-tune a node's small tier from labelled data and the node's own escalation
records, and bind the tuned model to the node (``pip install 'agentkit[hf]'``).

1. :func:`training_set` builds examples in the node's exact prompt format — the messages its task
   sends for an input (retrieved examples as for a new input: never the example itself), and the
   reply its engine would be scored on (the task's ``training_reply``) — from gold labels (a labelled
   JSONL) and from the node's traces: answers a *larger* tier gave confidently after the small tier
   escalated (distillation). Each example says which it is. Inputs are deduplicated (gold wins),
   and only the train side of :func:`~agentkit.data.split_of` is used, so the evaluation side is
   never trained on; records given as ``exclude`` are dropped too (:mod:`agentkit.tune.examples`).
2. :func:`train` loads the small tier's weights (its GGUF, dequantized once to fp32), trains a
   LoRA adapter (peft) with the loss on the reply tokens only, checkpoints as it goes (interrupt
   and rerun: it resumes), and saves the adapter with its training config, data hash and metrics
   (:mod:`agentkit.tune.training`; batches and losses: :mod:`agentkit.tune.batches`).
3. :func:`adapter_to_gguf` writes the adapter as a GGUF LoRA (with the ``gguf`` package's own
   tensor-name map), which llama.cpp applies to the original quantized model:
   ``embedded:qwen2.5-0.5b?adapter=ADAPTER.gguf``, and :func:`merge_to_gguf` folds it into a copy of
   that model (``gguf:OUT/merged.gguf``, what :func:`tuned_tier` serves: no per-token LoRA work)
   (:mod:`agentkit.tune.convert`). The same adapter folder serves through transformers
   (``hf:qwen2.5-0.5b?adapter=DIR``) and vLLM (``vllm-offline:...?adapter=DIR``).
4. :func:`node_tuning` says which tier of a node a tuning replaces, its base model and the task
   settings it is trained with; :func:`bind` and :func:`comparison` put the tuned tier in its place
   or beside it (:mod:`agentkit.tune.binding`).

torch, transformers, peft and gguf are imported inside the functions that need them.
"""

from agentkit.tune.batches import (
    PackedBatch,
    encode_examples,
    epoch_order,
    pack,
    packed_reply_loss,
    pad_batch,
    pad_id,
    reply_loss,
)
from agentkit.tune.binding import NodeTuning, base_model, bind, comparison, node_tuning, tunable_tier, tuned_tier
from agentkit.tune.convert import adapter_to_gguf, merge_to_gguf
from agentkit.tune.examples import TrainingExample, TrainingSet, distillable, reader_training_set, training_set
from agentkit.tune.training import TuneConfig, TuneReport, learning_rate_factor, lora_config, peak_rss_gb, train

__all__ = [
    "NodeTuning",
    "PackedBatch",
    "TrainingExample",
    "TrainingSet",
    "TuneConfig",
    "TuneReport",
    "adapter_to_gguf",
    "base_model",
    "bind",
    "comparison",
    "distillable",
    "encode_examples",
    "epoch_order",
    "learning_rate_factor",
    "lora_config",
    "merge_to_gguf",
    "node_tuning",
    "pack",
    "packed_reply_loss",
    "pad_batch",
    "pad_id",
    "peak_rss_gb",
    "reader_training_set",
    "reply_loss",
    "train",
    "training_set",
    "tunable_tier",
    "tuned_tier",
]
