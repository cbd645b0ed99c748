"""Published folders are timm-native: `timm.create_model("local-dir:FOLDER", pretrained=True)`
(and `hf-hub:owner/repo`, through the same parser) builds the backbone with no other argument;
and auforge takes `hf-hub:owner/repo`, timm's spelling, wherever a backbone is named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from test_publish_hub import AUFORGE, MEAN, STD, features, hf_cached_repo, hub_cli, moved_off_init
from timm.models._hub import save_config_for_hf

from finetune import hub
from finetune.backbone import load_backbone, published_folder
from pretrain.model import ClipEncoder
from pretrain.publish import backbone_config, backbone_state, publish_backbone

SIZE = 32


def published(tmp_path: Path, arch: str) -> tuple[ClipEncoder, Path]:
    """A backbone built as pretraining builds it, its weights moved off timm's init, published
    with the project's own functions."""
    torch.manual_seed(0)
    encoder = ClipEncoder(arch, 16, "none", SIZE)
    moved_off_init(encoder.backbone)
    config = backbone_config(encoder, SIZE, MEAN, STD, AUFORGE)
    return encoder, publish_backbone(tmp_path / "pub", "au", backbone_state(encoder.backbone), config)


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224"])  # a fixed input size (img_size) too
def test_local_dir_loads_in_timm_with_no_other_argument(tmp_path, arch):
    encoder, folder = published(tmp_path, arch)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert model.num_classes == 0
    weights, state = load_file(str(folder / "model.safetensors")), model.state_dict()
    assert set(state) == set(weights)
    for key, value in weights.items():
        assert torch.equal(state[key], value), key
    x = torch.randn(2, 3, SIZE, SIZE)
    torch.testing.assert_close(features(model, x), features(encoder.backbone, x))
    assert tuple(model.pretrained_cfg["input_size"]) == (3, SIZE, SIZE) and tuple(model.pretrained_cfg["mean"]) == MEAN


def test_config_is_laid_out_as_timm_writes_it_and_keeps_auforge_keys(tmp_path):
    encoder, folder = published(tmp_path, "resnet18")
    config = json.loads((folder / "config.json").read_text())
    save_config_for_hf(encoder.backbone, str(tmp_path / "timm.json"))
    timm_config = json.loads((tmp_path / "timm.json").read_text())
    for key in ("architecture", "num_classes", "num_features", "global_pool"):
        assert config[key] == timm_config[key], key
    assert config["num_classes"] == 0 and config["global_pool"] == "avg"
    pcfg, timm_pcfg = config["pretrained_cfg"], timm_config["pretrained_cfg"]
    assert set(pcfg) <= set(timm_pcfg)  # nothing timm does not write itself
    for key in ("num_classes", "first_conv", "classifier", "fixed_input_size", "custom_load"):
        assert pcfg[key] == timm_pcfg[key], key
    # the project's own readers: finetune.backbone, the model card, the tests of pretraining
    assert pcfg["input_size"] == [3, SIZE, SIZE] and pcfg["mean"] == list(MEAN) and pcfg["std"] == list(STD)
    assert config["model_args"] == {} and config["auforge"] == AUFORGE
    loaded = load_backbone(str(folder))
    assert loaded.input_size == SIZE and loaded.mean == MEAN and loaded.model.num_classes == 0
    assert 'timm.create_model("local-dir:au", pretrained=True)' in (folder / "README.md").read_text()


# ---------------------------------------------------------------- hf-hub: wherever a backbone is named


@pytest.mark.parametrize("spec, repo", [
    ("hf-hub:owner/repo", "owner/repo"), ("hf-hub:owner/repo@v1", "owner/repo@v1"),
    ("hf://owner/repo", "owner/repo"), ("hf:owner/repo@main", "owner/repo@main"),
    ("owner/repo", None), ("https://example.org/pub/au/", None), ("resnet18", None), ("local-dir:/x", None),
])  # fmt: skip
def test_hugging_face_spellings(spec, repo):
    assert hub.hf_repo(spec) == repo
    assert hub.is_remote(spec) == (repo is not None or "://" in spec)


def test_hf_hub_spec_takes_the_hub_download_path(tmp_path, monkeypatch):
    """Up to where the network would be needed: the Hub fetch is the one asked for."""
    _, folder = published(tmp_path, "resnet18")
    asked = []
    monkeypatch.setattr(hub, "fetch_hf", lambda spec, cache=None: asked.append(spec) or folder)
    assert published_folder("hf-hub:owner/repo@v1") == folder
    assert load_backbone("hf-hub:owner/repo").source == str(folder)
    assert asked == ["hf-hub:owner/repo@v1", "hf-hub:owner/repo"]
    assert published_folder(f"local-dir:{folder}") == folder  # timm's spelling of a folder
    with pytest.raises(ValueError, match="no such folder"):
        published_folder(f"local-dir:{tmp_path / 'missing'}")
    monkeypatch.undo()
    with pytest.raises(hub.HubError, match="names no Hugging Face Hub repository"):
        hub.fetch("hf-hub:", cache=tmp_path / "cache")


@pytest.mark.slow
def test_hf_hub_spec_downloads_offline_from_the_cache(tmp_path):
    """huggingface_hub in offline mode, with the repository in its cache as a download leaves it:
    `python -m finetune.hub download hf-hub:...`, and timm's own `hf-hub:` on the same cache."""
    offline = {"HF_HUB_OFFLINE": "1"}
    cache = tmp_path / "cache"
    proc = hub_cli("download", "hf-hub:nobody/missing-backbone", "--cache", str(cache), extra_env=offline)
    assert proc.returncode == 1 and "HF_HUB_OFFLINE is set" in proc.stderr  # the Hub was the one asked

    _, folder = published(tmp_path, "resnet18")
    hf_cached_repo(cache / "hf", "auforge/au", folder)
    proc = hub_cli("download", "hf-hub:auforge/au", "--cache", str(cache), extra_env=offline)
    assert proc.returncode == 0, proc.stderr
    snapshot = proc.stdout.strip().splitlines()[-1]
    assert load_file(f"{snapshot}/model.safetensors").keys() == load_file(str(folder / "model.safetensors")).keys()

    script = ("import sys, timm\nm = timm.create_model('hf-hub:auforge/au', pretrained=True, cache_dir=sys.argv[1])\n"
              "print(m.num_classes, *m.pretrained_cfg['input_size'])")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script, str(cache / "hf")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **offline})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["0", "3", str(SIZE), str(SIZE)]
