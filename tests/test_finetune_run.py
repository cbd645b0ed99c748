"""`finetune.py` end to end on small synthetic shards: accelerate with two processes, every fold,
full fine-tuning and intensity, resumption, published backbones, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.backbone import load_backbone
from finetune.protocol import labelled_subset

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.synthetic.clips=36", "data.synthetic.identities=9", "data.synthetic.frames=4", "data.synthetic.size=32",
        "data.synthetic.shard_samples=12", "data.resize=32", "data.clip_frames=2", "data.num_workers=0",
        "batch_size=16", "epochs=1"]  # fmt: skip


def finetune(run_dir: Path, cache: Path, *extra: str, processes: int = 1, check: bool = True, multirun: bool = False):
    args = ["finetune.py", *(["-m"] if multirun else []), f"run_dir={run_dir}", *TINY, *extra]
    if processes > 1:
        launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes",
                    str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
        cmd = [*launcher, *args]
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "AUFORGE_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"finetune failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
def test_two_processes_detection_writes_metrics_table_and_plot(tmp_path, cache):
    proc = finetune(tmp_path / "run", cache, "backbone=resnet18", "label_fraction=0.5", processes=2)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    names = metrics["au_names"]
    assert len(names) == 18 and len(metrics["per_au"]["f1"]) == 18
    assert 0.0 <= metrics["mean"]["f1"] <= 1.0 and "f1_tuned" in metrics["per_au"]
    assert metrics["setting"]["label_fraction"] == 0.5
    assert all(name in proc.stdout for name in names) and "mean" in proc.stdout
    with Image.open(tmp_path / "run" / "per_au.png") as image:
        assert image.width > 200 and len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 4


@pytest.mark.slow
def test_all_folds_reports_each_and_the_mean(tmp_path, cache):
    finetune(tmp_path / "run", cache, "backbone=resnet18", "fold=all")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert sorted(metrics["per_fold"]) == ["1", "2", "3"]
    per_fold = [metrics["per_fold"][k]["mean"]["f1"] for k in ("1", "2", "3")]
    assert metrics["fold_mean"]["f1"] == pytest.approx(per_fold)
    assert metrics["mean"]["f1"] == pytest.approx(float(np.nanmean(per_fold)), abs=1e-6)


@pytest.mark.slow
def test_full_finetuning_of_a_published_backbone_for_intensity_and_resume(tmp_path, cache):
    """Publish-format folder in, layer-wise decayed fine-tuning, intensity metrics; a second run
    with more epochs resumes after the first's last epoch."""
    from pretrain.model import ClipEncoder
    from pretrain.publish import backbone_config, backbone_state, write_backbone

    encoder = ClipEncoder("resnet18", 16, "none", 32)
    folder = write_backbone(tmp_path / "pub", "tiny", backbone_state(encoder.backbone),
                            backbone_config(encoder, 32, (0.5,) * 3, (0.25,) * 3, {}))  # fmt: skip
    loaded = load_backbone(str(folder))
    assert loaded.input_size == 32 and loaded.mean == (0.5, 0.5, 0.5)
    for key, value in encoder.backbone.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    run_dir = tmp_path / "run"
    common = [f"backbone={folder}", "mode=finetune", "task=intensity"]
    finetune(run_dir, cache, *common)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"icc", "mae", "pearson"} <= set(metrics["per_au"])
    proc = finetune(run_dir, cache, *common, "epochs=2")
    assert "resumed after epoch 1" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_bad_settings_are_refused_clearly(tmp_path, cache):
    with pytest.raises(ValueError, match="no such folder"):
        load_backbone("not_an_architecture_or_folder")
    with pytest.raises(ValueError, match="label_fraction"):
        labelled_subset(np.arange(10), 0.0, seed=0)
    proc = finetune(tmp_path / "run", cache, "backbone=resnet18", "task=regression", check=False)
    assert proc.returncode != 0 and "task must be detection or intensity" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_run_directory_in_use_is_refused_naming_the_holder(tmp_path, cache):
    from shards.runlock import lock_run_dir, unlock_run_dir

    run_dir = tmp_path / "run"
    lock_run_dir(run_dir)  # this process holds it, as a running job would
    try:
        proc = finetune(run_dir, cache, "backbone=resnet18", check=False)
    finally:
        unlock_run_dir(run_dir)
    assert proc.returncode != 0 and f"is in use by another start (pid {os.getpid()} on" in proc.stderr
    assert not (run_dir / "fold1").exists() and not (run_dir / "hydra").exists()  # nothing written there


@pytest.mark.slow
def test_a_run_directory_of_another_configuration_is_refused(tmp_path, cache):
    """The 0.02 model's checkpoint must not be resumed and reported under label_fraction=1."""
    run_dir = tmp_path / "run"
    finetune(run_dir, cache, "backbone=resnet18", "label_fraction=0.5")
    proc = finetune(run_dir, cache, "backbone=resnet18", "label_fraction=1.0", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "resumed" not in out
    assert "holds a checkpoint of another configuration" in out and "label_fraction: 0.5 -> 1.0" in out
    assert json.loads((run_dir / "metrics.json").read_text())["setting"]["label_fraction"] == 0.5
    assert "label_fraction: 0.5" in (run_dir / "hydra" / "config.yaml").read_text()  # the run's own config, kept
    # what does not change the computation may differ
    proc = finetune(run_dir, cache, "backbone=resnet18", "label_fraction=0.5", "data.num_workers=1")
    assert "resumed after epoch 1" in proc.stdout + proc.stderr


def test_only_where_it_writes_loader_workers_and_epochs_may_change_on_resume():
    from slurm.config import compose

    from finetune.resume import config_view, conflicts
    from finetune.train import MAY_CHANGE

    base = config_view(compose("finetune", []), MAY_CHANGE)
    same = compose("finetune", ["run_dir=/elsewhere", "epochs=30", "data.num_workers=7"])
    assert config_view(same, MAY_CHANGE) == base
    other = config_view(compose("finetune", ["label_fraction=0.02", "data.synthetic.seed=3", "fold=all"]), MAY_CHANGE)
    assert conflicts(base, other) == ["data.synthetic.seed: 0 -> 3", "fold: '1' -> 'all'",
                                      "label_fraction: 1.0 -> 0.02"]  # fmt: skip


@pytest.mark.slow
def test_multirun_jobs_get_their_own_run_directories(tmp_path, cache):
    """`finetune.py -m label_fraction=0.5,1.0`: job N writes to RUN_DIR/N, and neither resumes the other."""
    sweep = tmp_path / "sweep"
    proc = finetune(sweep, cache, "backbone=resnet18", "label_fraction=0.5,1.0", multirun=True)
    assert "resumed" not in proc.stdout + proc.stderr
    for job, fraction in (("0", 0.5), ("1", 1.0)):
        assert json.loads((sweep / job / "metrics.json").read_text())["setting"]["label_fraction"] == fraction
        assert (sweep / job / "fold1" / "checkpoint" / "epoch.json").exists()
    assert not (sweep / "fold1").exists() and not (sweep / "metrics.json").exists()


@pytest.mark.slow
def test_bp4d_job_reads_image_root_and_refuses_folds_it_cannot_fill(tmp_path, cache):
    from test_finetune_data import make_bp4d

    seqs = {("F001", "T1"): (10, 6), ("M011", "T1"): (20, 6), ("F007", "T1"): (30, 6)}  # one subject per part
    root = make_bp4d(tmp_path / "BP4D", image_parts=("frames",), seqs=seqs)
    bp4d = ["backbone=resnet18", "data=bp4d", f"data.root={root}", "data.num_workers=0"]
    finetune(tmp_path / "run", cache, *bp4d, f"data.image_root={root / 'frames'}")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_frames"] == 6 and len(metrics["au_names"]) == 12  # fold 1 tests part 3: F007's 6 frames
    # one subject: a clear error before training, not an empty loader
    (tmp_path / "one").mkdir()
    write = [f"img{i}.png,p1,{i % 2}" for i in range(4)]
    for i in range(4):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "one" / f"img{i}.png")
    (tmp_path / "one" / "labels.csv").write_text("path,subject,AU1\n" + "\n".join(write) + "\n")
    proc = finetune(tmp_path / "run1", cache, "backbone=resnet18", "data=csv",
                    f"data.source={tmp_path / 'one' / 'labels.csv'}", "data.num_workers=0", check=False)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "num_samples" not in out
    assert "fold 1 would test on nobody" in out and "1 subject(s): p1" in out


@pytest.mark.slow
def test_label_fraction_sweep_plots_f1_against_the_fraction(tmp_path, cache):
    proc = finetune(tmp_path / "run", cache, "backbone=resnet18", "sweep_fractions=[0.1,1.0]")
    points = json.loads((tmp_path / "run" / "label_fraction.json").read_text())
    assert set(points) == {"0.1", "1.0"}
    for fraction in ("0.1", "1"):
        assert json.loads((tmp_path / "run" / f"fraction_{fraction}" / "metrics.json").read_text())[
            "setting"]["label_fraction"] == float(fraction)  # fmt: skip
    assert (tmp_path / "run" / "label_fraction.png").stat().st_size > 1000
    assert "label fraction -> mean f1" in proc.stdout


def test_pseudo_labels_only_where_confident():
    from finetune.train import detection_loss, pseudo_labels

    logits = torch.logit(torch.tensor([[0.95, 0.5, 0.02], [0.89, 0.11, 0.91]]))
    assert pseudo_labels(logits, 0.9).tolist() == [[1, -1, 0], [-1, -1, 1]]
    # unknown (-1) entries carry no loss: only the confident ones count
    labels = pseudo_labels(logits, 0.9)
    loss = detection_loss(logits, labels, torch.ones(3))
    manual = torch.nn.functional.binary_cross_entropy_with_logits(logits[labels >= 0], labels[labels >= 0].float())
    assert loss == pytest.approx(float(manual))


def test_identity_adversary_reverses_the_gradient_into_the_features():
    from finetune.heads import IdentityAdversary

    torch.manual_seed(0)
    adversary = IdentityAdversary(8, identities=4, scale=0.5)
    features = torch.randn(6, 8, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    torch.nn.functional.cross_entropy(adversary(features), target).backward()
    reversed_grad = features.grad.clone()
    features.grad = None
    torch.nn.functional.cross_entropy(adversary.classifier(features), target).backward()
    assert torch.allclose(reversed_grad, -0.5 * features.grad)
    assert all(p.grad is not None for p in adversary.classifier.parameters())  # the head itself still learns


@pytest.mark.slow
def test_temporal_head_on_clips_takes_the_loss_at_labelled_frames_only(tmp_path, cache):
    from finetune.labelled import ClipDataset, Frames, clip_windows

    n = 7
    frames = Frames("t", ["AU1"], np.array(["a"] * n), np.ones((n, 1), np.int8), np.ones((n, 1), np.float32),
                    np.array(["s1"] * 4 + ["s2"] * 3), np.array([3, 1, 2, 0, 5, 4, 6]),
                    images=np.zeros((n, 8, 8, 3), np.uint8))  # fmt: skip
    windows = clip_windows(frames, np.arange(n), 3)
    assert [w.tolist() for w in windows] == [[3, 1, 2], [0], [5, 4, 6]]  # in frame order, every frame once
    labelled = np.zeros(n, bool)
    labelled[[1, 4]] = True
    item = ClipDataset(frames, windows, labelled, {"a": 0}, 8, 3)[0]
    assert item["occ"][:, 0].tolist() == [-1, 1, -1] and item["valid"].all()
    short = ClipDataset(frames, windows, labelled, {"a": 0}, 8, 3)[1]
    assert short["valid"].tolist() == [True, False, False] and short["occ"][:, 0].tolist() == [-1, -1, -1]
    # end to end: clips of 2 frames from the synthetic shards
    finetune(tmp_path / "run", cache, "backbone=resnet18", "head=temporal", "clip_length=2", "label_fraction=0.5")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_frames"] > 0 and 0 <= metrics["mean"]["f1"] <= 1


