"""auforge clip shards: the `auforge.clip/1` format, its writer and manifest, and the streaming reader.

This package imports no other part of auforge (README, "Layout"): every other part reads data through
`shards.stream` and writes it through `shards.writer`.
"""

from shards.batch import ClipBatch
from shards.format import SCHEMA, Clip
from shards.manifest import Manifest
from shards.writer import ShardWriter

__all__ = ["SCHEMA", "Clip", "ClipBatch", "Manifest", "ShardWriter"]
