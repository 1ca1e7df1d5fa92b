"""`r1-lightning`: LightningCLI for every phase.

    r1-lightning fit --config configs/grpo.yaml
    r1-lightning fit --config configs/sft.yaml --model.init_args.learning_rate 2e-5
    r1-lightning validate --config configs/eval.yaml
    r1-lightning fit --config configs/grpo.yaml --print_config
    r1-lightning quickstart            # the offline CPU demo: SFT warm-up, then GRPO
    r1-lightning sweep --config configs/grpo.yaml configs/ablations/*.yaml   # one run per overlay

Models and data modules are chosen by `class_path` (subclass mode), so a config names the phase:
`model.class_path: r1_lightning.modules.GRPOModule`, `data.class_path: r1_lightning.data.PromptDataModule`.
"""

from __future__ import annotations

import os
import sys

import lightning as L
from lightning.pytorch.cli import LightningCLI

# Imported so that short class names in configs resolve (jsonargparse finds imported subclasses).
import r1_lightning.callbacks
import r1_lightning.data
import r1_lightning.rollout  # noqa: F401
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


class R1LightningCLI(LightningCLI):
    """LightningCLI with our module/data base classes; the modules configure their own optimizers."""

    def before_instantiate_classes(self) -> None:
        config = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        logger = config.get("trainer", {}).get("logger")
        if logger:
            wandb_offline_without_key(logger)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
                "validate": {"model", "dataloaders", "datamodule"}}


def build_cli(args: list[str] | None = None, run: bool = True) -> R1LightningCLI:
    return R1LightningCLI(
        model_class=PolicyModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] == "quickstart":
        from r1_lightning.quickstart.run import run_quickstart

        run_quickstart(argv[1:])
        return
    if argv and argv[0] == "sweep":
        from r1_lightning.sweep import run_sweep

        run_sweep(argv[1:])
        return
    build_cli(argv)


if __name__ == "__main__":
    main()
