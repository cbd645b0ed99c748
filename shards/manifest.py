"""`manifest.json`: what a shard set holds, so that readers need not scan it.

Readers trust it for counts; checksums are verified on request (`python -m shards verify`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shards.atomic import write_text_atomic
from shards.format import LABEL_MEMBERS, SCHEMA

MANIFEST_NAME = "manifest.json"


def heldout_people(seed: int, identities: int, share: float) -> set[int]:
    """Which of `identities` people (0..identities-1) go to the split 'heldout': a seeded draw of
    about `share` of them, at least one and never all, the same in every process."""
    if share <= 0:
        return set()
    count = min(identities - 1, max(1, round(identities * share)))
    return set(np.random.default_rng([seed, 0x4E1D]).permutation(identities)[:count].tolist())


def landmark_source(builder: dict) -> str | None:
    """Where the landmarks of a set with this manifest `builder` come from: a face detector's name
    ("dlib", "mediapipe": the face pipeline's, as real video gets them, from `shards build` or a
    synthetic set with `landmarks="dlib"`), "renderer" (the synthetic renderer's exact ones), or
    None (no landmarks)."""
    settings = builder.get("settings", {})
    detector = settings.get("faces", "none") if "faces" in settings else settings.get("landmarks", "renderer")
    if detector not in ("none", "renderer"):
        return detector
    return "renderer" if builder.get("name") == "auforge.shards.synthetic" else None


@dataclass
class ShardInfo:
    path: str  # relative to the manifest's folder
    samples: int
    bytes: int
    sha256: str
    # Clips of the shard carrying each label member (LABEL_MEMBERS), so that a trainer can refuse
    # an objective its data cannot feed before it starts; None in manifests written before this.
    labels: dict[str, int] | None = None


def shard_on_disk(folder: str | Path, shard) -> str | None:
    """None when `shard` (a ShardInfo) is on disk at its recorded size; else what is wrong."""
    path = Path(folder) / shard.path
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    return None if size == shard.bytes else f"{size} bytes, {shard.bytes} recorded"


@dataclass
class Manifest:
    name: str
    frame_size: list[int]  # [H, W] of stored frames
    frames_per_clip: int
    au_names: list[str]
    builder: dict
    shards: list[ShardInfo]
    totals: dict
    splits: dict = field(default_factory=dict)  # split name -> {"shards": [paths], "identities": [...]}
    schema: str = SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, self.to_json())

    def digest(self) -> str:
        """sha256 of the manifest's canonical JSON: names the exact data a model was trained on."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no manifest here") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: manifest is not valid JSON ({e})") from None
        if raw.get("schema") != SCHEMA:
            raise ValueError(f"{path}: schema {raw.get('schema')!r}, this reader knows {SCHEMA!r}")
        try:
            raw["shards"] = [ShardInfo(**s) for s in raw["shards"]]
            return cls(**raw)
        except (TypeError, KeyError) as e:
            raise ValueError(f"{path}: manifest fields are wrong ({e})") from None

    @property
    def total_clips(self) -> int:
        return sum(s.samples for s in self.shards)

    def carries(self, label: str) -> bool | None:
        """Whether any clip of these shards carries `label` ("landmarks" or "au"); None when
        unknown (shards listed by a manifest written before the counts were recorded: read a
        sample, as `ClipStream.carries` does). AU labels need AU names: without them, False."""
        if label not in LABEL_MEMBERS:
            raise ValueError(f"unknown label {label!r}: shards carry {', '.join(LABEL_MEMBERS)}")
        if label == "au" and not self.au_names:
            return False
        counts = [s.labels for s in self.shards]
        if any(c and c.get(label) for c in counts):
            return True
        return None if None in counts else False

    def split(self, name: str) -> "Manifest":
        """The manifest restricted to one split's shards."""
        if name not in self.splits:
            raise KeyError(f"manifest '{self.name}' has no split {name!r}; it has {sorted(self.splits) or 'none'}")
        keep = set(self.splits[name]["shards"])
        return dataclasses.replace(self, shards=[s for s in self.shards if s.path in keep])
