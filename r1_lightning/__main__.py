"""`r1-lightning` (also `python -m r1_lightning`): one command, a subcommand per job.

    r1-lightning fit --config configs/grpo.yaml        # train (LightningCLI: r1_lightning/cli.py)
    r1-lightning validate --config configs/eval.yaml   # evaluate
    r1-lightning predict --config configs/difficulty.yaml   # pass rates per problem (difficulty filtering)
    r1-lightning quickstart                            # the offline CPU demo (r1_lightning/quickstart/run.py)
    r1-lightning sweep --config configs/grpo.yaml configs/ablations/*.yaml   # r1_lightning/sweep.py

This is the top of the package: it imports every subcommand, and none of them imports it (the
quickstart and the sweep run `fit` through `r1_lightning.cli`, below them).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from r1_lightning.cli import PROG, build_cli, exit_on_user_error, print_stacks_on_usr2
from r1_lightning.cli_errors import UsageError, did_you_mean
from r1_lightning.quickstart.run import run_quickstart
from r1_lightning.stopping import stop_on_signals
from r1_lightning.sweep import run_sweep


@dataclass(frozen=True)
class Subcommand:
    """`run` takes the command line after the subcommand's name; `summary` is its line in `--help`."""

    run: Callable[[list[str]], object]
    summary: str


SUBCOMMANDS = {
    "fit": Subcommand(lambda argv: build_cli(["fit", *argv]),
                      "train from a config: SFT, expert iteration or GRPO (fit --config configs/grpo.yaml)"),
    "validate": Subcommand(lambda argv: build_cli(["validate", *argv]),
                           "evaluate a model from a config (validate --config configs/eval.yaml)"),
    "predict": Subcommand(lambda argv: build_cli(["predict", *argv]),
                          "each training problem's pass rate, for difficulty filtering "
                          "(predict --config configs/difficulty.yaml)"),
    "quickstart": Subcommand(run_quickstart,
                             "the offline CPU demo: SFT warm-up, then GRPO, of a built-in model (minutes)"),
    "sweep": Subcommand(run_sweep,
                        "a config alone, with each overlay and at each learning rate, then one comparison plot"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"usage: {PROG} {{{','.join(SUBCOMMANDS)}}} ...", "",
             "R1-Zero-style reasoning training (SFT, expert iteration, GRPO) with PyTorch Lightning.", "",
             f"subcommands (`{PROG} SUBCOMMAND --help` lists its options):"]
    lines += [f"  {name:<{width}}  {subcommand.summary}" for name, subcommand in SUBCOMMANDS.items()]
    return "\n".join(lines)


@stop_on_signals()  # SIGTERM and SIGINT stop even a step in flight, safely (r1_lightning.stopping)
def main(args: list[str] | None = None) -> None:
    """Run the subcommand `args[0]` on the rest of `args` (default: the command line). Bad input
    exits with status 2 and one line on stderr (`r1_lightning.cli.exit_on_user_error`)."""
    argv = sys.argv[1:] if args is None else [str(arg) for arg in args]
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return
    print_stacks_on_usr2()

    def dispatch() -> None:
        if not argv:
            raise UsageError(f"give a subcommand: {', '.join(SUBCOMMANDS)} (`{PROG} --help` says what each does)")
        name = argv[0]
        if name.startswith("-"):  # options before the subcommand (`--config x.yaml fit`) are LightningCLI's
            build_cli(argv)
        elif name in SUBCOMMANDS:
            SUBCOMMANDS[name].run(argv[1:])
        else:
            raise UsageError(f"no subcommand {name!r}{did_you_mean(name, list(SUBCOMMANDS))}: "
                             f"give one of {', '.join(SUBCOMMANDS)}")

    exit_on_user_error(dispatch, argv)


if __name__ == "__main__":
    main()
