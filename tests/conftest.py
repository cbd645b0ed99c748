"""Shared fixtures: small synthetic shard sets, written once per test session.

Everything here is deterministic (fixed seeds) and small: each set is written in seconds. The
whole suite, whose end-to-end tests run the real tools (the main job among them), takes about
20 minutes on two cores (README: `pytest --durations=5` lists the longest).
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from shards.manifest import Manifest
from shards.synthetic import write_synthetic


@dataclass
class Dataset:
    """A synthetic shard set on disk and what it should contain."""

    folder: Path
    manifest: Manifest
    keys: list[str]  # every sample key, in shard order, read back with tarfile (not the reader)
    frames: int  # stored frames per clip
    size: int

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    @property
    def shard_paths(self) -> list[Path]:
        return [self.folder / s.path for s in self.manifest.shards]


def keys_in_tar(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return [m.name.split(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".json")]


def _make(folder: Path, *, clips: int, shard_samples: int, seed: int, frames: int = 8, size: int = 32) -> Dataset:
    manifest = write_synthetic(folder, clips=clips, frames=frames, size=size, identities=5, seed=seed,
                               shard_samples=shard_samples, heldout=0.0)  # fmt: skip
    keys = [k for s in manifest.shards for k in keys_in_tar(folder / s.path)]
    return Dataset(folder, manifest, keys, frames, size)


@pytest.fixture(scope="session")
def synth40(tmp_path_factory) -> Dataset:
    """40 clips in 7 shards (6 x 6 + 4): 40 is not a multiple of world * workers * batch (16)."""
    return _make(tmp_path_factory.mktemp("synth40"), clips=40, shard_samples=6, seed=7)


@pytest.fixture(scope="session")
def synth_few(tmp_path_factory) -> Dataset:
    """10 clips in 2 shards: fewer shards than 2 ranks x 2 workers."""
    return _make(tmp_path_factory.mktemp("synth_few"), clips=10, shard_samples=5, seed=11)


@pytest.fixture(scope="session")
def synth24(tmp_path_factory) -> Dataset:
    """24 clips in 4 shards of 6: the pristine source that corruption tests copy and damage."""
    return _make(tmp_path_factory.mktemp("synth24"), clips=24, shard_samples=6, seed=3)



@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny problems: intra-op threads only add overhead, and on
    a busy machine OpenMP spin-waiting makes them many times slower. Results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
