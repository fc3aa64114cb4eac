"""What the commands share: the console for messages, the progress bar, loading a target with its
node settings, and the one mapping of library errors to a red one-line message and exit status 2."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from agentkit.errors import AgentkitError

if TYPE_CHECKING:
    from agentkit.runner import TargetSource

__all__ = ["error_console", "exit_on_error", "load", "load_source", "progress_bar", "say"]


def error_console() -> Console:
    """Where progress, tables and messages go (stderr: stdout stays for the JSON records)."""
    return Console(stderr=True, soft_wrap=True)


def say(console: Console, message: str, *, style: str | None = None) -> None:
    """One message as it is: no markup read into it (a file name may hold brackets), and text that
    is not UTF-8 (a lone surrogate from a file name) escaped."""
    text = message.encode("utf-8", "backslashreplace").decode("utf-8")
    console.print(text, style=style, markup=False, highlight=False)


def progress_bar(console: Console) -> Progress:
    """A transient bar: description, bar, done/total, time left."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, console=console, transient=True)


@contextmanager
def exit_on_error(err: Console, *, debug: bool = False) -> Iterator[None]:
    """A library error (or a bad option value) as a red message and exit status 2, no stack trace
    (``debug``: raised as it is)."""
    try:
        yield
    except (AgentkitError, ValueError) as e:
        if debug:
            raise
        say(err, " ".join(str(e).split()), style="red")
        raise typer.Exit(2) from None


def load(target: str, config: Path | None, err: Console) -> object:
    """The target with its node settings applied (``--config``, or ``./agentkit.toml`` if present)."""
    return load_source(target, config, err)[1]


def load_source(target: str, config: Path | None, err: Console) -> "tuple[TargetSource, object]":
    """Where the target comes from (for processes that load it again: Ray actors) and the target, loaded
    as :func:`load` does."""
    from agentkit.runner import TargetSource

    with exit_on_error(err):
        source = TargetSource.find(target, config)
        loaded, configured = source.load()
    if configured:
        say(err, f"settings from {source.config} applied to: {', '.join(configured)}")
    return source, loaded
