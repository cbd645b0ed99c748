"""`python -m shards inspect`: what a shard set holds, and a contact sheet a person can look at."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image, ImageDraw

from shards.decode import BadSample, iter_groups, metadata_of
from shards.format import frame_member, load_npy
from shards.manifest import Manifest
from shards.sources import resolve_one


def scan(target: str, max_clips: int) -> dict:
    """Counts, identities and AU label coverage over the first `max_clips` clips."""
    source = resolve_one(target)
    au_names = source.manifest.au_names if source.manifest else []
    stats = {"clips": 0, "frames": 0, "bad": Counter(), "identities": Counter(), "videos": set()}
    labelled = positive = None
    for url in source.urls:
        try:
            for group in iter_groups(url):
                if stats["clips"] >= max_clips:
                    break
                try:
                    meta = metadata_of(group)
                except BadSample as e:
                    stats["bad"][e.kind] += 1
                    continue
                stats["clips"] += 1
                stats["frames"] += len(meta["frame_index"])
                stats["identities"][meta["identity"]] += 1
                stats["videos"].add(meta["video_id"])
                if "au.npy" in group:
                    occ = load_npy(group["au.npy"])["occ"]
                    if labelled is None:
                        labelled, positive = np.zeros(occ.shape[1]), np.zeros(occ.shape[1])
                        au_names = au_names or [f"AU#{i}" for i in range(occ.shape[1])]
                    labelled += (occ >= 0).sum(0)
                    positive += (occ == 1).sum(0)
        except BadSample as e:
            stats["bad"][e.kind] += 1
    stats["au"] = [
        (name, labelled[i] / max(stats["frames"], 1), positive[i] / max(labelled[i], 1))
        for i, name in enumerate(au_names)
    ] if labelled is not None else []  # fmt: skip
    stats["manifest"] = source.manifest
    stats["shards"] = len(source.urls)
    return stats


def contact_sheet(target: str, out: Path, clips: int = 6, columns: int = 8) -> Path:
    """Rows of clips, `columns` frames spread over each clip, captioned with key, identity, AUs."""
    source = resolve_one(target)
    au_names = source.manifest.au_names if source.manifest else []
    rows = []
    for url in source.urls:
        try:
            for group in iter_groups(url):
                if len(rows) >= clips:
                    break
                try:
                    meta = metadata_of(group)
                    n = len(meta["frame_index"])
                    picks = np.linspace(0, n - 1, min(columns, n)).round().astype(int)
                    images = [simplejpeg.decode_jpeg(group[frame_member(int(i))], colorspace="RGB") for i in picks]
                except (BadSample, KeyError, ValueError):
                    continue
                active = []
                if "au.npy" in group and au_names:
                    occ = load_npy(group["au.npy"])["occ"]
                    active = [au_names[a] for a in np.flatnonzero((occ == 1).any(0))]
                caption = f"{group['__key__']}  id={meta['identity']}  AUs: {' '.join(active) or '-'}"
                rows.append((caption, images))
        except BadSample:
            continue
        if len(rows) >= clips:
            break
    if not rows:
        raise ValueError(f"{target}: no readable clip to show")
    h, w = rows[0][1][0].shape[:2]
    cell, caption_h = max(96, w), 14
    sheet = Image.new("RGB", (cell * columns, (cell + caption_h) * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (caption, images) in enumerate(rows):
        y = r * (cell + caption_h)
        draw.text((2, y + 1), caption, fill=(0, 0, 0))
        for c, image in enumerate(images):
            sheet.paste(Image.fromarray(image).resize((cell, cell * h // w)), (c * cell, y + caption_h))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def main(target: str, out: str | None, max_clips: int) -> int:
    stats = scan(target, max_clips)
    m: Manifest | None = stats["manifest"]
    print(f"{target}: {stats['shards']} shards" + (f", manifest '{m.name}' ({m.schema})" if m else ", no manifest"))
    if m:
        print(f"  manifest totals: {m.totals}; frame size {m.frame_size}, {m.frames_per_clip} frames per clip")
        if m.splits:
            print("  splits: " + ", ".join(f"{k}: {len(v['identities'])} identities in {len(v['shards'])} shards" for k, v in m.splits.items()))
    ids = stats["identities"]
    print(
        f"  scanned {stats['clips']} clips, {stats['frames']} frames, {len(stats['videos'])} videos, "
        f"{len(ids)} identities (most clips for one: {max(ids.values(), default=0)}; "
        f"unknown identity: {ids.get(None, 0)} clips)"
    )
    if stats["au"]:
        print("  AU      labelled  positive")
        for name, lab, pos in stats["au"]:
            print(f"  {name:<7} {lab:8.1%}  {pos:8.1%}")
    if stats["bad"]:
        print("  bad: " + ", ".join(f"{k}={v}" for k, v in stats["bad"].items()))
    sheet = Path(out) if out else Path(f"{Path(target).name or 'shards'}_contact.png")
    print(f"  contact sheet: {contact_sheet(target, sheet)}")
    if m and m.builder.get("name") == "auforge.shards.synthetic":
        au_sheet = sheet.with_name(sheet.stem + "_aus.png")
        print(f"  identities x AUs at apex, and one clip over time: {synthetic_sheet(m, au_sheet)}")
    return 0


def synthetic_sheet(manifest: Manifest, out: Path, people: int = 5) -> Path:
    """For a synthetic set: identities in rows and AUs at apex in columns (neutral first), then
    one clip over time, rendered from the manifest's builder settings."""
    from shards import face
    from shards.synthetic import Renderer

    settings = manifest.builder["settings"]
    size = settings["size"]
    renderer = Renderer(settings["seed"], settings["identities"], settings["frames"], size)
    shown = ["AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU15", "AU17", "AU20", "AU25", "AU26", "AU45"]
    intensities = np.zeros((1 + len(shown), len(face.AU_NAMES)), np.float32)
    for row, name in enumerate(shown, start=1):
        intensities[row, face.AU_INDEX[name]] = 5.0
    pose = np.tile(np.array([[0.15, 0.0, 0.0, 1.0, 0.0, 0.0]], np.float32), (len(intensities), 1))
    rows = []
    for person in range(min(people, settings["identities"])):
        ident, setting = renderer.person(person), renderer.setting(person, 0)
        img = face.render(ident, face.face_state(ident, intensities), pose, size, setting["light"], setting["background"])
        rows.append(np.concatenate(list(np.clip(img, 0, 255).astype(np.uint8)), axis=1))
    clip = renderer.frames_and_labels(0)[0]
    picks = np.linspace(0, len(clip) - 1, len(intensities)).round().astype(int)
    rows.append(np.concatenate(list(clip[picks]), axis=1))
    grid = np.concatenate(rows, axis=0)
    caption = 16
    sheet = Image.new("RGB", (grid.shape[1], grid.shape[0] + caption), (255, 255, 255))
    sheet.paste(Image.fromarray(grid), (0, caption))
    draw = ImageDraw.Draw(sheet)
    for col, name in enumerate(["neutral"] + shown):
        draw.text((col * size + 2, 2), name, fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
