"""The embedded default: the quickstart configs parse, a shortened quickstart run through the real
CLI improves GRPO reward, its seed reaches every phase, and the notebook runs top to bottom on its
output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import r1_lightning.quickstart.run as quickstart
from r1_lightning.cli import main
from r1_lightning.plotting import read_run
from r1_lightning.quickstart.run import repeatable_arithmetic, run_quickstart
from r1_lightning.quickstart.task import write_task_files

ROOT = Path(__file__).resolve().parents[1]
SHORT_GRPO_STEPS = 20  # of the config's 40; the SFT warm-up runs in full


@pytest.mark.parametrize("name", ["quickstart_sft.yaml", "quickstart.yaml"])
def test_quickstart_configs_parse(capsys, name):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / name), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "r1_lightning.modules." in capsys.readouterr().out


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("quickstart")
    os.environ.setdefault("R1_LIGHTNING_CACHE", str(out / "cache"))
    threads = torch.get_num_threads()  # the quickstart sets its own; give the other tests theirs back
    try:
        result = run_quickstart(["--output", str(out), "--configs", str(ROOT / "configs"),
                                 "--grpo_steps", str(SHORT_GRPO_STEPS)])
    finally:
        torch.set_num_threads(threads)
    return out, result


@pytest.mark.slow
def test_shortened_quickstart_improves_reward(short_run):
    out, result = short_run
    rewards = [value for _, value in read_run(out / "grpo")["train/reward_mean"]]
    assert len(rewards) == SHORT_GRPO_STEPS
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.05, rewards
    # The SFT warm-up imitates a teacher that forgets 70% of the carries: greedy decoding forgets
    # them all and is right only where there is none (24% of the problems). GRPO learns to carry.
    assert result["accuracy_before_grpo"] < 0.45, result
    assert result["accuracy_after_grpo"] >= 0.6, result
    assert result["accuracy_after_grpo"] > result["accuracy_before_grpo"] + 0.3, result
    assert result["grpo_steps"] == SHORT_GRPO_STEPS
    assert result["format_rate_before_grpo"] > 0.5  # the SFT warm-up taught the R1-Zero format
    assert Path(result["plot"]).stat().st_size > 10_000
    assert json.loads((out / "summary.json").read_text())["accuracy_after_grpo"] == result["accuracy_after_grpo"]


def test_repeatable_arithmetic_fixes_threads_and_kernels_then_restores_them():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    other_threads = 1 if threads != 1 else 2
    with repeatable_arithmetic(other_threads):
        assert torch.get_num_threads() == other_threads
        assert torch.are_deterministic_algorithms_enabled()
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, deterministic)


def test_the_seed_reaches_the_task_and_both_phases(monkeypatch, tmp_path):
    """`--seed 3`: the task written with seed 3 (not the shipped seed-0 data) and `seed_everything: 3`
    in both phases' resolved configs, which seeds their data order and sampling."""
    sizes = {"n_train": 64, "n_val": 8, "n_sft": 64, "seed": 0}
    monkeypatch.setattr(quickstart, "TASK_SIZES", sizes)
    monkeypatch.setenv("R1_LIGHTNING_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    result = run_quickstart(["--output", str(out), "--configs", str(ROOT / "configs"), "--seed", "3",
                             "--sft_steps", "1", "--grpo_steps", "1"])
    assert result["seed"] == 3
    expected = write_task_files(tmp_path / "seed3", **{**sizes, "seed": 3})
    unseeded = write_task_files(tmp_path / "seed0", **sizes)
    for name in ("train", "val", "sft"):
        written = (out / "data" / f"{name}.jsonl").read_bytes()
        assert written == expected[name].read_bytes() != unseeded[name].read_bytes(), name
    for phase in ("sft", "grpo"):
        (config,) = (out / phase / "logs").glob("version_*/config.yaml")
        assert "\nseed_everything: 3\n" in config.read_text(), phase


@pytest.mark.slow
def test_notebook_runs_on_the_quickstart_output(short_run):
    import nbformat
    from nbclient import NotebookClient

    out, _ = short_run
    notebook = nbformat.read(ROOT / "notebooks" / "training_curves.ipynb", as_version=4)
    os.environ["R1_RUN_DIR"] = str(out / "grpo")
    try:
        NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        os.environ.pop("R1_RUN_DIR")
    assert (out / "grpo" / "curves_from_notebook.png").stat().st_size > 10_000
    printed = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "held-out accuracy:" in printed
