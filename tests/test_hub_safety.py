"""What a published folder and an index may not do: tell where the publisher's data lay, write
outside the download cache (names from an untrusted `index.json`, links planted in the cache),
or hand timm arguments that make it load another file (`checkpoint_path` in `model_args`).
Files are served by `python -m http.server` on 127.0.0.1, as in test_publish_hub."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf
from test_publish_hub import ARCH, ROOT, hub_cli, publish, site, trained_like  # noqa: F401 (site: a fixture)

from finetune import hub
from finetune.backbone import load_backbone
from pretrain.provenance import Provenance
from pretrain.publish import auforge_block
from shards.manifest import Manifest

# ---------------------------------------------------------------- no path of the publishing machine


def strings(node):
    """Every string in a JSON document."""
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def manifest_named(name: str) -> Manifest:
    return Manifest(name=name, frame_size=[32, 32], frames_per_clip=4, au_names=[], builder={}, shards=[], totals={})


@pytest.mark.parametrize("source, manifest, name", [
    ("{data}/bp4d-shards", manifest_named("bp4d"), "bp4d"),  # a local set: its manifest's name
    ("{data}/disfa/manifest.json", None, "disfa"),  # no manifest to hand: the folder's name
    ("https://user:token@example.org/sets/disfa/shard-{{000..009}}.tar?sig=x", None, "shard-{000..009}.tar"),
])  # fmt: skip
def test_no_absolute_path_of_the_publishing_machine_is_published(tmp_path, source, manifest, name):
    source = source.format(data=tmp_path / "data")
    cfg = OmegaConf.create({"data": {"kind": "shards", "source": source, "train_split": "train", "resize": 32,
                                     "frames": 4}})  # fmt: skip
    provenance = Provenance.derive(cfg, source, manifest)
    block = auforge_block({"temporal_margin": {"weight": 1.0}}, provenance, 7, 28, {}, identity_source="identity")
    assert block["data"]["name"] == name and block["data"]["kind"] == "shards"
    assert block["data"]["manifest_digest"] == (manifest.digest() if manifest else None)
    folder = publish(tmp_path / "pub", "au", trained_like(seed=7), auforge=block)
    config_text, card = (folder / "config.json").read_text(), (folder / "README.md").read_text()
    assert not [s for s in strings(json.loads(config_text)) if os.path.isabs(s)]
    for text in (config_text, card):
        for machine_path in (str(tmp_path), str(Path.home()), str(ROOT), "token", "example.org"):
            assert machine_path not in text
    assert f"`{name}` (shards)" in card


# ---------------------------------------------------------------- the cache cannot be escaped


def files_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


def serve_with_name(site, tmp_path: Path, name: str) -> str:
    """A backbone published in a fresh folder of the site, its index entry renamed to `name` (as
    a hostile or broken index would have it); the index's URL."""
    folder = site.root / tmp_path.name
    publish(folder, "tiny", trained_like(seed=8))
    index = json.loads((folder / "index.json").read_text())
    index["backbones"][0]["name"] = name
    (folder / "index.json").write_text(json.dumps(index))
    return f"{site.url}{tmp_path.name}/index.json"


def test_an_absolute_name_in_the_index_is_refused(site, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    name = str(elsewhere / "X")
    index = serve_with_name(site, tmp_path, name)
    proc = hub_cli("download", name, "--index", index, "--cache", str(tmp_path / "cache"))
    assert proc.returncode == 1
    assert f"entry {name!r} refused: it is an absolute path" in proc.stderr and index in proc.stderr
    assert files_under(elsewhere) == [] and files_under(tmp_path / "cache") == []


def test_a_name_climbing_out_with_dotdot_is_refused(site, tmp_path):
    index = serve_with_name(site, tmp_path, "../../X")  # CACHE/backbones/../../X-DIGEST: beside the cache
    proc = hub_cli("download", "../../X", "--index", index, "--cache", str(tmp_path / "cache"))
    assert proc.returncode == 1 and "entry '../../X' refused: it climbs out of its folder with '..'" in proc.stderr
    assert not list(tmp_path.rglob("X-*")) and files_under(tmp_path / "cache") == []


def test_a_folder_url_whose_entry_name_escapes_is_refused(site, tmp_path):
    """A folder URL is verified against the entry of the index beside it: that entry's name
    would name the cache folder."""
    index = serve_with_name(site, tmp_path, "../../X")
    proc = hub_cli("download", index.replace("index.json", "tiny/"), "--cache", str(tmp_path / "cache"))
    assert proc.returncode == 1 and "entry '../../X' refused" in proc.stderr
    assert not list(tmp_path.rglob("X-*")) and files_under(tmp_path / "cache") == []


def index_of(name, files: list[dict]) -> dict:
    return {"schema": hub.INDEX_SCHEMA, "backbones": [{"name": name, "files": files}]}


@pytest.mark.parametrize("name, why", [
    ("a/b", "holds a path separator"), ("a\\b", "holds a path separator"), (".", "is '.'"),
    ("..", "climbs out"), ("", "empty"), ("a\0b", "NUL"), (7, "not a string"),
])  # fmt: skip
def test_index_names_must_be_one_plain_path_part(name, why):
    good = {"name": "model.safetensors", "sha256": "0" * 64, "bytes": 1}
    with pytest.raises(hub.HubError, match=f"test-index: entry .* refused: .*{why}"):
        hub.parse_index(index_of(name, [good, {**good, "name": "config.json"}]), "test-index")
    if isinstance(name, str) and name:  # the same rule for file names
        bad = {**good, "name": name if name in (".", "..") else f"{name}.json"}
        with pytest.raises(hub.HubError, match=f"test-index: x: file .* refused: .*{why}"):
            hub.parse_index(index_of("x", [good, bad]), "test-index")


@pytest.mark.parametrize("link", ["backbones", "staging", "final", "part"])
def test_a_symlink_in_the_cache_pointing_outside_is_refused(site, tmp_path, link):
    index = serve_with_name(site, tmp_path, "tiny")
    entries, url = hub.read_index(index)
    entry = hub.find(entries, "tiny", url)
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    outside.mkdir()
    backbones = cache / "backbones"
    planted = {"backbones": backbones, "staging": backbones / f".tiny-{entry.digest}.download",
               "final": backbones / f"tiny-{entry.digest}",
               "part": backbones / f".tiny-{entry.digest}.download" / "model.safetensors.part"}[link]  # fmt: skip
    planted.parent.mkdir(parents=True, exist_ok=True)
    target = outside / "target"
    if link == "part":
        target.write_bytes(b"")
    else:
        target.mkdir()
    planted.symlink_to(target)
    with pytest.raises(hub.HubError, match=f"outside the cache folder {re.escape(str(cache.resolve()))}"):
        hub.fetch("tiny", index=index, cache=cache, progress=False)
    assert files_under(outside) == [target] and (target.is_dir() or target.read_bytes() == b"")


# ---------------------------------------------------------------- model_args are not timm's whole API


def test_model_args_outside_the_allow_list_are_refused(tmp_path):
    model = trained_like(seed=9)
    folder = publish(tmp_path, "au", model)
    other = tmp_path / "other.pth"  # a checkpoint timm would load over the published weights
    torch.save({k: torch.zeros_like(v) for k, v in timm.create_model(ARCH, num_classes=0).state_dict().items()}, other)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "model_args": {"checkpoint_path": str(other)}}))
    with pytest.raises(ValueError, match=f"{config_path}: model_args key 'checkpoint_path' refused"):
        load_backbone(str(folder))
    config_path.write_text(json.dumps({**config, "model_args": {"drop_path_rate": 0.1, "num_classes": 0}}))
    loaded = load_backbone(str(folder))  # what the allow-list names still goes through
    assert torch.equal(loaded.model.state_dict()["conv_stem.weight"], model.state_dict()["conv_stem.weight"])
