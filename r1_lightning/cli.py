"""`r1-lightning`: LightningCLI for every phase.

    r1-lightning fit --config configs/grpo.yaml
    r1-lightning fit --config configs/sft.yaml --model.init_args.learning_rate 2e-5
    r1-lightning validate --config configs/eval.yaml
    r1-lightning fit --config configs/grpo.yaml --print_config
    r1-lightning quickstart            # the offline CPU demo: SFT warm-up, then GRPO

Models and data modules are chosen by `class_path` (subclass mode), so a config names the phase:
`model.class_path: r1_lightning.modules.GRPOModule`, `data.class_path: r1_lightning.data.PromptDataModule`.
"""

from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.cli import LightningCLI

# Imported so that short class names in configs resolve (jsonargparse finds imported subclasses).
import r1_lightning.callbacks  # noqa: F401
import r1_lightning.data  # noqa: F401
import r1_lightning.rollout  # noqa: F401
from r1_lightning.modules import PolicyModule


class R1LightningCLI(LightningCLI):
    """LightningCLI with our module/data base classes; the modules configure their own optimizers."""

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
    build_cli(argv)


if __name__ == "__main__":
    main()
