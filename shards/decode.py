"""From tar bytes to clips: grouping members by key, temporal sampling, JPEG decoding, checks.

Every failure is a `BadSample` with a kind, so that pipelines can count what they skip. Only the
frames that temporal sampling picks are decoded.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import simplejpeg
from webdataset.gopen import gopen

from shards.format import N_LANDMARKS, check_metadata, frame_member, load_npy

# What can be wrong, from the shard down to one label array.
ERROR_KINDS = (
    "unreadable_shard",  # cannot open: missing file, failing pipe or URL
    "truncated_shard",  # the tar ends or breaks in the middle
    "short_shard",  # fewer samples than the manifest says
    "missing_json",  # a member group without KEY.json
    "bad_json",  # KEY.json is not JSON
    "bad_metadata",  # KEY.json breaks the auforge.clip/1 schema: a field missing or of the wrong type
    "missing_frame",  # a frame that frame_index promises is absent
    "corrupt_jpeg",  # a frame that does not decode
    "bad_shape",  # frame size or count not what the metadata or the stream expects
    "bad_labels",  # landmarks or AU arrays of the wrong shape or type
)


class BadSample(Exception):
    def __init__(self, kind: str, message: str):
        assert kind in ERROR_KINDS, kind
        super().__init__(message)
        self.kind = kind


_ZERO_BLOCK = bytes(512)
# name, (mode uid gid), size, (mtime), checksum, type, (link name), magic, (version ... devminor), prefix
_USTAR = struct.Struct("100s24x12s12x8sc100x6s82x155s")


def tar_members(f) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the regular files of a tar stream, in order.

    Python's tarfile spends about as long parsing the 17 headers of a clip as libjpeg-turbo takes
    to decode its 16 frames, so this reads the fixed ustar layout directly: ustar and GNU tar
    headers, GNU long names and pax `path` records. Raises
    ValueError where the archive is cut short or a header is corrupt; an archive must end with
    its zero blocks, so a shard cut exactly between two members is caught too.
    """
    long_name = None
    header = f.read(512)
    while True:
        if len(header) < 512:
            raise ValueError(f"archive ends without its end blocks ({len(header)}-byte tail)")
        if header == _ZERO_BLOCK:
            return  # end of archive
        raw_name, raw_size, _, kind, magic, prefix = _USTAR.unpack_from(header)
        # Summing a header for its checksum costs as much as the rest of its parsing, so the hot
        # path checks the magic and a strictly octal size instead; a header that breaks is
        # caught here or by the member groups' own checks, and `verify` checks each shard's sha256.
        if magic[:5] != b"ustar":
            raise ValueError("corrupt tar header (no ustar magic)")
        size = int(raw_size.split(b"\0", 1)[0].strip() or b"0", 8)
        padded = size + (-size % 512)
        # The member, its padding and the next header in one read: half the calls.
        chunk = f.read(padded + 512)
        if len(chunk) < padded:
            raise ValueError(f"member data cut short ({len(chunk)} of {padded} bytes)")
        data, next_header = chunk[:size], chunk[padded:]
        if kind in (b"0", b"\0"):
            name = long_name
            if name is None:
                name = raw_name.split(b"\0", 1)[0].decode()
                if magic[:5] == b"ustar" and (prefix := prefix.split(b"\0", 1)[0]):
                    name = prefix.decode() + "/" + name
            long_name = None
            yield name, data
        elif kind == b"L":  # GNU long name of the next member
            long_name = data.rstrip(b"\0").decode()
        elif kind == b"x":  # pax extended header: only the path matters here
            for record in data.decode().splitlines():
                if " path=" in record:
                    long_name = record.split(" path=", 1)[1]
        else:  # directories, links, global pax headers: nothing to read
            long_name = None
        header = next_header


def iter_groups(url: str) -> Iterator[dict]:
    """Member groups of one shard, in order: {"__key__": KEY, "json": bytes, "000.jpg": bytes, ...}.

    Grouping follows webdataset: the key is the member name up to its first dot. Opening goes
    through webdataset's `gopen` (local paths, `http(s)://`, `pipe:` commands). Raises
    BadSample("unreadable_shard") when the shard cannot be opened and
    BadSample("truncated_shard") when reading breaks; groups before the break are yielded.
    """
    try:
        stream = gopen(url, "rb", bufsize=1 << 20)
    except Exception as e:  # noqa: BLE001 - any opener failure means the same to us
        raise BadSample("unreadable_shard", f"cannot open: {e}") from None
    group: dict | None = None
    try:
        for name, data in tar_members(stream):
            # webdataset's rule (its base_plus_ext): the key runs to the first dot of the file name.
            dot = name.find(".", name.rfind("/") + 1)
            if dot < 0:
                continue
            key, suffix = name[:dot], name[dot + 1 :]
            if group is not None and key != group["__key__"]:
                yield group
                group = None
            if group is None:
                group = {"__key__": key}
            group[suffix.lower()] = data
    except (ValueError, OSError, UnicodeDecodeError) as e:
        # The group being read when the archive broke may be incomplete: drop it.
        raise BadSample("truncated_shard", f"tar breaks after {group['__key__'] if group else 'start'}: {e}") from None
    finally:
        try:
            stream.close()
        except Exception:  # noqa: BLE001 - a pipe's exit status surfaces here; the data was read
            pass
    if group is not None:
        yield group


@dataclass
class DecodedClip:
    key: str
    meta: dict
    frame_index: np.ndarray  # int64 [T]
    landmarks: np.ndarray | None  # float32 [T, 68, 2]
    au_occ: np.ndarray | None  # int8 [T, A]
    au_int: np.ndarray | None  # float32 [T, A]


def pick_frames(n_stored: int, frames: int, stride: int, rng: np.random.Generator | None) -> np.ndarray:
    """Indices of `frames` stored frames at `stride`: a random start with `rng`, else centred."""
    span = (frames - 1) * stride + 1
    if n_stored < span:
        raise BadSample("bad_shape", f"{n_stored} stored frames, sampling needs {span}")
    start = int(rng.integers(0, n_stored - span + 1)) if rng is not None else (n_stored - span) // 2
    return start + stride * np.arange(frames)


def decode_clip(
    group: dict,
    out: np.ndarray,
    *,
    frames: int,
    stride: int,
    scale: int,
    n_aus: int,
    rng: np.random.Generator | None,
    fast: bool = True,
) -> DecodedClip:
    """Decode the sampled frames of one member group into `out` [T, h, w, 3] and read its labels.

    `scale` (1, 2, 4 or 8) decodes at reduced size inside the JPEG decoder (DCT scaling), which
    costs less than decoding in full; `out` must have the reduced size.
    """
    key = group["__key__"]
    meta = metadata_of(group)
    height, width = meta["size"]
    n_stored = len(meta["frame_index"])
    chosen = pick_frames(n_stored, frames, stride, rng)
    scaled = (-(-height // scale), -(-width // scale))
    if scaled != out.shape[1:3]:
        raise BadSample("bad_shape", f"frames are {height}x{width}; the stream expects {out.shape[1:3]} at 1/{scale}")
    min_h, min_w = height // scale, width // scale
    for t, i in enumerate(chosen.tolist()):
        data = group.get(frame_member(i))
        if data is None:
            raise BadSample("missing_frame", f"frame {i} ({frame_member(i)}) is absent")
        try:
            # Into the batch's own memory; a frame larger than the buffer fails here, a smaller
            # one shows in the shape that comes back.
            image = simplejpeg.decode_jpeg(
                data,
                colorspace="RGB",
                fastdct=fast,
                fastupsample=fast,
                min_height=min_h,
                min_width=min_w,
                buffer=out[t],
            )
        except ValueError as e:
            kind = "bad_shape" if "too small" in str(e) else "corrupt_jpeg"
            raise BadSample(kind, f"frame {i}: {e}") from None
        if image.shape[:2] != scaled:
            raise BadSample("bad_shape", f"frame {i} decodes to {image.shape[:2]}, expected {scaled} ({height}x{width} at 1/{scale})")
    return DecodedClip(
        key=key,
        meta=meta,
        frame_index=np.asarray(meta["frame_index"], dtype=np.int64)[chosen],
        landmarks=_landmarks(group, n_stored, chosen),
        **_au_labels(group, n_stored, n_aus, chosen),
    )


def _landmarks(group: dict, n_stored: int, chosen: np.ndarray) -> np.ndarray | None:
    if "landmarks.npy" not in group:
        return None
    try:
        lm = load_npy(group["landmarks.npy"])
    except (ValueError, OSError) as e:
        raise BadSample("bad_labels", f"landmarks.npy: {e}") from None
    if lm.shape != (n_stored, N_LANDMARKS, 2) or lm.dtype.kind != "f":
        raise BadSample("bad_labels", f"landmarks.npy is {lm.dtype}{list(lm.shape)}, expected float[{n_stored}, 68, 2]")
    return lm[chosen].astype(np.float32)


def _au_labels(group: dict, n_stored: int, n_aus: int, chosen: np.ndarray) -> dict:
    if "au.npy" not in group:
        return {"au_occ": None, "au_int": None}
    try:
        au = load_npy(group["au.npy"])
    except (ValueError, OSError) as e:
        raise BadSample("bad_labels", f"au.npy: {e}") from None
    if au.dtype.names != ("occ", "int") or au.shape != (n_stored, n_aus):
        raise BadSample("bad_labels", f"au.npy is {au.dtype}{list(au.shape)}, expected (occ, int)[{n_stored}, {n_aus}]")
    au = au[chosen]
    return {"au_occ": au["occ"].astype(np.int8), "au_int": au["int"].astype(np.float32)}


def first_sample(urls) -> tuple[dict, int, dict]:
    """Metadata, AU count and member group of the first readable clip among `urls`, for what
    a manifest does not say (sets without one, or written before it said so)."""
    for url in urls:
        try:
            for group in iter_groups(url):
                n_aus = load_npy(group["au.npy"]).shape[1] if "au.npy" in group else 0
                return metadata_of(group), n_aus, group
        except (BadSample, ValueError, IndexError):
            continue
    raise ValueError(f"no readable sample in {urls[0] if urls else 'no shards'} and the shards after it")


def metadata_of(group: dict) -> dict:
    """The checked metadata of a group, without decoding frames; BadSample when it is absent,
    not JSON (`bad_json`), or not the schema (`bad_metadata`, saying which field is wrong)."""
    if "json" not in group:
        raise BadSample("missing_json", "no .json member")
    try:
        meta = json.loads(group["json"])
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError both are
        raise BadSample("bad_json", f"not JSON: {e}") from None
    try:
        return check_metadata(meta)
    except ValueError as e:
        raise BadSample("bad_metadata", str(e)) from None
