"""An evaluation report three ways: a terminal table (Rich), a JSON file with every number, and
an HTML page with plots (matplotlib, drawn as inline SVG so the page works offline)."""

from __future__ import annotations

import html
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from rich.console import Console

__all__ = ["print_report", "write_html", "write_json"]

_Column = Callable[[dict[str, Any]], str]
"""A quality column's cell, from the configuration's quality figures."""


def _config_label(report: dict[str, Any], key: str) -> str:
    """``tier0`` → the tier's name; cascades keep their ``cascade@0.8`` key."""
    if key.startswith("tier"):
        return f"{report['tiers'][int(key[4:])]} only"
    return key


def _quality_columns(kind: str) -> list[tuple[str, _Column]]:
    if kind.endswith("grounded_answer"):
        return [
            ("F1", lambda q: f"{q['f1']:.1f}"),
            ("F1 all", lambda q: f"{q['f1_all']:.1f}"),
            ("abstain acc", lambda q: "-" if q["abstain_acc"] is None else f"{q['abstain_acc']:.3f}"),
        ]
    if kind.endswith("extract"):
        return [("all fields", lambda q: f"{q['all_fields']:.3f}")]
    return [("accuracy", lambda q: f"{q['accuracy']:.3f}"), ("macro-F1", lambda q: f"{q['macro_f1']:.3f}")]


def _rows(report: dict[str, Any], section: str = "all") -> tuple[list[str], list[list[str]]]:
    """Header and rows of one section (``all`` or ``test``): one row per configuration."""
    quality = _quality_columns(report["kind"])
    header = ["configuration", *[name for name, _ in quality], "score [95% CI]", "escalated", "failures",
              "µ$/item", "µ$/answer", "p50 s", "p95 s"]  # fmt: skip
    out = []
    for key, f in report.get(section, {}).items():
        lo, hi = f["ci95"]
        per_answer = f["cost_per_answer"]
        out.append(
            [
                _config_label(report, key),
                *[fmt(f["quality"]) for _, fmt in quality],
                f"{f['score']:.3f} [{lo:.3f}, {hi:.3f}]",
                f"{f['escalation_rate']:.1%}",
                str(f["failures"]),
                f"{f['cost_per_item'] * 1e6:.1f}",
                "-" if per_answer is None else f"{per_answer * 1e6:.1f}",
                f"{f['latency_p50_s']:.2f}",
                f"{f['latency_p95_s']:.2f}",
            ]
        )
    return header, out


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    """The report as Rich tables (every configuration; the calibrated pick on the test split)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 160)
    section = "test" if "test" in report else "all"
    header, body = _rows(report, section)
    title = f"{report['target']} ({report['kind']}) — {report['n']} items"
    if section == "test":
        title += f"; {report['split']}; rows on the test split"
    table = Table(*header, title=title)
    pick = report.get("calibration", {}).get("picked")
    for key, row in zip(report[section], body, strict=True):
        table.add_row(*row, style="bold green" if key == pick else None)
    console.print(table)
    if pick:
        c = report["calibration"]
        console.print(f"threshold {c['threshold']:g} ({c['rule']}, chosen on the calibration split)")
    h = report.get("headline")
    if h:
        parts = []
        if h.get("cost_vs_large_at_matched_score") is not None:
            parts.append(f"cost vs large-only at matched score: {h['cost_vs_large_at_matched_score']:.3g}×")
        if h.get("cascade_vs_large_cost") is not None:
            parts.append(f"at the chosen threshold: {h['cascade_vs_large_cost']:.3g}×")
        if h.get("pgr") is not None:
            parts.append(f"gap recovered {h['pgr']:.0%}")
            if h.get("pgr_per_escalated") is not None:
                parts.append(f"per share escalated {h['pgr_per_escalated']:.2f}")
            parts.append(f"APGR {h['apgr']:.2f}")
        elif "gap" in h:
            parts.append(f"the larger tier is not better here (gap {h['gap']:+.3f}): escalation cannot help")
        console.print("; ".join(parts))
    raw = report.get("reliability_raw", {})
    for name, r in report.get("reliability", {}).items():
        if r["ece"] is None:
            continue
        if name in raw and raw[name]["ece"] is not None:  # calibrated: judged on the test split
            console.print(
                f"{name}: expected calibration error {raw[name]['ece']:.3f} raw -> {r['ece']:.3f} calibrated"
                f" over {r['n']} test answers"
            )
        else:
            console.print(f"{name}: expected calibration error {r['ece']:.3f} over {r['n']} answers")
    if report.get("confidence") and not report["confidence"]["calibrated"]:
        console.print(f"confidence not calibrated: {report['confidence']['note']}")
    op = report.get("operating_point")
    if op:
        t = op["on_test"]
        wrong = "-" if t["accepted_error"] is None else f"{t['accepted_error']:.1%}"
        why = (
            f"a review costs less than a wrong answer's expected cost, {op['costs'][0]:g} vs {op['costs'][1]:g}"
            if op.get("costs")
            else f"at most {op['max_error']:.0%} wrong among accepted, on the calibration split"
        )
        console.print(
            f"review below {op['review_threshold']:.3f} ({why}); on the test split: accepted"
            f" {t['accepted_share']:.0%}, {wrong} of them wrong,"
            f" review {t['review_rate']:.0%}; calibration error of the answers' confidence"
            f" {_num(op['ece_raw'])} raw -> {_num(op['ece'])}"
        )
        if not op.get("calibrated", True):
            console.print(
                "[yellow]the review bar is on raw confidences: read it as a score, not a probability[/yellow]"
            )
    if report.get("left_out_in_pool"):
        console.print(f"{report['left_out_in_pool']} records left out: their input is in the node's example pool")
    if report.get("interrupted"):
        console.print("[yellow]interrupted: figures cover the items answered so far[/yellow]")


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """The report as JSON (a fitted calibration is saved on its own: ``TierCalibration.save``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {k: v for k, v in report.items() if k != "fitted"}
    path.write_text(json.dumps(body, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.find("<svg") :]


def _finish(fig: Figure, ax: Axes, title: str, xlabel: str, ylabel: str) -> str:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _svg(fig)


def _plots(report: dict[str, Any]) -> dict[str, str]:
    """SVG plots: the cost–score frontier, score and escalation vs threshold, reliability diagram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    section = report.get("test") or report.get("all") or {}
    out: dict[str, str] = {}
    singles = {k: v for k, v in section.items() if k.startswith("tier")}
    cascades = sorted(
        ((float(k.split("@")[1]), v) for k, v in section.items() if k.startswith("cascade@")), key=lambda x: x[0]
    )
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, f in singles.items():
        ax.scatter([f["cost_per_item"] * 1e6], [f["score"]], s=60, label=_config_label(report, key), zorder=3)
    if cascades:
        ax.plot(
            [f["cost_per_item"] * 1e6 for _, f in cascades], [f["score"] for _, f in cascades], "o-", label="cascade"
        )
        for th, f in cascades:
            ax.annotate(
                f"{th:g}", (f["cost_per_item"] * 1e6, f["score"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    out["frontier"] = _finish(fig, ax, "cost–score frontier", "cost per item (µ$)", "score")
    if cascades:
        fig, ax = plt.subplots(figsize=(6, 4))
        ths = [th for th, _ in cascades]
        ax.plot(ths, [f["score"] for _, f in cascades], "o-", label="score")
        ax.plot(ths, [f["escalation_rate"] for _, f in cascades], "s--", label="escalation rate")
        ax.set_ylim(0, 1.02)
        out["threshold"] = _finish(fig, ax, "score and escalation vs threshold", "confidence threshold", "")
    if report.get("reliability"):
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
        raw = report.get("reliability_raw", {})  # calibrated: the raw curves too, dashed, in the same colour
        for name, r in report["reliability"].items():
            if not r["table"]:
                continue
            ece = "" if r["ece"] is None else f" (ECE {r['ece']:.3f})"
            label = name + (" calibrated" if name in raw else "") + ece
            (line,) = ax.plot(
                [b["confidence"] for b in r["table"]], [b["accuracy"] for b in r["table"]], "o-", label=label
            )
            before = raw.get(name)
            if before and before["table"]:
                ece = "" if before["ece"] is None else f" (ECE {before['ece']:.3f})"
                xs, ys = [b["confidence"] for b in before["table"]], [b["accuracy"] for b in before["table"]]
                ax.plot(xs, ys, "x--", color=line.get_color(), alpha=0.6, label=f"{name} raw{ece}")
        out["reliability"] = _finish(
            fig, ax, "reliability (test split)" if raw else "reliability", "confidence", "score"
        )
    return out


def write_html(report: dict[str, Any], path: str | Path) -> Path:
    """A self-contained page: the tables, the calibration, the plots."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>agentkit eval: {html.escape(report['target'])}</title>",
        "<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}.pick{background:#e6f4e6;font-weight:bold}"
        ".plots{display:flex;flex-wrap:wrap;gap:1em}.plots svg{max-width:520px;height:auto}</style>",
        f"<h1>{html.escape(report['target'])} <small>({html.escape(report['kind'])}, {report['n']} items)</small></h1>",
    ]
    pick = report.get("calibration", {}).get("picked")
    for section, caption in (("test", f"test split — {report.get('split', '')}"), ("all", "every item")):
        if section not in report:
            continue
        header, body = _rows(report, section)
        parts.append(f"<h2>{html.escape(caption)}</h2><table><tr>")
        parts += [f"<th>{html.escape(h)}</th>" for h in header]
        parts.append("</tr>")
        for key, row in zip(report[section], body, strict=True):
            cls = " class='pick'" if key == pick else ""
            parts.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    if pick:
        c = report["calibration"]
        parts.append(
            f"<p>Chosen threshold <b>{c['threshold']:g}</b>: {html.escape(c['rule'])} (on the calibration split).</p>"
        )
    if report.get("headline"):
        items = "".join(
            f"<li>{html.escape(k)}: {'-' if v is None else f'{v:.3f}'}</li>" for k, v in report["headline"].items()
        )
        parts.append(f"<h2>headline</h2><ul>{items}</ul>")
    parts.append("<h2>plots</h2><div class='plots'>")
    parts += list(_plots(report).values())
    parts.append("</div>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
