"""`data=synthetic`: the Hydra data config generates shards into the cache once and reuses them."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from pretrain.config import register
from shards.manifest import Manifest
from shards.stream import ClipStream
from shards.manifest import heldout_people

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


def test_synthetic_data_config_generates_once_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("AUFORGE_CACHE", str(tmp_path / "cache"))
    overrides = ["data=synthetic", "data.synthetic.clips=12", "data.synthetic.frames=4", "data.synthetic.size=32",
                 "data.synthetic.identities=6", "data.synthetic.shard_samples=5", "data.synthetic.heldout=0.34"]  # fmt: skip
    register()
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        cfg = compose(config_name="pretrain", overrides=overrides)
    folder = Path(instantiate(cfg.data.synthetic))
    assert folder.is_relative_to(tmp_path / "cache")
    manifest = Manifest.load(folder)
    assert manifest.total_clips == 12 and manifest.frames_per_clip == 4 and manifest.frame_size == [32, 32]
    assert set(manifest.splits) == {"train", "heldout"}
    held = set(manifest.splits["heldout"]["identities"])
    chosen = {f"p{p:05d}" for p in heldout_people(0, 6, 0.34)}
    assert len(chosen) == 2 and held and held <= chosen  # a held-out person may have no clip of 12
    assert not chosen & set(manifest.splits["train"]["identities"])
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    assert Path(instantiate(cfg.data.synthetic)) == folder
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp  # reused, not regenerated

    # The held-out split streams on its own, and only its identities come out.
    stream = ClipStream(folder, split="heldout", frames=2, batch_size=4, mode="exact", rank=0, world=1)
    clips = [k for b in stream for k, ok in zip(b.keys, b.valid.tolist()) if ok]
    assert len(clips) == sum(s.samples for s in manifest.split("heldout").shards) > 0
