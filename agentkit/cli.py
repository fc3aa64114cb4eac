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
        tuned: Annotated[
            Path | None,
            typer.Option("--tuned", help="an `agentkit tune` folder: its tuned tier side by side with the stock one"),
        ] = None,
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
        ladders = None
        try:
            if tuned is not None:
                from agentkit.tune import comparison

                if not isinstance(loaded, Node):
                    raise ValueError("--tuned compares the tiers of a node, not a workflow")
                loaded, ladders = comparison(loaded, tuned)
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
                    ladders=ladders,
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

    @app.command()
    def tune(
        target: Annotated[str, typer.Argument(help="the node: path/to/file.py:attribute (a graph needs --node)")],
        data: Annotated[list[Path], typer.Option("--data", help="labelled JSONL ('input', 'expected')")] = [],  # noqa: B006
        traces: Annotated[list[Path], typer.Option("--traces", help="the node's trace JSONL (distillation)")] = [],  # noqa: B006
        out: Annotated[Path, typer.Option("--out", "-o", help="folder for the adapter, checkpoints, tune.json")] = Path(
            "tuned"
        ),
        node_name: Annotated[str | None, typer.Option("--node", help="which node of a graph")] = None,
        exclude: Annotated[
            list[Path], typer.Option("--exclude", help="JSONL whose inputs are never trained on (evaluation data)")
        ] = [],  # noqa: B006
        k: Annotated[int, typer.Option("--k", help="retrieved examples in the tuned tier's prompt")] = 0,
        static: Annotated[int, typer.Option("--static", help="fixed examples per label in its prompt")] = 0,
        scoring: Annotated[
            str,
            typer.Option(
                "--scoring", help="how the tuned tier scores labels: choice (only where labels part) or sequence"
            ),
        ] = "choice",
        steps: Annotated[int, typer.Option("--steps")] = 200,
        minutes: Annotated[float, typer.Option("--minutes", help="time budget for the steps (0: none)")] = 30.0,
        rank: Annotated[int, typer.Option("--rank")] = 8,
        batch: Annotated[int, typer.Option("--batch")] = 8,
        lr: Annotated[float, typer.Option("--lr", help="peak learning rate (warm-up, then linear decay)")] = 1e-3,
        max_len: Annotated[
            int | None, typer.Option("--max-len", help="prompt + reply tokens per example (256; a reader: 768)")
        ] = None,
        layers: Annotated[
            int | None, typer.Option("--layers", help="adapt only the last N decoder layers (default: all)")
        ] = None,
        targets: Annotated[
            str,
            typer.Option("--targets", help="comma-separated modules to adapt, e.g. add gate_proj,up_proj,down_proj"),
        ] = "q_proj,k_proj,v_proj,o_proj",
        limit: Annotated[int | None, typer.Option("--limit", help="at most this many training examples")] = None,
        seed: Annotated[int, typer.Option("--seed", help="split seed (the evaluation side is never trained on)")] = 0,
        write_config: Annotated[
            Path | None, typer.Option("--write-config", help="name the tuned tier for the node here")
        ] = None,
        config: Annotated[Path | None, typer.Option("--config", help="node settings to start from")] = None,
    ) -> None:
        """LoRA-tune the node's small tier from labelled data and its escalation records, and bind it."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from agentkit import config as node_config
        from agentkit import tune as tuning
        from agentkit.node import Node
        from agentkit.runner import load_records, nodes_of

        err = Console(stderr=True, soft_wrap=True)
        loaded = _load(target, config, err)
        try:
            nodes = [loaded] if isinstance(loaded, Node) else list(nodes_of(loaded))
            picked = [n for n in nodes if node_name in (None, n.name)]
            if len(picked) != 1:
                names = ", ".join(n.name for n in nodes) or "none"
                raise ValueError(f"name one node with --node (nodes: {names})")
            node = picked[0]
            index = tuning.tunable_tier(node)
            stock = node.tiers[index].spec
            base = tuning.base_model(stock)
            records = [r for path in data for r in load_records(path, None)]
            trace_rows = [r for path in traces for r in load_records(path, None, need_expected=False)]
            held = [str(r["input"]) for path in exclude for r in load_records(path, None)]
            reader = node.task.kind == "grounded_answer"  # its k is passages retrieved: kept as it is
            own = {"k": k, "static_per_label": static, "scoring": scoring}
            own = {key: v for key, v in own.items() if hasattr(node.task, key)}
            own = {} if reader else own
            max_len = max_len or (768 if reader else 256)
            task = node.task.variant(**own)
            found = tuning.training_set(
                task, records=records, traces=trace_rows, node=node.name, exclude=held, seed=seed
            )
            if limit is not None:
                found.examples = found.examples[:limit]
            err.print(f"training examples: {len(found.examples)}  {found.counts}")
            modules = tuple(t.strip() for t in targets.split(",") if t.strip())
            settings = tuning.TuneConfig(steps=steps, rank=rank, alpha=2 * rank, batch=batch, lr=lr, max_len=max_len,
                                         seed=seed, minutes=minutes or None, layers=layers,
                                         target_modules=modules)  # fmt: skip
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            with Progress(*columns, console=err, transient=True) as progress:
                bar = progress.add_task(f"tuning {node.name} (loading {base.name})", total=steps)

                def step(done: int, total: int, loss: float) -> None:
                    progress.update(bar, completed=done, description=f"tuning {node.name}  loss {loss:.3f}")

                report = tuning.train(found, base, out, settings, on_step=step,
                                      bind={"tier_index": index, "stock_spec": stock, "task": own})  # fmt: skip
        except KeyboardInterrupt:
            err.print(f"[yellow]interrupted: checkpoint kept in {out}; run the same command again to resume[/yellow]")
            raise typer.Exit(130) from None
        except (AgentkitError, ValueError) as e:
            err.print(f"[red]{e}[/red]")
            raise typer.Exit(2) from None
        err.print(
            f"adapter: {report.adapter} (GGUF: {report.adapter_gguf}); {report.steps} steps in {report.seconds:.0f} s"
            f" ({report.s_per_step:.1f} s/step), loss {report.losses[0]:.3f} -> {report.losses[-1]:.3f},"
            f" peak memory {report.peak_rss_gb:.1f} GB"
        )
        if write_config is not None:
            tuning.bind(node, out)
            node_config.save(write_config, [node])
            err.print(f"tuned tier for node {node.name!r} written to {write_config}")
        err.print(f"compare: agentkit eval {target} --data HELD_OUT.jsonl --tuned {out}")

    return app


def main() -> None:
    _app()()


if __name__ == "__main__":
    main()
