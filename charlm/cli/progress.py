"""Training progress on stderr (the one place that reads progress events): a one-line bar on a
terminal, plain log lines otherwise.

The bar is redrawn four times a second from the last event and the clock, so its time moves
between events, and it is laid out for the console's width at each redraw: when the whole line
does not fit, the bar narrows, then the least useful fields go, so no number is ever cut.
Log lines are never wrapped: a line is one record for whoever reads the log.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.progress_bar import ProgressBar
from rich.text import Text

from charlm.cli.views import err

BAR_MAX, BAR_MIN = 40, 10
SEPARATOR = " | "
LABEL = "train "


def say(text: str, console: Console = err) -> None:
    """One log line, as it is however long (never hard-wrapped at the console's width)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@dataclass(frozen=True)
class Shown:
    """What the bar shows; replaced whole at each event, as the redraw runs in another thread.

    Times are on the view's clock: `elapsed_s` and `left_s` as they were at `at`.
    """

    max_steps: int | None = None
    max_time: float | None = None
    step: int | None = None  # None until the first step is reported: "starting"
    loss: float | None = None
    val_bpc: float | None = None
    chars_per_s: float | None = None
    elapsed_s: float = 0.0
    at: float = 0.0
    steps_per_s: float | None = None  # since the start, for the time left to max_steps
    final_chars: int | None = None  # the final eval has started, on this many chars
    final_bpc: float | None = None  # and ended with this score


@dataclass(frozen=True)
class Field:
    """A part of the bar's line; the lowest `keep` goes first when the line is too wide."""

    text: str
    keep: int
    short: str | None = None  # tried before any field goes


def clock_time(seconds: float) -> str:
    """H:MM:SS, as whole seconds."""
    whole = max(0, int(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _left(shown: Shown, elapsed: float, now: float) -> float | None:
    """Seconds to the budget's end: max_time's, or max_steps' at the speed so far."""
    if shown.final_chars is not None:
        return None
    ends = []
    if shown.max_time:
        ends.append(shown.max_time - elapsed)
    if shown.max_steps and shown.step is not None and shown.steps_per_s:
        ends.append((shown.max_steps - shown.step) / shown.steps_per_s - (now - shown.at))
    return max(0.0, min(ends)) if ends else None


def fraction(shown: Shown, elapsed: float) -> float:
    """How much of the budget is spent: of max_steps or max_time, whichever is further."""
    if shown.final_chars is not None:
        return 1.0
    parts = [0.0]
    if shown.max_steps:
        parts.append((shown.step or 0) / shown.max_steps)
    if shown.max_time:
        parts.append(elapsed / shown.max_time)
    return min(1.0, max(parts))


def fields(shown: Shown, now: float) -> list[Field]:
    """The line's fields, in the order shown."""
    elapsed = shown.elapsed_s + (now - shown.at)
    found = [Field("starting" if shown.step is None else f"step {shown.step:,}", 9)]
    if shown.final_bpc is not None:
        found.append(Field(f"final val bpc {shown.final_bpc:.4f}", 8))
    elif shown.final_chars is not None:
        eval_text = f"final eval on all {shown.final_chars:,} val chars"
        found.append(Field(eval_text, 8, short="final eval"))
    if shown.loss is not None:
        found.append(Field(f"loss {shown.loss:.3f}", 4))
    if shown.val_bpc is not None:
        found.append(Field(f"val bpc {shown.val_bpc:.3f}", 6))
    if shown.chars_per_s is not None:
        found.append(Field(f"{shown.chars_per_s:,.0f} chars/s", 5))
    found.append(Field(clock_time(elapsed), 7))
    left = _left(shown, elapsed, now)
    if left is not None:
        found.append(Field(f"left {clock_time(left)}", 3))
    return found


def _candidates(found: list[Field]) -> list[tuple[bool, list[str]]]:
    """The line's contents from the fullest to the barest: (label shown, field texts)."""
    texts = [f.text for f in found]
    shorter = [f.short or f.text for f in found]
    steps = [(True, texts), (False, texts), (False, shorter)]
    kept = list(range(len(found)))
    for i in sorted(kept, key=lambda k: found[k].keep)[:-1]:
        kept.remove(i)
        steps.append((False, [shorter[k] for k in kept]))
    return steps


def layout(found: list[Field], width: int) -> tuple[bool, int, list[str]]:
    """(label shown, bar width, field texts) of the fullest line that fits `width`: the bar
    narrows first, to BAR_MIN, then the label goes, long fields take their short forms, fields
    go by `keep`, and last the bar."""
    steps = _candidates(found)
    for label, texts in steps:
        room = width - len(SEPARATOR.join(texts)) - 1 - (len(LABEL) if label else 0)
        if room >= BAR_MIN:
            return label, min(room, BAR_MAX), texts
    for _, texts in steps:
        if len(SEPARATOR.join(texts)) <= width:
            return False, 0, texts
    return False, 0, steps[-1][1]


def bar_line(shown: Shown, now: float, console: Console, width: int) -> Text:
    """The bar's line for `console`, `width` columns wide."""
    label, bar, texts = layout(fields(shown, now), width)
    line = Text(no_wrap=True, overflow="crop")
    if label:
        line.append(LABEL, style="bold")
    if bar:
        done = fraction(shown, shown.elapsed_s + (now - shown.at))
        drawn = console.render(ProgressBar(total=1.0, completed=done, width=bar), console.options)
        track = Text.assemble(*((s.text, s.style) for s in drawn if not s.control))
        track.pad_right(bar - track.cell_len)  # without colours Rich draws only the done part
        line.append_text(track)
        line.append(" ")
    line.append(SEPARATOR.join(texts))
    return line


class ProgressView:
    """Shows training events: a live bar on a terminal (`plain` False), log lines otherwise."""

    def __init__(
        self, plain: bool, console: Console = err, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.plain, self.console, self.clock = plain, console, clock
        self.shown = Shown(at=clock())
        self.start: tuple[int, float] = (0, 0.0)  # step and time trained at Started
        self.last_bpc = "-"
        self.live: Any = None

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield bar_line(self.shown, self.clock(), console, options.max_width)

    def __enter__(self) -> ProgressView:
        if not self.plain:
            from rich.live import Live

            self.live = Live(self, console=self.console, refresh_per_second=4)
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _update(self, **changes: Any) -> None:
        self.shown = dataclasses.replace(self.shown, **changes)
        if self.live is not None:
            self.live.refresh()

    def _moved(self, step: int, elapsed_s: float, **changes: Any) -> None:
        """A step and the time trained at it: the clock, step and speed the bar counts from."""
        start_step, start_s = self.start
        rate = (step - start_step) / (elapsed_s - start_s) if elapsed_s > start_s else None
        self._update(step=step, elapsed_s=elapsed_s, at=self.clock(), steps_per_s=rate, **changes)

    def handle(self, event: Any) -> None:
        from charlm import events as ev

        if isinstance(event, ev.Started):
            self.start = (event.step, event.elapsed_s)
            say(start_line(event), self.console)
            budgets = {"max_steps": event.max_steps, "max_time": event.max_time}
            self._update(elapsed_s=event.elapsed_s, at=self.clock(), **budgets)
        elif isinstance(event, ev.Progress) and self.shown.final_chars is None:
            self._moved(event.step, event.elapsed_s, chars_per_s=event.chars_per_s)
        elif isinstance(event, ev.Logged):
            self._log(event)
        elif isinstance(event, ev.FinalEvalStarted):
            self._update(final_chars=event.chars)
            if self.plain:
                say(f"final eval on all {event.chars:,} val chars ...", self.console)
        elif isinstance(event, ev.FinalEvalFinished):
            self._update(final_bpc=event.bpc)
            if self.plain:
                say(f"final val bpc {event.bpc:.4f} | {event.seconds:.1f}s", self.console)
        elif isinstance(event, ev.Resumed):
            say(f"resuming from {event.path} (step {event.step:,})", self.console)
        elif isinstance(event, ev.Warned):
            say(f"warning: {event.message}", self.console)

    def _log(self, event: Any) -> None:
        if event.val_bpc is not None:
            self.last_bpc = f"{event.val_bpc:.3f}"
        loss, speed = event.train_loss, event.chars_per_s
        if self.plain:
            say(
                f"step {event.step:,}"
                + (f" | loss {loss:.3f}" if loss is not None else "")
                + f" | val bpc {self.last_bpc}"
                + (f" | {speed:,.0f} chars/s" if speed is not None else "")
                + f" | {event.elapsed_s:.1f}s",
                self.console,
            )
            return
        given = {"val_bpc": event.val_bpc, "loss": loss, "chars_per_s": speed}
        changes = {key: value for key, value in given.items() if value is not None}
        if self.shown.final_chars is None:  # after it, the clock keeps the eval's time
            self._moved(event.step, event.elapsed_s, **changes)
        else:
            self._update(**changes)


def start_line(event: Any) -> str:
    """The line a run starts with: folder, device, precision (and auto's timings), sizes."""
    probe = event.precision_probe
    times = ", ".join(
        f"{seconds * 1e3:.0f} ms in {name.removesuffix('_step_s')}"
        for name, seconds in (probe or {}).items()
    )
    timed = f" (auto: a step took {times})" if probe else ""
    return (
        f"run {event.run_dir} | {event.device} {event.precision}{timed}"
        f" | {event.parameters:,} parameters"
        f" | vocab {event.vocab_size} | train {event.train_chars:,} chars"
        f" | val {event.val_chars:,} chars"
    )


class SweepView:
    """Shows a sweep: a line per planned run, then that run's progress as `charlm train` does."""

    def __init__(self, plain: bool, console: Console = err) -> None:
        self.plain, self.console = plain, console
        self.view: ProgressView | None = None

    def close(self) -> None:
        if self.view is not None:
            self.view.__exit__(None, None, None)
            self.view = None

    def handle(self, event: Any) -> None:
        from charlm import events as ev

        if isinstance(event, ev.SweepRun):
            self.close()
            what = {"skip": "finished already, skipped", "start": "starting"}
            line = f"[{event.index}/{event.total}] {event.name}: "
            say(line + what.get(event.action, "unfinished"), self.console)
        elif isinstance(event, ev.Resumed):
            say(f"  resuming from {event.path} (step {event.step:,})", self.console)
        elif isinstance(event, ev.SweepMoved):
            say(f"  kept the unfinished run as {event.moved_to}; starting it again", self.console)
        elif isinstance(event, ev.SweepPrecision):
            say(f"precision: auto resolved to {event.precision} for every run", self.console)
        elif isinstance(event, ev.Started):
            self.view = ProgressView(self.plain, self.console).__enter__()
            self.view.handle(event)
        elif isinstance(event, ev.Ended):
            self.close()
            summary = event.summary
            say(
                f"  done: best val bpc {summary.best_val_bpc:.4f} in {summary.steps:,} steps",
                self.console,
            )
        elif self.view is not None:
            self.view.handle(event)
        elif isinstance(event, ev.Warned):
            say(f"warning: {event.message}", self.console)
