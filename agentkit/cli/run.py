"""``agentkit run``: a workflow or node over inputs, one JSON line per input, then a summary."""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agentkit.cli._common import error_console, exit_on_error, load_source, progress_bar, say

__all__ = ["run"]


def run(
    target: Annotated[str, typer.Argument(help="workflow (invoice, email) or path/to/file.py:graph_or_node")],
    inputs: Annotated[list[str], typer.Argument(help="files, folders, JSONL files, or - for stdin")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="JSONL output; resumed if it exists")] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="run again the inputs whose last record in --out failed")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="raise errors with their stack trace")] = False,
    config: Annotated[Path | None, typer.Option("--config", help="node settings (default ./agentkit.toml)")] = None,
    ray: Annotated[
        str | None,
        typer.Option("--ray", metavar="ADDRESS", help="run on Ray: local (start one here), auto, or HOST:PORT"),
    ] = None,
    actors: Annotated[
        int | None, typer.Option("--actors", min=1, help="Ray actors (default: CPUs // --actor-cpus)")
    ] = None,
    actor_cpus: Annotated[
        float, typer.Option("--actor-cpus", min=0.01, help="CPUs (and llama.cpp threads) per Ray actor")
    ] = 1.0,
    actor_gpus: Annotated[float, typer.Option("--actor-gpus", min=0.0, help="GPUs per Ray actor")] = 0.0,
) -> None:
    """Run a workflow or node over inputs: one JSON line per input, then a summary."""
    from agentkit.runner import iter_inputs, run_batch

    err = error_console()
    source, graph = load_source(target, config, err)
    executor = None
    if ray is not None:
        from agentkit.distributed import RayExecutor

        executor = RayExecutor(source, address=ray, actors=actors, actor_cpus=actor_cpus, actor_gpus=actor_gpus)
    items = list(iter_inputs(inputs))
    with exit_on_error(err, debug=debug), progress_bar(err) as progress:
        bar = progress.add_task(target, total=None)
        summary = run_batch(
            graph,
            items,
            out,
            on_plan=lambda n: progress.update(bar, total=n),
            on_record=lambda r: progress.advance(bar),
            retry_failed=retry_failed,
            debug=debug,
            executor=executor,
        )
    figures = summary.figures()
    n = figures["items"] or 1
    accepted = figures["ok"] - figures["needs_review"]
    columns = ("items", "accepted", "review", "failed", "escalated", "cost", "p50", "p95")
    table = Table(*columns, title="agentkit run", caption="review: accepted below the threshold, for a person")
    table.add_row(
        str(figures["items"]),
        f"{accepted} {accepted / n:.0%}",
        f"{figures['needs_review']} {figures['needs_review'] / n:.0%}",
        f"{figures['failed']} {figures['failed'] / n:.0%}",
        f"{figures['escalation_rate']:.0%}",
        f"${figures['cost_usd']:.6f}",
        f"{figures['latency_p50_s']:.1f} s",
        f"{figures['latency_p95_s']:.1f} s",
    )
    err.print(table)
    if summary.skipped:
        say(err, f"resumed: {summary.skipped} inputs were already in {out}")
    if summary.kept_failures:
        say(err, f"kept {summary.kept_failures} earlier failures as they were (--retry-failed runs them again)")
    if summary.retried:
        say(err, f"retried {summary.retried} inputs whose last record had failed")
    if summary.repeated_ids:
        shown = ", ".join(summary.repeated_ids[:3]) + (", ..." if len(summary.repeated_ids) > 3 else "")
        say(
            err,
            f"{len(summary.repeated_ids)} ids are shared by several inputs ({shown}): each input has its own record",
        )
    if summary.interrupted:
        say(err, "interrupted: finished inputs are kept; run again with the same --out to go on", style="yellow")
        raise typer.Exit(130)
    if figures["failed"] or summary.kept_failures:
        raise typer.Exit(1)
