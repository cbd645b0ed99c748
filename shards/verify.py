"""`python -m shards verify`: recompute checksums, decode every sample, check it against the schema.

Names every bad shard and sample and returns non-zero when anything is wrong.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shards.decode import BadSample, decode_clip, first_sample, iter_groups, metadata_of
from shards.format import LABEL_MEMBERS
from shards.manifest import MANIFEST_NAME, Manifest


@dataclass
class ShardReport:
    path: str
    samples: int = 0
    problems: list[str] = field(default_factory=list)  # shard-level
    bad_samples: list[tuple[str, str, str]] = field(default_factory=list)  # (key, kind, message)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.bad_samples


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_sample(group: dict, n_aus: int, frame_size: list[int] | None, frames_per_clip: int) -> None:
    """Check the metadata against the schema, decode every stored frame and check shapes;
    raises BadSample."""
    meta = metadata_of(group)
    n_stored = len(meta["frame_index"])
    height, width = meta["size"]
    if frame_size and [height, width] != list(frame_size):
        raise BadSample("bad_shape", f"size {height}x{width}, manifest says {frame_size[0]}x{frame_size[1]}")
    if frames_per_clip and n_stored != frames_per_clip:
        raise BadSample("bad_shape", f"{n_stored} frames, manifest says {frames_per_clip}")
    out = np.empty((n_stored, height, width, 3), np.uint8)
    decode_clip(group, out, frames=n_stored, stride=1, scale=1, n_aus=n_aus, rng=None, fast=False)


def verify_shard(path: Path, expected, n_aus: int, frame_size, frames_per_clip: int) -> ShardReport:
    report = ShardReport(str(path))
    if not path.exists():
        report.problems.append("missing")
        return report
    if expected is not None:
        if path.stat().st_size != expected.bytes:
            report.problems.append(f"size {path.stat().st_size} bytes, manifest says {expected.bytes}")
        if (digest := sha256_of(path)) != expected.sha256:
            report.problems.append(f"sha256 {digest[:12]}..., manifest says {expected.sha256[:12]}...")
    seen: set[str] = set()
    labels = dict.fromkeys(LABEL_MEMBERS, 0)
    try:
        for group in iter_groups(str(path)):
            key = group["__key__"]
            report.samples += 1
            for label in LABEL_MEMBERS:
                labels[label] += f"{label}.npy" in group
            if key in seen:
                report.bad_samples.append((key, "bad_json", "duplicate key in shard"))
            seen.add(key)
            try:
                check_sample(group, n_aus, frame_size, frames_per_clip)
            except BadSample as e:
                report.bad_samples.append((key, e.kind, str(e)))
    except BadSample as e:
        report.problems.append(f"{e.kind}: {e}")
    if expected is not None and report.samples != expected.samples:
        report.problems.append(f"{report.samples} samples, manifest says {expected.samples}")
    if expected is not None and expected.labels is not None and labels != expected.labels:
        report.problems.append(f"clips carrying labels {labels}, manifest says {expected.labels}")
    return report


def verify(target: str | Path) -> tuple[list[ShardReport], list[str], list[str]]:
    """Reports per shard, problems of the set as a whole (no clips at all), and notes (stray or
    unlisted files)."""
    target = Path(target)
    if not target.exists():
        raise FileNotFoundError(f"{target}: no such shard, manifest or folder")
    folder = target.parent if target.is_file() else target
    problems: list[str] = []
    notes: list[str] = []
    manifest_path = target if target.is_file() else folder / MANIFEST_NAME
    if manifest_path.suffix == ".json" and manifest_path.exists():
        manifest = Manifest.load(manifest_path)
        if manifest.total_clips == 0:  # what a build of nothing but bad videos once wrote
            problems.append(f"{manifest_path}: lists {len(manifest.shards)} shards and no clips: nothing to train on")
        items = [(folder / s.path, s) for s in manifest.shards]
        n_aus, frame_size, fpc = len(manifest.au_names), manifest.frame_size, manifest.frames_per_clip
        listed = {s.path for s in manifest.shards}
        notes += [f"{p.name} is not listed in the manifest" for p in sorted(folder.glob("*.tar")) if p.name not in listed]
    elif target.is_file():
        items, n_aus, frame_size, fpc = [(target, None)], None, None, 0
    else:
        items = [(p, None) for p in sorted(folder.glob("*.tar"))]
        n_aus, frame_size, fpc = None, None, 0
        notes.append(f"{folder}: no {MANIFEST_NAME}: checksums and counts not checked")
    notes += [f"{p.name}: left by an interrupted write" for p in sorted(folder.glob(".*.tmp"))]
    reports = []
    for path, expected in items:
        # Without a manifest the AU count comes from the data: accept whatever the first clip has.
        reports.append(verify_shard(path, expected, n_aus if n_aus is not None else _au_count(path), frame_size, fpc))
    if not problems and not any(r.samples for r in reports):
        problems.append(f"{target}: no samples in {len(reports)} shards: nothing to train on")
    return reports, problems, notes


def _au_count(path: Path) -> int:
    """Without a manifest, the AU count the shard's first readable clip has (0 when none is)."""
    try:
        return first_sample([str(path)])[1]
    except ValueError:
        return 0


def main(target: str) -> int:
    reports, problems, notes = verify(target)
    bad = [r for r in reports if not r.ok]
    samples = sum(r.samples for r in reports)
    bad_samples = sum(len(r.bad_samples) for r in reports)
    for r in bad:
        for problem in r.problems:
            print(f"BAD SHARD {r.path}: {problem}")
        for key, kind, message in r.bad_samples:
            print(f"BAD SAMPLE {r.path} key {key}: {kind}: {message}")
    for problem in problems:
        print(f"BAD SET {problem}")
    for note in notes:
        print(f"NOTE {note}")
    print(
        f"verified {len(reports)} shards, {samples} samples: "
        f"{len(reports) - len(bad)} shards OK, {len(bad)} bad, {bad_samples} bad samples"
    )
    return 1 if bad or problems else 0
