"""Backbones for fine-tuning: a published auforge folder (plain timm + safetensors) or any timm
architecture at random initialisation (the baseline)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

# The model_args a published config may hand to timm.create_model: what pretrain.publish writes
# (img_size, and the shape arguments a model config may add: patch_size), what timm's own exports
# write (in_chans, global_pool, num_classes) and the regularisation rates. A config is untrusted
# input: another key, such as `checkpoint_path`
# (which makes timm load that file), is refused.
MODEL_ARGS = frozenset({"img_size", "patch_size", "in_chans", "global_pool", "num_classes", "drop_rate",
                        "drop_path_rate"})  # fmt: skip
LOCAL_DIR = "local-dir:"  # timm's spelling of a folder


@dataclass
class Backbone:
    model: torch.nn.Module  # timm model without classifier: forward(x) -> [N, num_features]
    architecture: str
    num_features: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # the folder it came from, or "random-init"


def _folder_config(folder: Path) -> dict:
    config_path = folder / "config.json"
    if not (folder / "model.safetensors").exists() or not config_path.exists():
        raise FileNotFoundError(f"{folder}: a published backbone folder needs model.safetensors and config.json")
    try:
        config = json.loads(config_path.read_text())
        config["architecture"], config["pretrained_cfg"]["input_size"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{config_path}: not a backbone config ({e})") from None
    _check_model_args(config.get("model_args", {}), config_path)
    return config


def _check_model_args(model_args, config_path: Path) -> None:
    """Refuse any model_args key outside MODEL_ARGS, naming it and the file."""
    if not isinstance(model_args, dict):
        raise ValueError(f"{config_path}: model_args must be a mapping, not {type(model_args).__name__}")
    for key in model_args:
        if key not in MODEL_ARGS:
            raise ValueError(f"{config_path}: model_args key {key!r} refused: a published backbone may set only "
                             f"{', '.join(sorted(MODEL_ARGS))}")  # fmt: skip


def published_folder(spec: str, index: str | None = None) -> Path | None:
    """The local folder of the published backbone `spec` names (fetched and verified by
    finetune.hub when it is a URL, `hf-hub:` repository or index name), or None for a timm name
    (a timm architecture wins over an index entry of the same name)."""
    from finetune import hub

    path = Path(spec.removeprefix(LOCAL_DIR)).expanduser()
    if path.is_dir():
        return path
    if spec.startswith(LOCAL_DIR):
        raise ValueError(f"backbone {spec!r}: no such folder")
    if hub.is_remote(spec):
        return hub.fetch(spec, index=index)
    if timm.is_model(spec):
        return None
    if index or os.environ.get(hub.INDEX_ENV):
        return hub.fetch(spec, index=index)
    if path.suffix:
        raise ValueError(f"backbone {spec!r}: no such folder on this machine, and not a timm architecture")
    raise ValueError(f"backbone {spec!r}: no such folder, timm has no architecture of that name, and no index "
                     f"is set to look the name up in (${hub.INDEX_ENV})")  # fmt: skip


def backbone_args(arch: str, image_size: int | None) -> dict:
    """timm arguments that build `arch` for `image_size` (None: timm's default), which a published
    config must repeat: transformers are built for their input size, convolutional nets take any."""
    if image_size is not None and any(k in arch for k in ("vit", "deit", "swin", "eva", "beit")):
        return {"img_size": image_size}
    return {}


def load_backbone(spec: str, *, input_size: int | None = None, index: str | None = None,
                  model_args: dict | None = None) -> Backbone:  # fmt: skip
    """`spec`: a published backbone (a folder or `local-dir:FOLDER`, a URL, `hf-hub:owner/repo`,
    or a name in `index`, else in $AUFORGE_HUB_INDEX: see finetune.hub) or a timm architecture name.

    Weights load through timm itself (`pretrained_cfg_overlay=dict(file=...)`, strict keys), as
    any user without auforge would load them; only safetensors and JSON are read. `model_args`:
    timm's shape arguments (`MODEL_ARGS`) for a random-init architecture, as a model preset's `args`
    build it (a published folder carries its own).
    """
    path = published_folder(spec, index)
    if path is not None:
        config = _folder_config(path)
        pcfg = config["pretrained_cfg"]
        model = timm.create_model(
            config["architecture"], pretrained=True, **{**config.get("model_args", {}), "num_classes": 0},
            pretrained_cfg_overlay=dict(file=str(path / "model.safetensors"), num_classes=0),
        )  # fmt: skip
        size = int(pcfg["input_size"][-1])
        return Backbone(model, config["architecture"], model.num_features, size, tuple(pcfg["mean"]),
                        tuple(pcfg["std"]), str(path))  # fmt: skip
    size = input_size or 224
    _check_model_args(model_args or {}, Path(f"the model_args for {spec}"))
    model = timm.create_model(spec, pretrained=False, num_classes=0, **backbone_args(spec, size), **(model_args or {}))
    pcfg = model.pretrained_cfg
    return Backbone(model, spec, model.num_features, size, tuple(pcfg["mean"]), tuple(pcfg["std"]), "random-init")
