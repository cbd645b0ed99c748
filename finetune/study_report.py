"""The study's report, written from its finished cells alone (`finetune.study`): STUDY/results.csv
(one row a cell), STUDY/report.md and three plots, so that a report can be written again, or
from a study still running, at any time.

A variant's figure at a fraction is the mean over folds of each fold's mean over label draws; its
spread is the standard deviation over folds. A variant beats the baseline at a fraction when
its gain (paired by fold) exceeds the larger of the two fold spreads: the claim the study checks.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from finetune.plots import _figure, _save
from finetune.report import open_report

SCARCE = 2  # the claim is about the study's smallest label fractions (1% and 2% in the presets)


def _write(path: Path, text: str) -> None:
    with open_report(path) as f:  # atomic, readable by all
        f.write(text)


def load_cells(study: Path) -> tuple[list[dict], dict[str, dict]]:
    """Every finished cell, and every variant's identity leakage."""
    cells = [json.loads(p.read_text()) for p in sorted((study / "cells").glob("*/*/*.json"))]
    leaks = {p.parent.name: json.loads(p.read_text()) for p in sorted((study / "cells").glob("*/identity.json"))}
    return cells, leaks


def by_fold(cells: list[dict], metric: str = "mean_f1") -> dict[tuple[str, str, float], dict[int, float]]:
    """(variant, mode, fraction) -> {fold: the mean of `metric` over that fold's draws}."""
    draws: dict[tuple, list[float]] = defaultdict(list)
    for c in cells:
        if metric in c:
            draws[(c["variant"], c["mode"], c["fraction"], c["fold"])].append(c[metric])
    folds: dict[tuple, dict[int, float]] = defaultdict(dict)
    for (variant, mode, fraction, fold), values in draws.items():
        folds[(variant, mode, fraction)][fold] = float(np.mean(values))
    return folds


def verdict(variant: dict[int, float], baseline: dict[int, float]) -> tuple[float, float, bool]:
    """(mean gain over the folds both have, the larger fold spread, whether the gain exceeds it)."""
    shared = sorted(set(variant) & set(baseline))
    if not shared:
        return float("nan"), float("nan"), False
    gain = float(np.mean([variant[f] - baseline[f] for f in shared]))
    spread = max(float(np.std([variant[f] for f in shared])), float(np.std([baseline[f] for f in shared])))
    return gain, spread, gain > spread


def write_csv(study: Path, cells: list[dict]) -> None:
    aus = sorted({au for c in cells for au in c["per_au"]}, key=lambda a: int(a[2:]) if a[2:].isdigit() else a)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["variant", "mode", "fold", "fraction", "draw", "labelled", "mean_f1", *aus, "icc", "mae",
                     "seconds"])  # fmt: skip
    for c in sorted(cells, key=lambda c: (c["variant"], c["mode"], c["fraction"], c["fold"], c["draw"])):
        writer.writerow([c["variant"], c["mode"], c["fold"], c["fraction"], c["draw"], c["labelled"],
                         f"{c['mean_f1']:.4f}", *(f"{c['per_au'].get(a, float('nan')):.4f}" for a in aus),
                         *(f"{c[m]:.4f}" if m in c else "" for m in ("icc", "mae")), c["seconds"]])  # fmt: skip
    _write(study / "results.csv", out.getvalue())


def _pretraining_evidence(study: Path, variant: str) -> str:
    """The first and last logged total loss of a variant's pretraining run, or ''."""
    path = study / "pretrain" / variant / "metrics.jsonl"
    if not path.exists():
        return ""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in rows if "loss" in r]
    if len(losses) < 2:
        return ""
    return f"its pretraining loss went from {losses[0]:.3f} to {losses[-1]:.3f} over {len(losses)} logged steps"


def write_report(cfg) -> None:
    study = Path(cfg.study_dir)
    cells, leaks = load_cells(study)
    if not cells:
        return
    write_csv(study, cells)
    folds = by_fold(cells)
    variants = [v for v in cfg.variants if any(k[0] == v for k in folds)]
    fractions = sorted({k[2] for k in folds})
    modes = [m for m in cfg.modes if any(k[1] == m for k in folds)]
    base = cfg.baseline
    scarce = fractions[:SCARCE]
    lines = [f"# AU study: {Path(cfg.study_dir).name}", "",
             f"Labelled data: `{cfg.data.kind}`; folds {', '.join(map(str, cfg.folds))} (identity-disjoint); "
             f"linear probes over {cfg.draws} label draws a cell, full fine-tuning {cfg.finetune.steps} steps of "
             f"{cfg.finetune.batch_size} frames at every fraction. Pretraining, every variant: "
             f"`{' '.join(cfg.pretrain) or 'the defaults'}`. Mean F1 over AUs, the mean over folds "
             "(± the standard deviation over folds).", ""]  # fmt: skip
    for mode in modes:
        lines += [f"## {'Linear probe (frozen backbone)' if mode == 'linear' else 'Full fine-tuning'}", "",
                  "| variant | reads | " + " | ".join(f"{100 * f:g}% labels" for f in fractions) + " |",
                  "| --- | --- |" + " ---: |" * len(fractions)]  # fmt: skip
        for v in variants:
            row = []
            for f in fractions:
                values = list(folds.get((v, mode, f), {}).values())
                row.append(f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "-")
            lines.append(f"| {v} | {cfg.variants[v].reads} | " + " | ".join(row) + " |")
        lines.append("")
    for metric, label in (("icc", "ICC(3,1)"), ("mae", "MAE")):
        scores = by_fold(cells, metric)
        if not scores:
            continue
        lines += [f"## Intensity from the linear cells: {label} (ridge on the frozen features)", "",
                  "| variant | " + " | ".join(f"{100 * f:g}% labels" for f in fractions) + " |",
                  "| --- |" + " ---: |" * len(fractions)]  # fmt: skip
        for v in variants:
            values = [list(scores.get((v, "linear", f), {}).values()) for f in fractions]
            lines.append(f"| {v} | " + " | ".join(f"{np.mean(x):.3f} ± {np.std(x):.3f}" if x else "-" for x in values) + " |")
        lines.append("")
    lines += ["## Does pretraining beat random initialisation where labels are scarce?", "",
              "Gain over random initialisation of the same architecture (paired by fold) against the larger of the two "
              "fold spreads.", "",
              "| variant | mode | " + " | ".join(f"{100 * f:g}%" for f in scarce) + " |",
              "| --- | --- |" + " --- |" * len(scarce)]  # fmt: skip
    failing, judged = defaultdict(list), 0
    for v in (v for v in variants if v != base and cfg.variants[v].pretrain is not None):
        against = cfg.variants[v].baseline or base
        for mode in modes:
            row = []
            for f in scarce:
                gain, spread, beats = verdict(folds.get((v, mode, f), {}), folds.get((against, mode, f), {}))
                row.append("-" if np.isnan(gain) else f"{gain:+.3f} vs {spread:.3f}: {'**yes**' if beats else 'no'}")
                judged += not np.isnan(gain)
                if not np.isnan(gain) and not beats:
                    failing[v].append(f"{mode} at {100 * f:g}% ({gain:+.3f}, spread {spread:.3f})")
            lines.append(f"| {v} (against `{against}`) | {mode} | " + " | ".join(row) + " |")
    lines += ["", "## Identity leakage", "",
              "A linear classifier over the people from each variant's frozen features (split by clip): lower is "
              "more person-independent.", "", "| variant | accuracy | chance |", "| --- | ---: | ---: |"]  # fmt: skip
    for v in variants:
        if v in leaks:
            lines.append(f"| {v} | {leaks[v]['accuracy']:.3f} | {leaks[v]['chance']:.3f} |")
    lines += ["", "## Where a variant does not do what its method promises", ""]
    said = False
    for v in variants:
        reasons = []
        if failing.get(v):
            reasons.append("it does not beat random initialisation by more than the fold spread: " + "; ".join(failing[v]))
        if "identity" in v and v in leaks and base in leaks and leaks[v]["accuracy"] >= leaks[base]["accuracy"]:
            reasons.append(f"its features leak no less identity than `{base}`'s ({leaks[v]['accuracy']:.3f} against "
                           f"{leaks[base]['accuracy']:.3f})")  # fmt: skip
        if reasons:
            said = True
            evidence = _pretraining_evidence(study, v)
            promise = cfg.variants[v].promise
            lines.append(f"- **{v}**" + (f" (promises: {promise})" if promise else "") + ": " + "; ".join(reasons) +
                         (f". Evidence: {evidence}." if evidence else "."))  # fmt: skip
    if not said:
        lines.append("Every variant beats random initialisation where labels are scarce." if judged else
                     "Nothing to judge yet: no variant and its baseline share a finished fold at these fractions.")
    lines += ["", "![F1 against label fraction](f1_by_fraction.png)", "", "![identity leakage](identity.png)", "",
              "![per-AU F1](per_au.png)", ""]  # fmt: skip
    _write(study / "report.md", "\n".join(lines))
    plot_fractions(study / "f1_by_fraction.png", folds, variants, modes, fractions)
    plot_identity(study / "identity.png", leaks, variants)
    plot_per_au(study / "per_au.png", cells, variants, modes[0], min(fractions))


def plot_fractions(path: Path, folds: dict, variants: list[str], modes: list[str], fractions: list[float]) -> None:
    """Mean F1 against the label fraction, one line a variant, the fold spread as error bars."""
    fig = _figure(5.0 * len(modes), 3.8)
    for i, mode in enumerate(modes):
        ax = fig.add_subplot(1, len(modes), i + 1)
        for v in variants:
            xs = [f for f in fractions if folds.get((v, mode, f))]
            means = [np.mean(list(folds[(v, mode, f)].values())) for f in xs]
            spreads = [np.std(list(folds[(v, mode, f)].values())) for f in xs]
            ax.errorbar([100 * x for x in xs], means, yerr=spreads, marker="o", capsize=3, label=v)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training frames (%)")
        ax.set_ylabel("mean F1 (folds: mean ± sd)")
        ax.set_title("linear probe" if mode == "linear" else "full fine-tuning")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_identity(path: Path, leaks: dict, variants: list[str]) -> None:
    shown = [v for v in variants if v in leaks]
    fig = _figure(1.0 + 0.8 * len(shown), 3.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(shown)), [leaks[v]["accuracy"] for v in shown], color="tab:red", alpha=0.7)
    if shown:
        ax.axhline(leaks[shown[0]]["chance"], color="black", linestyle="--", label="chance")
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(shown)), shown, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("identity accuracy from frozen features")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    _save(fig, path)


def plot_per_au(path: Path, cells: list[dict], variants: list[str], mode: str, fraction: float) -> None:
    """F1 per AU and variant (mean over folds and draws) at one mode and fraction, as a heatmap."""
    chosen = [c for c in cells if c["mode"] == mode and c["fraction"] == fraction]
    aus = sorted({a for c in chosen for a in c["per_au"]}, key=lambda a: int(a[2:]) if a[2:].isdigit() else a)
    grid = np.array([[np.nanmean([c["per_au"][a] for c in chosen if c["variant"] == v] or [np.nan]) for a in aus]
                     for v in variants])  # fmt: skip
    fig = _figure(1.5 + 0.45 * len(aus), 1.0 + 0.35 * len(variants))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=max(0.01, float(np.nanmax(grid))) if grid.size else 1)
    ax.set_xticks(range(len(aus)), aus, rotation=90, fontsize=7)
    ax.set_yticks(range(len(variants)), variants, fontsize=7)
    ax.set_title(f"F1 per AU, {'linear probe' if mode == 'linear' else 'fine-tuned'}, {100 * fraction:g}% labels",
                 fontsize=8)  # fmt: skip
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    _save(fig, path)
