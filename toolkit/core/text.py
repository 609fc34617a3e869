"""How the toolkit writes text: one table writer for the terminal and the report files, one
style of timestamp for records and folder names, and names made safe to print or to put in
Markdown (a file or class name is whatever someone else chose)."""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence

#: C0 and C1 controls, DEL, and the bidirectional overrides that reorder what a terminal shows
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_MARKDOWN = re.compile(r"([\\`*_{}\[\]<>()#+!|~])")


def timestamp() -> str:
    """Now, as records hold it: local time with its UTC offset, to the second (ISO 8601)."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def folder_stamp() -> str:
    """Now, in a folder name: local time as YYYYmmdd-HHMMSS, which sorts by time."""
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def for_terminal(text: object) -> str:
    """`text` as a terminal shows it safely: control characters (an escape sequence can move the
    cursor, retitle the window or hide what follows) written as \\xNN or \\uNNNN."""
    return _UNPRINTABLE.sub(lambda m: (f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100
                                       else f"\\u{ord(m[0]):04x}"), str(text))


def for_markdown(text: object) -> str:
    """`text` as plain text in Markdown: its markup characters escaped (a `|` would split a table
    cell, `<b>` would be HTML), its controls made printable (a newline would end a list item)."""
    return _MARKDOWN.sub(r"\\\1", for_terminal(text))


def text_table(head: Sequence[object], rows: Sequence[Sequence[object]], *,
               left: Sequence[int] = (0,), total: Sequence[object] | None = None) -> str:
    """Columns two spaces apart, a rule under the head (and above `total`); the columns in
    `left` (the first, by default) are aligned left, the others right, as numbers are."""
    cells = [[for_terminal(c) for c in row] for row in [head, *rows, *([total] if total else [])]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [line(cells[0]), rule, *map(line, cells[1:len(rows) + 1])]
    if total:
        lines += [rule, line(cells[-1])]
    return "\n".join(lines)
