"""The point of pretraining, measured: on the synthetic benchmark, a linear probe that learns AUs
from 2% of the training identities' frames reads them better from the pretrained backbone than
from the same backbone at random initialisation, on held-out identities, for every fixed draw of
labelled frames. This runs the README's main command (`python -m pretrain`, its embedded default:
`flow`, which reads pixels alone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_pretrain_run import ROOT, env

pytestmark = pytest.mark.slow  # the README's main job, end to end

MARGIN = 0.02  # mean F1 points the pretrained backbone must gain; measured 0.043 (+0.026 to +0.069 a draw)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_pretrained_backbone_beats_random_init_at_2_percent_labels(tmp_path, cache):
    run_dir = tmp_path / "run"
    # every core, as the README command gets them (the other end-to-end tests pin one thread each)
    threads = {"OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    proc = subprocess.run([sys.executable, "-m", "pretrain", f"train.run_dir={run_dir}"], env={**env(cache), **threads},
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    final = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    seeds = sorted(int(k.rsplit("seed", 1)[1]) for k in final if k.startswith("probe/linear_f1_seed"))
    assert len(seeds) >= 3, final
    pretrained = np.array([final[f"probe/linear_f1_seed{s}"] for s in seeds])
    random_init = np.array([final[f"random_init/linear_f1_seed{s}"] for s in seeds])
    gain = pretrained - random_init
    assert (gain > 0).all(), f"pretrained {pretrained.round(3)} vs random init {random_init.round(3)}"
    assert gain.mean() >= MARGIN, f"mean gain {gain.mean():.3f} < {MARGIN}: {pretrained.round(3)} vs {random_init.round(3)}"
    # the summary the user sees says the same
    assert "AU linear probe, 2% labels" in proc.stdout
    config = json.loads((run_dir / "published" / "auforge-pretrain" / "config.json").read_text())
    assert set(config["auforge"]["objectives"]) == {"flow"}  # pixels only: no landmark, no label
    assert (run_dir / "published" / "auforge-pretrain" / "model.safetensors").exists()
