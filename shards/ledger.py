"""The ledger of a shard build: what is finished, so that a killed build resumes where it stopped
and ends with the same shards as one that ran through.

A build cuts its stream of inputs into chunks, numbered in stream order; chunk N is written as one
shard, `NAME-N.tar`, by whichever worker takes it, and is then recorded in
`OUT/.build/chunk-N.json` (written atomically after the shard): a manifest of that one shard with,
in `builder["part"]`, the inputs it read (each path with its size and modification time), the
ones it skipped and why, and the ids it wrote. A chunk's shard depends on its inputs alone, so a
chunk recorded with the same inputs and whose shard is on disk at its recorded size is done; any
other is built again (its record removed first). An input added, removed or changed rebuilds its
chunk and, since chunks are cut by count, every chunk after it. `settings.json` holds the build's
settings: a ledger left by a build with other settings is refused rather than mixed in.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from shards.atomic import write_text_atomic
from shards.manifest import Manifest, shard_on_disk

LEDGER_DIR = ".build"


def _settings_path(out_dir: Path) -> Path:
    return out_dir / LEDGER_DIR / "settings.json"


def record_path(out_dir: str | Path, chunk: int) -> Path:
    return Path(out_dir) / LEDGER_DIR / f"chunk-{chunk:06d}.json"


def open_ledger(out_dir: str | Path, builder: dict) -> None:
    """Start a ledger in `out_dir`, or check that the one there was kept with these settings."""
    path = _settings_path(Path(out_dir))
    if path.exists():
        kept = json.loads(path.read_text())
        if kept != builder:
            differ = sorted(k for k in set(kept.get("settings", {})) | set(builder.get("settings", {}))
                            if kept.get("settings", {}).get(k) != builder.get("settings", {}).get(k))  # fmt: skip
            raise ValueError(f"{path.parent}: a build with other settings ({', '.join(differ) or 'builder'}) left its "
                             f"ledger here; build into another folder, or remove {path.parent} to start over")  # fmt: skip
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(builder, indent=1, sort_keys=True) + "\n")


def finished(out_dir: str | Path, chunk: int, inputs: list[str]) -> Manifest | None:
    """Chunk `chunk`'s record when it read exactly `inputs` (fingerprints) and its shard is whole
    on disk; else None, having removed a stale record and shard (a chunk rebuilt to no clip
    must not leave its old shard beside the set)."""
    path = record_path(out_dir, chunk)
    if not path.exists():
        return None
    record = Manifest.load(path)
    whole = all(shard_on_disk(out_dir, shard) is None for shard in record.shards)
    if record.builder["part"]["inputs"] == inputs and whole:
        return record
    forget(out_dir, chunk, record)
    return None


def forget(out_dir: str | Path, chunk: int, record: Manifest) -> None:
    """Remove chunk `chunk`'s record, then its shard."""
    record_path(out_dir, chunk).unlink(missing_ok=True)
    for shard in record.shards:
        (Path(out_dir) / shard.path).unlink(missing_ok=True)


def forget_after(out_dir: str | Path, chunks: int) -> list[int]:
    """Remove the records and shards of chunks numbered `chunks` and up (an earlier build of a
    longer input list left them); returns their numbers."""
    stale = []
    for path in sorted((Path(out_dir) / LEDGER_DIR).glob("chunk-*.json")):
        number = int(path.stem.split("-")[1])
        if number >= chunks:
            forget(out_dir, number, Manifest.load(path))
            stale.append(number)
    return stale


def save(out_dir: str | Path, chunk: int, manifest: Manifest, *, inputs: list[str], skipped: dict[str, str],
         seen: dict[str, list[str]], name: str) -> Manifest:  # fmt: skip
    """Record chunk `chunk` as finished (its shard is already on disk); returns the record."""
    part = {"index": chunk, "name": name, "inputs": inputs, "skipped": skipped, **seen}
    record = dataclasses.replace(manifest, builder={**manifest.builder, "part": part})
    record.save(record_path(out_dir, chunk))
    return record
