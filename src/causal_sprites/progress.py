"""Progress bars on a terminal's stderr (rich), for work that takes more than a moment: the data's
generation and download, and reading factors off many images. Silent when stderr is no terminal,
so `--json` output and logs stay clean."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TimeRemainingColumn,
)


@contextlib.contextmanager
def progress_bar(
    description: str, enabled: bool, *, download: bool = False
) -> Iterator[Callable[[int, int | None], None]]:
    """A rich progress bar on a terminal's stderr; yields `update(done, total)`."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield lambda done, total: None
        return
    columns = [BarColumn(), DownloadColumn() if download else TaskProgressColumn()]
    with Progress(
        "[progress.description]{task.description}",
        *columns,
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
