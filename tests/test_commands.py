"""The `r1-lightning` command as a user meets it: `--help` lists every subcommand, an option has one
spelling everywhere, `python -m r1_lightning.cli` is the same command, and the progress bar counts
optimizer steps out of `max_steps`, after a resume too."""

from __future__ import annotations

import subprocess
import sys

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from r1_lightning.__main__ import SUBCOMMANDS, main
from r1_lightning.callbacks import StepProgressBar
from r1_lightning.quickstart.run import build_parser as quickstart_parser
from r1_lightning.sweep import build_parser as sweep_parser


def test_help_lists_every_subcommand_in_one_line(capsys):
    main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    for name in ("fit", "validate", "predict", "quickstart", "sweep"):
        described = [line for line in lines if line.split()[:1] == [name]]
        assert len(described) == 1 and len(described[0].split()) > 3, lines
    assert set(SUBCOMMANDS) == {"fit", "validate", "predict", "quickstart", "sweep"}


def test_python_m_r1_lightning_cli_is_the_same_command():
    done = subprocess.run([sys.executable, "-m", "r1_lightning.cli", "--help"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "quickstart" in done.stdout and "sweep" in done.stdout


def test_every_option_of_the_subcommands_is_spelled_with_underscores():
    """LightningCLI's spelling (`--ckpt_path`, `--print_config`): quickstart and sweep use the same."""
    for parser in (quickstart_parser(), sweep_parser()):
        options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
        assert options and all("-" not in option[2:] for option in options), options
    quickstart = {o for a in quickstart_parser()._actions for o in a.option_strings}
    assert {"--grpo_steps", "--sft_steps"} <= quickstart and "--grpo_steps" in sweep_parser()._option_string_actions


class RecordedBar(StepProgressBar):
    """Records (n, total) of the training bar when training starts and at its end."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[int, int | None]] = []

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        self.seen.append((self.train_progress_bar.n, self.train_progress_bar.total))

    def on_train_end(self, trainer, pl_module):
        self.seen.append((self.train_progress_bar.n, self.train_progress_bar.total))
        super().on_train_end(trainer, pl_module)


@pytest.mark.parametrize("max_epochs", [-1, 5])
def test_progress_counts_steps_of_max_steps_after_a_resume(tmp_path, max_epochs):
    """64 batches an epoch, stopped at step 40 of 100, resumed: 40/100 at the start, 100/100 at the
    end (Lightning's own bar restarts its count at each epoch, cut to the steps left)."""
    def trainer(max_steps, bar):
        return L.Trainer(max_steps=max_steps, max_epochs=max_epochs, accelerator="cpu", logger=False,
                         callbacks=[bar], default_root_dir=tmp_path, enable_model_summary=False,
                         limit_val_batches=0)

    first = trainer(40, RecordedBar())
    first.fit(BoringModel())
    first.save_checkpoint(tmp_path / "step40.ckpt")
    bar = RecordedBar()
    trainer(100, bar).fit(BoringModel(), ckpt_path=tmp_path / "step40.ckpt")
    assert bar.seen == [(40, 100), (100, 100)]
    assert bar.train_progress_bar.desc.startswith("Step")


def test_the_cli_shows_step_progress_unless_the_config_brings_a_bar(tiny_model_dir, toy_task_dir, tmp_path):
    from lightning.pytorch.callbacks import TQDMProgressBar

    from r1_lightning.cli import build_cli

    def bars(*extra):
        cli = build_cli(["--config", "configs/quickstart_sft.yaml", "--model.init_args.model_name_or_path",
                         tiny_model_dir, "--data.init_args.train_path", str(toy_task_dir / "sft.jsonl"),
                         "--trainer.default_root_dir", str(tmp_path), *extra], run=False)
        return [type(c) for c in cli.trainer.callbacks if isinstance(c, TQDMProgressBar)]

    assert bars() == [StepProgressBar]
    assert bars("--trainer.callbacks+", "lightning.pytorch.callbacks.TQDMProgressBar") == [TQDMProgressBar]
