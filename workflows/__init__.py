"""Shipped example workflows (LangGraph graphs built from agentkit nodes): ``invoice`` and ``email``.

Run them with ``agentkit run invoice FILES...`` / ``agentkit run email FILES...``, load them with
``langgraph dev`` (see ``langgraph.json``), or call ``workflows.invoice.build`` to configure your own.
Importing a workflow builds nothing: its graph is built on first use.

The labelled examples and the knowledge base they read ship in the package, under ``workflows/data``.
"""

from __future__ import annotations

from pathlib import Path

from agentkit.errors import ConfigError

DATA = Path(__file__).resolve().parent / "data"
"""The workflows' shipped data: labelled receipts and e-mails, and the help-centre knowledge base."""


def existing(path: str | Path, what: str) -> Path:
    """``path`` if it exists, else a :class:`~agentkit.errors.ConfigError` naming ``what`` is missing."""
    path = Path(path)
    if not path.exists():
        hint = "reinstall agentkit (it ships workflows/data)" if path.is_relative_to(DATA) else "pass an existing path"
        raise ConfigError(f"{what} not found: {path}", hint=hint)
    return path
