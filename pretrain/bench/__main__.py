"""`python -m pretrain.bench [step|stages|mining] [flags]`; without a command, `step`."""

from __future__ import annotations

import argparse
import sys

from pretrain.bench import mining, stages, step

COMMANDS = {"step": step, "stages": stages, "mining": mining}
SUMMARY = {
    "step": "one pretraining step against a bare timm step (the default)",
    "stages": "ZeRO stages 0, 1 and 2 against each other (under torchrun)",
    "mining": "the memory bank: FAISS against torch, IVF, mining's share of a step",
}


def parse_args(argv=None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "step")  # the plain command (and its flags alone) is the step benchmark
    p = argparse.ArgumentParser(prog="python -m pretrain.bench", description=sys.modules["pretrain.bench"].__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = p.add_subparsers(dest="command", metavar="{step,stages,mining}")
    for name, module in COMMANDS.items():
        module.add_arguments(commands.add_parser(name, help=SUMMARY[name], description=module.__doc__,
                                                 formatter_class=argparse.RawDescriptionHelpFormatter))  # fmt: skip
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    return COMMANDS[args.command].main(args)


if __name__ == "__main__":
    main()
