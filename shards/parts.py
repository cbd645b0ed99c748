"""One shard set built in parts (a job array: one task per part), then merged into one manifest.

Part K of N writes its shards straight into the set's folder under names no other part uses
(the synthetic renderer: `NAME-partKKKK-000000.tar`, ...; `shards build`: the numbers of its own
chunks, `NAME-N.tar` for N = K, K + N, ...), so that nothing is copied or renamed afterwards, and its
manifest to `.parts/part-KKKK-of-NNNN.json`, with the ids of the videos and identities it wrote
in `builder["part"]`: merging counts their union, not their sum. Shards are listed by name, as
one process lists them. `merge(folder)` checks that
every part is there, built with the same settings, and that every shard is on disk at its
recorded size, then writes `manifest.json` (atomically, last): the folder is then one set, as
if one process had written it. Merging again gives the same manifest.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from shards.manifest import MANIFEST_NAME, Manifest, shard_on_disk

PARTS_DIR = ".parts"
_RECORD = re.compile(r"part-(\d+)-of-(\d+)\.json$")


def parse_part(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N): part K (from 0) of N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise ValueError(f"part {text!r}: expected K/N, part K (counting from 0) of N parts, as in 0/4")
    k, n = int(match.group(1)), int(match.group(2))
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"part {text!r}: K must be in 0..N-1 and N at least 1")
    return k, n


def part_range(total: int, k: int, n: int) -> range:
    """The items (clips, videos) of part k of n: contiguous, sizes differing by at most one."""
    return range(k * total // n, (k + 1) * total // n)


def part_name(name: str, k: int) -> str:
    """The shard-name prefix of part k: its shards never collide with another part's."""
    return f"{name}-part{k:04d}"


def record_path(folder: str | Path, k: int, n: int) -> Path:
    return Path(folder) / PARTS_DIR / f"part-{k:04d}-of-{n:04d}.json"


def save_part(folder: str | Path, k: int, n: int, manifest: Manifest, seen: dict[str, list[str]], name: str) -> Path:
    """Record part k's manifest; `seen` holds the ids it wrote (ShardWriter.seen())."""
    path = record_path(folder, k, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    builder = {**manifest.builder, "part": {"index": k, "of": n, "name": name, **seen}}
    dataclasses.replace(manifest, builder=builder).save(path)
    return path


def _load_parts(folder: Path) -> list[tuple[Path, Manifest]]:
    found = sorted(p for p in (folder / PARTS_DIR).glob("part-*-of-*.json") if _RECORD.search(p.name))
    if not found:
        raise FileNotFoundError(f"{folder}: no part manifests in {PARTS_DIR}/ (write the parts first, with --part K/N)")
    counts = {int(_RECORD.search(p.name).group(2)) for p in found}
    if len(counts) != 1:
        raise ValueError(f"{folder / PARTS_DIR}: parts of different splittings ({sorted(counts)} parts); "
                         "remove the stale ones")  # fmt: skip
    n = counts.pop()
    have = {int(_RECORD.search(p.name).group(1)): p for p in found}
    missing = sorted(set(range(n)) - set(have))
    if missing:
        raise FileNotFoundError(f"{folder}: {len(missing)} of {n} parts have not finished: "
                                f"{', '.join(str(record_path(folder, k, n)) for k in missing)}")  # fmt: skip
    return [(have[k], Manifest.load(have[k])) for k in range(n)]


def _settings(manifest: Manifest) -> dict:
    return {k: v for k, v in manifest.builder.items() if k != "part"}


def merge(folder: str | Path) -> Manifest:
    """Merge the part manifests under `folder` into `folder/manifest.json`; returns it."""
    folder = Path(folder)
    parts = _load_parts(folder)
    manifest, _ = combine(folder, parts)
    if not manifest.total_clips:  # as a whole build of nothing but bad inputs: no set at all
        raise ValueError(f"{folder}: the {len(parts)} parts hold no clips (every input was skipped): "
                         "no manifest written")  # fmt: skip
    manifest = dataclasses.replace(manifest, builder={**manifest.builder, "parts": len(parts)})
    manifest.save(folder / MANIFEST_NAME)
    return manifest


def combine(folder: Path, parts: list[tuple[Path, Manifest]]) -> tuple[Manifest, dict[str, list[str]]]:
    """One manifest of the sets that `parts` record (path, manifest with the ids it wrote in
    `builder["part"]`), in their order, and the ids of the videos and identities they wrote;
    checks that they were built alike and that every shard is on disk at its recorded size."""
    first_path, first = parts[0]
    for path, m in parts[1:]:
        for what, a, b in (("builder settings", _settings(first), _settings(m)), ("AU names", first.au_names, m.au_names),
                           ("schema", first.schema, m.schema)):  # fmt: skip
            if a != b:
                raise ValueError(f"{path}: {what} differ from {first_path}'s ({b!r} against {a!r}): "
                                 "the parts were not built with the same settings")  # fmt: skip
    shards, splits, videos, identities, frames, unnamed = [], {}, set(), set(), 0, 0
    for path, m in parts:
        info = m.builder.get("part") or {}
        for s in m.shards:
            wrong = shard_on_disk(folder, s)
            if wrong:
                raise ValueError(f"{folder / s.path}: listed by {path} but {wrong}")
            shards.append(s)
        for split, entry in m.splits.items():
            merged = splits.setdefault(split, {"shards": [], "identities": set()})
            merged["shards"] += entry["shards"]
            merged["identities"].update(entry["identities"])
        videos.update(info.get("videos", ()))
        identities.update(info.get("identities", ()))
        frames += m.totals.get("frames", 0)
        unnamed += m.totals.get("clips_without_identity", 0)
    digests = {(m.builder.get("part") or {}).get("inputs_digest") for _, m in parts} - {None}
    if len(digests) > 1:
        raise ValueError(f"{folder}: the parts read their inputs in different orders (or read different inputs), so "
                         "some inputs may be in two parts or in none: build every part from the same input list")  # fmt: skip
    shards.sort(key=lambda s: s.path)  # the order one process writes them in, whatever the parts' order
    for entry in splits.values():
        entry["shards"].sort()
    names = [s.path for s in shards]
    if len(set(names)) != len(names):
        raise ValueError(f"{folder}: two parts list the same shard name; were they written with the same --part?")
    lengths = {m.frames_per_clip for _, m in parts if m.total_clips}
    totals = {"clips": sum(s.samples for s in shards), "frames": frames, "videos": len(videos),
              "identities": len(identities)}  # fmt: skip
    if any("clips_without_identity" in m.totals for _, m in parts):
        totals["clips_without_identity"] = unnamed
    manifest = Manifest(
        name=(first.builder.get("part") or {}).get("name", first.name),
        frame_size=next((m.frame_size for _, m in parts if m.total_clips), first.frame_size),
        frames_per_clip=lengths.pop() if len(lengths) == 1 else 0,  # 0: clip lengths vary, as the writer says
        au_names=first.au_names,
        builder=_settings(first),
        shards=shards,
        totals=totals,
        splits={k: {"shards": v["shards"], "identities": sorted(v["identities"])} for k, v in splits.items()},
    )
    return manifest, {"videos": sorted(videos), "identities": sorted(identities)}
