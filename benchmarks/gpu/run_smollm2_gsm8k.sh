#!/usr/bin/env bash
# GRPO on GSM8K with SmolLM2-135M-Instruct on ONE GPU (policy and vLLM engine share it), for as many
# steps as fit in MAX_TIME, evaluating greedy accuracy on held-out GSM8K test questions before and after.
#   bash benchmarks/gpu/run_smollm2_gsm8k.sh OUT_DIR [MAX_TIME=00:00:06:30] [more fit options...]
# after `source benchmarks/gpu/setup.sh` (GSM8K in /tmp/data/gsm8k, the GGUF in /tmp/site/_models).
# Writes OUT_DIR/logs (metrics.csv, eval/*.jsonl + summaries, hparams) and OUT_DIR/fit.log.
set -uo pipefail
out=${1:?OUT_DIR}
max_time=${2:-00:00:06:30}
shift $(( $# < 2 ? $# : 2 ))
data=${GSM8K_DIR:-/tmp/data/gsm8k}
mkdir -p "$out"
start=$(date +%s)
python -c "import sys; sys.path.insert(0, 'benchmarks'); import common; print(common.smollm2_hf_folder(out_dir='/tmp/smollm2'))" \
  >"$out/convert.log" 2>&1 || { cat "$out/convert.log"; exit 1; }
echo "[smollm2] GGUF -> /tmp/smollm2 in $(( $(date +%s) - start )) s" | tee "$out/fit.log"
# The run's CSV logs and evaluations land in OUT_DIR/logs as they are written (kept if the run is cut short).
mkdir -p runs/smollm2_gsm8k "$out/logs" && rm -rf runs/smollm2_gsm8k/logs && ln -s "$(realpath "$out/logs")" runs/smollm2_gsm8k/logs
python -m r1_lightning.cli fit --config configs/gsm8k/smollm2_grpo.yaml \
  --model.init_args.model_name_or_path /tmp/smollm2 \
  --data.init_args.train_path "$data/train.jsonl" --data.init_args.val_path "$data/test.jsonl" \
  --trainer.max_steps 500 --trainer.max_time "$max_time" "$@" >>"$out/fit.log" 2>&1
status=$?
echo "[smollm2] fit exit $status after $(( $(date +%s) - start )) s" | tee -a "$out/fit.log"
exit $status
