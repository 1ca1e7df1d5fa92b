"""The SmolLM2 GSM8K pipeline through TRL 1.16: greedy test evaluation, `SFTTrainer`, `GRPOTrainer`.

The TRL side of `bash benchmarks/gpu/run.sh pipeline`, which runs it on GPU 1 while r1-lightning runs
the same recipe on GPU 0 for the same wall time. The recipe is read from r1-lightning's configs, so
the two sides cannot drift apart:

- SFT (`configs/gsm8k/smollm2_sft.yaml`): the same rows (its `train_path`,
  `data/gsm8k/sft_chat.jsonl`: GSM8K's solutions in the GRPO prompt) as prompt/completion pairs (loss
  on the completion only), its learning rate, schedule, warm-up, batch, epochs and max length.
- GRPO (`configs/gsm8k/smollm2_grpo.yaml`): its training questions in its prompt template, its
  reward function (`r1_lightning.rewards.resolve_reward_fn` of the config's `reward_fn`, through
  `trl_reward_fns`, adapters to TRL's reward-function signature), group size, rollouts per update
  (one update per rollout batch), temperature, max new tokens, stop string, learning rate, betas,
  group std normalization, per-sequence token mean (TRL's `loss_type="grpo"`), no KL (beta 0);
  generation with vLLM colocated on the same GPU, as r1-lightning's engine.
- Evaluation: r1-lightning's own `validate` on the TRL model folder, with the GRPO config's
  evaluation settings (greedy, same max tokens, same grader) on all 1,319 GSM8K test questions:
  before training, after SFT, and after GRPO at the end of every call.

A call runs for at most `--budget-seconds` of wall time and resumes where the previous call in the
same `--workdir` stopped (its stages' results are in `<workdir>/state.json`, GRPO from its last
TRL checkpoint), so the pipeline spreads over several time-boxed commands as r1-lightning's
`--ckpt_path last` does. The JSON (`--out`) holds the environment, the settings, the evaluations,
TRL's per-step GRPO log (reward, `frac_reward_zero_std`, completion length) and the seconds of
each stage.

    python benchmarks/trl_gsm8k_pipeline.py --model /tmp/smollm2 --budget-seconds 500 --out trl.json
    python benchmarks/trl_gsm8k_pipeline.py --dry-run      # the settings read from the configs; no TRL

Needs trl==1.16.0, vllm, datasets and accelerate (the device pack: PYTHONPATH=/tmp/site) and a GPU;
`--dry-run` and `--help` need neither.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C

SFT_CONFIG = C.REPO_ROOT / "configs/gsm8k/smollm2_sft.yaml"
GRPO_CONFIG = C.REPO_ROOT / "configs/gsm8k/smollm2_grpo.yaml"
STAGES = ("eval_base", "sft", "eval_sft", "grpo", "eval_grpo")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="/tmp/smollm2", help="the starting HF folder (SmolLM2-135M-Instruct)")
    p.add_argument("--sft-data", default=None, help="SFT jsonl (default: the SFT config's train_path)")
    p.add_argument("--workdir", default="/tmp/r1l-gpu/pipeline/trl", help="state, models, checkpoints")
    p.add_argument("--budget-seconds", type=float, default=540.0, help="wall time of this call")
    p.add_argument("--sft-seconds", type=float, default=150.0, help="at most this much SFT (r1: max_time 2:30)")
    p.add_argument("--eval-reserve-seconds", type=float, default=75.0,
                   help="kept at the end of the call for the evaluation of the GRPO model")
    p.add_argument("--grpo-max-steps", type=int, default=500, help="as run.sh's --trainer.max_steps")
    p.add_argument("--save-steps", type=int, default=5, help="GRPO checkpoint interval (resume granularity)")
    p.add_argument("--skip-eval-base", action="store_true",
                   help="no evaluation of the starting model (the same r1-lightning evaluation the r1 side runs)")
    p.add_argument("--dry-run", action="store_true", help="print the settings read from the configs and exit")
    p.add_argument("--out", help="also write the JSON here")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------- the recipe
def recipe_settings(sft_data: str | None = None) -> dict:
    """TRL's settings, read from r1-lightning's SmolLM2 SFT and GRPO configs (the keys are TRL's)."""
    sft, grpo = (yaml.safe_load(path.read_text()) for path in (SFT_CONFIG, GRPO_CONFIG))
    s_model, s_data = sft["model"]["init_args"], sft["data"]["init_args"]
    g_model, g_data = grpo["model"]["init_args"], grpo["data"]["init_args"]
    g_batching, g_loss = g_model["batching"], g_model.get("loss", {})
    sft_accum = s_model["gradient_accumulation_steps"]
    rollouts, accum = g_batching["rollout_batch_size"], g_batching["gradient_accumulation_steps"]
    if g_batching["train_batch_size"] != rollouts or g_batching.get("epochs_per_rollout_batch", 1) != 1:
        raise ValueError(f"{GRPO_CONFIG}: the TRL side mirrors one update per rollout batch only")
    for path, config in ((SFT_CONFIG, sft), (GRPO_CONFIG, grpo)):
        if config["trainer"]["precision"] != "bf16-mixed":  # TRL's bf16=True is autocast: mirror only that
            raise ValueError(f"{path}: trainer.precision must be bf16-mixed")
    return {
        "sft": {
            "dtype": s_model["dtype"], "data": sft_data or s_data["train_path"], "learning_rate": s_model["learning_rate"],
            "lr_scheduler_type": s_model.get("lr_schedule", "constant"), "warmup_steps": s_model.get("warmup_steps", 0),
            "per_device_train_batch_size": s_data["batch_size"] // sft_accum, "gradient_accumulation_steps": sft_accum,
            "num_train_epochs": sft["trainer"]["max_epochs"], "max_length": s_model["max_length"],
            "adam_beta1": s_model["betas"][0], "adam_beta2": s_model["betas"][1], "max_grad_norm": s_model["max_grad_norm"],
        },
        "grpo": {
            "dtype": g_model["dtype"], "train_path": g_data["train_path"], "template": g_data["template"], "reward_fn": g_model["reward_fn"],
            "num_generations": g_batching["group_size"], "per_device_train_batch_size": rollouts // accum,
            "gradient_accumulation_steps": accum, "temperature": g_model["sampling_temperature"],
            "max_completion_length": g_model["sampling_max_tokens"], "stop": g_model.get("stop", ["</answer>"]),
            "learning_rate": g_model["learning_rate"], "adam_beta1": g_model["betas"][0], "adam_beta2": g_model["betas"][1],
            "max_grad_norm": g_model["max_grad_norm"], "beta": g_loss.get("beta", 0.0),
            "scale_rewards": "group" if g_model.get("use_std_normalization", True) else "none",
            "loss_type": {"seq_mean_token_mean": "grpo", "token_mean": "dapo",
                          "seq_mean_token_sum_norm": "dr_grpo"}[g_loss.get("loss_agg", "seq_mean_token_mean")],
            "vllm_gpu_memory_utilization": g_model["engine"]["init_args"]["gpu_memory_utilization"],
        },
    }


def trl_reward_fns(reward_fn) -> tuple[list, list[float]]:
    """An r1-lightning reward function `(response, ground_truth) -> {"reward", "format_reward",
    "answer_reward", ...}` as TRL reward functions `(prompts, completions, ground_truth, **columns) ->
    list[float]` (TRL passes each dataset column as a keyword list, one entry per completion), with their
    weights: "reward" trains (weight 1); "answer_reward" and "format_reward" (weight 0) are only logged,
    as TRL's `rewards/<name>/mean`, like r1-lightning's `train/answer_reward` and `train/format_reward`.
    Each completion is graded once: the three read one cache."""
    cache: dict[tuple[str, str], dict] = {}

    def scores(completions, ground_truth) -> list[dict]:
        if len(cache) > 100_000:
            cache.clear()
        for key in zip(completions, ground_truth):
            if key not in cache:
                cache[key] = reward_fn(*key)
        return [cache[key] for key in zip(completions, ground_truth)]

    def component(key: str):
        def reward(prompts, completions, ground_truth, **kwargs) -> list[float]:
            return [float(s[key]) for s in scores(completions, ground_truth)]

        reward.__name__ = key
        return reward

    return [component("reward"), component("answer_reward"), component("format_reward")], [1.0, 0.0, 0.0]


# ----------------------------------------------------------------------------------- stages
class State:
    """The stages done so far in `workdir` (state.json), so a later call resumes after them."""

    def __init__(self, workdir: Path):
        self.path = workdir / "state.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"done": {}, "seconds": {}}

    def done(self, stage: str) -> bool:
        return stage in self.data["done"]

    def finish(self, stage: str, result, seconds: float) -> None:
        self.data["done"][stage] = result
        self.add_seconds(stage, seconds)

    def add_seconds(self, stage: str, seconds: float) -> None:
        self.data["seconds"][stage] = self.data["seconds"].get(stage, 0.0) + seconds
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")


def evaluate(folder: Path, out_dir: Path) -> dict:
    """Greedy GSM8K test accuracy of an HF folder: r1-lightning's `validate` with the GRPO config's
    evaluation settings on all 1,319 questions (the r1 side's evaluation and grader, unchanged)."""
    command = [sys.executable, "-m", "r1_lightning.cli", "validate", "--config", str(GRPO_CONFIG),
               "--model.init_args.model_name_or_path", str(folder), "--trainer.limit_val_batches", "1.0",
               "--trainer.default_root_dir", str(out_dir), "--data.init_args.max_val_examples", "null"]
    proc = subprocess.run(command, cwd=C.REPO_ROOT, capture_output=True, text=True, check=False)
    summaries = sorted(out_dir.glob("**/eval_step_*_summary.json"), key=os.path.getmtime)
    if proc.returncode or not summaries:
        return {"error": f"validate exit code {proc.returncode}", "output_tail": (proc.stdout + proc.stderr)[-2000:]}
    return json.loads(summaries[-1].read_text())


def wall_clock_callback(deadline: float, seconds_before: float = 0.0):
    """A transformers `TrainerCallback` that stops training, and saves, once `deadline` (monotonic) is
    past, and stamps each log row with `wall_seconds`: this stage's training time so far, counting
    `seconds_before` spent in earlier calls (the r1 side's curves are drawn against the same)."""
    from transformers import TrainerCallback

    start = time.monotonic() - seconds_before

    class WallClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() >= deadline:
                control.should_training_stop = control.should_save = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.log_history:
                state.log_history[-1]["wall_seconds"] = time.monotonic() - start

    return WallClock()


def load_model(folder: str, dtype: str):
    """The model with its weights in the config's `dtype` (r1-lightning's `float32` master weights; the
    compute is bf16 autocast on both sides: Lightning's `bf16-mixed`, TRL's `bf16=True`) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    return model, AutoTokenizer.from_pretrained(folder)


def run_sft(settings: dict, model: str, out: Path, deadline: float) -> str:
    import datasets
    from trl import SFTConfig, SFTTrainer

    from r1_lightning.data.readers import load_sft

    rows = load_sft(C.REPO_ROOT / settings["data"])
    dataset = datasets.Dataset.from_dict({"prompt": [r.prompt for r in rows], "completion": [r.response for r in rows]})
    keys = ("learning_rate", "lr_scheduler_type", "warmup_steps", "per_device_train_batch_size",
            "gradient_accumulation_steps", "num_train_epochs", "max_length", "adam_beta1", "adam_beta2", "max_grad_norm")
    config = SFTConfig(output_dir=str(out / "run"), bf16=True, completion_only_loss=True, save_strategy="no",
                       logging_steps=1, report_to="none", disable_tqdm=True, **{k: settings[k] for k in keys})
    policy, tokenizer = load_model(model, settings["dtype"])
    trainer = SFTTrainer(model=policy, processing_class=tokenizer, train_dataset=dataset, args=config,
                         callbacks=[wall_clock_callback(deadline)])
    trainer.train()
    return save(trainer, out / "final")


def run_grpo(settings: dict, model: str, out: Path, deadline: float, max_steps: int, save_steps: int,
             use_vllm: bool = True, seconds_before: float = 0.0) -> list[dict]:
    """TRL's GRPO from `model`, resumed from the last checkpoint in `out` if any (`seconds_before`: the
    GRPO time of earlier calls); generation with vLLM colocated on the same GPU (`use_vllm=False`: TRL's
    own HF generation, e.g. to check this on a CPU)."""
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    from r1_lightning.data.readers import load_prompt_dataset
    from r1_lightning.data.templates import load_template, render_prompt
    from r1_lightning.rewards import resolve_reward_fn

    template = load_template(C.REPO_ROOT / settings["template"])
    examples = load_prompt_dataset(C.REPO_ROOT / settings["train_path"], "gsm8k")
    dataset = datasets.Dataset.from_dict({"prompt": [render_prompt(template, e.question) for e in examples],
                                          "ground_truth": [e.ground_truth for e in examples]})
    keys = ("num_generations", "per_device_train_batch_size", "gradient_accumulation_steps", "temperature",
            "max_completion_length", "learning_rate", "adam_beta1", "adam_beta2", "max_grad_norm", "beta",
            "scale_rewards", "loss_type", "vllm_gpu_memory_utilization")
    reward_funcs, reward_weights = trl_reward_fns(resolve_reward_fn(settings["reward_fn"]))
    config = GRPOConfig(output_dir=str(out / "run"), bf16=True, max_steps=max_steps, reward_weights=reward_weights, lr_scheduler_type="constant",
                        use_vllm=use_vllm, vllm_mode="colocate", save_strategy="steps", save_steps=save_steps,
                        logging_steps=1, report_to="none", disable_tqdm=True, log_completions=False,
                        # vLLM stops at the config's stop string, as r1-lightning's engine; HF generation at EOS
                        generation_kwargs={"stop": settings["stop"], "include_stop_str_in_output": True}
                        if use_vllm else None,
                        **{k: settings[k] for k in keys})
    policy, tokenizer = load_model(model, settings["dtype"])
    trainer = GRPOTrainer(model=policy, processing_class=tokenizer, train_dataset=dataset, args=config,
                          reward_funcs=reward_funcs,
                          callbacks=[wall_clock_callback(deadline, seconds_before)])
    resume = any((out / "run").glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    save(trainer, out / "final")
    return trainer.state.log_history


def save(trainer, folder: Path) -> str:
    trainer.save_model(str(folder))
    trainer.processing_class.save_pretrained(str(folder))
    return str(folder)


def main(argv=None) -> dict:
    args = parse_args(argv)
    settings = recipe_settings(args.sft_data)
    if args.dry_run:
        return C.emit({"dry_run": True, "stages": list(STAGES), "settings": settings}, args.out)
    start = time.monotonic()
    end = start + args.budget_seconds
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    state = State(workdir)
    sft_model, grpo_dir = workdir / "sft" / "final", workdir / "grpo"
    grpo_log: list[dict] = []

    def timed(stage, fn):
        t = time.monotonic()
        result = fn()
        state.finish(stage, result, time.monotonic() - t)

    def free_gpu():  # the trainer (and TRL's colocated vLLM) is gone: give its memory to the evaluation
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()

    if not state.done("eval_base") and not args.skip_eval_base:
        timed("eval_base", lambda: evaluate(Path(args.model), workdir / "eval_base"))
    if not state.done("sft"):
        deadline = min(time.monotonic() + args.sft_seconds, end - args.eval_reserve_seconds)
        timed("sft", lambda: run_sft(settings["sft"], args.model, workdir / "sft", deadline))
        free_gpu()
    if not state.done("eval_sft"):
        timed("eval_sft", lambda: evaluate(sft_model, workdir / "eval_sft"))
    if time.monotonic() < end - args.eval_reserve_seconds:
        t = time.monotonic()
        grpo_log = run_grpo(settings["grpo"], str(sft_model), grpo_dir, end - args.eval_reserve_seconds,
                            args.grpo_max_steps, args.save_steps,
                            seconds_before=state.data["seconds"].get("grpo", 0.0))
        state.add_seconds("grpo", time.monotonic() - t)
        free_gpu()
        t = time.monotonic()
        state.data.setdefault("eval_grpo", []).append(evaluate(grpo_dir / "final", workdir / f"eval_grpo_{int(t)}"))
        state.add_seconds("eval_grpo", time.monotonic() - t)
    keep = ("step", "wall_seconds", "reward", "reward_std", "frac_reward_zero_std", "rewards/answer_reward/mean",
            "rewards/format_reward/mean", "completions/mean_length", "completions/clipped_ratio", "loss", "grad_norm")
    result = {
        "environment": C.environment(),
        "settings": settings,
        "evaluations": {"base": state.data["done"].get("eval_base"), "sft": state.data["done"].get("eval_sft"),
                        "grpo": state.data.get("eval_grpo", [])},
        "grpo_log": [{k: row[k] for k in keep if k in row} for row in grpo_log],
        "seconds": dict(state.data["seconds"], this_call=time.monotonic() - start),
    }
    return C.emit(result, args.out)


if __name__ == "__main__":
    main()
