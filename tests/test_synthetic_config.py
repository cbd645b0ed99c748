"""`data=synthetic`: the Hydra data config generates shards into the cache once and reuses them; the
configs' defaults."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from finetune.config import register as register_finetune
from pretrain.config import register
from shards.__main__ import build_parser
from shards.synthetic import SynthSettings
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


def test_defaults_have_one_home_and_the_default_set_is_the_benchmark():
    """The renderer's settings (`SynthSettings`) are `python -m shards synth`'s defaults; both jobs'
    schema changes only the set's size, and an unknown `data.kind` is refused when composed."""
    args = vars(build_parser().parse_args(["synth", "--out", "x"]))
    assert {k: args[k] for k in asdict(SynthSettings())} == asdict(SynthSettings())
    benchmark = {**asdict(SynthSettings()), "clips": 1200, "identities": 120, "shard_samples": 200, "heldout": 0.25,
                 "_target_": "shards.synthetic.cached_synthetic"}  # fmt: skip
    register()
    register_finetune()
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        for job in ("pretrain", "finetune"):
            cfg = compose(config_name=job)
            assert dict(cfg.data.synthetic) == benchmark and cfg.data.frames == 4 and cfg.data.resize == 56
            shards = compose(config_name=job, overrides=["data=shards", "data.source=x"]).data
            assert (shards.frames, shards.stride) == (4, 5)  # build's 16 stored frames, flow's window
            with pytest.raises(ConfigCompositionException) as refused:
                compose(config_name=job, overrides=["data.kind=shardz"])
            assert "expected one of [synthetic, shards, bp4d, disfa, csv]" in str(refused.value.__cause__)
