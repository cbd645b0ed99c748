"""Turns what a user names as data into shard lists: manifests, folders, brace patterns, URLs.

A source is one list of shard URLs with a sampling weight; several sources mix by weight. Where
a manifest is known, per-shard sample counts come with the URLs (exact mode needs them).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import braceexpand
from webdataset.gopen import gopen

from shards.manifest import MANIFEST_NAME, Manifest

REMOTE_PREFIXES = ("http://", "https://", "pipe:", "gs://", "s3://")


@dataclass
class ShardSource:
    urls: list[str]
    samples: list[int] | None  # per shard, when a manifest gave them
    weight: float = 1.0
    manifest: Manifest | None = None
    name: str = ""
    manifest_path: str = ""  # where `manifest` was read, for errors that name it

    @property
    def origin(self) -> str:
        """What to name in an error about this source: its manifest, else its first shard."""
        return self.manifest_path or (self.urls[0] if self.urls else self.name)

    @property
    def total(self) -> int | None:
        return None if self.samples is None else sum(self.samples)


def _is_remote(url: str) -> bool:
    return url.startswith(REMOTE_PREFIXES)


def _from_manifest(path: str, base: str, weight: float, name: str) -> ShardSource:
    """The source a manifest (local or remote, at `path`) describes; its shards lie under `base`."""
    manifest = _load_remote_manifest(path) if _is_remote(path) else Manifest.load(path)
    join = (lambda p: f"{base.rstrip('/')}/{p}") if _is_remote(base) else (lambda p: str(Path(base) / p))
    urls = [join(s.path) for s in manifest.shards]
    return ShardSource(urls, [s.samples for s in manifest.shards], weight, manifest, name or manifest.name, path)


def _load_remote_manifest(url: str) -> Manifest:
    with gopen(url, "rb") as f:
        raw = f.read()
    import tempfile

    with tempfile.NamedTemporaryFile("wb", suffix=".json") as tmp:
        tmp.write(raw)
        tmp.flush()
        return Manifest.load(tmp.name)


def _expand(spec: str) -> list[str]:
    urls = []
    for part in spec.split("::"):  # webdataset's separator for several patterns in one string
        urls.extend(braceexpand.braceexpand(part))
    return urls


def _sibling_counts(urls: list[str]) -> tuple[list[int] | None, Manifest | None, str]:
    """Counts from a manifest.json beside local shards, when it lists every one of them, with
    the manifest and its path."""
    if not urls or any(_is_remote(u) for u in urls):
        return None, None, ""
    folders = {Path(u).resolve().parent for u in urls}
    if len(folders) != 1 or not (path := folders.pop() / MANIFEST_NAME).exists():
        return None, None, ""
    manifest = Manifest.load(path)
    counts = {s.path: s.samples for s in manifest.shards}
    names = [Path(u).name for u in urls]
    if not all(n in counts for n in names):
        return None, None, ""
    return [counts[n] for n in names], manifest, str(path)


def resolve_one(spec, weight: float = 1.0, name: str = "", split: str | None = None) -> ShardSource:
    """One source from a manifest path or URL, a folder, a brace pattern, a URL or a URL list;
    `split` keeps only that split's shards (it needs a manifest)."""
    source = _resolve_one(spec, weight, name)
    if split is None:
        return source
    if source.manifest is None:
        raise ValueError(f"split {split!r} asked of {spec!r}, which has no manifest to name splits")
    part = source.manifest.split(split)
    keep = {s.path for s in part.shards}
    pairs = [(u, n) for u, n in zip(source.urls, source.samples) if u.rsplit("/", 1)[-1] in keep]
    return ShardSource([u for u, _ in pairs], [n for _, n in pairs], weight, part, f"{source.name}:{split}",
                       source.manifest_path)  # fmt: skip


def _resolve_one(spec, weight: float, name: str) -> ShardSource:
    if isinstance(spec, Manifest):
        raise TypeError("pass the manifest's path, not a Manifest object: shard paths are relative to it")
    if isinstance(spec, (list, tuple)):
        urls = [str(u) for u in spec]
    else:
        spec = os.fspath(spec)
        if spec.endswith(".json"):
            base = spec.rsplit("/", 1)[0] if _is_remote(spec) else str(Path(spec).parent)
            return _from_manifest(spec, base, weight, name)
        if not _is_remote(spec) and Path(spec).is_dir():
            folder = Path(spec)
            if (folder / MANIFEST_NAME).exists():
                return _from_manifest(str(folder / MANIFEST_NAME), str(folder), weight, name)
            urls = sorted(str(p) for p in folder.glob("*.tar"))
            if not urls:
                raise FileNotFoundError(f"{folder}: no manifest.json and no .tar shards")
        else:
            urls = _expand(spec)
    if not urls:
        raise ValueError(f"data source {spec!r} names no shards")
    missing = [u for u in urls if not _is_remote(u) and not Path(u).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) of {spec!r} do not exist, first: {missing[0]}")
    samples, manifest, manifest_path = _sibling_counts(urls)
    return ShardSource(urls, samples, weight, manifest, name, manifest_path)


def resolve(spec, split: str | None = None) -> list[ShardSource]:
    """Sources from a spec; `[{"source": SPEC, "weight": W, "split": S}, ...]` (or a JSON string of
    it) mixes; `split` applies to entries that name none."""
    if isinstance(spec, str) and spec.lstrip().startswith("["):
        spec = json.loads(spec)
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(s, dict) for s in spec):
        sources = [
            resolve_one(s["source"], float(s.get("weight", 1.0)), s.get("name", ""), s.get("split", split))
            for s in spec
        ]
        if any(not math.isfinite(s.weight) or s.weight <= 0 for s in sources):
            raise ValueError(f"mixture weights must be positive and finite, got {[s.weight for s in sources]}")
        return sources
    return [resolve_one(spec, split=split)]
