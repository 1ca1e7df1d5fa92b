"""The recipes made for GPU runs that cannot run here: the leaderboard config, the SmolLM2 GSM8K
SFT -> GRPO pipeline (its SFT config, data build and GPU runner) and the TRL side of that pipeline.

What can be checked on a CPU: the configs parse through the real CLI, hold together (batch sizes, the
loss options, the budget), the SFT file the SmolLM2 config names is its documented build, with
exactly the prompts GRPO samples from, and the TRL script runs without TRL as far as it needs to.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from r1_lightning.cli import main
from r1_lightning.data import SFTDataModule
from r1_lightning.data.build_sft import build
from r1_lightning.data.readers import load_gsm8k
from r1_lightning.data.templates import load_template, render_prompt
from r1_lightning.functional import PolicyLossConfig
from r1_lightning.modules.grpo_config import BatchConfig

ROOT = Path(__file__).resolve().parents[1]
LEADERBOARD, SFT, GRPO = (ROOT / "configs" / name for name in
                          ("leaderboard.yaml", "gsm8k/smollm2_sft.yaml", "gsm8k/smollm2_grpo.yaml"))
TRL_SCRIPT = ROOT / "benchmarks" / "trl_gsm8k_pipeline.py"
RUN_SH = ROOT / "benchmarks" / "gpu" / "run.sh"


def printed_config(capsys, path: Path) -> dict:
    """`r1-lightning fit --config PATH --print_config`, in-process (the console script calls the same `main`)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_leaderboard_config_parses_and_holds_together(capsys):
    config = printed_config(capsys, LEADERBOARD)
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert config["model"]["class_path"].endswith("GRPOModule")
    assert model["model_name_or_path"] == "Qwen/Qwen2.5-Math-1.5B"
    assert data["val_path"] == "data/math/validation.jsonl" and data["train_path"] == "data/math/train.jsonl"
    # Dr. GRPO's advantages and loss, DAPO's clip-higher
    loss, batching = model["loss"], model["batching"]
    assert model["use_std_normalization"] is False and loss["loss_agg"] == "seq_mean_token_sum_norm"
    assert loss["loss_type"] == "grpo_clip" and loss["cliprange"] == 0.2 and loss["cliprange_high"] == 0.28
    PolicyLossConfig(**loss)
    # the batch arithmetic (BatchConfig checks it); the data module's batch size is GRPOModule's
    assert "batch_size" not in data or data["batch_size"] is None
    rollouts, train = batching["rollout_batch_size"], batching["train_batch_size"]
    updates_per_step = BatchConfig(**batching).updates_per_rollout
    assert updates_per_step > 1, "clip-higher only acts on updates after the first of a rollout batch"

    # The budget, recomputed from the measured 2 x H200 step of configs/grpo.yaml (256 rollouts, mean
    # ~430 tokens): 4.16 s sampling, 5.20 s update; H100 x1.3 sampling, x1.1 update; old log-probs
    # 0.3 x the update; a 600-token mean; 4 h less start (180 s) and the final evaluation (360 s),
    # less 15%; evaluations and checkpoints ~1.65 s a step. The configured steps must fit.
    length = 600 / 430
    sampling = rollouts / 256 * 4.16 * 1.3 * length
    update = updates_per_step * (train / 256) * 5.20 * 1.3 * 1.1 * length  # x1.3: the old log-probs
    seconds_per_step = sampling + update + 0.03 + 1.65
    fits = int((14_400 - 180 - 360) * 0.85 / seconds_per_step)
    assert config["trainer"]["max_steps"] // updates_per_step <= fits, (seconds_per_step, fits)
    assert config["trainer"]["max_time"] == "00:03:35:00"  # 25 minutes of the 4 hours left for the rest


def test_smollm2_sft_config_trains_on_the_documented_build(capsys, tmp_path):
    config = printed_config(capsys, SFT)
    assert config["model"]["class_path"].endswith("SFTModule")
    train_path = config["data"]["init_args"]["train_path"]
    # The build command documented in the config, its output redirected into tmp, rebuilds the
    # file the config names byte for byte
    text = SFT.read_text()
    command = re.search(r"python -m r1_lightning\.data\.build_sft (.*?\\\n#\s*.*?)\n", text).group(1)
    argv = shlex.split(command.replace("\\\n#", " "))
    assert argv[2] == train_path, "the config must name the file its documented command builds"
    built = tmp_path / "gsm8k_sft_chat.jsonl"
    assert build([*argv[:2], built, *argv[3:]]) == 7473 and built.is_file()
    assert built.read_bytes() == (ROOT / train_path).read_bytes()

    # SFT's prompts are exactly those GRPO samples from: GSM8K's questions in the GRPO config's template
    grpo_data = yaml.safe_load(GRPO.read_text())["data"]["init_args"]
    template = load_template(ROOT / grpo_data["template"])
    expected = [render_prompt(template, example.question) for example in load_gsm8k(ROOT / grpo_data["train_path"])]
    sft_data = config["data"]["init_args"]
    module = SFTDataModule(ROOT / train_path, batch_size=sft_data["batch_size"], filter_correct=sft_data["filter_correct"],
                           reward_fn=sft_data["reward_fn"])
    module.setup("fit")
    trained_on = [prompt for batch in module.train_dataloader() for prompt in batch["prompt"]]
    assert sorted(trained_on) == sorted(expected)
    assert module.filter_stats == {"total": 7473, "kept": 7473}  # every row grades correct under its reward


def test_trl_script_runs_its_help_and_dry_run_without_trl():
    # One process, TRL made unimportable (as where it is not installed): --help, then --dry-run.
    run = ("import runpy, sys\nsys.modules['trl'] = None\nsys.argv = [sys.argv[1], '--help']\n"
           "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as e:\n    assert not e.code\n"
           "print('=== dry run')\nsys.argv[1] = '--dry-run'\nrunpy.run_path(sys.argv[0], run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", run, str(TRL_SCRIPT)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    help_text, dry_run = proc.stdout.split("=== dry run\n")
    assert "--budget-seconds" in help_text and "--dry-run" in help_text
    settings = json.loads(dry_run)["settings"]
    grpo = yaml.safe_load(GRPO.read_text())["model"]["init_args"]
    sft = yaml.safe_load(SFT.read_text())
    assert settings["grpo"]["max_completion_length"] == grpo["sampling_max_tokens"] == 384
    assert settings["grpo"]["num_generations"] == grpo["batching"]["group_size"]
    g = settings["grpo"]
    assert g["per_device_train_batch_size"] * g["gradient_accumulation_steps"] == grpo["batching"]["rollout_batch_size"]
    assert g["reward_fn"] == grpo["reward_fn"] and g["learning_rate"] == grpo["learning_rate"]
    s = settings["sft"]
    assert s["per_device_train_batch_size"] * s["gradient_accumulation_steps"] == sft["data"]["init_args"]["batch_size"]
    assert s["data"] == sft["data"]["init_args"]["train_path"]


def test_trl_reward_adapters_score_like_the_r1_reward():
    spec = importlib.util.spec_from_file_location("trl_gsm8k_pipeline", TRL_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from r1_lightning.rewards import resolve_reward_fn

    calls = []

    def counted(response, truth):
        calls.append(response)
        return resolve_reward_fn({"gsm8k": 1.0, "r1_zero_format": 0.1})(response, truth)

    functions, weights = script.trl_reward_fns(counted)
    completions = [" 3 + 4 = 7 </think> <answer> 7 </answer>",   # right, well formed: 1 + 0.1
                   " 3 + 4 = 8 </think> <answer> 8 </answer>",   # wrong, well formed: 0.1
                   " the answer is 7"]                           # no answer block: 0
    scores = {f.__name__: f(prompts=["p"] * 3, completions=completions, ground_truth=["7"] * 3, extra_column=[0, 1, 2])
              for f in functions}
    assert scores["reward"] == pytest.approx([1.1, 0.1, 0.0])
    assert scores["answer_reward"] == pytest.approx([1.0, 0.0, 0.0])
    assert scores["format_reward"] == pytest.approx([1.0, 1.0, 0.0])
    assert dict(zip(scores, weights)) == {"reward": 1.0, "answer_reward": 0.0, "format_reward": 0.0}  # only "reward" trains
    assert len(calls) == 3  # each completion graded once for the three


def test_gpu_runner_parses_and_dispatches_the_pipeline():
    subprocess.run(["bash", "-n", str(RUN_SH)], check=True)
    text = RUN_SH.read_text()
    assert re.search(r"^pipeline\(\) \{", text, re.MULTILINE)
    assert re.search(r"^  [a-z_|0-9]*\|pipeline\) \$what ;;", text, re.MULTILINE)
    # GRPO from the SFT export runs twice: part 1, then part 2 resuming the run part 1 checkpoints
    body = text[text.index("pipeline() {"):text.index("\ncase $what in")]
    runs = [" ".join(command.split("2>&1")[0].replace("\\\n", " ").split())
            for command in body.split('"${grpo[@]}"')[1:]]
    assert all('--model.init_args.model_name_or_path "$work/sft/checkpoints/last_hf"' in run for run in runs), runs
    assert len(runs) == 2 and "--ckpt_path last" in runs[1] and "--ckpt_path" not in runs[0], runs


def test_gpu_runner_mfu_runs_parse_as_policy_update_arguments():
    """`run.sh mfu`'s two update runs are valid `benchmarks/policy_update.py` command lines: eager,
    then compiled with inductor."""
    spec = importlib.util.spec_from_file_location("policy_update", ROOT / "benchmarks" / "policy_update.py")
    policy_update = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(policy_update)
    text = RUN_SH.read_text()
    assert re.search(r"^  [a-z_|0-9]*\|mfu\|[a-z_|0-9]*\) \$what ;;", text, re.MULTILINE)
    body = text[text.index("mfu() {"):text.index("\nrollouts() {")]
    local = dict(re.findall(r'(\w+)="([^"]*)"', body.split("local ", 1)[1].splitlines()[0]))
    runs = [line.split("policy_update", 1)[1] for line in body.splitlines() if line.lstrip().startswith("bench ")]
    args = [policy_update.parse_args(shlex.split(re.sub(r"\$(\w+)", lambda m: local[m[1]], run))) for run in runs]
    assert [a.r1_compile for a in args] == [None, "inductor"]
    grpo = yaml.safe_load((ROOT / "configs" / "grpo.yaml").read_text())["model"]["init_args"]
    leaderboard = yaml.safe_load(LEADERBOARD.read_text())["model"]["init_args"]
    assert grpo["compile"] == leaderboard["compile"] == args[1].r1_compile  # the GPU configs run the faster one
    for a in args:  # configs/grpo.yaml's update
        assert (a.variant, a.r1_microbatch_max_tokens, a.logprob_chunk_size) == (
            "r1-packed", grpo["microbatch_max_tokens"], grpo["logprob_chunk_size"])
        assert (a.r1_loss_type, a.r1_loss_agg, a.gradient_checkpointing) == (
            grpo["loss"]["loss_type"], grpo["loss"]["loss_agg"], grpo["gradient_checkpointing"])
        assert a.r1_sdpa_backends == grpo["sdpa_backends"]
