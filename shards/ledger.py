"""The ledger of a shard build: what is finished, so that a killed build resumes where it stopped
and ends with the same shards as one that ran through.

A build cuts its stream of inputs into chunks, numbered in stream order; chunk N is written as one
shard, `NAME-N.tar`, by whichever worker takes it, and is then recorded in
`OUT/.build/chunk-N.json` (written atomically after the shard): a manifest of that one shard with,
in `builder["part"]`, the inputs it read, the ones it skipped and why, and the ids it wrote. A
chunk's shard depends on its inputs alone, so a chunk recorded with the same inputs and whose
shard is on disk at its recorded size is done; any other is built again (a changed input list
rebuilds the chunks it touches). `settings.json` holds the build's settings: a ledger left by a
build with other settings is refused rather than mixed in.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from shards.atomic import write_text_atomic
from shards.manifest import Manifest

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
    """Chunk `chunk`'s record when it read exactly `inputs` and its shard is whole on disk."""
    path = record_path(out_dir, chunk)
    if not path.exists():
        return None
    record = Manifest.load(path)
    if record.builder["part"]["inputs"] != inputs:
        return None
    for shard in record.shards:
        on_disk = Path(out_dir) / shard.path
        if not on_disk.is_file() or on_disk.stat().st_size != shard.bytes:
            return None
    return record


def save(out_dir: str | Path, chunk: int, manifest: Manifest, *, inputs: list[str], skipped: dict[str, str],
         seen: dict[str, list[str]], name: str) -> None:  # fmt: skip
    """Record chunk `chunk` as finished (its shard is already on disk)."""
    part = {"index": chunk, "name": name, "inputs": inputs, "skipped": skipped, **seen}
    dataclasses.replace(manifest, builder={**manifest.builder, "part": part}).save(record_path(out_dir, chunk))
