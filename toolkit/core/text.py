"""How the toolkit writes text: one table writer for the terminal and the report files, and
one style of timestamp for records (archives, models, manifests) and for folder names."""

from __future__ import annotations

import datetime
from collections.abc import Sequence


def timestamp() -> str:
    """Now, as records hold it: local time with its UTC offset, to the second (ISO 8601)."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def folder_stamp() -> str:
    """Now, in a folder name: local time as YYYYmmdd-HHMMSS, which sorts by time."""
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def text_table(head: Sequence[object], rows: Sequence[Sequence[object]], *,
               left: Sequence[int] = (0,), total: Sequence[object] | None = None) -> str:
    """Columns two spaces apart, a rule under the head (and above `total`); the columns in
    `left` (the first, by default) are aligned left, the others right, as numbers are."""
    cells = [[str(c) for c in row] for row in [head, *rows, *([total] if total else [])]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [line(cells[0]), rule, *map(line, cells[1:len(rows) + 1])]
    if total:
        lines += [rule, line(cells[-1])]
    return "\n".join(lines)
