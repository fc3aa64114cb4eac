"""Shipped example workflows (LangGraph graphs built from agentkit nodes): ``invoice`` and ``email``.

Run them with ``agentkit run invoice FILES...`` / ``agentkit run email FILES...``, load them with
``langgraph dev`` (see ``langgraph.json``), or import ``workflows.invoice.build`` to configure your own.
"""
