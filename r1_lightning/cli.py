"""LightningCLI for every training phase: `r1-lightning fit` and `r1-lightning validate`.

    r1-lightning fit --config configs/grpo.yaml
    r1-lightning fit --config configs/sft.yaml --model.init_args.learning_rate 2e-5
    r1-lightning validate --config configs/eval.yaml
    r1-lightning fit --config configs/grpo.yaml --print_config

Models and data modules are chosen by `class_path` (subclass mode), so a config names the phase:
`model.class_path: r1_lightning.modules.GRPOModule`, `data.class_path: r1_lightning.data.PromptDataModule`.
`trainer.default_root_dir` is the run directory: logs, evaluations and checkpoints go under it.

The `r1-lightning` command itself (these two and `quickstart`, `sweep`) is `r1_lightning/__main__.py`,
which imports this module; this module imports nothing that runs it, so the subcommands built on
`fit` (the quickstart, a sweep) call `build_cli` from below.
"""

from __future__ import annotations

import faulthandler
import importlib
import inspect
import io
import os
import runpy
import signal
import sys
from argparse import ArgumentError
from collections.abc import Callable
from typing import NoReturn

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI

# Imported so that short class names in configs resolve (jsonargparse finds imported subclasses).
import r1_lightning.callbacks
import r1_lightning.data
import r1_lightning.rollout  # noqa: F401
from r1_lightning.callbacks.checkpoint import is_checkpoint
from r1_lightning.callbacks.progress import StepProgressBar
from r1_lightning.cli_errors import UsageError, describe_failure, describe_parse_error
from r1_lightning.distributed import compile_under_fsdp2_error
from r1_lightning.models import compile_backend
from r1_lightning.modules import PolicyModule


def wandb_offline_without_key(logger_config) -> bool:
    """Switch configured W&B loggers to offline mode when no API key is set up (no
    `WANDB_API_KEY`, no `wandb login` entry in ~/.netrc), so a run never stalls asking for one.
    Returns whether any logger was switched."""
    if os.environ.get("WANDB_API_KEY") or "api.wandb.ai" in _read_netrc():
        return False
    loggers = logger_config if isinstance(logger_config, list) else [logger_config]
    switched = False
    for logger in loggers:
        if hasattr(logger, "get"):  # a dict, or jsonargparse's Namespace
            class_path = str(logger.get("class_path", ""))
            init_args = logger.get("init_args")
            if class_path.endswith("WandbLogger") and init_args is not None and not init_args.get("offline"):
                init_args["offline"] = True
                switched = True
    if switched:
        print("r1-lightning: no W&B API key found, logging to W&B in offline mode (sync later with `wandb sync`)")
    return switched


def _read_netrc() -> str:
    path = os.path.expanduser("~/.netrc")
    return open(path).read() if os.path.exists(path) else ""


def _entries(value) -> list:
    """A config's `trainer.logger` / `trainer.callbacks`: one entry, a list of them, or none."""
    return [e for e in (value if isinstance(value, list) else [value]) if hasattr(e, "get") and e.get("class_path")]


def _class_of(entry) -> type:
    module, _, name = str(entry["class_path"]).rpartition(".")
    return getattr(importlib.import_module(module), name)


def _init_arg(entry, name: str):
    """`name` from a `class_path` / `init_args` config entry's init_args (None if it has none)."""
    init_args = entry.get("init_args") if isinstance(entry, (dict, Namespace)) else None
    return init_args.get(name) if isinstance(init_args, (dict, Namespace)) else None


def _class_name(entry) -> str | None:
    """The class name a config entry names: `ModelParallelStrategy` for a class path or a bare name."""
    path = entry.get("class_path") if isinstance(entry, (dict, Namespace)) else entry
    return str(path).rsplit(".", 1)[-1] if path else None


def fill_run_directory(trainer_config) -> str:
    """Make `trainer.default_root_dir` the run directory: every logger's `save_dir` (CSV,
    TensorBoard, W&B, ...) left unset or at its class default becomes the run directory, and every
    `ModelCheckpoint`'s unset `dirpath` becomes `<run directory>/checkpoints`. Paths the config
    sets stay. Evaluations and generation tables go under the first logger's folder, so one
    `default_root_dir` per run (e.g. per ablation) keeps runs apart, and `--ckpt_path last`
    resumes this run's own checkpoint. Returns the run directory."""
    run_dir = trainer_config.get("default_root_dir") or os.getcwd()  # Lightning's default
    for logger in _entries(trainer_config.get("logger")):
        parameter = inspect.signature(_class_of(logger)).parameters.get("save_dir")
        init_args = logger.get("init_args")
        if parameter is None or init_args is None:
            continue
        if init_args.get("save_dir") in (None, parameter.default) and not init_args.get("dir"):  # W&B's alias
            init_args["save_dir"] = run_dir
    for callback in _entries(trainer_config.get("callbacks")):
        init_args = callback.get("init_args")
        if issubclass(_class_of(callback), ModelCheckpoint) and init_args is not None and not init_args.get("dirpath"):
            init_args["dirpath"] = os.path.join(run_dir, "checkpoints")
    return run_dir


def _subcommand_config(config):
    return config[config.subcommand] if config.get("subcommand") else config


LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")  # resolved by the Trainer, not paths


class R1LightningCLI(LightningCLI):
    """LightningCLI with our module/data base classes; the modules configure their own optimizers.
    `trainer.default_root_dir` is the run directory (`fill_run_directory`)."""

    def parse_arguments(self, parser, args) -> None:
        # Loggers need their save_dir (CSVLogger's is required), which comes from the run directory:
        # parse, fill it in, then validate as LightningCLI would have.
        try:
            if isinstance(args, (dict, Namespace)):
                config = parser.parse_object(args, _skip_validation=True)
            else:
                config = parser.parse_args(args, _skip_validation=True)
        except ArgumentError as error:
            error.known_options = self._option_names(args)  # for a "did you mean" on an unknown option
            raise
        trainer_config = _subcommand_config(config).get("trainer")
        if trainer_config is not None:
            fill_run_directory(trainer_config)
        try:
            parser.validate(config)
        except (TypeError, KeyError, ArgumentError) as error:
            parser.error(str(error), error)
        self.config = config

    def before_instantiate_classes(self) -> None:
        config = _subcommand_config(self.config)
        logger = config.get("trainer", {}).get("logger")
        if logger:
            wandb_offline_without_key(logger)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and not self._resolved_by_trainer(str(ckpt_path)) and not is_checkpoint(ckpt_path):
            # before any model loads (the Trainer would find out after loading it)
            self.parser.error(f"--ckpt_path {ckpt_path}: no such checkpoint file")
        backend = compile_backend(_init_arg(config.get("model"), "compile"))
        if backend and _class_name(config.get("trainer", {}).get("strategy")) == "ModelParallelStrategy":
            self.parser.error(compile_under_fsdp2_error(backend))  # PolicyModule.configure_model refuses it too

    def _option_names(self, args) -> list[str]:
        """The options (`--trainer.max_steps`, ...) of the subcommand `args` name (of the main parser
        if they name none)."""
        named = [self._subcommand_parsers[a] for a in (args or sys.argv[1:]) if a in self._subcommand_parsers]
        return list((named[0] if named else self.parser)._option_string_actions)

    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        # Progress in optimizer steps (global_step / max_steps), right after a resume too, unless the
        # config brings its own bar or turns bars off.
        configured = config.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in configured):
            callbacks = [*callbacks, StepProgressBar()]
        return super()._instantiate_trainer(config, callbacks)

    @staticmethod
    def _resolved_by_trainer(ckpt_path: str) -> bool:
        return ckpt_path in LIGHTNING_CKPT_NAMES or ckpt_path.startswith("registry:") or "://" in ckpt_path

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
                "validate": {"model", "dataloaders", "datamodule"},
                "predict": {"model", "dataloaders", "datamodule", "return_predictions"}}


PROG = "r1-lightning"


def build_cli(args: list[str] | None = None, run: bool = True) -> R1LightningCLI:
    """The LightningCLI on `args` (default: the command line). Parse errors raise jsonargparse's
    `ArgumentError` instead of exiting, for `exit_on_user_error` to report in one line; an option is
    never matched by a prefix of its name (`--trainer.max_step` is an error, not `max_steps`)."""
    return R1LightningCLI(
        model_class=PolicyModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": PROG, "exit_on_error": False, "allow_abbrev": False},
        args=None if args is None else [str(arg) for arg in args],
        run=run,
    )


def _exit_with(message: str) -> NoReturn:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever the message
    sys.exit(2)


def exit_on_user_error(command: Callable[[], object], argv: list[str]) -> None:
    """Run `command`; bad input on the command line `argv` (an option or config value the parser
    rejects, a missing model or data file, a corrupt checkpoint, an optional package not installed)
    exits with status 2 and one line on stderr that names it first. Anything else raises."""
    try:
        command()
    except UsageError as error:
        _exit_with(str(error))
    except ArgumentError as error:
        _exit_with(describe_parse_error(error, argv))
    except Exception as error:
        message = describe_failure(error, argv)
        if message is None:
            raise
        _exit_with(message)


def print_stacks_on_usr2() -> None:
    """A run that hangs (a collective some rank never joins) says where it waits: `kill -USR2 PID`
    prints every thread's stack to stderr, and the run goes on. Not SIGUSR1: Lightning's SLURM
    requeue takes it. Skipped where stderr is no file (a notebook, pytest's capture)."""
    if not hasattr(signal, "SIGUSR2"):
        return
    try:
        faulthandler.register(signal.SIGUSR2, all_threads=True)
    except (io.UnsupportedOperation, AttributeError, ValueError):
        pass


def main(args: list[str] | None = None) -> None:
    """`r1-lightning fit ...` / `r1-lightning validate ...` (`args` start with the subcommand)."""
    argv = sys.argv[1:] if args is None else [str(arg) for arg in args]
    print_stacks_on_usr2()
    exit_on_user_error(lambda: build_cli(argv), argv)


if __name__ == "__main__":
    # `python -m r1_lightning.cli ...` is `r1-lightning ...` (every subcommand): run the package's
    # command, which imports this module, rather than importing it from here.
    runpy.run_module("r1_lightning", run_name="__main__", alter_sys=True)
