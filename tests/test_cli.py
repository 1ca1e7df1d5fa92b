"""The `r1-lightning` CLI: every config parses, bad input fails early and clearly, and SFT, expert
iteration and GRPO run end to end on a tiny model through the real entry point."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from grpo_options import grpo_options
from safetensors.torch import load_file

from r1_lightning.__main__ import main as command
from r1_lightning.cli import build_cli, main

ROOT = Path(__file__).resolve().parents[1]
# every full config (ablations are overlays, tested on top of grpo.yaml below)
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "ablations")
ABLATIONS = sorted((ROOT / "configs" / "ablations").glob("*.yaml"))


def run_cli(args: list[str]) -> None:
    """Run the CLI in-process (the console script calls the same `main`)."""
    main([str(a) for a in args])


def parsed_config(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(args + ["--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_prints(capsys, config):
    subcommand = "validate" if config.name.startswith("eval") else {"difficulty.yaml": "predict"}.get(config.name, "fit")
    out = parsed_config(capsys, [subcommand, "--config", config])
    assert "class_path: r1_lightning." in out


@pytest.mark.parametrize("ablation", ABLATIONS, ids=lambda p: p.name)
def test_every_ablation_overlays_grpo(capsys, ablation):
    out = parsed_config(capsys, ["fit", "--config", ROOT / "configs/grpo.yaml", "--config", ablation])
    assert "GRPOModule" in out
    overlay = ablation.read_text()
    for key in ("loss_type", "use_std_normalization", "loss_agg", "epochs_per_rollout_batch", "template"):
        if f"{key}:" in overlay:
            value = overlay.split(f"{key}:")[1].split()[0]
            assert f"{key}: {value}" in out, f"{ablation.name}: {key} not applied"


def test_each_run_directory_keeps_its_logs_and_checkpoints(tiny_model_dir, toy_task_dir, tmp_path, monkeypatch):
    """One directory per run: two ablations of grpo.yaml (each sets only its default_root_dir) log,
    evaluate and checkpoint in separate folders; a save_dir or dirpath given explicitly still wins."""
    monkeypatch.chdir(tmp_path)  # the configs' run directories are relative

    def trainer_for(*args):
        cli = build_cli([str(a) for a in [
            "--config", ROOT / "configs/grpo.yaml", *args, "--model.init_args.model_name_or_path", tiny_model_dir,
            "--model.init_args.engine", "r1_lightning.rollout.HFEngine",
            "--data.init_args.train_path", toy_task_dir / "train.jsonl", "--data.init_args.val_path", toy_task_dir / "val.jsonl",
        ]], run=False)
        return cli.trainer

    for ablation in ("learning_rate", "baselines"):
        trainer = trainer_for("--config", ROOT / f"configs/ablations/{ablation}.yaml")
        run_dir = tmp_path / "runs" / "ablations" / ablation
        assert Path(trainer.log_dir).resolve() == run_dir / "logs" / "version_0"  # evaluations go in it too
        assert Path(trainer.checkpoint_callback.dirpath) == run_dir / "checkpoints"
    trainer = trainer_for("--trainer.logger.init_args.save_dir", tmp_path / "mine",
                          "--trainer.callbacks.dirpath", tmp_path / "my_checkpoints")
    assert Path(trainer.log_dir) == tmp_path / "mine" / "logs" / "version_0"
    assert Path(trainer.checkpoint_callback.dirpath) == tmp_path / "my_checkpoints"


def test_run_directory_fills_every_logger_and_checkpoint_callback():
    from r1_lightning.cli import fill_run_directory

    def entry(class_path, **init_args):
        return {"class_path": class_path, "init_args": init_args}

    loggers = "lightning.pytorch.loggers."
    config = {"default_root_dir": "runs/x", "logger": [
        entry(loggers + "CSVLogger", save_dir=None, name="logs"), entry(loggers + "TensorBoardLogger", save_dir=None),
        entry(loggers + "WandbLogger", save_dir="."),  # W&B's default
        entry(loggers + "WandbLogger", save_dir=".", dir="wandb_here"), entry(loggers + "CSVLogger", save_dir="mine"),
    ], "callbacks": [
        entry("r1_lightning.callbacks.HFExportCheckpoint", dirpath=None), entry("r1_lightning.callbacks.RolloutWeightSync"),
        entry("lightning.pytorch.callbacks.ModelCheckpoint", dirpath="kept"),
    ]}
    assert fill_run_directory(config) == "runs/x"
    assert [e["init_args"]["save_dir"] for e in config["logger"]] == ["runs/x", "runs/x", "runs/x", ".", "mine"]
    assert [e["init_args"].get("dirpath") for e in config["callbacks"]] == ["runs/x/checkpoints", None, "kept"]


def test_grpo_config_has_the_cs336_defaults(capsys):
    out = parsed_config(capsys, ["fit", "--config", ROOT / "configs/grpo.yaml"])
    for expected in ("max_steps: 200", "learning_rate: 1.0e-05", "rollout_batch_size: 256", "group_size: 8",
                     "sampling_temperature: 1.0", "sampling_min_tokens: 4", "sampling_max_tokens: 1024",
                     "epochs_per_rollout_batch: 1", "train_batch_size: 256", "gradient_accumulation_steps: 128",
                     "loss_type: reinforce_with_baseline", "use_std_normalization: true",
                     "class_path: r1_lightning.rollout.VLLMEngine", "gpu_memory_utilization: 0.85"):
        assert expected in out, expected


@pytest.mark.parametrize(
    "override, message",
    [
        (["--model.init_args.learning_rat", "1e-5"], "learning_rat"),
        (["--model.init_args.batching.group_size", "eight"], "group_size"),
        (["--model.init_args.engine.class_path", "NoSuchEngine"], "NoSuchEngine"),
        # grpo.yaml compiles; FSDP2 given by name or by class path
        (["--trainer.strategy", "ModelParallelStrategy", "--trainer.strategy.data_parallel_size", "2"],
         "error: --model.init_args.compile inductor under FSDP2"),
        (["--trainer.strategy", '{"class_path": "lightning.pytorch.strategies.ModelParallelStrategy"}',
          "--model.init_args.compile", "true"], "error: --model.init_args.compile inductor under FSDP2"),
    ],
)
def test_bad_option_fails_before_any_model_loads(capsys, override, message):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", ROOT / "configs/grpo.yaml", *override])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_fsdp2_runs_eager(tiny_model_dir):
    """The module refuses `compile` once a strategy gave it a device mesh (FSDP2), before it loads
    the policy, and the CLI lets FSDP2 through with compile off."""
    from r1_lightning.modules import GRPOModule

    module = GRPOModule(tiny_model_dir, **grpo_options(rollout_batch_size=8, group_size=4, train_batch_size=8,
                        gradient_accumulation_steps=1, compile="inductor"))
    module._device_mesh = object()  # what ModelParallelStrategy sets before configure_model
    with pytest.raises(ValueError, match="--model.init_args.compile inductor under FSDP2"):
        module.configure_model()
    assert module.policy is None
    cli = build_cli(["--config", str(ROOT / "configs/grpo.yaml"), "--model.init_args.model_name_or_path", tiny_model_dir,
                     "--model.init_args.engine", "r1_lightning.rollout.HFEngine", "--model.init_args.compile", "false",
                     "--trainer.strategy", "ModelParallelStrategy", "--trainer.strategy.data_parallel_size", "1",
                     "--trainer.strategy.tensor_parallel_size", "1", "--trainer.accelerator", "cpu"], run=False)
    assert type(cli.trainer.strategy).__name__ == "ModelParallelStrategy"


def test_inconsistent_grpo_batch_sizes_name_the_options(tiny_model_dir):
    from r1_lightning.modules import GRPOModule

    with pytest.raises(ValueError, match="rollout_batch_size .* must be divisible by group_size"):
        GRPOModule(tiny_model_dir, **grpo_options(rollout_batch_size=10, group_size=4, train_batch_size=10, gradient_accumulation_steps=1))
    with pytest.raises(ValueError, match="train_batch_size .* divisible by gradient_accumulation_steps"):
        GRPOModule(tiny_model_dir, **grpo_options(rollout_batch_size=8, group_size=4, train_batch_size=8, gradient_accumulation_steps=3))


# ----------------------------------------------------------------------------- tiny runs
def tiny_grpo_args(model_dir, task_dir, out_dir, max_steps, extra=()) -> list:
    return [
        "fit", "--config", ROOT / "configs/grpo.yaml",
        "--model.init_args.model_name_or_path", model_dir,
        "--model.init_args.engine", "r1_lightning.rollout.HFEngine",
        "--model.init_args.reward_fn", "toy_rewards.digit_fraction_reward",
        "--model.init_args.batching.rollout_batch_size", 8, "--model.init_args.batching.group_size", 4,
        "--model.init_args.batching.train_batch_size", 8, "--model.init_args.batching.gradient_accumulation_steps", 2,
        "--model.init_args.sampling_max_tokens", 12, "--model.init_args.eval_max_tokens", 12,
        "--model.init_args.gradient_checkpointing", "false", "--model.init_args.learning_rate", 1e-2,
        "--model.init_args.compile", "false",  # the config's inductor: a C++ compile per run on the CPU
        "--data.init_args.train_path", task_dir / "train.jsonl", "--data.init_args.val_path", task_dir / "val.jsonl",
        "--data.init_args.batch_size", 2, "--data.init_args.val_batch_size", 10,
        "--data.init_args.max_val_examples", 10,
        "--trainer.max_steps", max_steps, "--trainer.default_root_dir", out_dir,
        "--trainer.logger.init_args.save_dir", out_dir,
        "--trainer.callbacks.dirpath", out_dir / "ckpt", "--trainer.callbacks.save_last", "true",
        "--trainer.callbacks.every_n_train_steps", 1, "--trainer.enable_progress_bar", "false",
        *extra,
    ]


def logged(out_dir: Path, metric: str) -> list[float]:
    (metrics_csv,) = out_dir.glob("logs/version_*/metrics.csv")
    with open(metrics_csv) as f:
        return [float(row[metric]) for row in csv.DictReader(f) if row.get(metric)]


def policy_state(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_seed_everything_seeds_the_sampling_and_the_data_order_unless_they_set_their_own(tiny_model_dir, toy_task_dir):
    """Runs that differ only in --seed_everything sample different rollouts in a different data order;
    an explicit module or data seed still wins."""
    def seeds(*args):
        cli = build_cli([str(a) for a in [
            "--config", ROOT / "configs/grpo.yaml", "--model.init_args.model_name_or_path", tiny_model_dir,
            "--model.init_args.engine", "r1_lightning.rollout.HFEngine",
            "--data.init_args.train_path", toy_task_dir / "train.jsonl", *args,
        ]], run=False)
        return cli.model.seed, cli.datamodule.seed, cli.model.step_sampling(4).seed

    assert seeds() == (0, 0, 4)
    assert seeds("--seed_everything", 3) == (3, 3, 7)
    assert seeds("--seed_everything", 3, "--model.init_args.seed", 5, "--data.init_args.seed", 7) == (5, 7, 9)


def test_grpo_fit_runs_logs_and_exports(tiny_model_dir, toy_task_dir, tmp_path):
    # a data seed other than the module's (sampling) seed: both are called `seed`, and Lightning refuses
    # to log two hparams of one name with different values
    run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, tmp_path, max_steps=2, extra=["--data.init_args.seed", 1]))
    for metric in ("train/reward_mean", "train/loss", "train/entropy", "train/grad_norm", "train/response_length",
                   "perf/rollout_tokens_per_s", "val/answer_accuracy"):
        assert logged(tmp_path, metric), metric
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["datamodule_hyper_parameters"]["seed"] == 1
    exported = tmp_path / "ckpt" / "last_hf"
    assert (exported / "model.safetensors").is_file() and (exported / "tokenizer.json").is_file()
    assert list((tmp_path / "logs").glob("version_*/eval/eval_step_2_summary.json"))
    # The export is the trained policy, not the initial weights.
    start, end = policy_state(Path(tiny_model_dir)), policy_state(exported)
    assert any(not torch.equal(start[k], end[k]) for k in end)


def test_grpo_resume_is_exact(tiny_model_dir, toy_task_dir, tmp_path):
    """4 GRPO steps straight == 2 steps, stop, `--ckpt_path last`, 2 more (bitwise, on the CPU)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, straight, max_steps=4))
    run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, resumed, max_steps=2))
    run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, resumed, max_steps=4, extra=["--ckpt_path", "last"]))
    a, b = policy_state(straight / "ckpt" / "last_hf"), policy_state(resumed / "ckpt" / "last_hf")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # and the run really moved: 4 steps differ from 2
    two = torch.load(resumed / "ckpt" / "step=2.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert any(not torch.equal(two[f"policy.{k}"], a[k]) for k in a if f"policy.{k}" in two)


def test_grpo_learns_a_dense_toy_reward(tiny_model_dir, toy_task_dir, tmp_path):
    """GRPO with the HF engine raises a random tiny model's mean reward by a clear margin."""
    run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, tmp_path, max_steps=25, extra=[
        "--model.init_args.batching.rollout_batch_size", 32, "--model.init_args.batching.group_size", 8,
        "--model.init_args.batching.train_batch_size", 32, "--model.init_args.batching.gradient_accumulation_steps", 1,
        "--model.init_args.learning_rate", 1e-2, "--data.init_args.batch_size", 4,
        "--model.init_args.sampling_max_tokens", 8,
        "--trainer.callbacks.every_n_train_steps", 100,
    ]))
    rewards = logged(tmp_path, "train/reward_mean")
    assert len(rewards) == 25
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.4, (first, last)


def test_sft_fit_lowers_the_loss(tiny_model_dir, toy_task_dir, tmp_path):
    run_cli([
        "fit", "--config", ROOT / "configs/sft.yaml",
        "--model.init_args.model_name_or_path", tiny_model_dir,
        "--model.init_args.learning_rate", 3e-3, "--model.init_args.gradient_accumulation_steps", 2,
        "--model.init_args.gradient_checkpointing", "true", "--model.init_args.warmup_steps", 0,
        "--data.init_args.train_path", toy_task_dir / "sft.jsonl", "--data.init_args.batch_size", 8,
        "--trainer.max_epochs", 2, "--trainer.default_root_dir", tmp_path,
        "--trainer.logger.init_args.save_dir", tmp_path, "--trainer.callbacks.dirpath", tmp_path / "ckpt",
        "--trainer.enable_progress_bar", "false",
    ])
    losses = logged(tmp_path, "train/loss")
    assert len(losses) == 20  # 80 examples / 8 per step x 2 epochs
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3
    assert (tmp_path / "ckpt" / "last_hf" / "model.safetensors").is_file()


def test_expert_iteration_fit_runs(tiny_model_dir, toy_task_dir, tmp_path):
    run_cli([
        "fit", "--config", ROOT / "configs/ei.yaml",
        "--model.init_args.model_name_or_path", tiny_model_dir,
        "--model.init_args.engine", "r1_lightning.rollout.HFEngine",
        "--model.init_args.group_size", 2, "--model.init_args.sampling_max_tokens", 12,
        "--model.init_args.eval_max_tokens", 12, "--model.init_args.sft_batch_size", 2,
        "--model.init_args.gradient_accumulation_steps", 1, "--model.init_args.gradient_checkpointing", "false",
        "--data.init_args.train_path", toy_task_dir / "train.jsonl", "--data.init_args.val_path", toy_task_dir / "val.jsonl",
        "--data.init_args.batch_size", 4, "--data.init_args.val_batch_size", 10, "--data.init_args.max_val_examples", 10,
        "--trainer.limit_train_batches", 2, "--trainer.default_root_dir", tmp_path,
        "--trainer.logger.init_args.save_dir", tmp_path, "--trainer.callbacks.dirpath", tmp_path / "ckpt",
        "--trainer.enable_progress_bar", "false",
    ])
    kept = logged(tmp_path, "ei/kept")
    assert len(kept) == 2 and all(k >= 0 for k in kept)
    assert (tmp_path / "generations.jsonl").exists() or list(tmp_path.glob("logs/version_*/generations.jsonl"))


def test_console_script_runs_validate(tiny_model_dir, toy_task_dir, tmp_path):
    """The installed `r1-lightning` script, in a subprocess: zero-shot evaluation writes its files."""
    out = tmp_path / "eval"
    args = [sys.executable, "-m", "r1_lightning.cli", "validate", "--config", ROOT / "configs/eval.yaml",
         "--model.init_args.model_name_or_path", tiny_model_dir,
         "--model.init_args.engine", "r1_lightning.rollout.HFEngine", "--model.init_args.eval_max_tokens", 8,
         "--model.init_args.eval_output_dir", out,
         "--data.init_args.train_path", toy_task_dir / "train.jsonl", "--data.init_args.val_path", toy_task_dir / "val.jsonl",
         "--data.init_args.val_batch_size", 10, "--trainer.default_root_dir", tmp_path,
         "--trainer.logger.init_args.save_dir", tmp_path]
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "eval_step_0.jsonl").read_text().count("\n") == 20
    assert "answer_accuracy" in (out / "eval_step_0_summary.json").read_text()


def test_wandb_logger_goes_offline_without_an_api_key(monkeypatch, tmp_path):
    from r1_lightning.cli import wandb_offline_without_key

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "x"}},
               {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"project": "r1"}}]
    assert wandb_offline_without_key(loggers)
    assert loggers[1]["init_args"]["offline"] is True and "offline" not in loggers[0]["init_args"]
    monkeypatch.setenv("WANDB_API_KEY", "k")
    loggers[1]["init_args"]["offline"] = False
    assert not wandb_offline_without_key(loggers)


def test_a_tokenizers_library_tokenizer_reloads_exactly(tiny_model_dir):
    """transformers 5's AutoTokenizer would load the tiny Qwen2 folder's tokenizer as a byte-level
    Qwen2Tokenizer that drops spaces; `load_tokenizer` must give back the tokenizer as saved."""
    from r1_lightning.models import load_tokenizer
    from r1_lightning.quickstart.tokenizer import build_tokenizer

    text = "What is 347 + 285? </think> <answer> 632 </answer>"
    loaded, built = load_tokenizer(tiny_model_dir), build_tokenizer()
    ids = loaded(text, add_special_tokens=False)["input_ids"]
    assert ids == built(text, add_special_tokens=False)["input_ids"]
    assert loaded.decode(ids) == text


# ----------------------------------------------------------------------------- errors in one line
def config_with(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    """configs/grpo.yaml with one line changed; returns the file and that line's number (1-based)."""
    lines = (ROOT / "configs/grpo.yaml").read_text().splitlines(keepends=True)
    (index,) = [i for i, line in enumerate(lines) if line.strip().startswith(old)]
    lines[index] = lines[index].replace(old, new)
    path = tmp_path / "bad.yaml"
    path.write_text("".join(lines))
    return path, index + 1


def first_error_line(capsys, args: list) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Union subtypes" not in err and "usage:" not in err
    return err.splitlines()[0]


@pytest.mark.parametrize(
    "old, new, option, expected",
    [
        ("learning_rate: 1.0e-5", "learning_rat: 1.0e-5", "model.init_args.learning_rat",
         "did you mean learning_rate"),
        ("learning_rate: 1.0e-5", "learning_rate: abc", "model.init_args.learning_rate",
         "expected a float, got 'abc'"),
        ("class_path: r1_lightning.rollout.VLLMEngine", "class_path: r1_lightning.rollout.NoSuchEngine",
         "model.init_args.engine.class_path", "NoSuchEngine"),
    ],
    ids=["typo", "type", "class_path"],
)
def test_a_bad_config_value_is_named_first_with_file_and_line(capsys, tmp_path, old, new, option, expected):
    config, line = config_with(tmp_path, old, new)
    first = first_error_line(capsys, ["fit", "--config", config])
    assert first.startswith(f"r1-lightning: error: {config}:{line}: {option}: "), first
    assert expected in first


def test_a_bad_command_line_value_is_named_first(capsys):
    args = ["fit", "--config", ROOT / "configs/grpo.yaml", "--trainer.max_steps", "many"]
    first = first_error_line(capsys, args)
    assert first == "r1-lightning: error: --trainer.max_steps: expected an int, got 'many'"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_checkpoint_is_named_in_one_line(capsys, tmp_path, damage):
    ckpt = tmp_path / "last.ckpt"
    if damage == "garbage":
        ckpt.write_bytes(bytes(range(256)) * 40)
    else:
        torch.save({"state_dict": {"w": torch.zeros(4096)}, "pytorch-lightning_version": "2.6"}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:2000])
    first = first_error_line(capsys, ["fit", "--config", ROOT / "configs/quickstart_sft.yaml",
                                      "--ckpt_path", ckpt])
    assert first == f"r1-lightning: error: checkpoint {ckpt} is corrupt or not a Lightning checkpoint"


def test_an_uncached_hub_model_offline_fails_at_once_naming_it(capsys):
    """HF_HUB_OFFLINE=1 (tests/conftest.py) and a hub id that is in no cache."""
    start = time.perf_counter()
    hub_id = "r1-lightning-tests/not-cached"
    first = first_error_line(capsys, ["fit", "--config", ROOT / "configs/grpo.yaml",
                                      "--model.init_args.model_name_or_path", hub_id])
    assert time.perf_counter() - start < 10
    assert first.startswith(f"r1-lightning: error: model {hub_id!r} is not in the Hugging Face cache")
    assert "--model.init_args.model_name_or_path /path/to/folder" in first and "builtin:quickstart" in first


def test_no_lightning_cli_warning(capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parsed_config(capsys, ["fit", "--config", ROOT / "configs/quickstart.yaml"])
    assert not [w for w in caught if Path(w.filename).parts[-3:] == ("lightning", "pytorch", "cli.py")]


def test_the_quickstart_draws_no_model_shard_bars(capfd, monkeypatch, tmp_path):
    """Its own progress and summary, not a "Writing model shards" bar per export (a smaller task)."""
    import r1_lightning.quickstart.run as quickstart

    monkeypatch.setattr(quickstart, "TASK_SIZES", {"n_train": 64, "n_val": 8, "n_sft": 64, "seed": 0})
    monkeypatch.setenv("R1_LIGHTNING_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    try:
        command(["quickstart", "--output", tmp_path, "--configs", ROOT / "configs",
                 "--sft_steps", 1, "--grpo_steps", 1])
    finally:
        torch.set_num_threads(threads)
    out, err = capfd.readouterr()
    assert "r1-lightning quickstart finished" in out
    assert "Writing model shards" not in err + out


def test_usr2_prints_every_threads_stack_and_the_run_goes_on():
    """A hung run (a collective some rank never joins) says where it waits: SIGUSR2 makes the CLI's
    process print each thread's stack, and the run is not stopped by it."""
    script = """
import os, signal, sys
from r1_lightning import cli
def hung_fit(argv):
    os.kill(os.getpid(), signal.SIGUSR2)
    print("still running", flush=True)
cli.build_cli = hung_fit
cli.main(["fit"])
"""
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "still running"
    assert "Current thread" in done.stderr and "in hung_fit" in done.stderr
