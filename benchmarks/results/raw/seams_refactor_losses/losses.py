"""Seeded quickstart-config GRPO runs (3 updates each) -> train/loss per step, for before/after."""
import csv, json, subprocess, sys, os
from pathlib import Path

root = Path(sys.argv[1]); out = Path(sys.argv[2]); style = sys.argv[3]  # style: old | new
out.mkdir(parents=True, exist_ok=True)
model = out / "model"
if not model.exists():
    from r1_lightning.quickstart import materialize
    materialize(str(model))

def M(k): return f"--model.init_args.{k}"

# flat settings -> CLI args (old: flat names; new: grouped)
GROUP = {"rollout_batch_size": "batching", "group_size": "batching", "train_batch_size": "batching",
         "gradient_accumulation_steps": "batching", "epochs_per_rollout_batch": "batching",
         "overlong_filter": "dapo", "dynamic_sampling": "dapo", "dynamic_sampling_max_rounds": "dapo",
         "async_rollouts": "async_", "rollout_lag": "async_", "loss_type": "loss", "loss_agg": "loss",
         "cliprange": "loss", "tis_cap": "loss"}
def args(settings):
    a = []
    for k, v in settings.items():
        name = k
        if style == "new" and k in GROUP:
            g = GROUP[k]
            if g == "async_": name = {"async_rollouts": "async_rollouts.enabled", "rollout_lag": "async_rollouts.rollout_lag"}[k]
            else: name = f"{g}.{k}"
        if style == "new" and k == "data_batch": continue
        a += [M(name), str(v)]
    return a

VARIANTS = {
  "reinforce": dict(rollout_batch_size=16, group_size=4, train_batch_size=16, gradient_accumulation_steps=2),
  "grpo_clip_2updates": dict(rollout_batch_size=16, group_size=4, train_batch_size=8, gradient_accumulation_steps=2,
                             epochs_per_rollout_batch=2, loss_type="grpo_clip"),
  "token_mean_dapo": dict(rollout_batch_size=16, group_size=4, train_batch_size=16, gradient_accumulation_steps=4,
                          loss_agg="token_mean", overlong_filter="true", dynamic_sampling="true",
                          dynamic_sampling_max_rounds=2),
  "async_lag1": dict(rollout_batch_size=16, group_size=4, train_batch_size=8, gradient_accumulation_steps=2,
                     async_rollouts="true"),
}
DATA = {"reinforce": 4, "grpo_clip_2updates": 4, "token_mean_dapo": 8, "async_lag1": 4}
results = {}
for name, settings in VARIANTS.items():
    run = out / name
    cmd = [sys.executable, "-m", "r1_lightning.cli", "fit", "--config", str(root / "configs/quickstart.yaml"),
           "--trainer.default_root_dir", str(run), "--trainer.max_steps", "4", "--trainer.callbacks", "[]",
           "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
           M("model_name_or_path"), str(model), M("reward_fn"), "toy_rewards.digit_fraction_reward",
           "--data.init_args.train_path", str(root / "data/quickstart/train.jsonl"),
           "--data.init_args.val_path", str(root / "data/quickstart/val.jsonl"),
           "--data.init_args.template", str(root / "r1_lightning/quickstart/assets/r1_zero_short.prompt"),
           *args(settings)]
    if style == "old":
        cmd += ["--data.init_args.batch_size", str(DATA[name])]
    if name == "async_lag1":
        cmd += [M("engine.init_args.own_weights"), "true"]
    env = {**os.environ, "PYTHONPATH": f"{root}:{root}/tests"}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env)
    if r.returncode:
        print(name, "FAILED\n", r.stderr[-3000:]); results[name] = None; continue
    metrics = sorted(run.glob("logs/version_*/metrics.csv"))[-1]
    rows = [row for row in csv.DictReader(open(metrics)) if row.get("train/loss")]
    results[name] = [(int(row["step"]), row["train/loss"], row["train/reward_mean"], row.get("train/grad_norm")) for row in rows]
    print(name, results[name], flush=True)
(out / "losses.json").write_text(json.dumps(results, indent=1))
