"""The paths the CS336 ablations take, pinned at the module level, then each overlay of
configs/ablations run through the real CLI on a tiny model, then the sweep command and the
comparison plot.

Module-level tests go through stable seams only: the GRPOModule constructor and a Lightning
Trainer, a rollout engine and reward function of the test's own, the logged CSV metrics, and the
public functional API (for an independent re-computation of the expected parameters)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from ablation_helpers import (
    FixedEngine,
    column,
    group_advantages,
    leading_digit_reward,
    read_csv_metrics,
    read_jsonl,
    reference_grpo_step,
    rollout_texts,
)
from grpo_options import grpo_options
from lightning.pytorch.loggers import CSVLogger

from r1_lightning.__main__ import main as command
from r1_lightning.cli import main
from r1_lightning.data import PromptDataModule
from r1_lightning.functional import compute_group_normalized_rewards
from r1_lightning.modules import GRPOModule
from r1_lightning.plotting import comparison_figure, plot_comparison, read_run
from r1_lightning.sweep import run_sweep


def fit_fixed_rollouts(model_dir, task_dir, out_dir, max_steps, engine=None, **module_kwargs):
    """Fit a GRPOModule on the FixedEngine's rollouts (8 samples: 2 prompts x 4) for `max_steps`
    optimizer updates; CSV metrics under `out_dir`."""
    kwargs = {"rollout_batch_size": 8, "group_size": 4, "train_batch_size": 8, "gradient_accumulation_steps": 1,
              "reward_fn": "ablation_helpers.leading_digit_reward", "learning_rate": 1e-2, "seed": 0}
    kwargs.update(module_kwargs)
    engine = engine or FixedEngine()
    module = GRPOModule(model_dir, **grpo_options(engine=engine, **kwargs))
    data = PromptDataModule(str(task_dir / "train.jsonl"), batch_size=kwargs["rollout_batch_size"] // kwargs["group_size"],
                            seed=kwargs["seed"])
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=CSVLogger(out_dir, name="logs"),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        log_every_n_steps=1, default_root_dir=out_dir)
    trainer.fit(module, datamodule=data)
    return module, engine


# ----------------------------------------------------------------------------- one GRPO step, re-computed
@pytest.mark.parametrize("train_batch_size, accumulation, epochs, loss_type", [
    (4, 2, 1, "grpo_clip"),  # 2 train batches: the second needs old log-probs and its own advantages
    (4, 1, 1, "reinforce_with_baseline"),  # each train batch with its own samples' advantages
    (8, 2, 3, "grpo_clip"),  # 3 epochs over one train batch: the stored old log-probs make the ratio
], ids=["off_policy_train_batches", "on_policy_train_batches", "epochs"])
def test_grpo_step_equals_the_independent_computation(tiny_model_dir, toy_task_dir, tmp_path, train_batch_size,
                                                      accumulation, epochs, loss_type):
    """One GRPO step of 8 fixed rollouts (distinct rewards, lengths sorted differently from the
    rollout order) with several optimizer updates ends at the parameters that the public functional
    API and a hand-written AdamW loop reach: each train batch trained in rollout order with its own
    samples' advantages, and, for grpo_clip, against log-probs of the policy before this rollout
    batch's first update."""
    n_updates = epochs * 8 // train_batch_size
    config = {"group_size": 4, "train_batch_size": train_batch_size, "epochs": epochs, "loss_type": loss_type,
              "learning_rate": 1e-2, "advantage_eps": 1.0}
    module, engine = fit_fixed_rollouts(
        tiny_model_dir, toy_task_dir, tmp_path, n_updates, train_batch_size=train_batch_size,
        gradient_accumulation_steps=accumulation, epochs_per_rollout_batch=epochs, loss_type=loss_type,
        learning_rate=1e-2, advantage_eps=1.0,
    )
    assert module.global_step == n_updates and len(engine.calls) == 1  # one rollout batch
    prompts, responses = rollout_texts(engine)
    expected = reference_grpo_step(tiny_model_dir, module.tokenizer, prompts, responses, **config)
    # Adam moves every weight by about the learning rate per update, so a wrong advantage or ratio
    # shows at that scale; sorting, padding and microbatching leave only float rounding, largest
    # (still well under 5% of a step) where a tiny gradient meets Adam's eps.
    for name, param in module.policy.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], rtol=0, atol=0.05 * config["learning_rate"])


def test_epochs_reuse_the_old_log_probs_so_clipping_acts(tiny_model_dir, toy_task_dir, tmp_path):
    """With several epochs over one rollout batch and a large step, the ratio to the stored old
    log-probs leaves [0.8, 1.2]: the logged clip fraction is above 0 (it would be exactly 0 if the
    old log-probs were the current ones) and the ratio mean is not 1."""
    fit_fixed_rollouts(tiny_model_dir, toy_task_dir, tmp_path, 3, epochs_per_rollout_batch=3, loss_type="grpo_clip",
                       learning_rate=5e-2)
    rows = read_csv_metrics(tmp_path)
    (clip_fraction,) = column(rows, "train/clip_fraction")
    (ratio_mean,) = column(rows, "train/ratio_mean")
    assert clip_fraction > 0.05, clip_fraction
    assert abs(ratio_mean - 1) > 1e-3, ratio_mean


# ----------------------------------------------------------------------------- rollout seed
def test_rollout_seed_is_base_seed_plus_global_step(tiny_model_dir, toy_task_dir, tmp_path):
    """Sampling seed = seed + global step (optimizer updates so far), so a resumed run samples what
    the straight run did: with 2 updates per GRPO step, 3 steps sample with seeds 5, 7, 9."""
    _, engine = fit_fixed_rollouts(tiny_model_dir, toy_task_dir, tmp_path, 6, seed=5, train_batch_size=4)
    assert [sampling.seed for _, sampling in engine.calls] == [5, 7, 9]


# ----------------------------------------------------------------------------- advantage epsilon
def test_advantage_epsilon_is_added_to_the_unbiased_std():
    """At eps = 1 the placements differ: (r - mean) / (std + eps) with the unbiased std, not
    / sqrt(var + eps), not / std + eps, not the biased std."""
    rewards = [0.0, 2.0, 4.0, 3.0, 3.0, 9.0]

    def reward_fn(response, ground_truth):
        return {"reward": float(response)}

    advantages, raw, _ = compute_group_normalized_rewards(
        reward_fn, [str(r) for r in rewards], ["x"] * 6, group_size=3, advantage_eps=1.0, normalize_by_std=True
    )
    # group 1: mean 2, unbiased std sqrt((4 + 0 + 4) / 2) = 2;  group 2: mean 5, std sqrt((4 + 4 + 16) / 2)
    s2 = math.sqrt(12)
    expected = [-2 / 3, 0.0, 2 / 3, -2 / (s2 + 1), -2 / (s2 + 1), 4 / (s2 + 1)]
    torch.testing.assert_close(advantages, torch.tensor(expected))
    torch.testing.assert_close(raw, torch.tensor(rewards))


def test_module_logs_advantages_normalized_with_its_epsilon(tiny_model_dir, toy_task_dir, tmp_path):
    """The module's `advantage_eps` and `use_std_normalization` reach the normalizer: the logged
    mean |advantage| of the fixed rollouts is the hand-computed one (eps = 1 in the std's denominator)."""
    for name, by_std in (("std", True), ("no_std", False)):
        _, engine = fit_fixed_rollouts(tiny_model_dir, toy_task_dir, tmp_path / name, 1, advantage_eps=1.0,
                                       use_std_normalization=by_std)
        _, responses = rollout_texts(engine)
        rewards = [leading_digit_reward(r, "")["reward"] for r in responses]
        expected = float(group_advantages(rewards, 4, 1.0, by_std).abs().mean())
        (logged,) = column(read_csv_metrics(tmp_path / name), "train/advantage_abs_mean")
        assert logged == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- the overlays, end to end
ROOT = Path(__file__).resolve().parents[1]
GRPO_YAML = str(ROOT / "configs" / "grpo.yaml")
OVERLAYS = sorted((ROOT / "configs" / "ablations").glob("*.yaml"))


def overlay(name: str) -> str:
    return str(ROOT / "configs" / "ablations" / f"{name}.yaml")


def overlay_value(name: str, key: str):
    return yaml.safe_load(Path(overlay(name)).read_text())["model"]["init_args"][key]


def tiny_overrides(model_dir, task_dir) -> list[str]:
    """CLI overrides that shrink configs/grpo.yaml to the tiny model and toy task: 2 prompts x 4
    samples of at most 12 tokens per GRPO step, 2 GRPO steps, a 10-question evaluation."""
    args = [
        "--model.init_args.model_name_or_path", model_dir,
        "--model.init_args.engine", "r1_lightning.rollout.HFEngine",
        "--model.init_args.batching.rollout_batch_size", 8, "--model.init_args.batching.group_size", 4,
        "--model.init_args.batching.train_batch_size", 8, "--model.init_args.batching.gradient_accumulation_steps", 2,
        "--model.init_args.sampling_max_tokens", 12, "--model.init_args.eval_max_tokens", 12,
        "--model.init_args.gradient_checkpointing", "false",
        "--model.init_args.compile", "false",  # the config's inductor: a C++ compile per run on the CPU
        "--data.init_args.train_path", task_dir / "train.jsonl", "--data.init_args.val_path", task_dir / "val.jsonl",
        "--data.init_args.batch_size", 2, "--data.init_args.val_batch_size", 10, "--data.init_args.max_val_examples", 10,
        "--trainer.max_steps", 2, "--trainer.enable_progress_bar", "false",
    ]
    return [str(a) for a in args]


# Overrides that name the run folder: the sweep replaces {run_dir} in them for each run.
RUN_DIR_OVERRIDES = ["--trainer.logger.init_args.save_dir", "{run_dir}", "--trainer.callbacks.dirpath", "{run_dir}/checkpoints"]


def tiny_overlay_args(name: str, model_dir, task_dir, out: Path) -> list[str]:
    return ["fit", "--config", GRPO_YAML, "--config", overlay(name),
            *tiny_overrides(model_dir, task_dir), "--trainer.default_root_dir", str(out)]


def check_learning_rate(rows, generations):
    lrs = column(rows, "train/lr")
    assert lrs == pytest.approx([overlay_value("learning_rate", "learning_rate")] * 2, rel=1e-6)


def check_baselines(rows, generations):
    # every reward is 1: all advantages are 0, yet no_baseline's loss (-raw reward x log-prob) moves the policy
    assert column(rows, "train/advantage_abs_mean") == [0.0, 0.0]
    assert all(loss > 0 for loss in column(rows, "train/loss"))
    assert all(norm > 0 for norm in column(rows, "train/grad_norm"))


def check_length_normalization(rows, generations):
    # one microbatch per update: loss = sum of per-token losses / (sequences x the constant), and the
    # sum is the logged token mean x the response tokens (mean length x sequences). The constant is
    # not the 12 max tokens, which truncated responses all reach (the per-sequence mean would agree).
    constant = 100
    for row in (r for r in rows if "train/loss" in r):
        expected = row["train/loss_per_token"] * row["train/response_length"] / constant
        assert row["train/loss"] == pytest.approx(expected, rel=1e-4, abs=1e-9)
    assert any(abs(loss) > 1e-6 for loss in column(rows, "train/loss"))


def check_std_normalization(rows, generations):
    # the first rollout's 8 samples, logged in rollout order (groups of 4): advantages = r - group mean
    rewards = [g["reward"] for g in generations[:8]]
    centered = group_advantages(rewards, 4, 0.0, by_std=False).abs().mean().item()
    scaled = group_advantages(rewards, 4, 1e-6, by_std=True).abs().mean().item()
    assert abs(centered - scaled) > 0.05, (centered, scaled)  # the check can tell the two apart
    assert column(rows, "train/advantage_abs_mean")[0] == pytest.approx(centered, rel=1e-5)


def check_off_policy(rows, generations):
    # 4 epochs x 2 train batches = 8 updates in one GRPO step; old log-probs make ratios leave [0.8, 1.2]
    (clip_fraction,) = column(rows, "train/clip_fraction")
    assert clip_fraction > 0, clip_fraction


def check_clipping(rows, generations):
    (clip_fraction,) = column(rows, "train/clip_fraction")
    (ratio_mean,) = column(rows, "train/ratio_mean")
    assert clip_fraction == 0 and abs(ratio_mean - 1) > 1e-3, (clip_fraction, ratio_mean)


def check_prompt(rows, generations):
    for g in generations:  # the question alone, as the toy task's file has it (no R1-Zero preamble)
        assert re.fullmatch(r"What is \d \+ \d\?", g["prompt"]), g["prompt"]
    # AdditionEngine answers: boxed right, R1-Zero format right, boxed wrong, nothing (question_only grades \boxed{})
    assert [g["reward"] for g in generations[:4]] == [1.0, 0.0, 0.0, 0.0]
    assert [g["format_reward"] for g in generations[:4]] == [1.0, 0.0, 1.0, 0.0]


def check_cispo(rows, generations):
    # 8 updates from one rollout: weights leave [0, 1.28] and are clipped, yet every update has a gradient
    (clip_fraction,) = column(rows, "train/clip_fraction")
    assert clip_fraction > 0, clip_fraction
    assert all(norm > 0 for norm in column(rows, "train/grad_norm"))


def check_sapo(rows, generations):
    # the gate's gradient scale 4 sigma (1 - sigma) is 1 at r = 1 and below it once the policy moved
    (gate,) = column(rows, "train/sapo_gate_mean")
    assert 0 < gate < 1, gate


def check_dapo(rows, generations):
    assert column(rows, "train/dynamic_sampling_prompts"), "dynamic sampling logs how many prompts it sampled"
    assert "train/overlong_filtered" in next(r for r in rows if "train/loss" in r)


def check_rloo(rows, generations):
    rewards = [g["reward"] for g in generations[:8]]
    # leave-one-out: r_i - mean of the other 3 = 4/3 (r_i - group mean), by hand
    by_hand = [abs(r - (sum(rewards[g:g + 4]) - r) / 3) for g in (0, 4) for r in rewards[g:g + 4]]
    assert column(rows, "train/advantage_abs_mean")[0] == pytest.approx(sum(by_hand) / 8, rel=1e-5)
    assert by_hand != pytest.approx([abs(a) for a in group_advantages(rewards, 4, 1e-6, by_std=True).tolist()])


def check_reinforce_pp(rows, generations):
    rewards = torch.tensor([g["reward"] for g in generations[:8]])
    centered = rewards - rewards.view(2, 4).mean(dim=1).repeat_interleave(4)
    by_hand = (centered / (centered.std() + 1e-6)).abs().mean().item()  # the batch's std, not each group's
    assert column(rows, "train/advantage_abs_mean")[0] == pytest.approx(by_hand, rel=1e-4)


def check_lora(rows, generations):
    # the overlay's lr, and adapters that train: the loss moves while only rank-32 adapters have gradients
    assert column(rows, "train/lr") == pytest.approx([overlay_value("lora", "learning_rate")] * 2, rel=1e-6)
    assert all(norm > 0 for norm in column(rows, "train/grad_norm"))


OVERLAY_RUNS = {  # overlay -> (extra CLI arguments, check of its logged metrics and generations)
    "learning_rate": ([], check_learning_rate),
    "baselines": (["--model.init_args.reward_fn", "ablation_helpers.constant_reward"], check_baselines),
    "length_normalization": (["--model.init_args.batching.gradient_accumulation_steps", "1",
                              "--model.init_args.loss.loss_normalize_constant", "100"], check_length_normalization),
    "std_normalization": ([], check_std_normalization),
    "off_policy": (["--model.init_args.batching.train_batch_size", "4", "--trainer.max_steps", "8"], check_off_policy),
    "clipping": (["--model.init_args.batching.train_batch_size", "4", "--trainer.max_steps", "8"], check_clipping),
    "prompt": (["--model.init_args.engine", "ablation_helpers.AdditionEngine"], check_prompt),
    "cispo": (["--model.init_args.batching.train_batch_size", "4", "--trainer.max_steps", "8"], check_cispo),
    "sapo": (["--model.init_args.batching.train_batch_size", "4", "--trainer.max_steps", "8"], check_sapo),
    "dapo": (["--model.init_args.batching.train_batch_size", "4", "--trainer.max_steps", "8",
              "--data.init_args.batch_size", "6"], check_dapo),  # 3 slices of 2 questions
    "rloo": ([], check_rloo),
    "reinforce_pp": ([], check_reinforce_pp),
    "lora": ([], check_lora),
}


def test_every_overlay_has_a_run():
    assert sorted(OVERLAY_RUNS) == [p.stem for p in OVERLAYS]


@pytest.mark.parametrize("name", sorted(OVERLAY_RUNS))
def test_overlay_shows_its_mechanism(tiny_model_dir, toy_task_dir, tmp_path, name):
    """grpo.yaml + the overlay, a few steps on the tiny model through the CLI: its mechanism shows in
    the logged metrics and generations (toy dense reward and lr 1e-2 unless the overlay sets them)."""
    extra, check = OVERLAY_RUNS[name]
    defaults = ["--model.init_args.reward_fn", "toy_rewards.digit_fraction_reward", "--model.init_args.learning_rate", "1e-2"]
    if name in ("learning_rate", "lora"):
        defaults = defaults[:2]
    if name == "prompt":
        defaults = defaults[2:]  # the overlay's question_only reward
    main(tiny_overlay_args(name, tiny_model_dir, toy_task_dir, tmp_path) + defaults + extra)
    check(read_csv_metrics(tmp_path), read_jsonl(tmp_path, "generations.jsonl"))


# ----------------------------------------------------------------------------- sweep and comparison
def test_sweep_plans_a_folder_per_run_and_scales_max_steps(tmp_path):
    runs = run_sweep(["--config", GRPO_YAML, overlay("off_policy"), overlay("prompt"), "--learning_rates", "3e-6", "1e-4",
                      "--output", str(tmp_path), "--grpo_steps", "3", "--dry_run", *RUN_DIR_OVERRIDES,
                      "--trainer.logger.init_args.name", "{name}"])
    assert [r["name"] for r in runs] == ["grpo", "off_policy", "prompt", "lr_3e-06", "lr_0.0001"]
    for run in runs:
        args = run["fit_args"]
        assert args[:3] == ["fit", "--config", GRPO_YAML] and run["run_dir"] == str(tmp_path / run["name"])
        assert args[args.index("--trainer.default_root_dir") + 1] == run["run_dir"]
        assert args[args.index("--trainer.logger.init_args.save_dir") + 1] == run["run_dir"]
        assert args[args.index("--trainer.logger.init_args.name") + 1] == run["name"]
    # 3 GRPO steps; off_policy: 4 epochs x (rollout 256 / train batch 128) = 8 updates per GRPO step
    assert [r["fit_args"][-1] for r in runs] == ["3", "24", "3", "3", "3"]
    assert runs[1]["fit_args"][3:5] == ["--config", overlay("off_policy")]
    assert runs[3]["fit_args"][3:5] == ["--model.init_args.learning_rate", "3e-06"]
    assert not (tmp_path / "grpo").exists()  # a dry run runs nothing


@pytest.mark.parametrize("args, message", [
    ([overlay("nope")], "nope.yaml: no such file"),
    ([GRPO_YAML], "share the folder name"),  # the base and an overlay both called grpo
    ([overlay("baselines"), "--trainer.logger.init_args.save_dir", "one_folder"], "would both write to one_folder"),
    ([overlay("baselines"), "--model.init_args.learning_rat", "1"], "did you mean learning_rate"),
    (["--skip_base"], "nothing to run"),
])
def test_sweep_refuses_bad_plans_in_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        command(["sweep", "--config", GRPO_YAML, *args, "--output", str(tmp_path), "--dry_run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err, err


def test_sweep_runs_each_learning_rate_in_its_own_folder(tiny_model_dir, toy_task_dir, tmp_path, monkeypatch):
    """Two one-step runs, each `fit` in its own process: each logs its own learning rate in its folder;
    the comparison plot and the notebook read them."""
    runs = run_sweep(["--config", GRPO_YAML, "--learning_rates", "1e-3", "2e-2", "--skip_base", "--output", str(tmp_path),
                      *tiny_overrides(tiny_model_dir, toy_task_dir), "--trainer.max_steps", "1"])
    assert [r["returncode"] for r in runs] == [0, 0]
    for run, lr in zip(runs, [1e-3, 2e-2]):
        assert column(read_csv_metrics(Path(run["run_dir"])), "train/lr") == pytest.approx([lr])
    assert [r["name"] for r in json.loads((tmp_path / "sweep.json").read_text())] == ["lr_0.001", "lr_0.02"]
    assert (tmp_path / "comparison.png").stat().st_size > 10_000
    # the notebook reads the same sweep folder
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "notebooks" / "ablations.ipynb", as_version=4)
    monkeypatch.setenv("R1_SWEEP_DIR", str(tmp_path))
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    assert (tmp_path / "comparison_from_notebook.png").stat().st_size > 10_000


def write_run(folder: Path, rows: list[dict], version: int = 0, hparams: str = "") -> Path:
    log_dir = folder / "logs" / f"version_{version}"
    log_dir.mkdir(parents=True)
    names = ["step"] + sorted({k for row in rows for k in row if k != "step"})
    lines = [",".join(names)] + [",".join(str(row.get(n, "")) for n in names) for row in rows]
    (log_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    (log_dir / "hparams.yaml").write_text(hparams)
    return folder


def test_comparison_plot_puts_runs_side_by_side_against_the_grpo_step(tmp_path):
    train = [{"step": s, "train/reward_mean": 0.1 * s, "train/entropy": 2 - 0.1 * s, "train/response_length": 40 + s}
             for s in range(3)]
    on_policy = write_run(tmp_path / "on", train + [{"step": 0, "val/answer_accuracy": 0.2},
                                                   {"step": 3, "val/answer_accuracy": 0.4}])
    # 8 updates per GRPO step: its evaluation after 3 GRPO steps is logged at optimizer step 24
    off_hparams = "batching:\n  epochs_per_rollout_batch: 4\n  rollout_batch_size: 256\n  train_batch_size: 128\n"
    off_policy = write_run(tmp_path / "off", train + [{"step": 0, "val/answer_accuracy": 0.2},
                                                     {"step": 24, "val/answer_accuracy": 0.5}], hparams=off_hparams)
    write_run(off_policy, [{"step": 2, "train/reward_mean": 0.9}], version=1, hparams=off_hparams)  # a resumed launch
    series = {"on": read_run(on_policy), "off": read_run(off_policy)}
    assert series["off"]["val/answer_accuracy"] == [(0.0, 0.2), (3.0, 0.5)]
    assert series["on"]["val/answer_accuracy"] == [(0.0, 0.2), (3.0, 0.4)]
    assert series["off"]["train/reward_mean"] == [(0, 0.0), (1, 0.1), (2, 0.9)]  # version_1 wins at step 2

    fig = comparison_figure(series)
    panels = fig.axes[:4]
    assert [ax.get_title() for ax in panels] == ["train reward", "held-out accuracy", "token entropy",
                                                 "response length (tokens)"]
    for ax in panels:
        assert [line.get_label() for line in ax.get_lines()] == ["on", "off"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["on", "off"]
    png = plot_comparison({"on": on_policy, "off": off_policy}, tmp_path / "cmp.png")
    assert png.stat().st_size > 10_000
    with pytest.raises(FileNotFoundError, match="no metrics.csv"):
        read_run(tmp_path / "empty")
