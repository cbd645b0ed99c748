"""Frames of a video file by index, decoded with PyAV (DISFA's `LeftVideoSN001_comp.avi`).

Choice: decode on demand rather than pre-extracting JPEGs. DISFA is 27 videos x 4,845 frames
(about 130k frames of 1024x768); extracting them costs tens of GB of JPEGs and an extra step
that can go stale, while fine-tuning reads frames either in order (evaluation, feature
extraction: one forward decode per video) or a small labelled subset (few-label protocols).
`VideoFrames` keeps the container open and remembers where the decoder stands:

* the frame asked for again comes from a one-frame cache;
* a frame at or up to `seek_threshold` frames ahead is reached by decoding forward;
* a frame further ahead, or behind, is reached by seeking to the key frame before it (AVI and
  MP4 index their key frames) and decoding forward from there; where a seek fails or lands
  past the frame, the file is re-opened and decoded from the start.

Frame `t` is the `t`-th frame the decoder returns, counting from 0 (DISFA's labels take row t
as video frame t). After a seek the index comes from the frame's timestamp at the stream's
frame rate; tests check that this agrees with counting. Readers are not thread-safe; in a
DataLoader each worker process opens its own (`read_frame` keys its reader cache by process).
Iterate sorted by (video, frame) where you can: that is one decode pass per video.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = ["VideoFrames", "video_frame_count"]


def video_frame_count(path: str | Path, *, decode: bool = False) -> int:
    """Frames in the first video stream: the count the container declares (AVI's index,
    `nb_frames`), or, where it declares none or `decode=True`, the frames actually decoded."""
    path = Path(path)
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise ValueError(f"{path}: no video stream")
            stream = c.streams.video[0]
            if stream.frames > 0 and not decode:
                return int(stream.frames)
            return sum(1 for _ in c.decode(stream))
    except av.error.FFmpegError as e:
        raise ValueError(f"{path}: cannot read video: {e}") from e


class VideoFrames:
    """RGB frames `uint8 [H, W, 3]` (read-only arrays) of one video by index (see the module's
    docstring). `len()` is the declared frame count; a frame past the decodable end raises
    `IndexError` naming the file."""

    def __init__(self, path: str | Path, *, seek_threshold: int = 48):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video not found: {self.path}")
        self.seek_threshold = int(seek_threshold)
        self._container = None
        self._frames = None
        self._next = 0  # index of the frame the decoder returns next
        self._counting = True  # indices come from counting (True) or from timestamps (after a seek)
        self._last: tuple[int, np.ndarray] | None = None
        self._len: int | None = None
        self.seeks = 0  # how many times a seek or re-open happened (for tests and profiling)

    def __len__(self) -> int:
        if self._len is None:
            self._len = video_frame_count(self.path)
        return self._len

    def __enter__(self) -> VideoFrames:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames, self._last = None, None, None

    def __getitem__(self, index: int) -> np.ndarray:
        i = int(index)
        if i < 0:
            raise IndexError(f"{self.path}: negative frame index {i}")
        if self._last is not None and self._last[0] == i:
            return self._last[1]
        if self._container is None:
            self._open()
        if i < self._next or i - self._next > self.seek_threshold:
            self._seek(i)
        while True:
            try:
                frame = next(self._frames)
            except StopIteration:
                raise IndexError(f"{self.path}: frame {i} is past the end of the video "
                                 f"(the decoder stopped at frame {self._next})") from None  # fmt: skip
            except av.error.FFmpegError as e:
                raise ValueError(f"{self.path}: decoding failed before frame {i}: {e}") from e
            idx = self._index_of(frame)
            if idx is None or idx > i:  # no timestamp, or the seek overshot: count from the start
                self._open()
                continue
            self._next = idx + 1
            if idx == i:
                arr = frame.to_ndarray(format="rgb24")
                arr.flags.writeable = False  # it is also the one-frame cache: copy to modify
                self._last = (i, arr)
                return arr

    def _open(self) -> None:
        if self._container is not None:
            self._container.close()
        try:
            self._container = av.open(str(self.path))
        except av.error.FFmpegError as e:
            raise ValueError(f"{self.path}: cannot open video: {e}") from e
        self._stream = self._container.streams.video[0]
        self._frames = self._container.decode(self._stream)
        self._next, self._counting = 0, True
        self._rate = Fraction(self._stream.average_rate or self._stream.guessed_rate or 0)
        self._start = self._stream.start_time or 0
        self.seeks += 1

    def _seek(self, i: int) -> None:
        tb = self._stream.time_base
        if not self._rate or tb is None or i < self.seek_threshold:
            self._open()
            return
        target = self._start + int(Fraction(i) / self._rate / tb)
        try:
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
        except av.error.FFmpegError:
            self._open()
            return
        self._frames = self._container.decode(self._stream)
        self._counting = False
        self.seeks += 1

    def _index_of(self, frame) -> int | None:
        if self._counting:
            return self._next
        if frame.pts is None or frame.time_base is None:
            return None
        return int(round((frame.pts - self._start) * frame.time_base * self._rate))
