"""rich lives here only: console output, error lines and tables for the CLI."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

console = Console(stderr=False, highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def error(message: str) -> None:
    """One line on stderr, no traceback."""
    err_console.print(f"[bold red]error:[/] {message}", markup=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", markup=True)


def kv_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    for k, v in rows:
        table.add_row(k, v)
    return table


def is_tty() -> bool:
    return sys.stdout.isatty()


def progress(total_images: int, show: bool = True):
    """A rich progress bar for images with an instances/s readout; silent when not on a terminal
    (or not ``show``: the other ranks of a sharded run)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("images · {task.fields[instances]} instances · {task.fields[rate]:.1f} inst/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (show and console.is_terminal),
        transient=False,
    )


def summary_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("", justify="right")
    table.show_header = False
    for k, v in rows:
        table.add_row(k, v)
    return table
