"""``agentkit models``: the embedded models and where they are cached; assemble and verify them."""

import typer
from rich.console import Console
from rich.table import Table

from agentkit import embedded
from agentkit.errors import AgentkitError

__all__ = ["models"]


def models(
    assemble: bool = typer.Option(False, "--assemble", help="assemble and verify every embedded model"),
    verify: bool = typer.Option(False, "--verify", help="re-hash cached files"),
) -> None:
    """List the embedded models, where they are cached, and assemble/verify them."""
    console = Console()
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
        table.add_row(str(row["name"]), str(row["description"]), "yes" if row["assembled"] else "no", str(row["path"]))
    console.print(table)
    console.print(f"cache: {embedded.cache_dir()}  (set AGENTKIT_CACHE to move it)")
