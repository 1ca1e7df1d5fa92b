#!/usr/bin/env bash
# GPU session, part B (2 GPUs, one 10-minute command), on the machine part A left warm:
#   bash benchmarks/gpu/session_b.sh $OUT [fit options for the end-to-end step...]
# Together: the GPU test suite (both GPUs: policy on 0, engine on 1) and the 1.5B-shape rollouts
# benchmark on GPU 0 (half its memory). Then: the end-to-end GRPO step of configs/grpo.yaml on 2 GPUs.
out=${1:?OUT}
shift
source benchmarks/gpu/setup.sh
(CUDA_VISIBLE_DEVICES=0 timeout 240 python benchmarks/rollouts.py --model qwen1.5b-shape --engine both \
  --hf-num-prompts 64 --gpu-memory-utilization 0.5 --no-vllm-unseeded --out "$out/rollouts_qwen1.5b.json") \
  >"$out/rollouts_qwen1.5b.log" 2>&1 &
timeout 240 bash benchmarks/gpu/run_tests.sh "$out" >/dev/null 2>&1
wait
tail -3 "$out/gpu_tests.log"
timeout 320 python benchmarks/grpo_step.py --steps 3 --workdir /tmp/grpo_step --out "$out/grpo_step_2gpu.json" "$@" \
  >"$out/grpo_step.log" 2>&1
cp /tmp/grpo_step/fit.log "$out/grpo_step_fit.log" 2>/dev/null
tail -5 "$out/grpo_step.log"
ls -la "$out"
