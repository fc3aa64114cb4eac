"""``agentkit eval``: a node's tiers alone and its cascade at a threshold sweep on labelled records, each tier's
confidence calibrated, a threshold and a review bar chosen on a calibration split and measured on a test split
(a workflow: its outputs against the gold fields)."""

from pathlib import Path
from typing import Annotated

import typer

from agentkit.cli._common import error_console, exit_on_error, load, progress_bar

__all__ = ["evaluate"]


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
    max_error: Annotated[
        float | None,
        typer.Option("--max-error", help="review bar: at most this share wrong among answers accepted as confident"),
    ] = None,
    costs: Annotated[
        str,
        typer.Option("--costs", help="REVIEW,WRONG: a review's and a wrong answer's cost"),
    ] = "",
    fit: Annotated[
        bool, typer.Option("--fit/--raw", help="calibrate each tier's confidence on the calibration split")
    ] = True,
    leave_one_out: Annotated[
        bool,
        typer.Option("--leave-one-out", help="pool records are answered with every example but their own"),
    ] = False,
) -> None:
    """Small-only vs large-only vs the cascade at a threshold sweep; calibrated confidence, a threshold
    and a review bar chosen on a calibration split and measured on a test split."""
    from agentkit import config as node_config
    from agentkit.eval import THRESHOLDS, evaluate_node, evaluate_workflow
    from agentkit.eval.calibration import checked_costs
    from agentkit.eval.report import print_report, write_html, write_json
    from agentkit.node import Node
    from agentkit.runner import load_records

    err = error_console()
    loaded = load(target, config, err)
    ladders = None
    with exit_on_error(err):
        if tuned is not None:
            from agentkit.tune import comparison

            if not isinstance(loaded, Node):
                raise ValueError("--tuned compares the tiers of a node, not a workflow")
            loaded, ladders = comparison(loaded, tuned)
        records = load_records(data, limit)
        cost_pair = checked_costs([float(x) for x in costs.split(",")]) if costs else None
        if max_error is not None and not 0 <= max_error < 1:
            raise ValueError(f"--max-error is a share of answers in [0, 1), got {max_error}")
        if max_error is not None and cost_pair is not None:
            raise ValueError("give --max-error or --costs, not both: each chooses the review bar")
        sweep = [float(x) for x in thresholds.split(",") if x.strip()] or list(THRESHOLDS)
        fields = dict(pair.split("=", 1) for pair in map_fields.split(",") if pair.strip())
        field_kinds = dict(pair.split("=", 1) for pair in kinds.split(",") if pair.strip())
        if set(field_kinds.values()) - {"date", "amount", "text"}:
            raise ValueError(f"--kinds takes date, amount or text, got {kinds!r}")
    out.mkdir(parents=True, exist_ok=True)
    with progress_bar(err) as progress:
        bar = progress.add_task(target, total=len(records))

        def step(done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total)

        if isinstance(loaded, Node):
            report = evaluate_node(
                loaded, records, thresholds=sweep, target=target_score, budget=budget, seed=seed,
                cache=out / "answers.jsonl", fields=fields or None, kinds=field_kinds or None, on_item=step,
                ladders=ladders, fit=fit, max_error=max_error, costs=cost_pair, leave_one_out=leave_one_out,
            )  # fmt: skip
        else:
            report = evaluate_workflow(
                loaded, records, field=field, fields=fields or None, kinds=field_kinds or None, on_item=step
            )
    report["data"] = str(data)
    print_report(report, err)
    err.print(f"report: {write_json(report, out / 'report.json')}  {write_html(report, out / 'report.html')}")
    fitted = report.get("fitted")
    if fitted is not None:
        err.print(f"calibration: {fitted.save(out / 'calibration.json')}")
    op = report.get("operating_point", {})
    if write_config is not None and isinstance(loaded, Node) and ("calibration" in report or op):
        threshold = report["calibration"]["threshold"] if "calibration" in report else op["threshold"]
        settings = node_config.save_threshold(
            write_config, loaded, threshold, review_threshold=op.get("review_threshold"),
            calibration=fitted.source if fitted is not None else None,
        )  # fmt: skip
        bars = f"threshold {settings['threshold']:g}"
        if "review_threshold" in settings:
            bars += f", review below {settings['review_threshold']:.3f}"
        err.print(f"{bars} for node {loaded.name!r} written to {write_config}")
    if report.get("interrupted"):
        raise typer.Exit(130)
