"""Helpers the stream tests share."""

from __future__ import annotations

import io
import itertools
import tarfile
from pathlib import Path

from shards.decode import iter_groups, metadata_of
from shards.manifest import Manifest
from shards.stream import ClipStream


def valid_keys(batches) -> list[str]:
    """Keys of the real (not padding) rows of the batches, in order."""
    return [k for b in batches for k, ok in zip(b.keys, b.valid.tolist()) if ok]


def take(stream: ClipStream, n: int) -> list:
    """The first n batches of a fresh iteration; closes the iterator (and its workers)."""
    it = iter(stream)
    try:
        return list(itertools.islice(it, n))
    finally:
        it.close()


def stored_frame_index(folder: Path) -> dict[str, list[int]]:
    """Key -> the frame_index its metadata lists, read without the stream."""
    out = {}
    for shard in Manifest.load(folder).shards:
        for group in iter_groups(str(folder / shard.path)):
            out[group["__key__"]] = metadata_of(group)["frame_index"]
    return out


def read_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def write_members(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A plain USTAR tar of (name, bytes), as a corrupted or hand-made shard."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
