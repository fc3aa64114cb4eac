"""The ``agentkit`` command line (installed with the ``cli`` extra): one module per command, each
parsing its arguments and calling the library. typer and rich are imported when it runs."""

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

__all__ = ["main"]


def _app() -> "typer.Typer":
    try:
        import rich  # noqa: F401 - the other half of the extra
        import typer
    except ImportError:
        print("the agentkit CLI needs its extra: pip install 'agentkit[cli]'", file=sys.stderr)
        raise SystemExit(2) from None

    from agentkit.cli import eval as eval_command
    from agentkit.cli import models, run, tune

    app = typer.Typer(add_completion=False, no_args_is_help=True, help="Narrow task nodes on small local models.")

    @app.callback()
    def _root() -> None:
        """agentkit: constrained, validated, confidence-scored small-model nodes."""

    app.command()(models.models)
    app.command()(run.run)
    app.command("eval")(eval_command.evaluate)
    app.command()(tune.tune)
    return app


def main() -> None:
    _app()()
