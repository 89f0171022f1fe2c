"""Progress off a terminal: plain lines (a rich bar is drawn only once, at the end, when
its console is not a terminal, so a long `sair bench` in a log said nothing for its whole
run)."""

from __future__ import annotations

import io

from rich.console import Console

from sair_ray.progress import ProgressLines, duration, progress_bar


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_console_that_is_not_a_terminal_gets_lines_at_most_every_interval():
    buf = io.StringIO()
    console = Console(file=buf, width=200)
    assert isinstance(progress_bar(console), ProgressLines)
    clock = Clock()
    with ProgressLines(console, every_s=10, clock=clock) as p:
        task = p.add_task("bench", total=4)
        clock.t = 3
        p.advance(task)            # too soon for a line
        clock.t = 80
        p.advance(task)
        clock.t = 85
        p.update(task, advance=1, ok=3, bad=0)   # too soon again
        clock.t = 130
        p.advance(task)            # the last one always prints
    assert buf.getvalue().splitlines() == [
        "bench: 2/4 done, 1m20s elapsed, ETA 1m20s",
        "bench: 4/4 done, ok=3 bad=0, 2m10s elapsed",
    ]


def test_an_unfinished_task_is_reported_on_exit():
    buf = io.StringIO()
    clock = Clock()
    with ProgressLines(Console(file=buf, width=200), every_s=10, clock=clock) as p:
        task = p.add_task("load", total=10)
        clock.t = 5
        p.advance(task, 3)          # interrupted after 3 of 10
    assert buf.getvalue().splitlines() == ["load: 3/10 done, 5s elapsed, ETA 12s"]


def test_a_terminal_gets_the_bar():
    console = Console(file=io.StringIO(), force_terminal=True)
    assert not isinstance(progress_bar(console), ProgressLines)


def test_durations_read_as_hours_minutes_seconds():
    assert [duration(s) for s in (0, 42.4, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]
