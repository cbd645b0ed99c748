"""`python -m finetune.study`: the report's judgement from cells, and a tiny grid end to end
(real pretraining, probes and fine-tuning) that resumes without recomputing what finished."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from finetune.study import StudyConfig, VariantConfig
from finetune.study_report import by_fold, verdict, write_report

REPO = Path(__file__).resolve().parents[1]


def fake_cells(study: Path, f1: dict[str, dict[int, float]], fraction: float = 0.01) -> None:
    """Cells of two draws a fold whose mean F1 is f1[variant][fold]."""
    for variant, folds in f1.items():
        for fold, value in folds.items():
            for draw, offset in enumerate((-0.01, 0.01)):
                path = study / "cells" / variant / "linear" / f"fold{fold}-frac{fraction:g}-draw{draw}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"variant": variant, "mode": "linear", "fold": fold, "fraction": fraction,
                                            "draw": draw, "labelled": 10, "seconds": 1.0, "mean_f1": value + offset,
                                            "per_au": {"AU1": value + offset, "AU12": value}}))  # fmt: skip
        (study / "cells" / variant / "identity.json").write_text(json.dumps({"accuracy": 0.5, "chance": 0.1}))


def test_a_variant_beats_its_baseline_only_by_more_than_the_fold_spread(tmp_path):
    fake_cells(tmp_path, {"random": {1: 0.20, 2: 0.22, 3: 0.24}, "good": {1: 0.30, 2: 0.31, 3: 0.33},
                          "close": {1: 0.21, 2: 0.23, 3: 0.25}, "cross_identity": {1: 0.10, 2: 0.12, 3: 0.11}})  # fmt: skip
    folds = by_fold([json.loads(p.read_text()) for p in tmp_path.glob("cells/*/*/*.json")])
    assert folds[("good", "linear", 0.01)] == pytest.approx({1: 0.30, 2: 0.31, 3: 0.33})  # the mean of the draws
    gain, spread, beats = verdict(folds[("good", "linear", 0.01)], folds[("random", "linear", 0.01)])
    assert gain == pytest.approx(0.0933, abs=1e-3) and spread == pytest.approx(0.0163, abs=1e-3) and beats
    assert not verdict(folds[("close", "linear", 0.01)], folds[("random", "linear", 0.01)])[2]  # +0.01 < 0.016
    variants = {name: VariantConfig(pretrain=None if name == "random" else ["objective=x"], promise=f"{name} things")
                for name in ("random", "good", "close", "cross_identity")}  # fmt: skip
    cfg = OmegaConf.structured(StudyConfig(variants=variants, modes=["linear"], study_dir=str(tmp_path)))
    write_report(cfg)
    report = (tmp_path / "report.md").read_text()
    assert "| good (against `random`) | linear | +0.093 vs 0.016: **yes** |" in report
    assert "| close (against `random`) | linear | +0.010 vs 0.016: no |" in report
    assert "- **close** (promises: close things): it does not beat random initialisation" in report
    assert "- **cross_identity** (promises: cross_identity things)" in report  # worse, and leaks as much identity
    assert "leak no less identity than `random`'s" in report and "**good**" not in report.split("promises")[1]
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 4 * 3 * 2 and {"AU1", "AU12", "mean_f1", "fold", "draw"} <= set(rows[0])
    assert all((tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in
               ("f1_by_fraction.png", "identity.png", "per_au.png"))  # fmt: skip


@pytest.mark.slow
def test_a_tiny_study_writes_its_report_and_resumes_without_recomputing(tmp_path):
    def study():
        proc = subprocess.run([sys.executable, "-m", "finetune.study", "preset=tiny", f"study_dir={tmp_path}"], cwd=REPO,
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        return proc.stdout

    # 2 variants x 3 folds x 2 fractions x (2 linear draws + 1 fine-tuning)
    assert "36 cells computed, 0 found finished" in study()
    report = (tmp_path / "report.md").read_text()
    for part in ("## Linear probe (frozen backbone)", "## Full fine-tuning", "| flow (against `random`) | linear |",
                 "| flow (against `random`) | finetune |", "## Identity leakage", "| random | -",
                 "## Intensity from the linear cells: ICC(3,1)", "## Intensity from the linear cells: MAE"):  # fmt: skip
        assert part in report, part
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert all((r["icc"] != "") == (r["mode"] == "linear") for r in rows)  # the renderer's intensities, regressed
    assert all(0 <= float(r["mae"]) <= 5 for r in rows if r["mode"] == "linear")
    first = {(r["variant"], r["mode"], r["fold"], r["fraction"], r["draw"]): r["mean_f1"]
             for r in csv.DictReader((tmp_path / "results.csv").open())}  # fmt: skip
    assert len(first) == 36 and all(0 <= float(v) <= 1 for v in first.values())
    pretraining_log = (tmp_path / "pretrain" / "flow" / "pretrain.log").read_bytes()
    # interrupted: three cells never written; the rest and the pretrained backbone are kept
    removed = sorted((tmp_path / "cells").glob("*/*/*.json"))[:3]
    for path in removed:
        path.unlink()
    assert "3 cells computed, 33 found finished" in study()
    assert (tmp_path / "pretrain" / "flow" / "pretrain.log").read_bytes() == pretraining_log  # not pretrained again
    again = {(r["variant"], r["mode"], r["fold"], r["fraction"], r["draw"]): r["mean_f1"]
             for r in csv.DictReader((tmp_path / "results.csv").open())}  # fmt: skip
    assert again == first  # the recomputed cells come out as they did
