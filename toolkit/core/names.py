"""What a class may be called: a folder name safe on every OS, one rule for the crawl that makes
the folder, the pack that reads it, and the labels.txt and model card that print it."""

from __future__ import annotations

import unicodedata

_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)),
                     *(f"LPT{i}" for i in range(10))}
_FORBIDDEN_CHARS = set('<>:"/\\|?*')


def is_control(c: str) -> bool:
    """C0 and C1 controls and DEL: a newline in a class name would shift every label after it in
    labels.txt, an escape sequence would reach the terminal."""
    return ord(c) < 32 or 0x7F <= ord(c) <= 0x9F


def class_name_problem(label: str) -> str | None:
    """What is wrong with `label` (NFC) as a class's folder name, or None if nothing is."""
    label = unicodedata.normalize("NFC", label)
    if not label.strip():
        return "is empty"
    if label in (".", "..") or "/" in label or "\\" in label:
        return "is a path, not a name"
    if label.startswith("."):
        return "starts with '.', which hides the folder"
    if any(is_control(c) or c in _FORBIDDEN_CHARS for c in label):
        return 'holds a character that is not allowed in file names (<>:"/\\|?* or a control)'
    if label[-1] in ". " or label[0] == " ":
        return "starts or ends with a space, or ends with a dot"
    if label.split(".")[0].upper().strip() in _WINDOWS_RESERVED:
        return "is a reserved device name on Windows"
    if len(label.encode("utf-8")) > 120:
        return "is too long for a folder name"
    return None
