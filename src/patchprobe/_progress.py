"""One progress-bar helper for every long job (extraction, training); silent when disabled."""

from __future__ import annotations


class ProgressBar:
    """A rich progress bar with elapsed time and ETA; a no-op when `enabled` is False."""

    def __init__(self, enabled: bool, description: str, total: int, completed: int = 0) -> None:
        self._progress = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()
            )
            self._progress.start()
            self._task = self._progress.add_task(description, total=total, completed=completed)

    def advance(self, count: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, count)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
