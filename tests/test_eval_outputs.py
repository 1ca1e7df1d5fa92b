"""Where evaluations land: `r1-lightning validate --config configs/eval.yaml` writes into its own run's
log folder (under `--trainer.default_root_dir`), or into the folder the user names, and no
evaluation ever overwrites another's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1_lightning.cli import main
from r1_lightning.evaluation import write_eval_outputs

ROOT = Path(__file__).resolve().parents[1]
VAL_EXAMPLES = 4


def validate(tiny_model_dir, toy_task_dir, *extra) -> None:
    """configs/eval.yaml as written, on the tiny model with the policy as its engine."""
    main([str(a) for a in [
        "validate", "--config", ROOT / "configs/eval.yaml",
        "--model.init_args.model_name_or_path", tiny_model_dir,
        "--model.init_args.engine", "r1_lightning.rollout.HFEngine", "--model.init_args.eval_max_tokens", 4,
        "--data.init_args.train_path", toy_task_dir / "train.jsonl", "--data.init_args.val_path", toy_task_dir / "val.jsonl",
        "--data.init_args.max_val_examples", VAL_EXAMPLES, "--trainer.enable_progress_bar", "false", *extra,
    ]])


def evaluations(folder: Path) -> list[Path]:
    """Every per-example evaluation file under `folder`, relative to it, each checked to be whole."""
    found = sorted(folder.rglob("eval_*.jsonl"))
    for path in found:
        assert path.read_text().count("\n") == VAL_EXAMPLES, path
        summary = path.with_name(path.name.removesuffix(".jsonl") + "_summary.json")
        assert json.loads(summary.read_text())["n"] == VAL_EXAMPLES
    return [path.relative_to(folder) for path in found]


@pytest.fixture
def cwd(tmp_path, monkeypatch) -> Path:
    """An empty working directory: configs' relative run directories land in it."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_each_validate_run_writes_into_its_own_run_directory(tiny_model_dir, toy_task_dir, tmp_path, cwd):
    for run in ("first", "second"):
        validate(tiny_model_dir, toy_task_dir, "--trainer.default_root_dir", tmp_path / run)
    for run in ("first", "second"):
        assert evaluations(tmp_path / run) == [Path("logs/version_0/eval_step_0.jsonl")]
    assert evaluations(cwd) == []  # nothing in a folder the run did not name


def test_two_validate_runs_in_one_run_directory_keep_both_evaluations(tiny_model_dir, toy_task_dir, cwd):
    for _ in range(2):
        validate(tiny_model_dir, toy_task_dir)  # eval.yaml's own run directory, runs/eval
    assert evaluations(cwd) == [Path("runs/eval/logs/version_0/eval_step_0.jsonl"),
                                Path("runs/eval/logs/version_1/eval_step_0.jsonl")]


def test_two_validate_runs_into_one_named_folder_keep_both_evaluations(tiny_model_dir, toy_task_dir, tmp_path, cwd):
    for run in ("first", "second"):
        validate(tiny_model_dir, toy_task_dir, "--trainer.default_root_dir", tmp_path / run,
                 "--model.init_args.eval_output_dir", tmp_path / "mine")
    assert evaluations(tmp_path / "mine") == [Path("eval_step_0-v1.jsonl"), Path("eval_step_0.jsonl")]
    assert evaluations(tmp_path / "first") == evaluations(tmp_path / "second") == []


def test_an_evaluation_never_overwrites_the_files_of_an_earlier_one(tmp_path):
    """Three evaluations of one step into one folder: the first keeps its name and its records, the
    next take the first free versions."""
    record = {"answer_reward": 1.0, "format_reward": 1.0, "reward": 1.0, "response_tokens": 3,
              "finish_reason": "stop"}
    for accuracy in (1.0, 0.0, 0.5):
        records = [dict(record, answer_reward=accuracy)]
        assert write_eval_outputs(records, tmp_path, tag="step_7")["answer_accuracy"] == accuracy
    names = ("eval_step_7", "eval_step_7-v1", "eval_step_7-v2")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{name}.jsonl" for name in names] + [f"{name}_summary.json" for name in names])
    for name, accuracy in zip(names, (1.0, 0.0, 0.5)):
        assert json.loads((tmp_path / f"{name}.jsonl").read_text())["answer_reward"] == accuracy
        assert json.loads((tmp_path / f"{name}_summary.json").read_text())["answer_accuracy"] == accuracy
