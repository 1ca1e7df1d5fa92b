#!/usr/bin/env bash
# One 2-GPU command (under 10 minutes) after the device pack's parts reached /tmp/parts:
#   bash benchmarks/gpu/session_final.sh $OUT
# GPU 0: SmolLM2-135M GRPO on GSM8K for 5.5 minutes of training, greedy eval before/after.
# Then, one after another: the GPU test suite (policy on GPU 0, engines on GPU 1), the SmolLM2
# rollouts benchmark on GPU 1, the GRPO policy-update benchmark on GPU 1.
out=${1:?OUT}
source benchmarks/gpu/setup.sh
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv >"$out/nvidia_smi.csv"
(CUDA_VISIBLE_DEVICES=0 timeout 500 bash benchmarks/gpu/run_smollm2_gsm8k.sh "$out/smollm2_gsm8k" 00:00:05:30) \
  >"$out/smollm2_track.log" 2>&1 &
timeout 200 bash benchmarks/gpu/run_tests.sh "$out" >/dev/null 2>&1
echo "[final] tests done at $SECONDS s"; tail -2 "$out/gpu_tests.log"
export CUDA_VISIBLE_DEVICES=1
# the SmolLM2 folder the GPU 0 run converted (same GGUF, same code): no second conversion
[ -f /tmp/smollm2/COMPLETE ] && mkdir -p /tmp/r1l-bench && ln -sfn /tmp/smollm2 /tmp/r1l-bench/smollm2-135m-instruct-hf
timeout 150 python benchmarks/rollouts.py --model smollm2-gsm8k --engine both --hf-num-prompts 64 \
  --gpu-memory-utilization 0.5 --out "$out/rollouts_smollm2.json" >"$out/rollouts_smollm2.log" 2>&1
echo "[final] rollouts done at $SECONDS s"
timeout $(( 540 - SECONDS )) python benchmarks/policy_update.py --variant all --phase grpo --warmup 1 --steps 3 \
  --out "$out/policy_update_grpo.json" >"$out/policy_update_grpo.log" 2>&1
echo "[final] policy update done at $SECONDS s"
wait
tail -3 "$out/smollm2_track.log"
