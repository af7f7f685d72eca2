"""One rich progress bar with throughput, used by every long stage (harvest, train, eval)."""

from __future__ import annotations

from rich import progress as rp
from rich.console import Console

console = Console(stderr=True)  # progress and messages
results = Console()  # tables and other results, on stdout


class _BarAndPanel(rp.Progress):
    """A progress bar with an optional renderable (a live metrics table) drawn below it."""

    panel = None

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        if self.panel is not None:
            yield self.panel


class Progress:
    """`with Progress("harvest", total=n, unit="tok") as bar: bar.advance(k)` — shows count and rate."""

    def __init__(self, description: str, total: int, unit: str = "tok", enabled: bool = True):
        self.enabled = enabled
        self._bar = _BarAndPanel(
            rp.TextColumn("[bold]{task.description}"),
            rp.BarColumn(),
            rp.MofNCompleteColumn(),
            rp.TextColumn(unit),
            rp.TaskProgressColumn(),
            rp.TextColumn("{task.fields[rate]}"),
            rp.TimeElapsedColumn(),
            rp.TimeRemainingColumn(),
            console=console,
            disable=not enabled,
        )
        self._unit = unit
        self._task = self._bar.add_task(description, total=total, rate="")

    def __enter__(self) -> Progress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)

    def advance(self, n: int) -> None:
        self._bar.advance(self._task, n)
        task = self._bar.tasks[0]
        speed = task.speed
        if speed:
            self._bar.update(self._task, rate=f"{speed:,.0f} {self._unit}/s")

    def show(self, renderable) -> None:
        """Draw `renderable` (e.g. a table of live metrics) under the bar, replacing the previous one."""
        self._bar.panel = renderable
        self._bar.refresh()

    def track(self, items, size):
        """Yield `items` inside the bar, advancing by `size(item)` after each one is processed."""
        with self:
            for item in items:
                yield item
                self.advance(size(item))

    @property
    def rate(self) -> float | None:
        return self._bar.tasks[0].speed
