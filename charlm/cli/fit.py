"""Tables that fit the console: a number or a status is never cut, other text wraps.

A table is first described as a `Grid` of cells. When it is shown, `Fitted` sizes the columns
itself (Rich would cut any column, numbers included, with an ellipsis once a table is too wide)
and draws whichever of these fits the width in the fewest lines: the grid as it is, the grid
turned on its side (runs as columns), or the turned grid split into several tables of a few runs
each. Only when none fits are the grid's own columns split, each table repeating the first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cached_property

from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.table import Table
from rich.text import Text

TEXT_FLOOR = 8
"""A word of text is folded rather than widen its column past this (or past its widest number)."""
NUMBER_TOKEN = re.compile(r"[(\-+]?\d\S{0,19}")
"""A word that starts with a digit is a number (`1,234,567`, `4.5s`, `0.0003)`), kept whole."""


@dataclass(frozen=True)
class Cell:
    """One cell's Rich markup; a `whole` cell (number, status) is never wrapped or folded."""

    markup: str
    whole: bool = False

    @cached_property
    def width(self) -> int:
        return Text.from_markup(self.markup).cell_len

    @cached_property
    def floor(self) -> int:
        """The narrowest column that shows this cell without cutting a number or a short word."""
        if self.whole:
            return self.width
        words = Text.from_markup(self.markup).plain.split() or [""]
        numbers = [len(w) for w in words if NUMBER_TOKEN.fullmatch(w)]
        return max([min(max(len(w) for w in words), TEXT_FLOOR), *numbers])


def text(value: object) -> Cell:
    """Plain text that may wrap at spaces and fold inside long words (names, keys, paths)."""
    return Cell(escape(str(value)))


def whole(value: object) -> Cell:
    """Plain text never broken across lines: a number, a status, a time."""
    return Cell(escape(str(value)), whole=True)


@dataclass(frozen=True)
class Grid:
    """A table before it is sized: a header row, then rows; column 0 names each row."""

    header: list[Cell]
    rows: list[list[Cell]]
    right: list[bool]  # right-justify this column (numbers)
    title: str = ""
    caption: str = ""
    show_header: bool = True
    rows_are: str = "rows"  # what a row is ("runs"), for the titles of split tables

    def turned(self) -> Grid:
        """Rows become columns: the header becomes column 0, each row a column of its own."""
        header = [self.header[0], *(row[0] for row in self.rows)]
        rows = [
            [self.header[c], *(row[c] for row in self.rows)] for c in range(1, len(self.header))
        ]
        return replace(self, header=header, rows=rows, right=[False] + [True] * len(self.rows))

    def split(self, size: int, noun: str) -> list[Grid]:
        """Several grids of `size` columns each after column 0, which every one repeats."""
        total = len(self.header) - 1
        parts = []
        for start in range(1, total + 1, size):
            keep = [0, *range(start, min(start + size, total + 1))]
            end = keep[-1]
            span = f"{start}-{end}" if end > start else f"{start}"
            parts.append(
                replace(
                    self,
                    header=[self.header[c] for c in keep],
                    rows=[[row[c] for c in keep] for row in self.rows],
                    right=[self.right[c] for c in keep],
                    title=f"{self.title} ({span} of {total} {noun})".lstrip(),
                    caption=self.caption if end == total else "",
                )
            )
        return parts

    def columns(self) -> list[list[Cell]]:
        lines = [*([self.header] if self.show_header else []), *self.rows] or [self.header]
        return [list(column) for column in zip(*lines, strict=True)]


def column_widths(grid: Grid, width: int) -> list[int] | None:
    """Content widths that fit `width` with borders and padding; None when even the narrowest
    do not. The widest wrappable column gives way first, the first column last: it names every
    row, so folding it costs a line in each row, where folding a header costs one line once."""
    columns = grid.columns()
    natural = [max(cell.width for cell in column) for column in columns]
    floor = [max(cell.floor for cell in column) for column in columns]
    room = width - (len(columns) + 1) - 2 * len(columns)  # borders, one space each side
    if sum(floor) > room:
        return None
    widths = natural[:]
    while (excess := sum(widths) - room) > 0:
        others = [j for j in range(1, len(widths)) if widths[j] > floor[j]]
        if not others:
            widths[0] -= excess  # the floors fit, so the first column has this much to give
            break
        widest = max(others, key=widths.__getitem__)
        widths[widest] -= 1
    return widths


def build_table(grid: Grid, widths: list[int] | None) -> Table:
    """The Rich table of `grid`, with the given column widths (None: Rich's, folding any cut).
    Its title and caption are not part of it: they are lines of their own (`Fitted`), so a
    narrow table does not wrap them."""
    table = Table(show_header=grid.show_header)
    for i, cell in enumerate(grid.header):
        table.add_column(
            cell.markup if grid.show_header else None,
            justify="right" if grid.right[i] else "left",
            overflow="fold",
            width=None if widths is None else widths[i],
        )
    for row in grid.rows:
        table.add_row(*(cell.markup for cell in row))
    return table


def _fits(grids: list[Grid], width: int) -> bool:
    return all(column_widths(grid, width) is not None for grid in grids)


def _splits_to_fit(grid: Grid, width: int, noun: str) -> list[list[Grid]]:
    """The grid split into as few tables as fit, and into one more (narrower tables can take
    fewer lines), their columns shared out evenly."""
    total = len(grid.header) - 1
    size = next((n for n in range(total - 1, 0, -1) if _fits(grid.split(n, noun), width)), None)
    if size is None:  # a split into one table is the grid itself
        return []
    fewest = len(grid.split(size, noun))
    found = []
    for tables in (fewest, fewest + 1):
        even = grid.split(-(-total // tables), noun)
        if len(even) == tables and _fits(even, width):
            found.append(even)
    return found or [grid.split(size, noun)]


@dataclass
class Fitted:
    """A `Grid` drawn to fit the console it is printed on (see the module's docstring).

    `turn`: the grid may also be shown on its side (a comparison of runs: yes; a key/value
    summary: no).
    """

    grid: Grid
    turn: bool = True

    def layouts(self, width: int) -> list[list[Grid]]:
        """The ways of showing the grid that fit `width`: as it is; turned, whole or split into
        tables of a few of its rows; and only when none of those fits, its columns split."""
        found = [[self.grid]] if column_widths(self.grid, width) is not None else []
        if self.turn and self.grid.rows:
            turned = self.grid.turned()
            found += [[turned]] if column_widths(turned, width) is not None else []
            found += _splits_to_fit(turned, width, self.grid.rows_are)
        return found or _splits_to_fit(self.grid, width, "columns")

    def tables(self, console: Console, options: ConsoleOptions) -> list[tuple[Grid, Table]]:
        """The tables of the layout that takes the fewest lines at this width, with their grids."""
        width = options.max_width
        best: tuple[int, list[tuple[Grid, Table]]] | None = None
        for grids in self.layouts(width):
            tables = [(g, build_table(g, column_widths(g, width))) for g in grids]
            lines = sum(len(console.render_lines(t, options, pad=False)) + 1 for _, t in tables)
            if best is None or lines < best[0]:
                best = (lines, tables)
        return best[1] if best is not None else [(self.grid, build_table(self.grid, None))]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for i, (grid, table) in enumerate(self.tables(console, options)):
            if i:
                yield Text("")
            if grid.title:
                yield Text.from_markup(grid.title)
            yield table
            if grid.caption:
                yield Text.from_markup(grid.caption)
