"""`python -m slurm` on a real SLURM cluster: slurmctld and two slurmd (nodes n1, n2) on this
machine, started by slurm/local_cluster.sh, with real submitit, run through the CLI as users run
it. Two-node pretraining (one CPU rank per node, gloo), a job requeued by `scontrol requeue` and
then preempted by the pre-end signal that resumes to the same final loss, a shard set written by
an array job in two parts and merged, and a fine-tuning sweep with its summary table.

The cluster needs root (it installs slurm-wlm and munge and starts their daemons): outside CI a
non-root run skips those tests, saying so; under CI=true they must run. CI starts the cluster
before pytest (.ci/run); a root run outside CI starts it here and stops it afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from submitit.helpers import DelayedSubmission

from slurm import queue
from slurm.env import distributed_env, master_port
from slurm.task import ChildTask, RequeueLimitReached
from test_finetune_run import TINY as FINETUNE_TINY
from test_pretrain_run import TINY as PRETRAIN_TINY
from test_pretrain_run import losses
from test_shards_build import write_mp4

pytestmark = pytest.mark.slow  # every test here submits to the local SLURM cluster

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "slurm" / "local_cluster.sh"
STEPS = 14  # room for two interruptions of a run at about 1.4 steps/s on two cores


@pytest.fixture(scope="session")
def cluster():
    """The local two-node cluster, up (started here if CI did not start it)."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run as root: the SLURM tests need slurm/local_cluster.sh to start a real cluster")
        pytest.skip("needs root: slurm/local_cluster.sh installs slurm-wlm and munge and starts their daemons")
    started = subprocess.run(["bash", str(CLUSTER), "status"], capture_output=True).returncode != 0
    if started:
        proc = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"the local cluster did not start:\n{proc.stdout}\n{proc.stderr}"
    yield
    if started:
        subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    # sbatch passes the submitter's environment to the job: the jobs share this cache.
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "AUFORGE_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def slurm_cli(*args, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "slurm", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    proc.output = proc.stdout + proc.stderr
    return proc


def submitted_id(proc) -> str:
    assert proc.returncode == 0, proc.output[-5000:]
    return re.search(r"submitted .*?job (?:array )?(\d+)", proc.stdout).group(1)


def wait_ended(job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while (info := queue.show_job(job_id)).get("JobState") not in queue.ENDED:
        assert time.monotonic() < deadline, f"job {job_id} still {info.get('JobState')} after {timeout:.0f}s"
        time.sleep(0.5)
    return info


def logged_steps(run_dir: Path) -> list[int]:
    """Every training step rank 0 logged, in order, repeats included."""
    if not (run_dir / "metrics.jsonl").exists():
        return []
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if "loss" in r]


def wait_for_step(run_dir: Path, job_id: str, step: int, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while max(logged_steps(run_dir), default=0) < step:
        state = queue.slurm_state(job_id)
        assert state not in queue.ENDED and time.monotonic() < deadline, f"job {job_id} {state} before step {step}"
        time.sleep(0.1)
    return max(logged_steps(run_dir))


def requeued_and_released(job_id: str, timeout: float = 120) -> None:
    """Wait for the job to be back in the queue, then let it start soon: SLURM holds a requeued
    job for about two minutes (reason BeginTime) before it may start again. Not at once: the nodes
    revoked the job's credential when they killed the last attempt, with one-second resolution, so
    a launch within that same second is refused ("Job credential revoked") and the job fails."""
    deadline = time.monotonic() + timeout
    while queue.slurm_state(job_id) != "PENDING":
        assert time.monotonic() < deadline, f"job {job_id} was not requeued: {queue.show_job(job_id)}"
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "starttime=now+2"], check=True, timeout=30)


# -- without a cluster ---------------------------------------------------------------------------


def test_slurm_variables_become_torch_distributed_env(monkeypatch):
    for key, value in dict(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="123456", SLURM_NTASKS="4", SLURM_JOB_NUM_NODES="2",
                           SLURM_NODEID="1", SLURM_PROCID="3", SLURM_LOCALID="1", SLURM_JOB_NODELIST="gpu[07-08]").items():  # fmt: skip
        monkeypatch.setenv(key, value)
    env = distributed_env()
    assert env == {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1",
                   "NODE_RANK": "1", "MASTER_ADDR": "gpu07", "MASTER_PORT": str(master_port("123456"))}  # fmt: skip
    assert 20000 <= master_port("123456") < 30000 and master_port("123456_3") == master_port("123456")
    monkeypatch.setenv("SLURM_NTASKS", "3")
    with pytest.raises(ValueError, match="3 tasks on 2 nodes"):
        distributed_env()


def test_requeues_are_bounded_and_carry_no_resume_point(monkeypatch):
    task = ChildTask(["true"], max_requeues=2, result="done")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    again = task.checkpoint()
    assert isinstance(again, DelayedSubmission) and isinstance(again.function, ChildTask)
    fresh = again.function
    assert fresh is not task and fresh.requeues == 2 and fresh.spec == task.spec
    assert fresh.__getstate__() == {"spec": task.spec, "requeues": 2}  # the pickle: the command, not a position
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    with pytest.raises(RequeueLimitReached, match="already requeued 2 times"):
        task.checkpoint()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")  # requeued past the limit by someone else
    with pytest.raises(RequeueLimitReached, match="more than its limit"):
        task()
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    assert task() == "done"


def test_bad_input_is_refused_before_anything_is_queued(tmp_path, env):
    cases = [
        (["pretrain", "--", "train.stepz=3"], "train.stepz"),
        (["pretrain", "--local", "--nodes", "2"], "--local runs on this one machine"),
        (["finetune", "--folds", "1,4"], "fold '4' is not one of 1, 2, 3"),
        (["finetune", "--", "fold=2"], "use --backbones, --folds and --label-fractions"),
        (["shards", "synth", "--", "--out", tmp_path, "--part", "0/2"], "--part is set per array task"),
        (["shards", "synth", "--", "--out", tmp_path, "--clipz", "3"], "unrecognized arguments: --clipz"),
        (["pretrain", "--time", "soon"], "time 'soon'"),
    ]
    for args, message in cases:
        proc = slurm_cli(*args, env=env)
        assert proc.returncode == 2 and message in proc.output, (args, proc.output[-2000:])
    assert not list(tmp_path.iterdir())


def test_local_executor_runs_the_same_array_and_merge(tmp_path, env):
    out = tmp_path / "set"
    proc = slurm_cli("shards", "synth", "--local", "--parts", "2", "--", "--out", out, "--clips", "6", "--frames", "4",
                     "--size", "32", "--identities", "3", "--shard-samples", "2", env=env)  # fmt: skip
    assert proc.returncode == 0 and "merged 2 parts" in proc.stdout, proc.output[-3000:]
    assert json.loads((out / "manifest.json").read_text())["totals"]["clips"] == 6


# -- on the cluster ------------------------------------------------------------------------------


def pretrain_args(run_dir: Path) -> list:
    return ["pretrain", "--nodes", "2", "--tasks-per-node", "1", "--time", "20", "--",
            f"train.run_dir={run_dir}", f"train.steps={STEPS}", *PRETRAIN_TINY]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(cluster, env, tmp_path_factory) -> tuple[Path, str]:
    """A two-node pretraining run, waited for: its run directory and job id."""
    run_dir = tmp_path_factory.mktemp("pretrain") / "run"
    proc = slurm_cli(*pretrain_args(run_dir)[:1], "--wait", *pretrain_args(run_dir)[1:], env=env)
    assert proc.returncode == 0 and "finished" in proc.stdout, proc.output[-5000:]
    return run_dir, submitted_id(proc)


def test_two_node_pretraining_reaches_its_steps_and_publishes(uninterrupted):
    run_dir, job_id = uninterrupted
    info = queue.show_job(job_id)
    assert info["JobState"] == "COMPLETED" and info["NumNodes"] == "2" and info["NodeList"] == "n[1-2]", info
    assert logged_steps(run_dir) == list(range(1, STEPS + 1))
    final = run_dir / "checkpoints" / f"step_{STEPS:06d}"
    assert {p.name for p in final.glob("rank_*.json")} == {"rank_00000.json", "rank_00001.json"}  # two ranks saved
    published = run_dir / "published" / "auforge-pretrain"
    assert load_file(str(published / "model.safetensors"))
    assert json.loads((published / "config.json").read_text())["auforge"]["steps"] == STEPS
    logs = "".join(p.read_text() for p in (run_dir / "submitit").glob(f"{job_id}_*_log.out"))
    assert "node=0(2)" in logs and "node=1(2)" in logs  # submitit's view: one task on each node


def test_requeued_then_preempted_job_resumes_to_the_same_final_loss(uninterrupted, env, tmp_path):
    """`scontrol requeue` (SLURM's SIGTERM to every process of the job), then the pre-end signal
    (USR2, as SLURM sends before the time limit or a preemption: submitit's handler checkpoints and
    requeues the job itself). Each time the run saves at its next step boundary, the job comes
    back, and resumes from that checkpoint: every step is logged exactly once and the losses are
    those of the uninterrupted run."""
    run_dir = tmp_path / "run"
    job_id = submitted_id(slurm_cli(*pretrain_args(run_dir), env=env))
    first = wait_for_step(run_dir, job_id, 3)
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
    requeued_and_released(job_id)
    stopped = max(logged_steps(run_dir))
    assert first <= stopped < STEPS
    second = wait_for_step(run_dir, job_id, stopped + 3)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
    requeued_and_released(job_id)
    preempted = max(logged_steps(run_dir))
    assert second <= preempted < STEPS, "the run ended before the preemption signal reached it"
    info = wait_ended(job_id)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "2", info

    assert logged_steps(run_dir) == list(range(1, STEPS + 1))  # no step lost, none repeated
    log = (run_dir / "__main__.log").read_text()
    for step in (stopped, preempted):
        assert f"saved step {step} of {STEPS}" in log and f"resumed from {run_dir}/checkpoints/step_{step:06d}" in log
    reference, resumed = losses(uninterrupted[0]), losses(run_dir)
    assert resumed[STEPS]["loss"] == pytest.approx(reference[STEPS]["loss"], rel=1e-5)
    for step in range(1, STEPS + 1):
        assert resumed[step]["loss"] == pytest.approx(reference[step]["loss"], rel=1e-5), step
    assert (run_dir / "published" / "auforge-pretrain" / "model.safetensors").exists()


def test_array_job_writes_shards_in_two_parts_and_merges_them(cluster, env, tmp_path):
    out = tmp_path / "set"
    proc = slurm_cli("shards", "synth", "--parts", "2", "--wait", "--", "--out", out, "--clips", "10", "--frames", "4",
                     "--size", "32", "--identities", "4", "--shard-samples", "3", "--heldout", "0.25", env=env)  # fmt: skip
    assert proc.returncode == 0 and "job array" in proc.stdout, proc.output[-5000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["clips"] == 10 and manifest["builder"]["parts"] == 2
    assert sum(s["samples"] for s in manifest["shards"]) == 10
    assert {s["path"].split("-")[1] for s in manifest["shards"]} == {"part0000", "part0001"}
    assert subprocess.run([sys.executable, "-m", "shards", "verify", str(out)], cwd=ROOT, env=env,
                          capture_output=True).returncode == 0  # fmt: skip


def test_array_job_builds_shards_from_videos_in_two_parts(cluster, env, tmp_path):
    videos, out = tmp_path / "vox", tmp_path / "set"
    for identity, video, n in (("id1", "v1", 9), ("id1", "v2", 16), ("id2", "v3", 9), ("id3", "v4", 3)):
        write_mp4(videos / identity / video / "00001.mp4", n)
    proc = slurm_cli("shards", "build", "--parts", "2", "--wait", "--", videos, "--out", out, "--frames", "4",
                     "--stride", "2", "--size", "24", "--faces", "none", "--shard-samples", "4", env=env)  # fmt: skip
    assert proc.returncode == 0 and "job array" in proc.stdout, proc.output[-5000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["clips"] == 1 + 2 + 1 and manifest["builder"]["parts"] == 2  # id3's video is too short
    # a video a shard, shard N by part N mod 2: both parts wrote
    assert sorted(s["path"] for s in manifest["shards"]) == [f"clips-{n:06d}.tar" for n in range(3)]
    logs = "".join(p.read_text() for p in (out / ".submitit").rglob("*_log.*"))
    assert "v4/00001.mp4: shorter than one clip" in logs


def test_finetune_sweep_of_2_folds_by_2_fractions_writes_one_summary(cluster, env, tmp_path):
    root = tmp_path / "sweep"
    proc = slurm_cli("finetune", "--folds", "1,2", "--label-fractions", "0.5,1", "--run-dir", root, "--wait", "--",
                     *FINETUNE_TINY, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.output[-5000:]
    summary = json.loads((root / "summary.json").read_text())
    rows = [(r["label_fraction"], r["fold"]) for r in summary["rows"]]
    assert rows == [(0.5, "1"), (0.5, "2"), (0.5, "mean"), (1.0, "1"), (1.0, "2"), (1.0, "mean")]
    assert all(0 <= r["f1"] <= 1 for r in summary["rows"])
    for fold in ("1", "2"):
        for fraction in (0.5, 1.0):
            metrics = json.loads((root / "resnet18" / f"fold{fold}" / f"frac{fraction:g}" / "metrics.json").read_text())
            assert metrics["setting"]["fold"] == fold and metrics["setting"]["label_fraction"] == fraction
    table = (root / "summary.md").read_text()
    assert table in proc.stdout and table.count("\n") == 2 + 6 and "mean of 2" in table


def test_study_runs_as_an_array_of_variants_then_a_report(cluster, env, tmp_path):
    """`launcher=slurm` (what preset=slurm sets, here on the tiny grid): a task a variant, then a report job."""
    study = tmp_path / "study"
    proc = subprocess.run([sys.executable, "-m", "finetune.study", "preset=tiny", "launcher=slurm",
                           f"study_dir={study}", "slurm_args=[--wait]"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert "submitted 2 variant(s) as job array" in proc.stdout and "report.md" in proc.stdout
    assert len(list((study / "cells").glob("*/*/*.json"))) == 36  # both variants' cells, by two tasks
    assert "| flow (against `random`) | linear |" in (study / "report.md").read_text()
