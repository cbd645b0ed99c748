"""A generic AU dataset described by one CSV file.

Columns (header names matched without case):

* `path`: the image file, relative to `root` (default: the CSV's folder) unless absolute;
* `subject`: the person (folds and subject-exclusive splits use it);
* one column per occurrence AU, named `AU1`, `AU12`, ... : 1 present, 0 absent, and -1, 9 or
  empty for unknown;
* optional intensity columns named `AU12_int`: 0..5, and -1, 9, NaN or empty for unknown;
* optional `sequence` (default: the subject) and `frame` (default: the row's index within its
  sequence, counting from 0); optional `x0,y0,x1,y1,...` are not read (no landmarks: None).

The table's AUs are the union of occurrence and intensity columns, in AU order; an AU with
only an intensity column has unknown occurrence, one with only an occurrence column NaN
intensity. Every image must exist and be non-empty (`check_files=True`): a missing or 0-byte
one raises naming the CSV line and the path.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from shards.datasets.table import FrameRecord, FrameTable, au_name, au_number

__all__ = ["load_csv"]

_OCC_RE = re.compile(r"^au0*(\d+)$", re.IGNORECASE)
_INT_RE = re.compile(r"^au0*(\d+)_int(?:ensity)?$", re.IGNORECASE)
_UNKNOWN = ("", "-1", "9", "nan", "-1.0", "9.0")


def load_csv(path: str | Path, *, root: str | Path | None = None, aus: Iterable[int | str] | None = None,
             check_files: bool = True) -> FrameTable:  # fmt: skip
    """A `FrameTable` from a CSV (see the module's docstring). `aus` picks and orders AUs;
    one the CSV has no column for raises `ValueError` naming the CSV."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label CSV not found: {path}")
    base = Path(root) if root is not None else path.parent
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [c.strip() for c in next(reader)]
        except StopIteration:
            raise ValueError(f"{path}: empty CSV") from None
        rows = [(n, r) for n, r in enumerate(reader, start=2) if any(c.strip() for c in r)]
    cols = {h.lower(): i for i, h in enumerate(header)}
    for need in ("path", "subject"):
        if need not in cols:
            raise ValueError(f"{path}: no '{need}' column (header: {header})")
    occ_cols = {int(m.group(1)): i for i, h in enumerate(header) if (m := _OCC_RE.match(h))}
    int_cols = {int(m.group(1)): i for i, h in enumerate(header) if (m := _INT_RE.match(h))}
    present = sorted(set(occ_cols) | set(int_cols))
    if aus is None:
        au_list = present
        if not au_list:
            raise ValueError(f"{path}: no AU columns (expected names like AU12 or AU12_int; header: {header})")
    else:
        au_list = [au_number(a) for a in aus]
        lacking = [au_name(a) for a in au_list if a not in present]
        if lacking:
            raise ValueError(f"{path}: no column for {lacking} (AU columns: {[au_name(a) for a in present]})")

    seq_col, frame_col = cols.get("sequence"), cols.get("frame")
    counters: dict[str, int] = {}
    records: list[FrameRecord] = []
    for line, row in rows:
        if len(row) < len(header):
            raise ValueError(f"{path}, line {line}: {len(row)} values, the header has {len(header)}")
        rel, subject = row[cols["path"]].strip(), row[cols["subject"]].strip()
        if not rel or not subject:
            raise ValueError(f"{path}, line {line}: empty path or subject")
        source = Path(rel) if Path(rel).is_absolute() else base / rel
        if check_files and not source.is_file():
            raise FileNotFoundError(f"{path}, line {line}: image not found: {source}")
        if check_files and source.stat().st_size == 0:  # else it fails only when a loader reaches it
            raise ValueError(f"{path}, line {line}: image is empty (0 bytes): {source}")
        sequence = row[seq_col].strip() if seq_col is not None and row[seq_col].strip() else subject
        if frame_col is not None and row[frame_col].strip():
            try:
                frame = int(row[frame_col])
            except ValueError:
                raise ValueError(f"{path}, line {line}: frame {row[frame_col]!r} is not an integer") from None
        else:
            frame = counters.get(sequence, 0)
        counters[sequence] = counters.get(sequence, 0) + 1
        occ = np.full(len(au_list), -1, np.int8)
        inten = np.full(len(au_list), np.nan, np.float32)
        for j, au in enumerate(au_list):
            if au in occ_cols:
                occ[j] = _occ_value(row[occ_cols[au]], path, line, au)
            if au in int_cols:
                inten[j] = _int_value(row[int_cols[au]], path, line, au)
        records.append(FrameRecord(subject, sequence, frame, str(source), occ, inten, None))
    if not records:
        raise ValueError(f"{path}: no rows")
    return FrameTable(path.stem, [au_name(a) for a in au_list], records)


def _occ_value(cell: str, path: Path, line: int, au: int) -> int:
    s = cell.strip().lower()
    if s in _UNKNOWN:
        return -1
    if s in ("0", "1", "0.0", "1.0"):
        return int(float(s))
    raise ValueError(f"{path}, line {line}: AU{au} value {cell!r} (expected 0, 1, or -1/9/empty for unknown)")


def _int_value(cell: str, path: Path, line: int, au: int) -> float:
    s = cell.strip().lower()
    if s in _UNKNOWN:
        return math.nan
    try:
        v = float(s)
    except ValueError:
        v = math.nan
    if not 0.0 <= v <= 5.0:
        raise ValueError(f"{path}, line {line}: AU{au}_int value {cell!r} (expected 0..5, or -1/9/empty for unknown)")
    return v
