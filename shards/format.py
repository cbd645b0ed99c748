"""The `auforge.clip/1` sample layout: member names, metadata fields and label encodings.

One clip is one group of tar members sharing a key (webdataset's grouping rule: the key is the
member name up to its first dot, so keys never contain dots):

| member                 | content                                                          |
| ---------------------- | ---------------------------------------------------------------- |
| `KEY.json`             | metadata: clip_id, video_id, identity (str or null), track_id,    |
|                        | source, fps, frame_index (list, one entry per stored frame), size |
| `KEY.000.jpg` ...      | one baseline JPEG per stored frame, decodable alone               |
| `KEY.landmarks.npy`    | optional float16 [T, 68, 2], iBUG-68 order, crop pixels (x, y)    |
| `KEY.au.npy`           | optional structured [T, A]: field `occ` int8 (1, 0, -1 unknown)   |
|                        | and field `int` float16 (0..5, NaN unknown); A = manifest AU list |

Both labels live in one `.npy` as a structured array so that a clip's labels are one member
that cannot be half present. `check_metadata` is the one check of `KEY.json` (the field types
are in META_SCHEMA): the writer, the stream and `verify` all apply it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import reprlib
from dataclasses import dataclass, field

import numpy as np

SCHEMA = "auforge.clip/1"
N_LANDMARKS = 68
AU_DTYPE = np.dtype([("occ", "i1"), ("int", "<f2")])
LABEL_MEMBERS = ("landmarks", "au")  # the optional label members, `KEY.landmarks.npy` and `KEY.au.npy`


_FRAME_MEMBERS = [f"{i:03d}.jpg" for i in range(1000)]  # built once: the reader asks per frame


def frame_member(index: int) -> str:
    """Suffix of the member holding stored frame `index` (the part after `KEY.`)."""
    return _FRAME_MEMBERS[index] if 0 <= index < 1000 else f"{index:03d}.jpg"


def clip_key(clip_id: str) -> str:
    """A tar key for a clip id: webdataset splits member names at the first dot."""
    key = re.sub(r"[^A-Za-z0-9_-]", "_", clip_id)
    if not key:
        raise ValueError(f"clip id {clip_id!r} gives an empty key")
    return key


def stable_id(text: str | None) -> int:
    """A 63-bit id for an identity or video string, equal across processes, runs and machines.

    Hashing instead of numbering keeps the reader streaming (no global table) and keeps ids of
    different sources apart when streams are mixed. None maps to -1 (unknown).
    """
    if text is None:
        return -1
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class Clip:
    """One clip as the writer takes it: metadata, encoded frames and optional labels."""

    clip_id: str
    video_id: str
    identity: str | None
    frames: list[bytes]
    size: tuple[int, int]
    fps: float = 25.0
    source: str = "unknown"
    track_id: str | None = None
    frame_index: list[int] | None = None
    landmarks: np.ndarray | None = None  # [T, 68, 2]
    au_occ: np.ndarray | None = None  # [T, A] int8, -1 unknown
    au_int: np.ndarray | None = None  # [T, A] float, NaN unknown
    extra: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        n = len(self.frames)
        frame_index = list(range(n)) if self.frame_index is None else [int(i) for i in self.frame_index]
        meta = {
            "clip_id": self.clip_id,
            "video_id": self.video_id,
            "identity": self.identity,
            "track_id": self.track_id,
            "source": self.source,
            "fps": float(self.fps),
            "frame_index": frame_index,
            "size": [int(self.size[0]), int(self.size[1])],
        }
        meta.update(self.extra)
        try:  # the readers' own check: a writer never writes what they would skip
            return check_metadata(meta, n)
        except ValueError as e:
            raise ValueError(f"clip {self.clip_id}: {e}") from None

    def members(self, n_aus: int) -> list[tuple[str, bytes]]:
        """(suffix, bytes) pairs in the order they go into the tar."""
        n = len(self.frames)
        key = clip_key(self.clip_id)
        out = [(f"{key}.json", json.dumps(self.metadata(), sort_keys=True).encode("utf-8"))]
        out += [(f"{key}.{frame_member(i)}", jpeg) for i, jpeg in enumerate(self.frames)]
        if self.landmarks is not None:
            lm = np.asarray(self.landmarks, dtype=np.float16)
            if lm.shape != (n, N_LANDMARKS, 2):
                raise ValueError(f"clip {self.clip_id}: landmarks {lm.shape}, expected {(n, N_LANDMARKS, 2)}")
            out.append((f"{key}.landmarks.npy", npy_bytes(lm)))
        if self.au_occ is not None or self.au_int is not None:
            out.append((f"{key}.au.npy", npy_bytes(pack_au(self.au_occ, self.au_int, n, n_aus, self.clip_id))))
        return out


def pack_au(occ, intensity, n_frames: int, n_aus: int, where: str) -> np.ndarray:
    """Occurrence and intensity [T, A] into one structured array; a missing one is all unknown."""
    labels = np.empty((n_frames, n_aus), dtype=AU_DTYPE)
    labels["occ"] = -1
    labels["int"] = np.nan
    for name, value in (("occ", occ), ("int", intensity)):
        if value is None:
            continue
        value = np.asarray(value)
        if value.shape != (n_frames, n_aus):
            raise ValueError(f"clip {where}: AU {name} labels {value.shape}, expected {(n_frames, n_aus)}")
        labels[name] = value
    return labels


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple, int]] = {}


def load_npy(data: bytes) -> np.ndarray:
    """An array from `.npy` bytes, pickle-free.

    Parsing an .npy header evaluates a Python literal, which costs more than the rest of a clip's
    labels; clips of one set share a handful of headers, so parsed headers are remembered.
    """
    header = bytes(data[: 10 + int.from_bytes(data[8:10], "little")]) if data[6:7] == b"\x01" else None
    if header is not None and (known := _NPY_HEADERS.get(header)):
        dtype, shape, offset = known
        return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
    f = io.BytesIO(data)
    array = np.load(f, allow_pickle=False)
    if header is not None and not array.dtype.hasobject and array.flags.c_contiguous and len(_NPY_HEADERS) < 1024:
        if len(data) == len(header) + array.nbytes:
            _NPY_HEADERS[header] = (array.dtype, array.shape, len(header))
    return array


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no number


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_str_or_null(value) -> bool:
    return value is None or isinstance(value, str)


# The auforge.clip/1 metadata fields: (test, what the field must be). Frame indices are video
# frame numbers: never negative (the batch's -1 means padding) and within int64 (the batch's dtype).
META_SCHEMA = {
    "clip_id": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "video_id": (lambda v: isinstance(v, str), "a string"),
    "identity": (_is_str_or_null, "a string or null"),
    "track_id": (_is_str_or_null, "a string or null"),
    "source": (lambda v: isinstance(v, str), "a string"),
    "fps": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "frame_index": (
        lambda v: isinstance(v, list) and v != [] and all(_is_int(i) and 0 <= i < 2**63 for i in v),
        "a non-empty list of ints >= 0, one per stored frame",
    ),
    "size": (lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(s) and s > 0 for s in v),
             "[H, W] of positive ints"),
}  # fmt: skip
META_FIELDS = tuple(META_SCHEMA)


def check_metadata(meta, n_frames: int | None = None) -> dict:
    """`meta` if it is auforge.clip/1 metadata, else ValueError saying which field is wrong and how.

    The one check of the schema: the writer, the stream and `verify` all call it, so what one
    accepts the others accept. `n_frames`, where known, is the number of stored frames that
    frame_index must match. Fields beyond the schema's (a builder's extras) pass unchecked.
    """
    if not isinstance(meta, dict):
        raise ValueError(f"metadata is a JSON {type(meta).__name__}, not an object")
    missing = [f for f in META_FIELDS if f not in meta]
    if missing:
        raise ValueError(f"metadata lacks {', '.join(missing)}")
    for name, (ok, what) in META_SCHEMA.items():
        if not ok(meta[name]):
            raise ValueError(f"{name} must be {what}, not {reprlib.repr(meta[name])}")
    if n_frames is not None and len(meta["frame_index"]) != n_frames:
        raise ValueError(f"frame_index has {len(meta['frame_index'])} entries for {n_frames} frames")
    return meta
