"""`python -m pretrain` end to end, with the real tools: DeepSpeed on gloo, torchrun with two
ranks, runs killed with SIGKILL and resumed, a corrupted checkpoint, a refused config change."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from safetensors.torch import load_file

from pretrain.config import register

ROOT = Path(__file__).resolve().parents[1]
# A tiny run: ResNet-18 at 32 px, 4-frame clips, batches of 4, on a small synthetic set.
TINY = [
    "data.synthetic.clips=48", "data.synthetic.identities=8", "data.synthetic.frames=6", "data.synthetic.size=32",
    "data.synthetic.shard_samples=12", "data.frames=4", "data.stride=1", "data.resize=32", "data.num_workers=2",
    "train.batch_size=4", "train.ckpt_every=3", "train.keep=2", "optim.warmup_steps=2", "eval.enabled=false",
    # every objective resumed exactly: the geometry's running whitening, and the memory bank of the
    # cross-identity ones (small enough that its FIFO wraps within the run)
    "objective=temporal_geometry", "+objectives.cross_identity.weight=0.5", "+objectives.cross_identity_recon.weight=1.0",
    "mining.capacity=128",
    # and the pixels-only ones: the flow's whitening, the inpainting's random patches, the relation's maps
    "+objectives.flow.weight=0.5", "+objectives.roi_inpaint.weight=0.5", "+objectives.au_relation.weight=0.5",
]  # fmt: skip


def env(cache: Path) -> dict:
    return {**os.environ, "AUFORGE_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def command(run_dir: Path, steps: int, ranks: int, extra=(), launcher: str = "torchrun") -> list[str]:
    args = [f"train.run_dir={run_dir}", f"train.steps={steps}", *TINY, *extra]
    if ranks == 1:
        return [sys.executable, "-m", "pretrain", *args]
    if launcher == "deepspeed":
        return [str(Path(sys.executable).parent / "deepspeed"), "--num_accelerators", str(ranks), "--master_port",
                str(_port()), "--module", "pretrain", *args]  # fmt: skip
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
            str(_port()), "-m", "pretrain", *args]  # fmt: skip


def _port() -> int:
    from pretrain.distributed import free_port

    return free_port()


def run(run_dir: Path, cache: Path, steps: int, ranks: int = 1, extra=(), check: bool = True, launcher="torchrun"):
    proc = subprocess.run(command(run_dir, steps, ranks, extra, launcher), env=env(cache), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"pretrain failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def losses(run_dir: Path) -> dict[int, dict]:
    """Step -> the last logged training record of that step (a resumed run logs a step again)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record
    return out


def kill_after(run_dir: Path, cache: Path, step: int, steps: int, ranks: int) -> int:
    """Start a run and SIGKILL it (all its processes) once it has logged `step`; returns the
    last step it logged."""
    proc = subprocess.Popen(command(run_dir, steps, ranks), env=env(cache), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and max(losses(run_dir), default=0) >= step:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return max(losses(run_dir), default=0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


_REFERENCES: dict[int, dict] = {}


def reference(tmp_path_factory, cache: Path, ranks: int) -> dict:
    """The losses of an uninterrupted 7-step run (run once per rank count for the module)."""
    if ranks not in _REFERENCES:
        whole = tmp_path_factory.mktemp(f"whole{ranks}")
        run(whole, cache, steps=7, ranks=ranks)
        _REFERENCES[ranks] = losses(whole)
    return _REFERENCES[ranks]


def assert_same_losses(a: dict, b: dict, steps) -> None:
    for step in steps:
        for key in ("loss", "temporal_margin", "clip_contrastive", "landmark_geometry", "cross_identity",
                    "cross_identity_recon", "flow", "roi_inpaint", "au_relation"):  # fmt: skip
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-6), (step, key, a[step], b[step])


def test_config_is_strict_and_complete():
    register()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose(config_name="pretrain")
        assert cfg.model.arch == "resnet18" and cfg.deepspeed.stage == 0 and cfg.train.steps == 200
        # the embedded default: pixels only, flow over 4 frames 5 stored frames apart, its whitening quick
        assert set(cfg.objectives) == {"flow"} and cfg.objectives.flow.momentum == 0.05 and cfg.data.stride == 5
        both = compose(config_name="pretrain", overrides=["objective=temporal_geometry"])
        assert set(both.objectives) == {"temporal_margin", "clip_contrastive", "landmark_geometry"}
        shards = compose(config_name="pretrain", overrides=["data=shards", "data.source=S"])
        # shards without landmarks default to the best pixels-only objective: flow with the card's terms
        assert set(shards.objectives) == {"flow", "temporal_margin", "clip_contrastive", "cross_identity"}
        assert shards.objectives.clip_contrastive.weight == 0.1 and (shards.data.frames, shards.data.stride) == (4, 5)
        cross = compose(config_name="pretrain", overrides=["objective=cross_identity"])
        assert set(cross.objectives) == {"landmark_geometry", "cross_identity"}
        assert cross.mining.capacity == 16384 and cross.mining.k == 8
        adversarial = compose(config_name="pretrain", overrides=["objective=identity_adversarial"])
        assert set(adversarial.objectives) == {"landmark_geometry", "identity_adversarial"}
        with pytest.raises(ConfigCompositionException):
            compose(config_name="pretrain", overrides=["train.stepz=3"])  # misspelt: refused
        for name in ("resnet50_112", "vit_s_112"):
            preset = compose(config_name="pretrain", overrides=[f"experiment={name}"])
            assert preset.data.frames == 16 and preset.data.resize == 112 and preset.optim.lr_batch == 256
            assert preset.data.stride == 1  # 16 frames, as `shards build` stores them by default (not _self_'s 5)


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train.batch_size=0: must be an integer >= 1"),
    ("data.frames=0", "data.frames=0: must be an integer >= 2"),
    ("model.arch=resnet9000", "model.arch='resnet9000': not a timm architecture"),
    ("+model.args.checkpoint_path=x.pth", "model.args: checkpoint_path not allowed"),
    ("deepspeed.stage=3", "deepspeed.stage=3"),
])  # fmt: skip
def test_bad_values_are_refused_with_the_config_naming_the_key(override, message):
    from pretrain.config import ConfigError, check_values

    register()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        check_values(compose(config_name="pretrain"))  # the defaults pass
        with pytest.raises(ConfigError) as refused:
            check_values(compose(config_name="pretrain", overrides=[override]))
    assert message in str(refused.value)


@pytest.mark.slow
def test_bad_value_stops_the_command_in_one_line_before_deepspeed(tmp_path, cache):
    proc = run(tmp_path / "run", cache, steps=3, extra=["train.batch_size=0"], check=False)
    assert proc.returncode == 2 and "python -m pretrain: train.batch_size=0: must be an integer >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr and "deepspeed" not in proc.stderr.lower()
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_second_start_in_a_busy_run_directory_is_refused_and_writes_nothing_there(tmp_path, cache):
    """Two starts in one directory would train side by side into the same checkpoints: the
    second is refused naming the holder, before it renders, trains or saves its config there."""
    run_dir = tmp_path / "run"
    first = subprocess.Popen(command(run_dir, 200, 1), env=env(cache), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while not (run_dir / "metrics.jsonl").exists():
            assert first.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.1)
        saved = (run_dir / "hydra" / "config.yaml").read_text()
        second = run(run_dir, cache, steps=200, extra=["optim.lr=0.01"], check=False)
        assert second.returncode != 0 and f"is in use by another start (pid {first.pid} on" in second.stderr
        assert (run_dir / "hydra" / "config.yaml").read_text() == saved and "lr: 0.002" in saved
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


@pytest.mark.slow
def test_a_fatal_error_ends_the_run_and_its_workers(tmp_path, cache):
    """A run that fails after its data workers started (here every clip's frames are corrupt, so
    the stream gives up) exits with an error status by itself: the workers block the stop signals,
    and the main process used to wait on them forever, so `timeout` (SIGTERM) could not end it."""
    from shards.synthetic import write_synthetic
    from stream_helpers import read_members, write_members

    source = tmp_path / "corrupt"
    manifest = write_synthetic(source, clips=12, frames=6, size=32, identities=4, seed=5, shard_samples=6, heldout=0.0)
    for shard in manifest.shards:
        path = source / shard.path
        write_members(path, [(n, b"not a jpeg" if n.endswith(".jpg") else b) for n, b in read_members(path)])
    extra = ["data=shards", f"data.source={source}", "data.train_split=null", "data.eval_split=null"]
    started = time.time()
    proc = subprocess.run(["timeout", "--signal=TERM", "120", *command(tmp_path / "run", 5, 1, extra)], env=env(cache),
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode not in (0, 124, 137), (proc.returncode, proc.stderr[-3000:])
    assert "bad samples in a row" in proc.stderr and time.time() - started < 100


@pytest.mark.slow
def test_when_one_rank_fails_its_peers_end_too(tmp_path, cache):
    """Two ranks; rank 1 fails (one of its data workers is killed, so its stream raises). Rank 0,
    blocked in a collective that can no longer complete, must not wait for a launcher's SIGKILL
    (or, under SLURM, the process group's timeout): it sees rank 1's failure marker and ends.
    The ranks start as srun starts them, without torchrun's agent, which would otherwise race the
    marker by sending rank 0 SIGTERM as soon as rank 1 exits."""
    import psutil

    from pretrain.distributed import free_port

    run_dir = tmp_path / "run"
    world = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    ranks = [subprocess.Popen(command(run_dir, 200, 1), env={**env(cache), **world, "RANK": str(r), "LOCAL_RANK": str(r)},
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) for r in (0, 1)]  # fmt: skip
    try:
        deadline = time.time() + 300
        while max(losses(run_dir), default=0) < 2 if (run_dir / "metrics.jsonl").exists() else True:
            assert all(p.poll() is None for p in ranks) and time.time() < deadline, "a rank ended before the break"
            time.sleep(0.1)
        psutil.Process(ranks[1].pid).children()[0].kill()  # a data worker of rank 1
        broken = time.time()
        out = ranks[0].communicate(timeout=120)[0]
        ended = time.time() - broken
        ranks[1].communicate(timeout=60)
    finally:
        for p in ranks:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert ranks[1].returncode != 0 and ranks[0].returncode != 0
    assert "rank1 failed (RuntimeError: DataLoader worker" in out, out[-3000:]
    assert ended < 20, f"rank 0 took {ended:.0f}s to end"


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_killed_run_resumes_to_the_same_losses(tmp_path, tmp_path_factory, cache, ranks):
    """A run killed after step 4 resumes from its step-3 checkpoint and logs, step by step, the
    losses of an uninterrupted run; the backbone it publishes has timm's keys."""
    broken = tmp_path / "broken"
    whole = reference(tmp_path_factory, cache, ranks)
    assert sorted(whole) == list(range(1, 8))
    last = kill_after(broken, cache, step=4, steps=7, ranks=ranks)
    assert 4 <= last < 7, "the run was not killed mid-way"
    assert (broken / "checkpoints" / "step_000003" / "COMPLETE").exists()
    run(broken, cache, steps=7, ranks=ranks)
    assert_same_losses(whole, losses(broken), range(1, 8))
    # the published backbone: exactly the keys plain timm has, and the run's weights
    published = broken / "published" / "auforge-pretrain"
    state = load_file(str(published / "model.safetensors"))
    config = json.loads((published / "config.json").read_text())
    assert set(state) == set(timm.create_model(config["architecture"], num_classes=0).state_dict())
    assert config["auforge"]["steps"] == 7 and config["auforge"]["data"]["manifest_digest"]
    assert config["auforge"]["identity_source"] == "identity"  # the synthetic shards name their people
    assert (broken / "checkpoints" / "step_000006" / "bank.safetensors").exists()


@pytest.mark.slow
def test_stop_signal_to_one_rank_saves_and_resumes_to_the_same_losses(tmp_path, tmp_path_factory, cache):
    """SLURM's warning signal (SIGUSR1), here delivered to one of two ranks only: both stop at the
    same step boundary, save a complete checkpoint there (not on the ckpt_every schedule), and
    exit with STOPPED_EXIT; the next start resumes there to the losses of an uninterrupted run."""
    import psutil

    from pretrain.train import STOPPED_EXIT

    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(command(stopped, 7, 2, ["train.ckpt_every=100"]), env=env(cache), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.time() + 300
    while not (stopped / "metrics.jsonl").exists() or max(losses(stopped), default=0) < 2:
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be stopped"
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children()  # the two ranks (their data workers are theirs)
    assert len(workers) == 2
    workers[-1].send_signal(signal.SIGUSR1)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0 and "stop requested" in out and f"exitcode  : {STOPPED_EXIT}" in out, out[-3000:]
    tags = json.loads((stopped / "checkpoints" / "complete.json").read_text())
    assert len(tags) == 1 and tags[0] != "step_000007", tags
    saved = int(tags[0].split("_")[1])
    assert {p.name for p in (stopped / "checkpoints" / tags[0]).glob("rank_*.json")} == {"rank_00000.json", "rank_00001.json"}
    assert max(losses(stopped)) == saved  # both ranks stopped right after the step they saved
    run(stopped, cache, steps=7, ranks=2, extra=["train.ckpt_every=100"])
    assert_same_losses(reference(tmp_path_factory, cache, ranks=2), losses(stopped), range(1, 8))


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, cache):
    run_dir = tmp_path / "run"
    run(run_dir, cache, steps=6)  # checkpoints at 3 and 6
    reference = losses(run_dir)
    model_file = next((run_dir / "checkpoints" / "step_000006").glob("mp_rank_*_model_states.pt"))
    model_file.write_bytes(model_file.read_bytes()[:1000])  # cut short, as a dying disk would
    proc = run(run_dir, cache, steps=6)
    log = proc.stdout + proc.stderr
    assert "step_000006 is unreadable" in log and "resumed from" in log and "step_000003" in log
    redone = losses(run_dir)
    assert_same_losses(reference, redone, range(4, 7))


@pytest.mark.slow
def test_changed_config_is_refused_with_what_changed(tmp_path, cache):
    run_dir = tmp_path / "run"
    run(run_dir, cache, steps=3)
    proc = run(run_dir, cache, steps=6, extra=["optim.lr=0.01"], check=False)
    assert proc.returncode != 0
    assert "optim.lr: 0.002 -> 0.01" in proc.stdout + proc.stderr
    assert "lr: 0.002" in (run_dir / "hydra" / "config.yaml").read_text()  # the refused start saved nothing
    # the worker count decides which clips each logical stream reads: refused by the config check
    # (it used to pass it and fail later on the stream's fingerprint)
    proc = run(run_dir, cache, steps=6, extra=["data.num_workers=1"], check=False)
    assert proc.returncode != 0 and "stream.workers: 2 -> 1" in proc.stdout + proc.stderr, proc.stderr[-2000:]
    # what may change does not block resumption: more steps continue the run
    run(run_dir, cache, steps=6)
    assert sorted(losses(run_dir)) == list(range(1, 7))


@pytest.mark.slow
def test_probes_during_and_after_training_and_logs(tmp_path, cache):
    """Evaluation every 2 steps and at the end: AU linear and kNN probes on held-out identities,
    identity leakage with chance, the random-init baseline; TensorBoard events and the summary."""
    run_dir = tmp_path / "run"
    proc = run(run_dir, cache, steps=4, extra=["eval.enabled=true", "train.eval_every=2", "eval.probe_clips=16", "eval.frames=4"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in records if "probe/linear_f1" in r]
    assert [r["step"] for r in probes] == [2, 4]
    final = probes[-1]
    for key in ("probe/linear_f1", "probe/knn_f1", "random_init/linear_f1", "random_init/knn_f1"):
        assert 0.0 <= final[key] <= 1.0
    assert 0.0 < final["probe/identity_chance"] < 1.0 and 0.0 <= final["probe/identity_acc"] <= 1.0
    train_records = [r for r in records if "loss" in r]
    assert all({"lr", "throughput/clips_per_s", "time/data_share", "time/backward"} <= set(r) for r in train_records)
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert "AU linear probe, 2% labels" in proc.stdout and "identity chance level" in proc.stdout
    assert re.search(r"this start trained 4 steps in \d+s \([\d.]+ steps/s\), then probed and published in \d+s", proc.stdout)
    assert all(f"probe/linear_f1_seed{s}" in final for s in range(5))  # one sparse-label draw each
    assert (run_dir / "hydra" / "config.yaml").exists()  # the resolved config is saved with the run


@pytest.mark.slow
def test_deepspeed_launcher_runs_the_same_entry(tmp_path, cache):
    """The deepspeed launcher (it appends --local_rank) runs two ranks of the same config to the
    same losses as torchrun."""
    with_torchrun, with_deepspeed = tmp_path / "torchrun", tmp_path / "deepspeed"
    run(with_torchrun, cache, steps=2, ranks=2)
    run(with_deepspeed, cache, steps=2, ranks=2, launcher="deepspeed")
    assert_same_losses(losses(with_torchrun), losses(with_deepspeed), range(1, 3))


@pytest.fixture(scope="module")
def built_videos(tmp_path_factory) -> Path:
    """`python -m shards build --faces none` over real MP4s of three people (face crops, centre-cropped):
    shards with neither landmarks nor AU labels, the poorest data a user can bring."""
    from stream_helpers import write_mp4

    root = tmp_path_factory.mktemp("videos")
    for identity, video in (("id1", "a"), ("id1", "b"), ("id2", "c"), ("id3", "d")):
        write_mp4(root / "videos" / identity / video / "00001.mp4", 30)
    out = root / "B"
    proc = subprocess.run([sys.executable, "-m", "shards", "build", str(root / "videos"), "--out", str(out),
                           "--faces", "none"], cwd=ROOT, capture_output=True, text=True, env=env(root))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_built_shards_refuse_the_landmark_objective_at_configuration(tmp_path, cache, built_videos):
    proc = subprocess.run([sys.executable, "-m", "pretrain", "data=shards", f"data.source={built_videos}",
                           "objective=geometry", f"train.run_dir={tmp_path / 'run'}"], env=env(cache), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "objective landmark_geometry needs landmarks" in proc.stderr and "temporal_margin" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_built_shards_refuse_a_window_longer_than_their_clips_in_one_line(tmp_path, cache, built_videos):
    proc = subprocess.run([sys.executable, "-m", "pretrain", "data=shards", f"data.source={built_videos}",
                           "objective=temporal", "data.frames=16", "data.stride=2", f"train.run_dir={tmp_path / 'run'}"],
                          env=env(cache), cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "clips hold 16 frames, but frames=16 at stride=2 needs 31" in proc.stderr


@pytest.mark.slow
def test_built_shards_pretrain_with_the_shards_defaults(tmp_path, cache, built_videos):
    """`data=shards` as configured serves what `shards build` writes: its default objective, the
    pixels-only flow with the temporal and cross-identity terms, trains on it with no bad sample,
    the AU probes are skipped (no labels) and the backbone is published."""
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "pretrain", "data=shards", f"data.source={built_videos}",
                           "data.resize=32", "data.num_workers=1", "train.batch_size=2",
                           "train.steps=3", f"train.run_dir={run_dir}"], env=env(cache), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "carries no AU labels: the AU probes are skipped" in log
    assert "stream skipped bad data" not in log and sorted(losses(run_dir)) == [1, 2, 3]
    assert all(set(record) >= {"flow", "flow_epe", "cross_identity"} for record in losses(run_dir).values())
    assert (run_dir / "published" / "auforge-pretrain" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("arch_args", [
    # Swin-T where its windows fit (112 px), with the objectives that read feature maps
    ["model=swin_tiny", "data.resize=112", "objective=au_relation", "+objectives.roi_inpaint.weight=1.0"],
    # ViT-Ti/8 (timm's ViT-Ti/16 built with model.args.patch_size=8) with masked image modelling
    ["model=vit_tiny_p8", "data.resize=32", "objective=masked_image"],
])  # fmt: skip
def test_swin_and_vit_runs_complete_and_publish(tmp_path, cache, arch_args):
    run_dir = tmp_path / "run"
    small = [a for a in TINY[:14] if not a.startswith("data.resize")]  # the tiny data and schedule, not its objectives
    proc = subprocess.run([sys.executable, "-m", "pretrain", f"train.run_dir={run_dir}", "train.steps=2",
                           *small, "train.batch_size=2", *arch_args], env=env(cache), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(losses(run_dir)) == [1, 2]
    folder = run_dir / "published" / "auforge-pretrain"
    config = json.loads((folder / "config.json").read_text())
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert set(load_file(folder / "model.safetensors")) == set(model.state_dict())
    assert config["architecture"] == model.default_cfg["architecture"]
    if "model=vit_tiny_p8" in arch_args:  # the config's timm arguments travel with the published weights
        assert config["model_args"]["patch_size"] == 8 and tuple(model.patch_embed.patch_size) == (8, 8)


def test_the_summary_prints_each_draws_gain_over_random_init():
    from types import SimpleNamespace

    from pretrain.train import summary

    cfg = SimpleNamespace(model=SimpleNamespace(arch="resnet18"),
                          eval=SimpleNamespace(label_fraction=0.02, label_seeds=[0, 1]))  # fmt: skip
    r = {"probe/identity_chance": 0.07, "probe/linear_f1_seed0": 0.30, "probe/linear_f1_seed1": 0.25,
         "random_init/linear_f1_seed0": 0.23, "random_init/linear_f1_seed1": 0.26}  # fmt: skip
    text = summary(SimpleNamespace(cfg=cfg, step=10, samples=160), r, Path("out"), {"steps": 10, "train_s": 5, "probes_s": 1})
    assert "gain per draw over random init:    +0.070 -0.010" in text
