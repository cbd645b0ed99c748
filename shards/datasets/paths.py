"""Case-insensitive lookups in released dataset trees (copies differ in case and plurals)."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["listing", "child", "first_child"]


def listing(folder: Path) -> dict[str, str]:
    """`{lower-case name: real name}` of a folder's entries ({} when it does not exist)."""
    try:
        return {e.name.lower(): e.name for e in os.scandir(folder)}
    except (FileNotFoundError, NotADirectoryError):
        return {}


def child(folder: Path, name: str) -> Path | None:
    """`folder/name` matched without case, or None."""
    real = listing(folder).get(name.lower())
    return None if real is None else folder / real


def first_child(folder: Path, pattern: str, *, dirs: bool | None = None) -> Path | None:
    """The first entry (in sorted order) whose name matches regex `pattern` fully, without case."""
    rx = re.compile(pattern, re.IGNORECASE)
    for real in sorted(listing(folder).values()):
        p = folder / real
        if rx.fullmatch(real) and (dirs is None or p.is_dir() == dirs):
            return p
    return None
