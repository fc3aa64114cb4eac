"""agentkit: narrow task nodes on small local models — constrained, validated, confidence-scored,
escalated only when needed, every call accounted.

``import agentkit`` is cheap: no model backend (llama_cpp, torch, transformers, openai, vllm)
is imported until a model is first used.
"""

from agentkit.corpus import Corpus, Passage
from agentkit.data import compare_fields, normalize_text, read_jsonl, split_of, split_records
from agentkit.engine import Capabilities, Constraint, Engine, Generation, Scores, Usage
from agentkit.errors import (
    AgentkitError,
    ConfigError,
    EngineError,
    InputError,
    ModelUnavailableError,
    TaskFailed,
)
from agentkit.node import DEFAULT_LADDER, Node
from agentkit.policy import Policy
from agentkit.result import Attempt, Result, Trace, collect
from agentkit.task import Answer, Task
from agentkit.tasks.classify import Classify
from agentkit.tasks.cleanse import Cleanse
from agentkit.tasks.extract import Extract
from agentkit.tasks.grounded import GroundedAnswer, GroundedReply
from agentkit.tier import Tier
from agentkit.validation import Drop, Validator

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LADDER",
    "AgentkitError",
    "Answer",
    "Attempt",
    "Capabilities",
    "Classify",
    "Cleanse",
    "ConfigError",
    "Constraint",
    "Corpus",
    "Drop",
    "Engine",
    "EngineError",
    "Extract",
    "Generation",
    "GroundedAnswer",
    "GroundedReply",
    "InputError",
    "ModelUnavailableError",
    "Node",
    "Passage",
    "Policy",
    "Result",
    "Scores",
    "Task",
    "TaskFailed",
    "Tier",
    "Trace",
    "Usage",
    "Validator",
    "collect",
    "compare_fields",
    "normalize_text",
    "read_jsonl",
    "split_of",
    "split_records",
]
