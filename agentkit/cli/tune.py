"""``agentkit tune``: LoRA-tune a node's small tier from labelled data and its escalation records
(:mod:`agentkit.tune`), and name the tuned tier for the node in a config file."""

from pathlib import Path
from typing import Annotated

import typer

from agentkit.cli._common import error_console, exit_on_error, load, progress_bar

__all__ = ["tune"]


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
        typer.Option("--scoring", help="how the tuned tier scores labels: choice (only where labels part) or sequence"),
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
    from agentkit import config as node_config
    from agentkit import tune as tuning
    from agentkit.runner import load_records, nodes_of

    err = error_console()
    loaded = load(target, config, err)
    with exit_on_error(err):
        try:
            nodes = nodes_of(loaded)
            picked = [n for n in nodes if node_name in (None, n.name)]
            if len(picked) != 1:
                names = ", ".join(n.name for n in nodes) or "none"
                raise ValueError(f"name one node with --node (nodes: {names})")
            node = picked[0]
            plan = tuning.node_tuning(node, k=k, static_per_label=static, scoring=scoring)
            records = [r for path in data for r in load_records(path, None)]
            trace_rows = [r for path in traces for r in load_records(path, None, need_expected=False)]
            held = [str(r["input"]) for path in exclude for r in load_records(path, None)]
            found = tuning.training_set(
                plan.task, records=records, traces=trace_rows, node=node.name, exclude=held, seed=seed
            )
            if limit is not None:
                found.examples = found.examples[:limit]
            err.print(f"training examples: {len(found.examples)}  {found.counts}")
            modules = tuple(t.strip() for t in targets.split(",") if t.strip())
            settings = tuning.TuneConfig(steps=steps, rank=rank, alpha=2 * rank, batch=batch, lr=lr,
                                         max_len=max_len or plan.max_len, seed=seed, minutes=minutes or None,
                                         layers=layers, target_modules=modules)  # fmt: skip
            with progress_bar(err) as progress:
                bar = progress.add_task(f"tuning {node.name} (loading {plan.base.name})", total=steps)

                def step(done: int, total: int, loss: float) -> None:
                    progress.update(bar, completed=done, description=f"tuning {node.name}  loss {loss:.3f}")

                report = tuning.train(found, plan.base, out, settings, on_step=step, bind=plan.binding())
        except KeyboardInterrupt:
            err.print(f"[yellow]interrupted: checkpoint kept in {out}; run the same command again to resume[/yellow]")
            raise typer.Exit(130) from None
    err.print(
        f"adapter: {report.adapter} (GGUF: {report.adapter_gguf}); {report.steps} steps in {report.seconds:.0f} s"
        f" ({report.s_per_step:.1f} s/step), loss {report.losses[0]:.3f} -> {report.losses[-1]:.3f},"
        f" peak memory {report.peak_rss_gb:.1f} GB"
    )
    if write_config is not None:
        node_config.save(write_config, [tuning.bind(node, out)])
        err.print(f"tuned tier for node {node.name!r} written to {write_config}")
    err.print(f"compare: agentkit eval {target} --data HELD_OUT.jsonl --tuned {out}")
