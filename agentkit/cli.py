"""The ``agentkit`` command line (installed with the ``cli`` extra)."""

from __future__ import annotations

import sys


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

    return app


def main() -> None:
    _app()()


if __name__ == "__main__":
    main()
