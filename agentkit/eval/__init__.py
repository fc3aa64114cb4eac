"""``agentkit eval``: small vs large vs cascade on labelled records, derived from one set of answers.

- :mod:`~agentkit.eval.answers`: each tier's answer to each item, asked through the node's own attempt, cached;
- :mod:`~agentkit.eval.cascades`: every configuration derived with :meth:`~agentkit.policy.Policy.decide`;
- :mod:`~agentkit.eval.calibration`: the configuration to run, and the headline ratios;
- :mod:`~agentkit.eval.evaluate`: the whole evaluation of a node or a workflow;
- :mod:`~agentkit.eval.metrics`: quality per task type, and calibration error;
- :mod:`~agentkit.eval.report`: the terminal table, ``report.json`` and ``report.html``.
"""

from agentkit.eval.answers import TierAnswer, answer_all, answer_mark, answer_one, item_id, iter_answers
from agentkit.eval.calibration import calibrate, headline
from agentkit.eval.cascades import THRESHOLDS, CascadeOutcome, cascade, configurations, figures
from agentkit.eval.evaluate import evaluate_node, evaluate_workflow

__all__ = [
    "THRESHOLDS",
    "CascadeOutcome",
    "TierAnswer",
    "answer_all",
    "answer_mark",
    "answer_one",
    "calibrate",
    "cascade",
    "configurations",
    "evaluate_node",
    "evaluate_workflow",
    "figures",
    "headline",
    "item_id",
    "iter_answers",
]
