"""``python -m agentkit.cli``: the ``agentkit`` command."""

from agentkit.cli import main

main()
