"""`python -m slurm pretrain|shards|finetune [options] -- ARGS`: auforge's jobs on SLURM, through submitit.

  python -m slurm pretrain --nodes 4 --gpus-per-node 8 --partition gpu --time 2-00:00:00 -- experiment=resnet50_112 data=shards data.source=...
  python -m slurm shards synth --parts 16 -- --out /data/synth --clips 100000 --size 112
  python -m slurm finetune --backbones runs/pretrain/published/auforge-pretrain,resnet18 --folds 1,2,3 --label-fractions 0.02,0.1,1 -- data=bp4d data.root=/data/BP4D
  python -m slurm study --gpus-per-node 1 --time 8:00:00 -- preset=gpu

Everything after `--` goes to the job's own command (Hydra overrides for pretrain and finetune,
`python -m shards` arguments for shards). `--local` runs the same code path with submitit's
local executor, on this machine, where no SLURM exists.
"""

from __future__ import annotations

import argparse
import logging
import sys

from slurm.executor import add_resource_args, positive


def _csv(kind):
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of {kind.__name__}") from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m slurm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="job", required=True)

    p = sub.add_parser("pretrain", help="multi-node pretraining: every task runs `python -m pretrain OVERRIDES`")
    add_resource_args(p, nodes=True)

    p = sub.add_parser("shards", help="a shard set written by a job array in parts, then merged")
    p.add_argument("command", help="the `python -m shards` command to run in parts (synth or build)")
    p.add_argument("--parts", type=positive, default=2, help="array tasks, each writing one part (default 2)")
    add_resource_args(p, array=True)

    p = sub.add_parser("finetune", help="a sweep of folds x label fractions x backbones, then a summary table")
    p.add_argument("--backbones", type=_csv(str), help="comma-separated (default: the config's backbone)")
    p.add_argument("--folds", type=_csv(str), default=["1", "2", "3"], help="comma-separated (default 1,2,3)")
    p.add_argument("--label-fractions", type=_csv(float), help="comma-separated (default: the config's)")
    p.add_argument("--run-dir", help="the sweep's directory (default: the config's run_dir)")
    add_resource_args(p, array=True)

    p = sub.add_parser("study", help="the label-efficiency study: a task a variant, then the report (finetune.study)")
    add_resource_args(p, array=True)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    # Our options before `--`, the job's own arguments after it.
    cut = argv.index("--") if "--" in argv else len(argv)
    args, rest = build_parser().parse_args(argv[:cut]), argv[cut + 1 :]
    from slurm import finetune, pretrain, shards, study
    from slurm.config import BadOverrides

    try:
        if args.job == "pretrain":
            job, run_dir = pretrain.submit(args, rest)
            print(pretrain.describe(job, run_dir, args), flush=True)
            done = (lambda: pretrain.outcome(job, run_dir), [job])
        elif args.job == "shards":
            jobs, last, out = shards.submit(args, args.command, rest)
            print(shards.describe(jobs, last, out, args), flush=True)
            done = (lambda: shards.outcome(jobs, last, out), [*jobs, last])
        elif args.job == "study":
            jobs, last, root = study.submit(args, rest)
            print(study.describe(jobs, last, root, args), flush=True)
            done = (lambda: study.outcome(jobs, last, root), [*jobs, last])
        else:
            jobs, last, root = finetune.submit(args, rest)
            print(finetune.describe(jobs, last, root, args), flush=True)
            done = (lambda: finetune.outcome(jobs, last, root), [*jobs, last])
    except (BadOverrides, ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"python -m slurm {args.job}: {e}", file=sys.stderr)
        return 2
    if args.wait or args.local:  # a local job lives only as long as this process
        from slurm import queue

        queue.wait(done[1])
        try:
            print(done[0](), flush=True)
        except Exception as e:  # submitit's errors carry the job's traceback and log paths
            print(f"python -m slurm {args.job}: a job failed: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
