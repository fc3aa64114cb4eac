"""The ``agentkit`` command line (installed with the ``cli`` extra)."""

import sys
from pathlib import Path
from typing import Annotated


def _app():  # type: ignore[no-untyped-def]
    try:
        import typer
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print("the agentkit CLI needs its extra: pip install 'agentkit[cli]'", file=sys.stderr)
        raise SystemExit(2) from None

    from agentkit import embedded
    from agentkit.errors import AgentkitError

    app = typer.Typer(add_completion=False, no_args_is_help=True, help="Narrow task nodes on small local models.")
    console = Console()

    @app.callback()
    def _root() -> None:
        """agentkit: constrained, validated, confidence-scored small-model nodes."""

    @app.command()
    def models(
        assemble: bool = typer.Option(False, "--assemble", help="assemble and verify every embedded model"),
        verify: bool = typer.Option(False, "--verify", help="re-hash cached files"),
    ) -> None:
        """List the embedded models, where they are cached, and assemble/verify them."""
        if assemble or verify:
            for name in embedded.EMBEDDED:
                try:
                    path = embedded.model_path(name, recheck=verify)
                except AgentkitError as e:
                    console.print(f"[red]{name}: {e}[/red]")
                    raise typer.Exit(1) from None
                console.print(f"{name}: ok ({path})")
        table = Table("name", "model", "assembled", "path")
        for row in embedded.status():
            table.add_row(
                str(row["name"]), str(row["description"]), "yes" if row["assembled"] else "no", str(row["path"])
            )
        console.print(table)
        console.print(f"cache: {embedded.cache_dir()}  (set AGENTKIT_CACHE to move it)")

    @app.command()
    def run(
        target: Annotated[str, typer.Argument(help="workflow (invoice, email) or path/to/file.py:graph_or_node")],
        inputs: Annotated[list[str], typer.Argument(help="files, folders, JSONL files, or - for stdin")],
        out: Annotated[Path | None, typer.Option("--out", "-o", help="JSONL output; resumed if it exists")] = None,
        debug: Annotated[bool, typer.Option("--debug", help="raise errors with their stack trace")] = False,
    ) -> None:
        """Run a workflow or node over inputs: one JSON line per input, then a summary."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from agentkit.runner import completed_ids, iter_inputs, load_target, run_batch

        err = Console(stderr=True)
        try:
            graph = load_target(target)
        except AgentkitError as e:
            err.print(f"[red]{e}[/red]")
            raise typer.Exit(2) from None
        items = list(iter_inputs(inputs))
        done = completed_ids(out) if out is not None else set()
        todo = sum(item.id not in done for item in items)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err, transient=True) as progress:
            bar = progress.add_task(target, total=todo)
            summary = run_batch(graph, items, out, on_record=lambda r: progress.advance(bar), debug=debug)
        figures = summary.figures()
        table = Table("items", "ok", "failed", "escalated", "cost", "per item", "p50", "p95", title="agentkit run")
        table.add_row(
            str(figures["items"]),
            str(figures["succeeded"]),
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

    return app


def main() -> None:
    _app()()


if __name__ == "__main__":
    main()
