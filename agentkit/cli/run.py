"""``agentkit run``: a workflow or node over inputs, one JSON line per input, then a summary."""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agentkit.cli._common import error_console, load, progress_bar

__all__ = ["run"]


def run(
    target: Annotated[str, typer.Argument(help="workflow (invoice, email) or path/to/file.py:graph_or_node")],
    inputs: Annotated[list[str], typer.Argument(help="files, folders, JSONL files, or - for stdin")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="JSONL output; resumed if it exists")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="raise errors with their stack trace")] = False,
    config: Annotated[Path | None, typer.Option("--config", help="node settings (default ./agentkit.toml)")] = None,
) -> None:
    """Run a workflow or node over inputs: one JSON line per input, then a summary."""
    from agentkit.runner import completed_ids, iter_inputs, run_batch

    err = error_console()
    graph = load(target, config, err)
    items = list(iter_inputs(inputs))
    done = completed_ids(out) if out is not None else set()
    todo = sum(item.id not in done for item in items)
    with progress_bar(err) as progress:
        bar = progress.add_task(target, total=todo)
        summary = run_batch(graph, items, out, on_record=lambda r: progress.advance(bar), debug=debug)
    figures = summary.figures()
    table = Table("items", "ok", "failed", "escalated", "cost", "per item", "p50", "p95", title="agentkit run")
    table.add_row(
        str(figures["items"]),
        str(figures["ok"]),
        str(figures["failed"]),
        f"{figures['escalation_rate']:.1%}",
        f"${figures['cost_usd']:.6f}",
        f"${figures['cost_per_item_usd']:.7f}",
        f"{figures['latency_p50_s']:.2f} s",
        f"{figures['latency_p95_s']:.2f} s",
    )
    err.print(table)
    if summary.skipped:
        err.print(f"resumed: {summary.skipped} inputs were already in {out}")
    if summary.interrupted:
        err.print("[yellow]interrupted: finished inputs are kept; run again with the same --out to go on[/yellow]")
        raise typer.Exit(130)
    if figures["failed"]:
        raise typer.Exit(1)
