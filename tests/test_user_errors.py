"""Every user mistake we know of ends the `r1-lightning` command with one line on stderr, naming what
was wrong first, and exit code 2; never a traceback. One table, one case per mistake."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from r1_lightning.__main__ import main as command

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ["fit", "--config", "configs/quickstart.yaml", "--trainer.max_steps", "1"]
GRPO = ["fit", "--config", "configs/grpo.yaml", "--trainer.max_steps", "1"]
ENGINE_LINE = next(number for number, line in enumerate((ROOT / "configs/grpo.yaml").read_text().splitlines(), 1)
                   if line.strip().startswith("engine:"))  # where grpo.yaml chooses VLLMEngine


def no_package(monkeypatch, name: str) -> None:
    monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ModuleNotFoundError


def no_lightning_logger_package(monkeypatch, logger: str) -> None:
    """Lightning checks its loggers' packages by their installed metadata, not by importing them."""
    from lightning.fabric.loggers import tensorboard as fabric_tensorboard
    from lightning.pytorch.loggers import tensorboard, wandb
    from lightning_utilities.core.imports import RequirementCache

    if logger == "wandb":
        monkeypatch.setattr(wandb, "_WANDB_AVAILABLE", RequirementCache("wandb>=999"))
    else:
        for module in (fabric_tensorboard, tensorboard):
            for flag in ("_TENSORBOARD_AVAILABLE", "_TENSORBOARDX_AVAILABLE"):
                if hasattr(module, flag):
                    monkeypatch.setattr(module, flag, False)


def vllm_without_a_gpu(monkeypatch) -> None:
    """vLLM importable (a stand-in: the engine checks for a GPU before it builds anything of vLLM's)."""
    import types

    vllm, envs = types.ModuleType("vllm"), types.ModuleType("vllm.envs")
    vllm.__version__, vllm.envs = "0.26.0", envs
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.envs", envs)


def model_without_weights(tmp_path, tiny_model_dir) -> str:
    folder = tmp_path / "no_weights"
    shutil.copytree(tiny_model_dir, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    return str(folder)


def bad_jsonl(tmp_path) -> str:
    path = tmp_path / "train.jsonl"
    path.write_text('{"problem": "1 + 1", "answer": "2"}\n{"problem": "2 + 2", \n')
    return str(path)


def garbage_checkpoint(tmp_path) -> str:
    path = tmp_path / "last.ckpt"
    path.write_bytes(bytes(range(256)) * 40)
    return str(path)


def bad_yaml(tmp_path) -> str:
    path = tmp_path / "broken.yaml"
    path.write_text("trainer:\n  max_steps: 3\n   accelerator: cpu\n")
    return str(path)


# (case id, command line (a function of tmp_path and the tiny model), setup, what the line must say)
CASES = [
    ("no_subcommand", lambda t, m: [], None, "give a subcommand: fit, validate, predict, quickstart, sweep"),
    ("unknown_subcommand", lambda t, m: ["fitt"], None, "no subcommand 'fitt' (did you mean fit?)"),
    ("option_prefix", lambda t, m: [*QUICKSTART, "--trainer.max_step", "10"], None,
     "--trainer.max_step: no such option (did you mean --trainer.max_steps?)"),
    ("option_type", lambda t, m: [*QUICKSTART, "--trainer.max_steps", "many"], None,
     "--trainer.max_steps: expected an int, got 'many'"),
    ("module_option_typo", lambda t, m: [*QUICKSTART, "--model.init_args.learning_rat", "1"], None,
     "did you mean learning_rate"),
    ("unknown_class_path", lambda t, m: [*QUICKSTART, "--model.init_args.engine", "r1_lightning.rollout.NoSuch"],
     None, "NoSuch"),
    ("yaml_syntax", lambda t, m: ["fit", "--config", bad_yaml(t)], None, "invalid YAML"),
    ("quickstart_dashed_option", lambda t, m: ["quickstart", "--grpo-steps", "3"], None,
     "--grpo-steps: no such option of `r1-lightning quickstart` (did you mean --grpo_steps?)"),
    ("quickstart_option_prefix", lambda t, m: ["quickstart", "--grpo_step", "3"], None,
     "did you mean --grpo_steps?"),
    ("sweep_dashed_option", lambda t, m: ["sweep", "--config", "configs/grpo.yaml", "configs/ablations/baselines.yaml",
                                          "--grpo-steps", "3", "--dry_run"], None,
     "--grpo-steps: no such option of `r1-lightning sweep` (did you mean --grpo_steps?)"),
    ("sweep_missing_config", lambda t, m: ["sweep", "--config", str(t / "nope.yaml"), "--dry_run"], None,
     "nope.yaml: no such file"),
    ("missing_checkpoint", lambda t, m: [*QUICKSTART, "--ckpt_path", str(t / "nope.ckpt")], None,
     "no such checkpoint file"),
    ("corrupt_checkpoint", lambda t, m: [*QUICKSTART, "--model.init_args.model_name_or_path", m,
                                         "--ckpt_path", garbage_checkpoint(t)], None, "is corrupt or not a Lightning"),
    ("uncached_hub_model", lambda t, m: [*QUICKSTART, "--model.init_args.model_name_or_path", "nobody/not-cached"],
     None, "'nobody/not-cached' is not in the Hugging Face cache"),
    ("missing_model_folder", lambda t, m: [*QUICKSTART, "--model.init_args.model_name_or_path", str(t / "nope")],
     None, "does not exist"),
    ("model_folder_without_weights", lambda t, m: [*QUICKSTART, "--model.init_args.model_name_or_path",
                                                   model_without_weights(t, m)], None,
     "--model.init_args.model_name_or_path: Error no file named model.safetensors"),
    ("missing_data_file", lambda t, m: [*QUICKSTART, "--model.init_args.model_name_or_path", m,
                                        "--data.init_args.train_path", str(t / "nope.jsonl")], None, "nope.jsonl"),
    ("malformed_data_line", lambda t, m: [*QUICKSTART, "--model.init_args.model_name_or_path", m,
                                          "--data.init_args.train_path", bad_jsonl(t)], None, "train.jsonl:2"),
    ("reward_fn_import", lambda t, m: [*QUICKSTART, "--model.init_args.model_name_or_path", m,
                                       "--model.init_args.reward_fn", "no_such_package.rewards.fn"],
     None, "--model.init_args.reward_fn: reward function 'no_such_package.rewards.fn' could not be imported"),
    ("no_vllm", lambda t, m: [*GRPO, "--model.init_args.model_name_or_path", m],
     lambda mp: no_package(mp, "vllm"),
     (f"grpo.yaml:{ENGINE_LINE}: model.init_args.engine: needs vllm, which is not installed: "
      f"pip install -e \".[vllm]\"")),
    ("no_wandb", lambda t, m: [*QUICKSTART, "--model.init_args.model_name_or_path", m, "--trainer.logger", "lightning.pytorch.loggers.WandbLogger"],
     lambda mp: no_lightning_logger_package(mp, "wandb"), "--trainer.logger: needs wandb, which is not installed"),
    ("no_tensorboard", lambda t, m: [*QUICKSTART, "--model.init_args.model_name_or_path", m, "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger"],
     lambda mp: no_lightning_logger_package(mp, "tensorboard"),
     "--trainer.logger: needs tensorboard, which is not installed: pip install -e \".[tensorboard]\""),
    pytest.param("vllm_without_gpu", lambda t, m: [*GRPO, "--model.init_args.model_name_or_path", m],
                 vllm_without_a_gpu, "VLLMEngine needs a CUDA GPU and none is visible: without one, generate with "
                 "the policy itself (--model.init_args.engine r1_lightning.rollout.HFEngine)",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    pytest.param("gpu_accelerator_without_gpu", lambda t, m: [*QUICKSTART, "--model.init_args.model_name_or_path", m,
                                                              "--trainer.accelerator", "gpu"], None,
                 "--trainer.accelerator: No supported gpu backend found! This machine has no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
]


@pytest.mark.parametrize("case, argv, setup, expected", CASES, ids=[
    c.values[0] if hasattr(c, "values") else c[0] for c in CASES])
def test_a_user_mistake_is_one_line_and_exit_code_2(case, argv, setup, expected, tmp_path, tiny_model_dir,
                                                    monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the configs name their data relative to the repository
    if setup is not None:
        setup(monkeypatch)
    args = argv(tmp_path, tiny_model_dir)
    if args[:1] == ["fit"]:
        args += ["--trainer.default_root_dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit_info:
        command(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("r1-lightning")]
    assert len(ours) == 1 and err.rstrip().endswith(ours[0]), err[-3000:]
    assert "Traceback" not in err and "Union subtypes" not in err and "usage:" not in err
    assert ours[0].startswith("r1-lightning: error: ") and expected in ours[0], ours[0]
