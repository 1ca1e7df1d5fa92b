"""`r1-lightning sweep`: one config alone and with each overlay (or at several learning rates), each
run a `fit` in its own process and its own folder, then one figure that compares them.

    r1-lightning sweep --config configs/grpo.yaml configs/ablations/*.yaml
    r1-lightning sweep --config configs/grpo.yaml --learning_rates 3e-6 1e-5 3e-5 1e-4 --skip_base
    r1-lightning sweep --config configs/quickstart.yaml configs/ablations/*.yaml --grpo_steps 30 \\
        --output runs/ablations_cpu --model.init_args.batching.gradient_accumulation_steps 4

The first `--config` is the base; every further file is an overlay run on top of it (named by its
file stem), every learning rate a run of the base (`lr_<value>`), and the base alone a run named by
its stem unless `--skip_base`. Each run gets `--trainer.default_root_dir <output>/<name>`. Any other
argument goes to every run's `fit`, after the configs; `{name}` and `{run_dir}` in it are replaced
per run (e.g. `--trainer.logger.init_args.name {name}` for W&B). `--grpo_steps N` gives each run
`N` x its optimizer updates per GRPO step as `trainer.max_steps`, so runs that make several updates
per rollout batch (off-policy) see as many rollout batches as the others.

Writes `<output>/sweep.json` (the runs and their commands) and `<output>/comparison.png`
(`r1_lightning.plotting.plot_comparison`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import subprocess
import sys
import time
import warnings
from argparse import ArgumentError
from pathlib import Path

from r1_lightning.cli_errors import SubcommandParser, UsageError, describe_parse_error, did_you_mean


def build_parser() -> SubcommandParser:
    parser = SubcommandParser(prog="r1-lightning sweep", description=__doc__)
    parser.add_argument("--config", nargs="+", required=True, metavar="YAML",
                        help="the base config, then overlays: one run per overlay")
    parser.add_argument("--learning_rates", nargs="+", type=float, default=[], metavar="LR",
                        help="one run of the base config per learning rate")
    parser.add_argument("--skip_base", action="store_true", help="no run of the base config alone")
    parser.add_argument("--output", default="runs/sweep", help="parent folder of the run folders")
    parser.add_argument("--grpo_steps", type=int, default=None,
                        help="GRPO steps per run (sets trainer.max_steps from each run's updates per step)")
    parser.add_argument("--smooth", type=int, default=1, help="moving average of the plotted train curves (steps)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    return parser


def plan_runs(args: argparse.Namespace, overrides: list[str]) -> list[dict]:
    """[{name, run_dir, fit_args}] in run order: the base, the overlays, the learning rates."""
    base, overlays = Path(args.config[0]), [Path(p) for p in args.config[1:]]
    for path in [base, *overlays]:
        if not path.is_file():
            raise UsageError(f"--config {path}: no such file")
    variants: list[tuple[str, list[str]]] = [] if args.skip_base else [(base.stem, [])]
    variants += [(overlay.stem, ["--config", str(overlay)]) for overlay in overlays]
    variants += [(f"lr_{lr:g}", ["--model.init_args.learning_rate", repr(lr)]) for lr in args.learning_rates]
    names = [name for name, _ in variants]
    if not names:
        raise UsageError("nothing to run: give overlays or --learning_rates, or drop --skip_base")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"two runs would share the folder name(s) {repeated}: rename an overlay")
    runs = []
    for name, variant in variants:
        run_dir = Path(args.output) / name
        extra = [a.replace("{name}", name).replace("{run_dir}", str(run_dir)) for a in overrides]
        fit_args = ["fit", "--config", str(base), *variant, "--trainer.default_root_dir", str(run_dir), *extra]
        runs.append({"name": name, "run_dir": str(run_dir), "fit_args": fit_args})
    return runs


def resolved_config(fit_args: list[str]) -> dict:
    """A run's config as `fit` will see it: jsonargparse's own merge of the configs and overrides
    (`--print_config`, in this process). A run that does not parse stops the sweep before any runs."""
    import yaml

    from r1_lightning.cli import build_cli

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # we mean to pass both
            build_cli(fit_args + ["--print_config"])
    except SystemExit as exit_info:  # --print_config exits after printing
        if exit_info.code not in (0, None):
            raise
    except ArgumentError as error:
        raise UsageError(f"{describe_parse_error(error, fit_args)} (in the run {shlex.join(fit_args)})") from None
    return yaml.safe_load(printed.getvalue())


def output_folders(config: dict) -> list[str]:
    """Where a resolved config sends logs and checkpoints when it names the folder itself (a
    logger's `save_dir`, a callback's `dirpath`)."""
    trainer = config.get("trainer") or {}
    entries = [trainer.get("logger"), trainer.get("callbacks")]
    entries = [e for entry in entries for e in (entry if isinstance(entry, list) else [entry])]
    init_args = [e.get("init_args") or {} for e in entries if isinstance(e, dict)]
    return [str(a[key]) for a in init_args for key in ("save_dir", "dirpath") if a.get(key)]


def check_separate_folders(runs: list[dict]) -> None:
    """Refuse runs that would write logs or checkpoints into one folder (mixed curves, and
    `--ckpt_path last` resuming another run's checkpoint)."""
    owner: dict[str, str] = {}
    for run in runs:
        for folder in run["folders"]:
            if folder in owner and owner[folder] != run["name"]:
                raise UsageError(
                    f"runs {owner[folder]} and {run['name']} would both write to {folder} "
                    f"(set in the configs): give each its own, e.g. --trainer.logger.init_args.save_dir {{run_dir}}"
                )
            owner[folder] = run["name"]


def updates_per_grpo_step(config: dict) -> int | None:
    """Optimizer updates per GRPO step (rollout batch) of a resolved config; None if not GRPO."""
    batching = ((config.get("model") or {}).get("init_args") or {}).get("batching")
    if not batching:
        return None
    return batching["epochs_per_rollout_batch"] * (batching["rollout_batch_size"] // batching["train_batch_size"])


def check_no_misspelled_sweep_option(parser: SubcommandParser, overrides: list[str]) -> None:
    """Arguments the sweep does not know go to every run's `fit`; one that is a near miss of the
    sweep's own (`--grpo-steps`, `--learning_rate`) is a typo, refused before any run parses."""
    own = parser.long_options()
    for flag in (a.split("=", 1)[0] for a in overrides if a.startswith("--") and "." not in a):
        if flag not in own and did_you_mean(flag, own, cutoff=0.8):
            raise parser.unknown_option(flag)


def run_sweep(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    overrides = [a for a in overrides if a != "--"]
    check_no_misspelled_sweep_option(parser, overrides)
    runs = plan_runs(args, overrides)
    for run in runs:
        config = resolved_config(run["fit_args"])
        run["folders"] = output_folders(config)
        run["updates_per_grpo_step"] = updates_per_grpo_step(config)
        if args.grpo_steps is not None:
            if run["updates_per_grpo_step"] is None:
                raise UsageError(f"--grpo_steps needs GRPO configs; {run['name']} has no "
                                 f"model.init_args.batching")
            run["fit_args"] += ["--trainer.max_steps", str(args.grpo_steps * run["updates_per_grpo_step"])]
        run["command"] = shlex.join(["r1-lightning", *run["fit_args"]])
        print(f"[sweep] {run['name']}: {run['command']}", flush=True)
    check_separate_folders(runs)
    if args.dry_run:
        return runs

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for run in runs:
        start = time.perf_counter()
        # Its own process: a fresh interpreter per run (no state carried between runs, memory given back).
        command = [sys.executable, "-m", "r1_lightning.cli", *run["fit_args"]]
        run["returncode"] = subprocess.run(command, check=False).returncode  # a failed run does not stop the sweep
        run["seconds"] = round(time.perf_counter() - start, 1)
        print(f"[sweep] {run['name']}: exit code {run['returncode']} after {run['seconds']} s", flush=True)
        (output / "sweep.json").write_text(json.dumps(runs, indent=2) + "\n")

    from r1_lightning.plotting import plot_comparison

    finished = {run["name"]: run["run_dir"] for run in runs if run["returncode"] == 0}
    if finished:
        plot = plot_comparison(finished, output / "comparison.png", f"r1-lightning sweep: {output}", args.smooth)
        print(f"[sweep] comparison of {len(finished)} runs: {plot}")
    failed = [run["name"] for run in runs if run["returncode"] != 0]
    if failed:
        raise SystemExit(f"r1-lightning sweep: these runs failed: {', '.join(failed)} (see {output / 'sweep.json'})")
    return runs
