"""What a pretraining run derives from its config and its data, derived once at its start and
saved with every checkpoint (`run.json`), so that training, the probes, the benchmarks and
publishing read the same values and publishing a checkpoint needs neither the data nor the config
rules again.

* `image_size`: the side of the square frames the backbone sees: `data.resize`, else the
  shards' stored frame size.
* `view_length`: frames in each of a clip's two temporal views: three quarters of `data.frames`
  (at least 2), so the views overlap in time by half.
* `data`: what the data was (kind, name, split, the manifest's sha256, where its landmarks came
  from, how many clips name no identity), never where it lay.
* `code_version`: the package version and git commit that trained it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from shards.manifest import MANIFEST_NAME, landmark_source

DEFAULT_IMAGE_SIZE = 112  # shards given by URL have no local manifest to read the size from


def image_size(resize: int | None, manifest) -> int:
    return resize or (manifest.frame_size[0] if manifest is not None else DEFAULT_IMAGE_SIZE)


def view_length(frames: int) -> int:
    return max(2, (frames * 3) // 4)


def data_name(source: str | None, manifest) -> str | None:
    """What the data is called, without where it lies on this machine (nor a URL's host or query):
    the manifest's name, else the source's folder or file name."""
    name = manifest.name if manifest is not None else source
    if not name:
        return None
    path = PurePosixPath(urlparse(name).path.replace("\\", "/"))
    return (path.parent.name if path.name == MANIFEST_NAME else path.name) or None


def code_version() -> str:
    import subprocess
    from importlib.metadata import version

    commit = ""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        pass
    return f"auforge {version('auforge')}" + (f" ({commit})" if commit else "")


@dataclass(frozen=True)
class Provenance:
    image_size: int
    view_length: int
    data: dict  # kind, name, split, manifest_digest
    code_version: str

    @classmethod
    def derive(cls, cfg, source: str | None, manifest) -> "Provenance":
        return cls(
            image_size=image_size(cfg.data.resize, manifest),
            view_length=view_length(cfg.data.frames),
            data={"kind": cfg.data.kind, "name": data_name(source, manifest), "split": cfg.data.train_split,
                  "manifest_digest": manifest.digest() if manifest is not None else None,
                  "landmarks": landmark_source(manifest.builder) if manifest is not None else None,
                  "clips_without_identity": manifest.totals.get("clips_without_identity") if manifest is not None else None},  # fmt: skip
            code_version=code_version(),
        )

    @property
    def steady_alignment(self) -> bool:
        """One alignment a clip by default where the landmarks come from a face detector, whose
        frame-to-frame jitter per-frame alignment would turn into motion (README, "Faces in real video")."""
        return self.data.get("landmarks") not in (None, "renderer")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "Provenance":
        try:
            return cls(**d)
        except TypeError as e:
            raise ValueError(f"{where}: not a run's provenance ({e}); it was saved by an older auforge") from None
