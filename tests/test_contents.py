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


def test_probes_encode_only_the_labelled_frames_and_match_reading_them_all(small_set):
    """The run's probes encode the training frames some draw labels, one by one; each frame's
    features and labels are what reading every frame in batches gives, and so are the draws' F1."""
    import timm
    from omegaconf import OmegaConf

    from pretrain.config import PretrainConfig
    from pretrain.evaluate import label_draws, probe_encoder, sparse_label_draws
    from pretrain.model import ClipEncoder

    torch.manual_seed(0)
    read = dict(frames=4, size=48, mean=(0.5,) * 3, std=(0.5,) * 3, device="cpu", stride=2)
    everything = extract(Frozen(timm.create_model("resnet10t", num_classes=0)), small_set, "train", None, **read)
    rows = np.array([0, 3, 4, 17, len(everything["occ"]) - 1])
    torch.manual_seed(0)
    some = extract(Frozen(timm.create_model("resnet10t", num_classes=0)), small_set, "train", None, rows=rows, **read)
    for name in ("occ", "identity", "clip", "key", "frame_index"):
        np.testing.assert_array_equal(some[name], everything[name][rows])
    np.testing.assert_allclose(some["features"], everything["features"][rows], rtol=1e-4, atol=1e-5)
    labels = extract(None, small_set, "train", None, **read)
    assert "features" not in labels and len(labels["occ"]) == len(everything["occ"])

    cfg = OmegaConf.structured(PretrainConfig)
    cfg.eval.frames, cfg.eval.label_fraction, cfg.eval.label_seeds, cfg.eval.knn_k = 4, 0.2, [0, 1], 5
    torch.manual_seed(0)
    encoder = ClipEncoder("resnet10t", 16, "conv", 48)
    probes = probe_encoder(encoder, cfg, small_set, 48, (0.5,) * 3, (0.5,) * 3, "cpu")
    full = extract(encoder, small_set, "train", None, **read)  # stride 2: the probes spread 4 frames over 8
    test = extract(encoder, small_set, "heldout", None, **read)
    expected = sparse_label_draws(full, test, label_draws(len(full["occ"]), cfg.eval), knn_k=5)
    # features one frame at a time differ from batched ones in the last float bits, which can move a
    # frame across a threshold of a probe fitted on 29 labelled frames: close, not bit-equal
    for seed in (0, 1):
        assert probes[f"probe/linear_f1_seed{seed}"] == pytest.approx(expected[seed]["linear"], abs=0.01)
    assert probes["probe/knn_f1"] == pytest.approx(np.mean([e["knn"] for e in expected.values()]), abs=0.01)
