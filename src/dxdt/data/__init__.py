"""Bundled data sets and a small, strict CSV reader.

CSV files are read with a header line of column names; lines starting with ``#`` are comments (the bundled
files keep their sources there) and blank lines are skipped. Every problem is reported with the file, line
and column, as a :class:`DataError` (a ``ValueError``).

>>> from dxdt.data import load
>>> flu = load("boarding_school_influenza_1978")
>>> flu.columns
['date', 'day', 'in_bed', 'convalescent']
>>> flu.column("in_bed")          # float64 tensor of 14 values
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["DataError", "Table", "available", "load", "path", "read_csv"]

_HERE = Path(__file__).resolve().parent
_MISSING = {"", "na", "nan", "null", "none", "-"}


class DataError(ValueError):
    """A problem with the contents of a data file; the message names the file, line and column."""


@dataclass
class Table:
    """A CSV file's columns as text, with the line number of every row (for messages)."""

    source: str
    columns: list[str]
    rows: list[list[str]]
    lines: list[int]
    comments: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def _index(self, name: str) -> int:
        if name not in self.columns:
            raise DataError(f"{self.source} has no column {name!r}; its columns are: {', '.join(self.columns)}")
        return self.columns.index(name)

    def column(self, name: str, *, allow_missing: bool = False) -> torch.Tensor:
        """The column as float64 numbers; empty cells and ``NA`` become NaN when ``allow_missing``.

        Raises:
            DataError: no such column, a cell that is not a number, or a missing value where none is allowed.
        """
        j = self._index(name)
        out = []
        for row, line in zip(self.rows, self.lines):
            cell = row[j].strip()
            if cell.lower() in _MISSING:
                if not allow_missing:
                    raise DataError(f"{self.source}, line {line}, column {name!r}: the value is missing")
                out.append(math.nan)
                continue
            try:
                value = float(cell)
            except ValueError:
                raise DataError(f"{self.source}, line {line}, column {name!r}: {cell!r} is not a number") from None
            if not math.isfinite(value):
                raise DataError(f"{self.source}, line {line}, column {name!r}: {cell!r} is not a finite number")
            out.append(value)
        return torch.tensor(out, dtype=torch.float64)

    def text(self, name: str) -> list[str]:
        j = self._index(name)
        return [row[j] for row in self.rows]


def read_csv(file: str | Path) -> Table:
    """Read a CSV file with a header line; ``#`` lines are comments.

    Raises:
        DataError: the file is missing, empty, has no data rows, duplicate column names, or ragged rows.
    """
    p = Path(file)
    source = str(file)
    if not p.exists():
        raise DataError(f"{source}: no such file")
    if p.is_dir():
        raise DataError(f"{source} is a directory, not a CSV file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{source} is not a UTF-8 text file") from None
    comments, body = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            comments.append(stripped[1:].strip())
            continue
        body.append((number, raw))
    if not body:
        raise DataError(f"{source} is empty: expected a header line with column names and at least one data row")
    parsed = list(csv.reader([raw for _, raw in body]))
    header = [h.strip() for h in parsed[0]]
    if any(not h for h in header):
        raise DataError(f"{source}, line {body[0][0]}: the header has an empty column name")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"{source}, line {body[0][0]}: column {dupes[0]!r} appears more than once in the header")
    rows, lines = [], []
    for (number, _), row in zip(body[1:], parsed[1:]):
        if len(row) != len(header):
            raise DataError(
                f"{source}, line {number}: {len(row)} values for {len(header)} columns ({', '.join(header)})"
            )
        rows.append(row)
        lines.append(number)
    if not rows:
        raise DataError(f"{source} has a header ({', '.join(header)}) but no data rows")
    return Table(source, header, rows, lines, comments)


def available() -> list[str]:
    """Names of the bundled data sets."""
    return sorted(f.stem for f in _HERE.glob("*.csv"))


def path(name: str) -> Path:
    """The file of a bundled data set."""
    stem = name[:-4] if name.endswith(".csv") else name
    f = _HERE / f"{stem}.csv"
    if not f.exists():
        raise DataError(f"no bundled data set {name!r}; available: {', '.join(available())}")
    return f


def load(name: str) -> Table:
    """A bundled data set by name (see :func:`available`)."""
    return read_csv(path(name))
