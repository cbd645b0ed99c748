"""Writes `auforge.clip/1` shards and their manifest.

Shards roll over by sample count and by bytes and are named `NAME-000000.tar`, ... Each is
written under a temporary name and renamed when complete, so a crash leaves only whole shards
(and possibly a `.NAME-....tmp` that no reader looks at). The manifest is written last.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from shards.atomic import atomic_open
from shards.format import LABEL_MEMBERS, Clip
from shards.manifest import MANIFEST_NAME, Manifest, ShardInfo


class _HashingFile(io.RawIOBase):
    """Write-through wrapper that hashes and counts what goes to the file."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b)


class ShardWriter:
    """Context manager: `with ShardWriter(out, "synth", au_names=...) as w: w.write(clip)`.

    Tar headers carry fixed owner, mode and mtime so that the same clips give byte-identical
    shards.
    """

    def __init__(
        self,
        out_dir: str | Path,
        name: str,
        *,
        au_names: list[str] = (),
        builder: dict | None = None,
        max_samples: int = 1000,
        max_bytes: int = 1 << 30,
        first_shard: int = 0,
        manifest_name: str | None = MANIFEST_NAME,
    ):
        if max_samples < 1 or max_bytes < 1:
            raise ValueError("max_samples and max_bytes must be positive")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.name, self.au_names = name, list(au_names)
        self.builder = builder or {"name": "auforge.shards.writer", "settings": {}}
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.manifest_name = manifest_name  # None: close() returns the manifest without saving it
        self.shards: list[ShardInfo] = []
        self._next_index = first_shard
        self._open = None  # (atomic context, hashing file, tarfile, ShardInfo)
        self._frame_size: list[int] | None = None
        self._frames_per_clip: int | None = None
        self._videos: set[str] = set()
        self._identities: set[str] = set()
        self._frames = 0
        self._manifest: Manifest | None = None
        self._split: str | None = None
        self._splits: dict[str, dict] = {}  # name -> {"shards": [...], "identities": set()}

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()

    def start_split(self, name: str) -> None:
        """Clips written from now on belong to split `name`, in shards of their own."""
        if name in self._splits:
            raise ValueError(f"split {name!r} was already written")
        if self._open is not None:
            self._finish_shard()
        self._split = name
        self._splits[name] = {"shards": [], "identities": set()}

    def write(self, clip: Clip) -> None:
        members = clip.members(len(self.au_names))
        self._check_uniform(clip)
        size = sum(512 + -(-len(data) // 512) * 512 for _, data in members)
        if self._open is not None:
            tar, info = self._open[2], self._open[3]
            # The size the shard would have if closed after this clip: what tar has taken so
            # far (the file lags behind by tar's buffer), the clip, and the end-of-archive
            # blocks, padded to tar's record size.
            closed = -(-(tar.offset + size + 1024) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE
            if info.samples >= self.max_samples or closed > self.max_bytes:
                self._finish_shard()
        if self._open is None:
            self._start_shard()
        _, hashing, tar, info = self._open
        for member_name, data in members:
            ti = tarfile.TarInfo(member_name)
            ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(data), 0, 0o444, "", ""
            tar.addfile(ti, io.BytesIO(data))
        info.samples += 1
        info.bytes = hashing.size
        suffixes = {member_name.split(".", 1)[1] for member_name, _ in members}
        for label in LABEL_MEMBERS:  # counted from what was written, so the count cannot drift
            info.labels[label] += f"{label}.npy" in suffixes
        self._frames += len(clip.frames)
        self._videos.add(clip.video_id)
        if clip.identity is not None:
            self._identities.add(clip.identity)
            if self._split is not None:
                self._splits[self._split]["identities"].add(clip.identity)

    def _check_uniform(self, clip: Clip) -> None:
        size = [int(clip.size[0]), int(clip.size[1])]
        if self._frame_size is None:
            self._frame_size, self._frames_per_clip = size, len(clip.frames)
        # Mixed sizes are allowed in the format; the manifest then records the first clip's and
        # readers check each clip's own size.
        elif len(clip.frames) != self._frames_per_clip:
            self._frames_per_clip = 0  # 0 in the manifest: clip lengths vary

    def _start_shard(self) -> None:
        path = self.out_dir / f"{self.name}-{self._next_index:06d}.tar"
        self._next_index += 1
        ctx = atomic_open(path, "wb")
        f = ctx.__enter__()
        hashing = _HashingFile(f)
        tar = tarfile.open(fileobj=hashing, mode="w|", format=tarfile.USTAR_FORMAT)
        info = ShardInfo(path=path.name, samples=0, bytes=0, sha256="", labels=dict.fromkeys(LABEL_MEMBERS, 0))
        self._open = (ctx, hashing, tar, info)

    def _finish_shard(self) -> None:
        ctx, hashing, tar, info = self._open
        self._open = None
        tar.close()  # writes the end-of-archive blocks through the hashing wrapper
        info.bytes, info.sha256 = hashing.size, hashing.sha.hexdigest()
        ctx.__exit__(None, None, None)  # fsync and rename: the shard now exists, whole
        self.shards.append(info)
        if self._split is not None:
            self._splits[self._split]["shards"].append(info.path)

    def _abort(self) -> None:
        if self._open is not None:
            ctx = self._open[0]
            self._open = None
            try:
                raise RuntimeError("shard writer aborted")
            except RuntimeError as e:
                ctx.__exit__(type(e), e, e.__traceback__)  # removes the temporary file

    def manifest(self) -> Manifest:
        return Manifest(
            name=self.name,
            frame_size=self._frame_size or [0, 0],
            frames_per_clip=self._frames_per_clip or 0,
            au_names=self.au_names,
            builder=self.builder,
            shards=list(self.shards),
            totals={
                "clips": sum(s.samples for s in self.shards),
                "frames": self._frames,
                "videos": len(self._videos),
                "identities": len(self._identities),
            },
            splits={
                name: {"shards": split["shards"], "identities": sorted(split["identities"])}
                for name, split in self._splits.items()
            },
        )

    def close(self) -> Manifest:
        """Finish the open shard and write the manifest; later calls return the same manifest."""
        if self._manifest is None:
            if self._open is not None:
                self._finish_shard()
            self._manifest = self.manifest()
            if self.manifest_name is not None:
                self._manifest.save(self.out_dir / self.manifest_name)
        return self._manifest

    def seen(self) -> dict[str, list[str]]:
        """The video and identity ids written so far: what merging parts needs to count the
        union rather than the sum (shards.parts)."""
        return {"videos": sorted(self._videos), "identities": sorted(self._identities)}
