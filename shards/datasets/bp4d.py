"""BP4D in its released layout, as its owners distribute it (the layout below).

* Occurrence labels: `AUCoding/AU_OCC/{subject}_{task}.csv` (also `AUCoding/AUCoding/` or
  `AUCoding/`, matched without case). A header row `0,1,2,...,99`; column `0` is the frame
  number (it does not start at 0 or 1: F001_T1 runs 2440..2992), column `k` is AU k, found by
  its header rather than its position; values 0 absent, 1 present, 9 unknown (-> -1).
* Frames: `{subject}/{task}/{frame}.jpg` under the image root, zero-padded to a width measured
  from the first file name of each folder (4 digits in the copies seen: `F001/T2/0721.jpg`).
  The image root is `image_root`; else, per subject, the first of `root`, `root/2D+3D` (where
  the released `2D+3D/{subject}.zip` extract to), `root/img`, `root/images`, `root/Sequences`
  that holds the subject's folder. A zip not yet extracted is named in the error.
* Intensity (FERA 2015, AU6/10/12/14/17): `AU Intensity Codes3.0/AU{NN}/{subject}_{task}*.csv`,
  no header, rows `frame,intensity` 0..5 with 9 unknown; merged into the frames of the same
  sequence and frame number where present, NaN elsewhere.

Every file is checked before anything trains. By default (`missing_images="error"`) one
`ValueError` lists every labelled sequence that cannot be read whole: no image folder, or
labelled frames whose image is missing or empty (0 bytes), naming the CSV, the folder and the
first such files. `missing_images="skip"` leaves those frames out and says so in `table.notes`.
Images with no CSV row are not used (BP4D codes a part of each task only); a whole sequence of
images without a label file is only warned about, every one named (`table.notes` and the log):
its frames could not be used anyway and the rest is sound, but the copy of the labels is
likely incomplete.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from shards.datasets.paths import child, first_child, listing
from shards.datasets.table import BP4D_AUS, BP4D_INTENSITY_AUS, FrameRecord, FrameTable, au_name, au_number

__all__ = ["load_bp4d"]

log = logging.getLogger(__name__)

_SEQ_RE = re.compile(r"^([FM]\d{3})_(T\d+)\.csv$", re.IGNORECASE)
_SUBJECT_RE = re.compile(r"[FM]\d{3}", re.IGNORECASE)
_TASK_RE = re.compile(r"T\d+", re.IGNORECASE)
_IMAGE_EXT = (".jpg", ".jpeg", ".png")
_LABEL_DIRS = (("AUCoding", "AU_OCC"), ("AUCoding", "AUCoding"), ("AUCoding",), ("AU_OCC",), ())
_IMAGE_DIRS = ((), ("2D+3D",), ("img",), ("images",), ("Sequences",))  # the search order


def _resolve(root: Path, parts: Iterable[str]) -> Path | None:
    p = root
    for part in parts:
        p = child(p, part)
        if p is None:
            return None
    return p


def _label_dir(root: Path) -> Path:
    tried = []
    for parts in _LABEL_DIRS:
        d = _resolve(root, parts)
        tried.append(str(root.joinpath(*parts)))
        if d is not None and d.is_dir() and any(_SEQ_RE.match(n) for n in listing(d).values()):
            return d
    raise FileNotFoundError(f"BP4D: no occurrence label files ({{subject}}_{{task}}.csv) in any of {tried}")


def _int(cell: str, path: Path, line: int, what: str) -> int:
    try:
        v = float(cell)
    except ValueError:
        raise ValueError(f"{path}, line {line}: {what} {cell!r} is not a number") from None
    if not math.isfinite(v) or v != int(v):
        raise ValueError(f"{path}, line {line}: {what} {cell!r} is not an integer")
    return int(v)


def _read_occ(path: Path, aus: list[int]) -> tuple[list[int], np.ndarray]:
    """Frame numbers and int8 [N, A] labels (-1 for 9) of one AU_OCC file."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: empty label file")
    header = [c.strip() for c in rows[0]]
    if not header or header[0] != "0" or not all(c.lstrip("-").isdigit() for c in header):
        raise ValueError(f"{path}: expected a header row '0,1,2,...,99' (column 0 the frame number), "
                         f"got {','.join(header[:6])}...")  # fmt: skip
    col = {int(c): i for i, c in enumerate(header)}
    lacking = [a for a in aus if a not in col or a == 0]
    if lacking:
        raise ValueError(f"{path}: no column for {[au_name(a) for a in lacking]} (the header has AUs 1..{max(col)})")
    idx = [col[a] for a in aus]
    frames: list[int] = []
    labels = np.empty((len(rows) - 1, len(aus)), np.int8)
    seen: dict[int, int] = {}
    for n, row in enumerate(rows[1:]):
        line = n + 2
        if len(row) < len(header):
            raise ValueError(f"{path}, line {line}: {len(row)} values, the header has {len(header)}")
        frame = _int(row[0], path, line, "frame number")
        if frame in seen:
            raise ValueError(f"{path}, line {line}: frame {frame} repeats line {seen[frame]}")
        seen[frame] = line
        frames.append(frame)
        for j, i in enumerate(idx):
            v = _int(row[i], path, line, f"AU{aus[j]} value")
            if v not in (0, 1, 9):
                raise ValueError(f"{path}, line {line}: AU{aus[j]} value {v} (expected 0, 1 or 9 for unknown)")
            labels[n, j] = -1 if v == 9 else v
    return frames, labels


def _image_index(folder: Path) -> tuple[dict[int, str], int]:
    """`{frame number: file name}` of a frame folder and the zero-pad width of its first file."""
    names = sorted(n for n in listing(folder).values() if n.lower().endswith(_IMAGE_EXT))
    by_frame: dict[int, str] = {}
    width = len(Path(names[0]).stem) if names else 0
    for n in names:
        stem = Path(n).stem
        if stem.isdigit():
            # prefer the name of the measured width where two spellings of a number coexist
            if int(stem) not in by_frame or len(stem) == width:
                by_frame[int(stem)] = n
    return by_frame, width


def _subject_folder(roots: list[Path], subject: str) -> Path | None:
    for r in roots:
        d = child(r, subject)
        if d is not None and d.is_dir():
            return d
    return None


def _unlabelled_sequences(roots: list[Path], labelled: set[tuple[str, str]], wanted: set[str] | None) -> list[str]:
    """`SUBJECT/TASK` of the image folders (holding images) that no label file covers."""
    found = {n.upper() for r in roots for n in listing(r).values() if _SUBJECT_RE.fullmatch(n) and (r / n).is_dir()}
    out = []
    for subject in sorted(found if wanted is None else found & wanted):
        sub_dir = _subject_folder(roots, subject)
        for task in sorted(listing(sub_dir).values(), key=lambda t: (len(t), t)):
            if (_TASK_RE.fullmatch(task) and (subject, task.upper()) not in labelled
                    and any(n.lower().endswith(_IMAGE_EXT) for n in listing(sub_dir / task).values())):  # fmt: skip
                out.append(f"{subject}/{task}")
    return out


def _missing_folder_message(roots: list[Path], root: Path, subject: str, task: str, csv_path: Path) -> str:
    bases = [b for r in [*roots, root] for b in (child(r, "2D+3D"), r) if b is not None]
    zips = [z for b in bases if (z := child(b, f"{subject}.zip")) is not None]
    hint = f"; found {zips[0]}: extract it first" if zips else ""
    tried = [str(r / subject / task) for r in roots]
    return f"{csv_path}: no image folder for {subject}/{task} (tried {tried}){hint}"


def _fera_dir(intensity_root: Path) -> Path:
    base = first_child(intensity_root, r"au intensity codes.*", dirs=True) or intensity_root
    if first_child(base, r"au0*\d+", dirs=True) is None:
        raise FileNotFoundError(f"BP4D intensity: no AU{{NN}} folders in {base}")
    return base


def _read_fera(path: Path) -> dict[int, float]:
    """`{frame: intensity}` from a FERA 2015 file (rows `frame,intensity`; 9 -> NaN)."""
    out: dict[int, float] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if not any(c.strip() for c in row):
                continue
            if len(row) < 2:
                raise ValueError(f"{path}, line {n}: expected 'frame,intensity', got {','.join(row)!r}")
            frame = _int(row[0], path, n, "frame number")
            v = _int(row[1], path, n, "intensity")
            if v not in (0, 1, 2, 3, 4, 5, 9):
                raise ValueError(f"{path}, line {n}: intensity {v} (expected 0..5, or 9 for unknown)")
            if frame in out:
                raise ValueError(f"{path}, line {n}: frame {frame} appears twice")
            out[frame] = math.nan if v == 9 else float(v)
    return out


def _fera_files(fera: Path, aus: list[int]) -> dict[tuple[str, str], dict[int, Path]]:
    """`{(subject, task): {au: file}}` for the intensity AUs among `aus`."""
    files: dict[tuple[str, str], dict[int, Path]] = {}
    for d in sorted(listing(fera).values()):
        m = re.fullmatch(r"au0*(\d+)", d, re.IGNORECASE)
        if not m or not (fera / d).is_dir() or int(m.group(1)) not in aus:
            continue
        au = int(m.group(1))
        for name in sorted(listing(fera / d).values()):
            fm = re.match(r"^([FM]\d{3})_(T\d+)(?:[_\W].*)?\.csv$", name, re.IGNORECASE)
            if fm:
                key = (fm.group(1).upper(), fm.group(2).upper())
                if au in files.setdefault(key, {}):
                    raise ValueError(f"BP4D intensity: two files for {key[0]}_{key[1]} AU{au}: "
                                     f"{files[key][au]} and {fera / d / name}")  # fmt: skip
                files[key][au] = fera / d / name
    return files


def load_bp4d(root: str | Path, *, intensity_root: str | Path | None = None, image_root: str | Path | None = None,
              aus: Iterable[int | str] | None = None, subjects: Iterable[str] | None = None,
              missing_images: str = "error") -> FrameTable:  # fmt: skip
    """BP4D occurrence labels (and FERA 2015 intensity where `intensity_root` is given).

    `aus`: the AUs to label, default `BP4D_AUS`; one that a label file has no column for, or
    that no frame has a known label for, raises `ValueError`. `subjects`: load only these.
    Records come by subject, task number, then in the CSV's row order; `source` is the image path.
    """
    if missing_images not in ("error", "skip"):
        raise ValueError(f"missing_images must be 'error' or 'skip', got {missing_images!r}")
    root = Path(root)
    au_list = [au_number(a) for a in (BP4D_AUS if aus is None else aus)]
    if not au_list:
        raise ValueError("load_bp4d: no AUs asked for")
    label_dir = _label_dir(root)
    roots = [Path(image_root)] if image_root is not None else [p for p in (_resolve(root, q) for q in _IMAGE_DIRS) if p]
    wanted = None if subjects is None else {s.upper() for s in subjects}

    sequences = []
    for name in listing(label_dir).values():
        m = _SEQ_RE.match(name)
        if m and (wanted is None or m.group(1).upper() in wanted):
            sequences.append((m.group(1).upper(), m.group(2).upper(), label_dir / name))
    sequences.sort(key=lambda s: (s[0], int(s[1][1:])))
    if wanted is not None and (lacking := sorted(wanted - {s[0] for s in sequences})):
        raise ValueError(f"BP4D: no label files in {label_dir} for subjects {lacking}")
    if not sequences:
        raise FileNotFoundError(f"BP4D: no label files in {label_dir}")

    int_aus = [a for a in au_list if a in BP4D_INTENSITY_AUS]
    fera = {}
    if intensity_root is not None:
        fera = _fera_files(_fera_dir(Path(intensity_root)), int_aus)
    notes: list[str] = []
    problems: list[str] = []  # labelled frames that cannot be read, one line per sequence
    records: list[FrameRecord] = []
    skipped_frames, no_intensity = 0, 0
    known_any = np.zeros(len(au_list), bool)
    for subject, task, csv_path in sequences:
        frames, labels = _read_occ(csv_path, au_list)
        known_any |= (labels >= 0).any(0)
        sub_dir = _subject_folder(roots, subject)
        folder = child(sub_dir, task) if sub_dir is not None else None
        if folder is None or not folder.is_dir():
            problems.append(_missing_folder_message(roots, root, subject, task, csv_path))
            skipped_frames += len(frames)
            continue
        by_frame, width = _image_index(folder)
        missing = [f for f in frames if f not in by_frame]
        if missing:
            shown = ", ".join(f"{f} -> {folder / f'{f:0{max(width, 1)}d}.jpg'}" for f in missing[:3])
            problems.append(f"{csv_path}: {len(missing)} of {len(frames)} labelled frames have no image in {folder} "
                            f"(zero padding measured there: {width}); e.g. {shown}")  # fmt: skip
        # an empty file would only fail when a loader reaches it, maybe after an epoch of training
        empty = [f for f in frames if f in by_frame and (folder / by_frame[f]).stat().st_size == 0]
        if empty:
            shown = ", ".join(str(folder / by_frame[f]) for f in empty[:3])
            problems.append(f"{csv_path}: {len(empty)} of {len(frames)} labelled frames have an empty (0-byte) image "
                            f"in {folder}; e.g. {shown}")  # fmt: skip
        skipped_frames += len(missing) + len(empty)
        intensity = np.full((len(frames), len(au_list)), np.nan, np.float32)
        files = fera.get((subject, task), {})
        if fera and not files:
            no_intensity += 1
        for au, path in files.items():
            values = _read_fera(path)
            j = au_list.index(au)
            for i, f in enumerate(frames):
                intensity[i, j] = values.get(f, math.nan)
        readable = set(by_frame) - set(empty)
        for i, f in enumerate(frames):
            if f in readable:
                records.append(FrameRecord(subject, f"{subject}_{task}", f, str(folder / by_frame[f]),
                                           labels[i].copy(), intensity[i].copy(), None))  # fmt: skip
    if problems and missing_images == "error":
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ValueError(f"BP4D: {len(problems)} labelled sequence(s) cannot be read whole:\n  " + "\n  ".join(shown))
    notes += [f"skipped: {p}" for p in problems]
    unlabelled = _unlabelled_sequences(roots, {(s, t) for s, t, _ in sequences}, wanted)
    if unlabelled:
        notes.append(f"BP4D: {len(unlabelled)} image sequence(s) have no label file in {label_dir}, so their frames "
                     f"are not used (is the copy of AUCoding complete?): {', '.join(unlabelled)}")  # fmt: skip
    unknown = [au_name(a) for a, k in zip(au_list, known_any) if not k]
    if unknown:
        raise ValueError(f"BP4D in {label_dir}: the dataset lacks {unknown}: "
                         "every value in every label file is 9 (unknown)")
    if skipped_frames:
        notes.append(f"BP4D: {skipped_frames} labelled frames skipped for want of a readable image")
    if no_intensity:
        notes.append(f"BP4D: {no_intensity} sequences have no FERA 2015 intensity file (intensity NaN there)")
    for n in notes:
        log.warning(n)
    return FrameTable("bp4d", [au_name(a) for a in au_list], records, notes)
