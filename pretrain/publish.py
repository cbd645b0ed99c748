"""Publishing a frame backbone: `model.safetensors` with exactly timm's keys, `config.json`, a
model card (`README.md`), and an entry in the folder's `index.json`.

The folder loads in plain timm with no auforge installed, `config.json` being laid out as timm's
own `save_config_for_hf` writes it (a copy on the Hugging Face Hub loads as `hf-hub:owner/repo`):

    timm.create_model("local-dir:NAME", pretrained=True)
    timm.create_model(arch, pretrained=True, num_classes=0, **model_args,
                      pretrained_cfg_overlay=dict(file="NAME/model.safetensors"))

`python -m pretrain.publish RUN_DIR_OR_CHECKPOINT --name NAME --out DIR [--overwrite]` publishes
the newest complete checkpoint of a run (or a given one), whatever its ZeRO stage; pretraining
publishes its final weights the same way into `RUN_DIR/published/`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file

from finetune.hub import CARD_NAME, CONFIG_NAME, INDEX_NAME, INDEX_SCHEMA, MODEL_NAME, HubError, parse_index
from pretrain.provenance import Provenance
from shards.atomic import write_text_atomic
from shards.runlock import locked
from shards.verify import sha256_of

PREFIX = "encoder.backbone."  # where the frame backbone sits in the trained PretrainModel
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # one path segment, safe in URLs


def fp32_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies with floating-point tensors in fp32; integer buffers (BatchNorm's
    `num_batches_tracked`) keep their dtype, as timm's own state dict has them."""
    return {k: (v.detach().float() if v.is_floating_point() else v.detach()).contiguous().cpu() for k, v in state.items()}


def backbone_state(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The live backbone's weights and buffers, keyed as timm keys them."""
    return fp32_state(backbone.state_dict())


def write_backbone(out_dir: str | Path, name: str, state: dict[str, torch.Tensor], config: dict,
                   overwrite: bool = False, card: str | None = None) -> Path:  # fmt: skip
    """Write `out_dir/name/` whole or not at all: files go to a temporary folder renamed into place."""
    out_dir = Path(out_dir)
    final = out_dir / name
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} is already published; pass overwrite to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    try:
        save_file(state, str(tmp / MODEL_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
        if card is not None:
            (tmp / CARD_NAME).write_text(card)
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


def _timm_backbone(encoder) -> torch.nn.Module:
    """The encoder's timm backbone, or (for an encoder that names only its architecture) a fresh
    one: what timm says of the architecture (first conv, classifier, pooling) is read off it."""
    backbone = getattr(encoder, "backbone", None)
    if backbone is None:
        import timm

        backbone = timm.create_model(encoder.arch, pretrained=False, num_classes=0, **encoder.model_args)
    return backbone


def _global_pool(model: torch.nn.Module) -> str | None:
    """The pooling the backbone ends with, as timm names it ('avg', 'token', ...): some timm
    architectures keep it on their head, others on the model, as a string or a pooling module."""
    for owner in (getattr(model, "head", None), model):
        pool = getattr(owner, "global_pool", None)
        pool = getattr(pool, "pool_type", pool)
        if isinstance(pool, str) and pool:
            return pool
    return None


def _pretrained_cfg(model: torch.nn.Module, image_size: int, mean, std) -> dict:
    """timm's `pretrained_cfg` for these weights: the preprocessing they were trained with, and
    from the architecture's own cfg only what describes the network; what describes timm's
    ImageNet weights (tag, license, URLs, test sizes) is not about ours and stays out."""
    arch_cfg = model.pretrained_cfg
    same_size = list(arch_cfg.get("input_size", ()))[1:] == [image_size, image_size]
    return {
        "input_size": [3, image_size, image_size],
        "fixed_input_size": bool(arch_cfg.get("fixed_input_size", False)),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": list(mean),
        "std": list(std),
        "num_classes": 0,
        # the final feature map's size is known for the architecture's own input size only
        "pool_size": list(arch_cfg["pool_size"]) if same_size and arch_cfg.get("pool_size") else None,
        "first_conv": arch_cfg.get("first_conv"),
        "classifier": arch_cfg.get("classifier"),
        "custom_load": False,  # the file holds timm's own state dict, nothing to convert
    }


def backbone_config(encoder, image_size: int, mean, std, auforge: dict) -> dict:
    """`config.json` as timm's `save_config_for_hf` lays it out, so that `timm.create_model(
    "local-dir:FOLDER", pretrained=True)` (or `hf-hub:owner/repo`) builds the classifier-free
    backbone with no other argument; plus the `auforge` provenance block. `encoder`: anything with
    `arch`, `num_features` and `model_args`, and optionally its timm `backbone` (a ClipEncoder)."""
    model = _timm_backbone(encoder)
    pool = _global_pool(model)
    return {
        "architecture": encoder.arch,
        "num_classes": 0,  # timm builds the model without a classifier, as the weights are
        "num_features": encoder.num_features,
        **({"global_pool": pool} if pool else {}),
        "model_args": encoder.model_args,
        "pretrained_cfg": _pretrained_cfg(model, image_size, mean, std),
        "auforge": auforge,
    }


def auforge_block(objectives: dict, provenance: Provenance, steps: int, samples: int, results: dict,
                  identity_source: str | None = None) -> dict:  # fmt: skip
    """The provenance a published backbone carries: what it was trained on (a name and the
    manifest's digest say what the data was, not where it lay), with what, how long;
    `identity_source`: what cross-identity mining took for identity (see `MemoryBank`)."""
    return {
        "objectives": objectives,
        **({"identity_source": identity_source} if identity_source else {}),
        "data": provenance.data,
        "steps": steps,
        "samples_seen": samples,
        "code_version": provenance.code_version,
        "evaluation": results,
    }


# ---------------------------------------------------------------- the model card


def _timm_call(config: dict, file: str) -> str:
    args = "".join(f", {k}={v!r}" for k, v in config.get("model_args", {}).items())
    return (f'timm.create_model("{config["architecture"]}", pretrained=True, num_classes=0{args},\n'
            f'                          pretrained_cfg_overlay=dict(file="{file}"))')  # fmt: skip


def _results_table(evaluation: dict) -> list[str]:
    """Probe results side by side with the same backbone at random initialisation."""
    metrics = sorted({k.split("/", 1)[1] for k in evaluation if "/" in k})
    if not metrics:
        return ["No probes were run for this checkpoint (`eval.enabled=false`, or published mid-run)."]
    rows = ["| metric (held-out identities) | pretrained | random init |", "| --- | ---: | ---: |"]
    for m in metrics:
        cells = [evaluation.get(f"{side}/{m}") for side in ("probe", "random_init")]
        rows.append(f"| {m} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    return rows


def _data_notes(data: dict) -> list[str]:
    """What the data's landmarks and identities were, where a user must know it."""
    notes = []
    if data.get("landmarks") == "dlib":
        notes.append("- landmarks: found by dlib's 68-point shape predictor, whose weights are trained on iBUG "
                     "300-W: its licence excludes commercial use, and so this backbone's use")  # fmt: skip
    elif data.get("landmarks") == "mediapipe":
        notes.append("- landmarks: MediaPipe's face mesh (Apache-2.0), mapped to 68 iBUG points (approximately)")
    if data.get("clips_without_identity"):
        notes.append(f"- {data['clips_without_identity']} clips name no person: their video id stood in for one "
                     "(a pseudo-identity, so one person's two videos count as two people)")  # fmt: skip
    return notes


def _identity_note(source: str | None) -> list[str]:
    """What the cross-identity objectives took for a person (the data may name no one)."""
    if source is None:
        return []
    said = {"identity": "the identities the shards name",
            "video": "video ids: the shards name no identities, so two videos of one person count as two people",
            "identity+video": "the shards' identities, and video ids for the clips that name none"}[source]  # fmt: skip
    return ["", f"Cross-identity mining told people apart by {said}."]


def model_card(name: str, config: dict) -> str:
    a, p = config.get("auforge", {}), config["pretrained_cfg"]
    data, arch, size = a.get("data", {}), config["architecture"], p["input_size"][-1]
    objectives = a.get("objectives", {})
    lines = [
        "---", "library_name: timm", "tags: [timm, image-feature-extraction, auforge, facial-action-units]", "---",
        f"# {name}", "",
        f"A `{arch}` frame backbone pretrained by auforge without labels on face clips, to be fine-tuned for",
        "facial action unit (AU) detection and intensity with few labels. It is the backbone alone, with",
        f"exactly the weights of `timm.create_model(\"{arch}\", num_classes=0)`: no classifier and none of the",
        f"pretraining heads. It maps an RGB face crop of {size}x{size} pixels to {config['num_features']} features.", "",
        "## Data", "",
        f"- data: `{data.get('name')}` ({data.get('kind')}), split `{data.get('split')}`",
        f"- manifest sha256: `{data.get('manifest_digest')}` (names the exact shards it saw)",
        f"- {a.get('steps')} optimizer steps, {a.get('samples_seen')} clips seen",
        *_data_notes(data), "",
        "## Objectives", "", "| objective | weight | settings |", "| --- | ---: | --- |",
        *(f"| {o} | {s.get('weight')} | {', '.join(f'{k}={v}' for k, v in s.items() if k != 'weight') or '-'} |"
          for o, s in objectives.items()),  # fmt: skip
        *_identity_note(a.get("identity_source")),
        "", "## Results", "", *_results_table(a.get("evaluation") or {}), "",
        "## Intended use and limits", "",
        "- Use: features of face crops for AU detection or intensity heads, frozen or fine-tuned; research",
        "  on person-independent AU representations.",
        "- Inputs must be face crops aligned and normalised as `config.json` says (input size, mean, std);",
        "  other crops, resolutions or non-face images are outside what it was trained for.",
        "- Self-supervised on the data above only: its results say nothing of populations, poses or",
        "  lighting that data lacks. Not for identifying people, nor for decisions about a person",
        "  (emotion, health, hiring) without a validation of its own.", "",
        "## Load it", "", "With timm alone (no auforge needed):", "", "```python", "import timm", "",
        f'model = timm.create_model("local-dir:{name}", pretrained=True)  # on the Hub: "hf-hub:owner/repo"',
        "# the same, naming the architecture and the weights file:",
        f"model = {_timm_call(config, f'{name}/{MODEL_NAME}')}",
        f"# inputs: RGB, {size}x{size}, mean {p['mean']}, std {p['std']}", "```", "",
        "With auforge (a folder, a URL, a name in an index, or `hf-hub:owner/repo`; downloads are sha256-verified):",
        "", "```python", "from finetune.backbone import load_backbone", "",
        f'backbone = load_backbone("{name}")  # this folder; or its URL, hf-hub:owner/repo, a name in an index',
        "print(backbone.model, backbone.input_size, backbone.mean, backbone.std)", "```", "", "```",
        f"accelerate launch finetune.py backbone={name} task=detection mode=linear", "```", "",
        f"Code: {a.get('code_version')}.", "",
    ]  # fmt: skip
    return "\n".join(lines)


# ---------------------------------------------------------------- the index


def _index_entries(out_dir: Path) -> list[dict]:
    """The entries of `out_dir/index.json` (none when it does not exist yet)."""
    path = out_dir / INDEX_NAME
    if not path.exists():
        return []
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); fix or remove it before publishing here") from None
    try:
        parse_index(raw, str(path))  # an index the hub could not read is not extended
    except HubError as e:
        raise ValueError(str(e)) from None
    return raw["backbones"]


def index_entry(folder: Path, config: dict) -> dict:
    files = [{"name": f, "sha256": sha256_of(folder / f), "bytes": (folder / f).stat().st_size}
             for f in (MODEL_NAME, CONFIG_NAME, CARD_NAME) if (folder / f).exists()]  # fmt: skip
    return {"name": folder.name, "url": f"{folder.name}/", "architecture": config["architecture"],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "files": files}  # fmt: skip


def publish_backbone(out_dir: str | Path, name: str, state: dict[str, torch.Tensor], config: dict,
                     overwrite: bool = False) -> Path:  # fmt: skip
    """Write `out_dir/name/` (weights, config, card) and add or replace its `index.json` entry."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"backbone name {name!r}: use letters, digits, '.', '_' and '-' (one folder name)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with locked(out_dir / f".{INDEX_NAME}.lock"):  # two publishers at once must not drop each other's entries
        entries = _index_entries(out_dir)
        if not overwrite and ((out_dir / name).exists() or any(e["name"] == name for e in entries)):
            raise FileExistsError(f"{out_dir / name}: {name!r} is already published here; pass --overwrite to replace it")
        folder = write_backbone(out_dir, name, state, config, overwrite=overwrite, card=model_card(name, config))
        entries = [e for e in entries if e["name"] != name] + [index_entry(folder, config)]
        index = {"schema": INDEX_SCHEMA, "backbones": sorted(entries, key=lambda e: e["name"])}
        write_text_atomic(out_dir / INDEX_NAME, json.dumps(index, indent=1) + "\n")
    return folder


# ---------------------------------------------------------------- from a DeepSpeed checkpoint


def find_checkpoint(path: str | Path) -> tuple[Path, str]:
    """(checkpoints folder, tag) for a run directory, its `checkpoints/` folder (both: the newest
    complete checkpoint) or one checkpoint folder (which must be complete)."""
    from pretrain.checkpoint import INDEX, Checkpointer

    path = Path(path)
    if (path / "COMPLETE").exists():
        return path.parent, path.name
    if path.name.startswith("step_") and path.is_dir():
        raise ValueError(f"{path}: checkpoint has no COMPLETE marker (a crash while saving?); pick a complete one")
    root = path if (path / INDEX).exists() else path / "checkpoints"
    if not (root / INDEX).exists():
        raise FileNotFoundError(f"{path}: neither a run directory with checkpoints/{INDEX} nor a checkpoint folder")
    tags = Checkpointer(root.parent, keep=1, rank=0, config_view={}).complete_tags()
    if not tags:
        raise FileNotFoundError(f"{root}: no complete checkpoint to publish")
    return root, tags[-1]


def checkpoint_state(root: Path, tag: str) -> dict[str, torch.Tensor]:
    """The whole trained model's fp32 state dict. ZeRO stages 1-3 (and bf16) keep the fp32 master
    weights partitioned across the ranks' optimizer files: DeepSpeed's own zero_to_fp32 merges
    them. Stage 0 keeps the full fp32 module in the model-states file."""
    folder = root / tag
    if list(folder.glob("*zero_pp_rank_*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
    model_file = folder / "mp_rank_00_model_states.pt"
    if not model_file.exists():
        raise FileNotFoundError(f"{folder}: no DeepSpeed model states ({model_file.name}) in this checkpoint")
    # A DeepSpeed checkpoint is a pickle by DeepSpeed's design: it is our own run's file, read here
    # once to turn it into safetensors, never handed to a downloader.
    return torch.load(model_file, map_location="cpu", weights_only=False)["module"]


def timm_backbone_state(state: dict[str, torch.Tensor], arch: str, model_args: dict, where: str):
    """The backbone's part of a trained model's state, keyed as timm keys it; refuses anything but
    exactly the keys and shapes of `timm.create_model(arch, num_classes=0, **model_args)`
    (BatchNorm buffers included). Returns (state, that timm model)."""
    import timm

    backbone = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    model = timm.create_model(arch, pretrained=False, num_classes=0, **model_args)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(backbone)), sorted(set(backbone) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{where}: the backbone's keys are not timm's {arch}: missing {missing[:5]} "
                         f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")  # fmt: skip
    wrong = [k for k in expected if expected[k].shape != backbone[k].shape]
    if wrong:
        raise ValueError(f"{where}: shapes differ from timm's {arch} for {wrong[:5]}")
    return fp32_state(backbone), model


def _unflatten(view: dict) -> dict:
    """run.json's flat 'a.b.c' keys back into nested config sections."""
    out: dict = {}
    for key, value in view.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _probe_results(run_dir: Path, step: int) -> dict:
    """The probes logged at the checkpoint's step, if the run evaluated then."""
    results: dict = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            if record.get("step") == step and any(k.startswith("probe/") for k in record):
                results = {k: v for k, v in record.items() if k.startswith(("probe/", "random_init/"))}
    return results


def publish_checkpoint(path: str | Path, name: str, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Publish a run's checkpoint (any ZeRO stage) as the fp32 frame backbone."""
    from pretrain.bank import saved_identity_source
    from finetune.backbone import backbone_args

    root, tag = find_checkpoint(path)
    # The config and what the run derived from it and its data come from the checkpoint itself
    # (run.json), so a checkpoint copied away from its run directory, or whose data is gone, still
    # publishes, with the values it was trained with.
    run = json.loads((root / tag / "run.json").read_text())
    if "provenance" not in run:
        raise ValueError(f"{root / tag}: run.json has no provenance (saved by an older auforge); publish it with that version")
    cfg, provenance = _unflatten(run["config"]), Provenance.from_dict(run["provenance"], str(root / tag / "run.json"))
    rank0 = json.loads((root / tag / "rank_00000.json").read_text())
    image_size = provenance.image_size
    arch = cfg["model"]["arch"]
    model_args = backbone_args(arch, image_size)
    state, model = timm_backbone_state(checkpoint_state(root, tag), arch, model_args, str(root / tag))
    encoder = SimpleNamespace(arch=arch, num_features=model.num_features, model_args=model_args, backbone=model)
    pcfg = model.pretrained_cfg
    results = _probe_results(root.parent, rank0["step"])
    bank = root / tag / "bank.safetensors"
    identity = saved_identity_source(load_file(str(bank))) if bank.exists() else None
    auforge = auforge_block(cfg["objectives"], provenance, rank0["step"], rank0["samples"], results, identity_source=identity)
    auforge["checkpoint"] = tag
    config = backbone_config(encoder, image_size, pcfg["mean"], pcfg["std"], auforge)
    return publish_backbone(out_dir, name, state, config, overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a run directory (its newest complete checkpoint) or a checkpoint folder")
    parser.add_argument("--name", required=True, help="the backbone's name: its folder under --out and its index entry")
    parser.add_argument("--out", required=True, help="the folder of published backbones (holds index.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace a backbone already published under --name")
    args = parser.parse_args(argv)
    try:
        folder = publish_checkpoint(args.checkpoint, args.name, args.out, args.overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
