"""Helpers the stream tests share."""

from __future__ import annotations

import itertools

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
