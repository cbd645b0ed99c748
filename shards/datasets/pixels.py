"""Pixels of one `FrameRecord`: read the image or decode the video frame, crop the face, resize.

Crops (`crop=`; the box is `shards.geometry.crop_box`):

* `"landmarks"` (default): a square centred on the landmarks' bounding box, of side
  `max(box width, box height) * (1 + 2 * margin)`; where a record has no (finite) landmarks it
  falls back to `"centre"`. Parts of the square outside the frame are black.
* `"centre"` (or `"center"`): the largest centred square.
* `"none"`: the whole frame, squeezed to a square.

Images decode with simplejpeg (JPEG) or Pillow (others); video frames (a file with one of the
suffixes the shard builder takes for videos, `shards.inputs.VIDEO_SUFFIXES`) come from a small
per-process cache of open `VideoFrames` readers, so reading the frames of a video in order
decodes it once. Output is `uint8 [size, size, 3]` RGB, resized with Pillow's bilinear filter.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

from shards.datasets.table import FrameRecord
from shards.datasets.video import VideoFrames
from shards.inputs import VIDEO_SUFFIXES
from shards.geometry import crop_box, cut_square

__all__ = ["read_frame", "load_pixels"]

_MAX_READERS = 4
_readers: OrderedDict[str, VideoFrames] = OrderedDict()
_readers_pid = os.getpid()


def _reader(path: str) -> VideoFrames:
    global _readers_pid
    if _readers_pid != os.getpid():  # forked (DataLoader worker): the parent's readers are not ours
        _readers.clear()
        _readers_pid = os.getpid()
    r = _readers.get(path)
    if r is None:
        r = _readers[path] = VideoFrames(path)
        while len(_readers) > _MAX_READERS:
            _readers.popitem(last=False)[1].close()
    _readers.move_to_end(path)
    return r


def load_pixels(source: str, frame: int = 0) -> np.ndarray:
    """The full frame `uint8 [H, W, 3]` RGB: an image file, or frame `frame` of a video."""
    p = Path(source)
    if p.suffix.lower() in VIDEO_SUFFIXES:
        return _reader(str(p))[frame]
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {p}") from None
    try:
        if p.suffix.lower() in (".jpg", ".jpeg") and simplejpeg.is_jpeg(data):
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        import io

        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # decoders raise assorted types for a damaged file
        raise ValueError(f"{p}: cannot decode image: {e}") from e


def read_frame(record: FrameRecord, *, size: int, crop: str = "landmarks", margin: float = 0.25) -> np.ndarray:
    """`uint8 [size, size, 3]` RGB face crop of `record` (see the module's docstring)."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    pixels = load_pixels(record.source, record.frame)
    return cut_square(pixels, crop_box(pixels.shape, record.landmarks, crop, margin), size)
