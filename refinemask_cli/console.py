"""rich lives here only: console output, error lines and tables for the CLI."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

# markup off: what is printed holds file names, labels and messages with brackets, printed as
# written; the few lines that colour something turn it on for themselves and escape the rest
console = Console(stderr=False, highlight=False, soft_wrap=True, markup=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def error(message: str) -> None:
    """One line on stderr, no traceback. Messages are printed as written: their brackets ("points
    that are not [x, y] pairs", a file named ``img[1].png``) are not read as rich markup."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", markup=True)


def problem_line(level: str, text: str) -> None:
    """One ``validate`` line: the level coloured, the problem as written."""
    style = {"error": "red", "fixed": "green", "dropped": "magenta"}.get(level, "yellow")
    console.print(f"[{style}]{level:7s}[/] {escape(text)}", markup=True)


def kv_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    for k, v in rows:
        table.add_row(Text(k), Text(v))  # file names and labels as written, never as markup
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
        table.add_row(Text(k), Text(v))
    return table
