"""The frame table every AU dataset loader returns and the AU lists (the folds: finetune.protocol).

A `FrameTable` is one labelled frame per `FrameRecord`, in a fixed order (subject, sequence,
frame). Labels follow `finetune.metrics`: occurrence `int8 [A]` with -1 for unknown, intensity
`float32 [A]` on 0..5 with NaN for unknown; `A` is `len(table.au_names)` for every record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

__all__ = ["BP4D_AUS", "DISFA_AUS", "DISFA_INTENSITY_AUS", "BP4D_INTENSITY_AUS", "FrameRecord", "FrameTable",
           "au_name", "au_number"]  # fmt: skip

BP4D_AUS = [1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24]
BP4D_INTENSITY_AUS = [6, 10, 12, 14, 17]  # FERA 2015
DISFA_AUS = [1, 2, 4, 6, 9, 12, 25, 26]  # occurrence: present where intensity >= 2
DISFA_INTENSITY_AUS = [1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26]

_AU_RE = re.compile(r"^au0*(\d+)$", re.IGNORECASE)


def au_name(au: int | str) -> str:
    """`12`, `"12"`, `"AU12"`, `"au012"` -> `"AU12"`."""
    return f"AU{au_number(au)}"


def au_number(au: int | str) -> int:
    """`"AU12"`, `"12"`, `12` -> `12`; anything else raises `ValueError`."""
    if isinstance(au, (int, np.integer)):
        return int(au)
    s = str(au).strip()
    m = _AU_RE.match(s)
    if m:
        return int(m.group(1))
    if s.isdigit():
        return int(s)
    raise ValueError(f"not an AU name: {au!r} (expected e.g. 12 or 'AU12')")


@dataclass
class FrameRecord:
    """One labelled frame.

    `frame` is the frame number in its sequence: BP4D's column-0 frame number, DISFA's video
    frame index counting from 0, a CSV's `frame` column (else the row's index in its sequence).
    `source` is the image file, or for DISFA the video file holding frame `frame`.
    `landmarks` are float32 [K, 2] (x, y) in the pixels of `source`, or None.
    """

    subject: str
    sequence: str
    frame: int
    source: str
    occ: np.ndarray  # int8 [A], -1 unknown
    intensity: np.ndarray  # float32 [A], NaN unknown
    landmarks: np.ndarray | None = None


@dataclass
class FrameTable:
    """Frames of one dataset and the AU names their label columns stand for.

    `notes` lists what a loader tolerated and left out (extra landmark files, frames skipped on
    request, ...), one line each, so that a run can report it.
    """

    name: str
    au_names: list[str]
    records: list[FrameRecord]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def aus(self) -> list[int]:
        return [au_number(n) for n in self.au_names]

    def subjects(self) -> list[str]:
        """Distinct subjects, sorted."""
        return sorted({r.subject for r in self.records})

    def subset(self, subjects: Iterable[str]) -> FrameTable:
        """The records of `subjects`, in table order. A subject the table lacks raises."""
        wanted = set(subjects)
        missing = sorted(wanted - set(self.subjects()))
        if missing:
            raise ValueError(f"{self.name}: subjects not in the table: {missing}")
        return self._filter(wanted, self.name)

    def _filter(self, subjects: set[str], name: str) -> FrameTable:
        return FrameTable(name, list(self.au_names), [r for r in self.records if r.subject in subjects],
                          list(self.notes))  # fmt: skip

    def occ_matrix(self) -> np.ndarray:
        """Occurrence labels int8 [N, A], -1 unknown."""
        if not self.records:
            return np.zeros((0, len(self.au_names)), np.int8)
        return np.stack([r.occ for r in self.records]).astype(np.int8, copy=False)

    def intensity_matrix(self) -> np.ndarray:
        """Intensity labels float32 [N, A], NaN unknown."""
        if not self.records:
            return np.zeros((0, len(self.au_names)), np.float32)
        return np.stack([r.intensity for r in self.records]).astype(np.float32, copy=False)
