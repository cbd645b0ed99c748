"""Helpers the stream and shard tests share."""

from __future__ import annotations

import io
import itertools
import tarfile
from pathlib import Path

import numpy as np

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


def grey(t: int) -> int:
    return 8 + 8 * t  # frame t's brightness: the frame index, read back from the shards


def write_mp4(path: Path, n: int) -> None:
    """A real MP4 of n frames, 48x40, frame t all grey(t) (PyAV: what `shards build` reads)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 48, 40, "yuv420p"  # not square: the build crops the centre
        s.options = {"qscale": "2"}
        for t in range(n):
            image = np.full((40, 48, 3), grey(t), np.uint8)
            for packet in s.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def need_mediapipe() -> None:
    """Skip a MediaPipe test where the optional backend is not installed, except on CI (CI=true),
    whose test command installs it: there a missing MediaPipe fails the test."""
    import os

    import pytest

    if os.environ.get("CI") == "true":
        import mediapipe  # noqa: F401
    else:
        pytest.importorskip("mediapipe")
