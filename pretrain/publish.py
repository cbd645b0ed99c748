"""Publishing a frame backbone: `model.safetensors` with exactly timm's keys, and `config.json`.

The folder loads in plain timm with no auforge installed:

    timm.create_model(arch, pretrained=True, num_classes=0, **model_args,
                      pretrained_cfg_overlay=dict(file="NAME/model.safetensors"))
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file


def backbone_state(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """fp32, contiguous CPU copies of the backbone's weights, keyed as timm keys them."""
    return {k: v.detach().float().contiguous().cpu() for k, v in backbone.state_dict().items()}


def write_backbone(out_dir: str | Path, name: str, state: dict[str, torch.Tensor], config: dict,
                   overwrite: bool = False) -> Path:  # fmt: skip
    """Write `out_dir/name/` whole or not at all: files go to a temporary folder renamed into place."""
    out_dir = Path(out_dir)
    final = out_dir / name
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} is already published; pass overwrite to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
        if final.exists():
            old = final.with_name(f".{name}.old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def backbone_config(encoder, image_size: int, mean, std, auforge: dict) -> dict:
    return {
        "architecture": encoder.arch,
        "num_features": encoder.num_features,
        "model_args": encoder.model_args,
        "pretrained_cfg": {"input_size": [3, image_size, image_size], "mean": list(mean), "std": list(std),
                           "interpolation": "bilinear", "crop_pct": 1.0},  # fmt: skip
        "auforge": auforge,
    }
