"""Progress bars (rich) for long commands — scenario runs, replays, registry loads — drawn on
stderr only when it is a terminal: tests, CI logs and pipes see exactly the output they saw."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def on_terminal() -> bool:
    return sys.stderr.isatty()


@contextmanager
def progress(what: str, total: int | None) -> Iterator[Callable[[str], None]]:
    """``advance(label)`` after each item done (``total`` None: a spinner, no count). Nothing is
    drawn when stderr is no terminal, or for a single item."""
    if not on_terminal() or total == 1:
        yield lambda label: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn()]
    columns += [TimeElapsedColumn(), TextColumn("[dim]{task.fields[label]}")]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=total, label="")
        yield lambda label: bar.update(task, advance=1, label=label)
