"""Backbones for fine-tuning: a published auforge folder (plain timm + safetensors) or any timm
architecture at random initialisation (the baseline)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import timm
import torch


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
    return config


def load_backbone(spec: str, *, input_size: int | None = None) -> Backbone:
    """`spec`: a published folder (DESIGN.md's format) or a timm architecture name.

    Weights load through timm itself (`pretrained_cfg_overlay=dict(file=...)`, strict keys), as
    any user without auforge would load them; only safetensors and JSON are read.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        config = _folder_config(path)
        pcfg = config["pretrained_cfg"]
        model = timm.create_model(
            config["architecture"], pretrained=True, num_classes=0, **config.get("model_args", {}),
            pretrained_cfg_overlay=dict(file=str(path / "model.safetensors"), num_classes=0),
        )  # fmt: skip
        size = int(pcfg["input_size"][-1])
        return Backbone(model, config["architecture"], model.num_features, size, tuple(pcfg["mean"]),
                        tuple(pcfg["std"]), str(path))  # fmt: skip
    if "://" in spec or path.suffix:
        raise ValueError(f"backbone {spec!r}: neither a published folder on this machine nor a timm architecture; "
                         "downloading from URLs and indexes is the job of finetune.hub")  # fmt: skip
    if not timm.is_model(spec):
        raise ValueError(f"backbone {spec!r}: no such folder, and timm has no architecture of that name")
    size = input_size or 224
    args = {"img_size": size} if any(k in spec for k in ("vit", "deit", "swin", "eva", "beit")) else {}
    model = timm.create_model(spec, pretrained=False, num_classes=0, **args)
    pcfg = model.pretrained_cfg
    return Backbone(model, spec, model.num_features, size, tuple(pcfg["mean"]), tuple(pcfg["std"]), "random-init")
