"""Seeded quickstart-config GRPO runs (4 optimizer updates each) -> the logged loss, reward and
gradient norm of each step, to compare a checkout before the option regrouping with one after.

    python losses.py CHECKOUT OUT_FOLDER old|new   (old: flat option names; new: grouped ones)
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

# flat name -> its grouped spelling
GROUPED = {
    "rollout_batch_size": "batching.rollout_batch_size", "group_size": "batching.group_size",
    "train_batch_size": "batching.train_batch_size", "epochs_per_rollout_batch": "batching.epochs_per_rollout_batch",
    "gradient_accumulation_steps": "batching.gradient_accumulation_steps",
    "overlong_filter": "dapo.overlong_filter", "dynamic_sampling": "dapo.dynamic_sampling",
    "dynamic_sampling_max_rounds": "dapo.dynamic_sampling_max_rounds",
    "async_rollouts": "async_rollouts.enabled", "loss_type": "loss.loss_type", "loss_agg": "loss.loss_agg",
}
BATCH = {"rollout_batch_size": 16, "group_size": 4}
VARIANTS = {  # name -> (its options, the data batch the flat spelling had to set)
    "reinforce": ({**BATCH, "train_batch_size": 16, "gradient_accumulation_steps": 2}, 4),
    "grpo_clip_2updates": ({**BATCH, "train_batch_size": 8, "gradient_accumulation_steps": 2,
                            "epochs_per_rollout_batch": 2, "loss_type": "grpo_clip"}, 4),
    "token_mean_dapo": ({**BATCH, "train_batch_size": 16, "gradient_accumulation_steps": 4, "loss_agg": "token_mean",
                         "overlong_filter": "true", "dynamic_sampling": "true", "dynamic_sampling_max_rounds": 2}, 8),
    "async_lag1": ({**BATCH, "train_batch_size": 8, "gradient_accumulation_steps": 2, "async_rollouts": "true"}, 4),
}


def command(root: Path, out: Path, model: Path, options: dict, data_batch: int, style: str) -> list[str]:
    args = [sys.executable, "-m", "r1_lightning.cli", "fit", "--config", str(root / "configs/quickstart.yaml"),
            "--trainer.default_root_dir", str(out), "--trainer.max_steps", "4", "--trainer.callbacks", "[]",
            "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
            "--model.init_args.model_name_or_path", str(model),
            "--model.init_args.reward_fn", "toy_rewards.digit_fraction_reward",
            "--data.init_args.train_path", str(root / "data/quickstart/train.jsonl"),
            "--data.init_args.val_path", str(root / "data/quickstart/val.jsonl"),
            "--data.init_args.template", str(root / "r1_lightning/quickstart/assets/r1_zero_short.prompt")]
    for name, value in options.items():
        args += [f"--model.init_args.{GROUPED[name] if style == 'new' else name}", str(value)]
    if style == "old":
        args += ["--data.init_args.batch_size", str(data_batch)]
    if options.get("async_rollouts"):
        args += ["--model.init_args.engine.init_args.own_weights", "true"]
    return args


def main() -> None:
    root, out, style = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    out.mkdir(parents=True, exist_ok=True)
    model = out / "model"
    if not model.exists():
        from r1_lightning.quickstart import materialize

        materialize(str(model))
    env = {**os.environ, "PYTHONPATH": f"{root}:{root}/tests"}
    results = {}
    for name, (options, data_batch) in VARIANTS.items():
        run = subprocess.run(command(root, out / name, model, options, data_batch, style), check=False,
                             capture_output=True, text=True, cwd=root, env=env)
        if run.returncode:
            print(name, "FAILED\n", run.stderr[-3000:])
            results[name] = None
            continue
        with open(max((out / name).glob("logs/version_*/metrics.csv"))) as f:
            rows = [row for row in csv.DictReader(f) if row.get("train/loss")]
        results[name] = [(int(r["step"]), r["train/loss"], r["train/reward_mean"], r.get("train/grad_norm")) for r in rows]
        print(name, results[name], flush=True)
    (out / "losses.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
