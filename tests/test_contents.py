"""What a backbone's features hold (pretrain/contents.py): the ridge probe on known problems, the
renderer's pose and light drawn again for exactly the frames a probe read, and the command's
table on a small synthetic set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finetune.probe import ridge_probe
from pretrain.config import EvalConfig
from pretrain.contents import Frozen, contents, nuisance_labels
from pretrain.evaluate import extract
from shards.synthetic import Renderer, clip_number, write_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ridge_probe_recovers_a_linear_target_and_not_noise():
    g = np.random.default_rng(0)
    x, w = g.normal(size=(600, 20)), g.normal(size=(20, 2))
    y = x @ w + 0.05 * g.normal(size=(600, 2))
    fit = ridge_probe(x[:400], y[:400], x[400:], y[400:], groups=np.arange(400) % 10)
    assert fit["r2"].shape == (2,) and fit["mean_r2"] > 0.95
    noise = ridge_probe(x[:400], g.normal(size=400), x[400:], g.normal(size=200), groups=np.arange(400) % 10)
    assert noise["mean_r2"] < 0.1
    assert noise["alpha"] > fit["alpha"]  # noise is fitted best by shrinking hardest


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("contents")
    write_synthetic(folder, clips=48, frames=8, size=48, identities=8, seed=2, shard_samples=12, heldout=0.25)
    return str(folder)


def test_pose_and_light_are_the_renderers_for_each_frame_read(small_set):
    torch.manual_seed(0)
    import timm

    encoder = Frozen(timm.create_model("resnet10t", num_classes=0))
    read = extract(encoder, small_set, "heldout", None, frames=4, size=48, mean=(0.5,) * 3, std=(0.5,) * 3,
                   device="cpu", stride=2)  # fmt: skip
    truth = nuisance_labels(small_set, read["key"], read["frame_index"])
    renderer = Renderer(2, 8, 8, 48)
    assert len(truth["pose"]) == len(read["features"]) == len(read["key"])
    for row in (0, 1, 5, len(read["key"]) - 1):
        clip = clip_number(read["key"][row])
        drawn = renderer.nuisance(clip)
        offset = read["frame_index"][row] - drawn["start"]
        assert 0 <= offset < 8  # the frame is one of the clip's own
        np.testing.assert_array_equal(truth["pose"][row], drawn["pose"][offset, :3])
        np.testing.assert_array_equal(truth["light"][row], drawn["light"])
    # frames of one clip share the light and differ in pose (the head drifts)
    one = read["key"] == read["key"][0]
    assert np.ptp(truth["light"][one], 0).max() == 0 and np.ptp(truth["pose"][one], 0).max() > 0


def test_contents_table_for_a_random_backbone(small_set):
    row = contents("resnet10t", small_set, EvalConfig(frames=4, label_seeds=[0, 1]), size=48)
    assert len(row["au_f1_draws"]) == 2 and 0 <= row["au_f1_sparse"] <= 1 and 0 <= row["au_f1_all"] <= 1
    assert all(np.isfinite(row[k]) and row[k] <= 1 for k in ("pose_r2", "yaw_r2", "light_r2"))
    assert 0 <= row["identity_acc"] <= 1 and 0 < row["identity_chance"] < 1
    assert 0 <= row["video_acc"] <= 1 and 0 < row["video_chance"] <= row["identity_chance"]


def test_a_set_without_a_renderer_is_refused(tmp_path, small_set):
    import json
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_set, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["builder"] = {"name": "auforge.shards.build", "settings": {}}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="copy: pose and light probes need a synthetic set"):
        nuisance_labels(str(copy), np.array(["x-1"]), np.array([0]))
