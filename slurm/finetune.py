"""`python -m slurm finetune`: a sweep of folds x label fractions x backbones as one job array
(each task runs `python finetune.py ...` into its own run directory), then a dependent job that
collects every run's metrics.json into one summary table (SWEEP_DIR/summary.md and .json)."""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from pathlib import Path

from finetune.protocol import TEST_PART
from slurm import queue
from slurm.config import compose, with_override
from slurm.executor import describe_array, submit_array_then
from slurm.task import ChildTask

FINETUNE_PY = Path(__file__).resolve().parents[1] / "finetune.py"


def _slug(text: str) -> str:
    """A folder name for a backbone (a timm name, a path, a URL, hf://owner/repo)."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text.rstrip("/")).strip("_")[-80:] or "backbone"


def sweep(overrides: list[str], backbones: list[str], folds: list[str], fractions: list[float], root: Path):
    """One run per combination: its settings, run directory and overrides."""
    known = [str(k) for k in TEST_PART]  # the job's folds (finetune.protocol)
    for f in folds:
        if f not in known:
            raise ValueError(f"--folds: fold {f!r} is not one of {', '.join(known)}")
    for x in fractions:
        if not 0 < x <= 1:
            raise ValueError(f"--label-fractions: {x} is not in (0, 1]")
    slugs = [_slug(b) for b in backbones]
    if len(set(slugs)) != len(slugs):
        slugs = [f"{i}_{s}" for i, s in enumerate(slugs)]
    runs = []
    for (backbone, slug), fold, fraction in itertools.product(zip(backbones, slugs), folds, fractions):
        run_dir = root / slug / f"fold{fold}" / f"frac{fraction:g}"
        ov = overrides
        for key, value in (("backbone", backbone), ("fold", fold), ("label_fraction", fraction), ("run_dir", run_dir)):
            ov = with_override(ov, key, value)
        runs.append({"backbone": backbone, "fold": fold, "label_fraction": fraction, "run_dir": str(run_dir),
                     "overrides": ov})  # fmt: skip
    return runs


def submit(args, overrides: list[str]):
    """Returns (run jobs, summary job, sweep directory)."""
    if any(o.lstrip("+~").startswith(("sweep_fractions=", "fold=", "label_fraction=", "backbone=")) for o in overrides):
        raise ValueError("the sweep sets backbone, fold and label_fraction per run: "
                         "use --backbones, --folds and --label-fractions instead of overrides")  # fmt: skip
    base = compose("finetune", overrides)
    root = Path(args.run_dir or base.run_dir).resolve()
    runs = sweep(overrides, args.backbones or [str(base.backbone)], args.folds, args.label_fractions or
                 [float(base.label_fraction)], root)  # fmt: skip
    compose("finetune", runs[0]["overrides"])  # the combination is a valid config too
    folder = Path(args.folder).resolve() if args.folder else root / "submitit"
    tasks = [ChildTask([sys.executable, str(FINETUNE_PY), *run["overrides"]], cwd=os.getcwd(),
                       max_requeues=args.max_requeues, result=run["run_dir"]) for run in runs]  # fmt: skip
    plain = [{k: v for k, v in run.items() if k != "overrides"} for run in runs]
    jobs, summary_job = submit_array_then(args, folder, "finetune", tasks, "finetune-summary", summarise, str(root), plain)
    return jobs, summary_job, root


def summarise(root: str, runs: list[dict]) -> str:
    """Every run's mean metrics, and per backbone and label fraction their mean ± std over
    folds (finetune.folds.combine_folds); writes ROOT/summary.md and ROOT/summary.json and
    returns the table."""
    from finetune.folds import combine_folds
    from finetune.metrics import table_cell
    from finetune.report import write_metrics

    groups: dict[tuple, dict[int, dict]] = {}
    for run in runs:
        path = Path(run["run_dir"]) / "metrics.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: the run of {run['backbone']}, fold {run['fold']}, label fraction "
                                    f"{run['label_fraction']} wrote no metrics")  # fmt: skip
        groups.setdefault((run["backbone"], run["label_fraction"]), {})[int(run["fold"])] = json.loads(path.read_text())
    metrics = list(next(iter(next(iter(groups.values())).values()))["mean"])
    lines = ["| backbone | label fraction | fold | " + " | ".join(metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]  # fmt: skip
    rows = []
    for (backbone, fraction), folds in groups.items():
        for fold, result in sorted(folds.items()):
            rows.append({"backbone": backbone, "label_fraction": fraction, "fold": str(fold), **result["mean"]})
            cells = " | ".join(table_cell(result["mean"].get(m), missing="n/a") for m in metrics)
            lines.append(f"| {backbone} | {fraction:g} | {fold} | {cells} |")
        combined = combine_folds(folds)
        rows.append({"backbone": backbone, "label_fraction": fraction, "fold": "mean", **combined["mean"],
                     **{f"{m}_std": v for m, v in combined["fold_std"].items()}})  # fmt: skip
        cells = " | ".join(table_cell(combined["mean"].get(m), combined["fold_std"].get(m), missing="n/a") for m in metrics)
        lines.append(f"| {backbone} | {fraction:g} | mean of {len(folds)} | {cells} |")
    table = "\n".join(lines) + "\n"
    out = Path(root)
    (out / "summary.md").write_text(table)
    write_metrics(out / "summary.json", {"metrics": metrics, "rows": rows})
    return table


def describe(jobs, summary_job, root: Path, args) -> str:
    where = f"sweep directory: {root} (summary.md appears when the summary job ends)"
    return describe_array(jobs, summary_job, "fine-tuning run(s)", "summary", where, args)


def outcome(jobs, summary_job, root: Path) -> str:
    return f"summary of {len(jobs)} runs ({root / 'summary.md'}):\n{queue.last_result(jobs, summary_job)}"
