#!/usr/bin/env bash
# GPU session, part A (2 GPUs, one 10-minute command), after the device pack's parts reached /tmp/parts:
#   bash benchmarks/gpu/session_a.sh $OUT
# GPU 0: SmolLM2-135M GRPO on GSM8K (policy + engine share it) for 6 minutes, eval before/after.
# GPU 1, one after another: the policy-update benchmark (GRPO), the rollouts benchmark (SmolLM2).
out=${1:?OUT}
source benchmarks/gpu/setup.sh
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv >"$out/nvidia_smi.csv"
(CUDA_VISIBLE_DEVICES=0 timeout 540 bash benchmarks/gpu/run_smollm2_gsm8k.sh "$out/smollm2_gsm8k" 00:00:06:00) \
  >"$out/smollm2_track.log" 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  timeout 300 python benchmarks/policy_update.py --variant all --phase grpo --warmup 1 --steps 4 --out "$out/policy_update_grpo.json"
  timeout 220 python benchmarks/rollouts.py --model smollm2-gsm8k --engine both --hf-num-prompts 128 --out "$out/rollouts_smollm2.json"
) >"$out/gpu1_track.log" 2>&1 &
wait
tail -5 "$out/smollm2_track.log" "$out/gpu1_track.log"
ls -la "$out"
