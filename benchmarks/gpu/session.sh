#!/usr/bin/env bash
# One GPU command (under 10 minutes, 2 GPUs) of a planned session, after the device pack's parts
# reached /tmp/parts (../shared/device/README.md):
#   bash benchmarks/gpu/session.sh PLAN $OUT [extra options for the plan's main run]
# Plans (run them in this order; each fits one command):
#   tests    the GPU test suite alone (policy on GPU 0, engines on GPU 1), then the rollouts benchmarks:
#            SmolLM2 on GPU 1 (vLLM unseeded, then seeded, then HF) beside the 1.5B shape on GPU 0 (unseeded
#            vLLM, then HF: its HF half alone took 143 s)
#   smollm2  GRPO on GSM8K with SmolLM2-135M, policy on GPU 0 and engine on GPU 1, 7 min of training
#   update   the GRPO policy-update benchmark (r1, r1-packed, TRL, plain HF; step 1 profiled) on GPU 0,
#            then the end-to-end step on both GPUs with token-budget microbatches
#   step1    one GPU: the end-to-end GRPO step of configs/grpo.yaml with the vLLM engine colocated (sleep mode)
#   sft      the SFT policy-update benchmark (r1, r1-packed, TRL SFTTrainer, plain HF) on GPU 0
#   final    SmolLM2 GRPO on GSM8K on GPU 0 (policy and engine share it, 5 min of training) beside the GRPO
#            policy update on GPU 1: TRL, then r1-lightning with token-budget microbatches (16k, 8k tokens)
#   profile  one GPU: where the GRPO update's time goes -- every variant with warm-up step 1 under
#            torch.profiler, then r1 with the naive LM head (each variant takes 60-120 s with start-up)
#   rollouts one GPU: the rollouts benchmark, SmolLM2 on GSM8K (vLLM unseeded, seeded, then HF), then the
#            1.5B shape (unseeded vLLM, then HF) with whatever is left of ~9.5 minutes
#   rollouts2 one GPU: vLLM alone on SmolLM2 with vLLM's default max_num_seqs, with 2048, without log-probs;
#            then the 1.5B shape with 2048
#   update3  one GPU: the GRPO update, TRL vs r1-lightning at 16k/8k-token budgets with 1024- and 256-token
#            log-prob chunks, without cuDNN attention, without checkpointing, 32k, and microbatch 2; ~8 minutes
#   sft1     one GPU: the SFT update, TRL SFTTrainer vs r1-lightning (token budgets, microbatch 2) vs plain HF
#   update4  one GPU: peak memory at TRL's or below at >= 1.5x its speed? TRL vs r1 at 4k/6k/8k/16k-token
#            budgets (no cuDNN attention, as the configs), the SFT update at 16k/4k, a profile of 16k (where the
#            MFU goes), then 16k compiled; ~9 min
#   pair     two GPUs: update4 on GPU 0 beside, on GPU 1, where vLLM's time goes on SmolLM2 (rollouts3): vLLM
#            in-process vs HF side by side, vLLM with its engine core in its own process, a cProfile of the
#            in-process generate, no log-probs, max_num_seqs 2048
#   e2e      two GPUs: the end-to-end GRPO step (token-budget microbatches, as configs/grpo.yaml), then the GPU tests
#   final2   two GPUs: on GPU 0 the update (TRL vs r1 16k, 4k + 256-token chunks, SFT, a profile, compiled) beside, on
#            GPU 1, SmolLM2 rollouts vLLM vs HF (log-probs for the check group only, GRPOModule's default), vLLM with
#            log-probs for all, with max_num_seqs 2048; then the end-to-end step on both GPUs if time is left
# Everything lands in one archive, $OUT/PLAN.tgz (the device returns at most 8 files), plus the
# plan's log and its JSON summaries. Every step has its own time limit, so the archive is always written.
plan=${1:?PLAN}; out=${2:?OUT}; shift 2
work=/tmp/r1l-$plan; mkdir -p "$work"
source benchmarks/gpu/setup.sh >"$work/setup.log" 2>&1; tail -1 "$work/setup.log"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv >"$work/nvidia_smi.csv"
# within LEAST MOST CMD...: run CMD for at most MOST seconds and not past second $deadline of the
# command (default 575); skip it with status 125 when fewer than LEAST seconds are left.
within() { local least=$1 most=$2 left=$((${deadline:-575} - SECONDS)); shift 2
  [ "$left" -lt "$least" ] && { echo "skipped: ${left} s left"; return 125; }
  timeout $((left < most ? left : most)) "$@"; }
# update_runs PLAN: the policy-update runs of plan update3 | sft1 | update4, one process each, within the deadline
update_runs() {
  local plan=$1 phase=grpo spec name; [ "$plan" = sft1 ] && phase=sft
  local cudnn="--r1-sdpa-backends torch"  # torch's own choice of attention kernels: cuDNN first on an H200
  local specs
  if [ "$plan" = final2 ]; then
    specs=("trl --variant trl" "r1_16k --variant r1-packed"
           "r1_4k_chunk256 --variant r1-packed --r1-microbatch-max-tokens 4096 --logprob-chunk-size 256"
           "sft_trl --variant trl --phase sft"
           "sft_r1_4k_chunk256 --variant r1-packed --r1-microbatch-max-tokens 4096 --logprob-chunk-size 256 --phase sft"
           "r1_16k_profile --variant r1-packed --warmup 2 --profile-step 1"
           "r1_4k_chunk256_compile --variant r1-packed --r1-microbatch-max-tokens 4096 --logprob-chunk-size 256 --r1-compile inductor")
  elif [ "$plan" = update4 ]; then
    specs=("trl --variant trl" "r1_4k --variant r1-packed --r1-microbatch-max-tokens 4096"
           "r1_4k_chunk256 --variant r1-packed --r1-microbatch-max-tokens 4096 --logprob-chunk-size 256"
           "r1_6k_chunk256 --variant r1-packed --r1-microbatch-max-tokens 6144 --logprob-chunk-size 256"
           "r1_8k --variant r1-packed --r1-microbatch-max-tokens 8192" "r1_16k --variant r1-packed"
           "sft_trl --variant trl --phase sft" "sft_r1_16k --variant r1-packed --phase sft"
           "sft_r1_4k_chunk256 --variant r1-packed --r1-microbatch-max-tokens 4096 --logprob-chunk-size 256 --phase sft"
           "r1_16k_profile --variant r1-packed --warmup 2 --profile-step 1"
           "r1_16k_compile --variant r1-packed --r1-compile inductor")
  else  # what ran on 2026-11-28 (before the benchmark's default left cuDNN out)
    specs=("trl --variant trl" "r1_16k --variant r1-packed $cudnn"
           "r1_8k --variant r1-packed --r1-microbatch-max-tokens 8192 $cudnn"
           "r1_16k_chunk256 --variant r1-packed --logprob-chunk-size 256 $cudnn"
           "r1_8k_chunk256 --variant r1-packed --r1-microbatch-max-tokens 8192 --logprob-chunk-size 256 $cudnn"
           "r1_16k_no_cudnn --variant r1-packed" "r1_16k_no_ckpt --variant r1-packed --no-gradient-checkpointing $cudnn"
           "r1_32k_no_cudnn --variant r1-packed --r1-microbatch-max-tokens 32768"
           "r1_mb2_no_cudnn --variant r1" "r1_mb2 --variant r1 $cudnn" "hf --variant hf")
  fi
  for spec in "${specs[@]}"; do
    set -- $spec; name=$1; shift
    within 45 120 python benchmarks/policy_update.py --phase $phase --warmup 1 --steps 3 "$@" \
      --out "$work/update_$name.json" >"$work/update_$name.log" 2>&1; echo "[$plan] $name rc=$? at ${SECONDS} s"
  done
}
# rollouts3_runs pair|final2: vLLM on SmolLM2 every way that may show where its time goes (same prompts, same sampling)
rollouts3_runs() {
  local spec name specs=("smollm2_both --engine both --hf-num-prompts 64" "smollm2_engine_process --engine vllm --vllm-engine-process"
    "smollm2_cpu_profile --engine vllm --num-prompts 64 --cpu-profile $work/rollouts_smollm2_cpu_profile.txt"
    "smollm2_no_logprobs --engine vllm --vllm-logprobs none" "smollm2_seqs2048 --engine vllm --max-num-seqs 2048")
  [ "${1:-}" = final2 ] && specs=("smollm2_both --engine both --hf-num-prompts 64"
    "smollm2_all_logprobs --engine vllm --vllm-logprobs all" "smollm2_seqs2048 --engine vllm --max-num-seqs 2048")
  for spec in "${specs[@]}"; do
    set -- $spec; name=$1; shift
    within 60 $([ $name = smollm2_both ] && echo 320 || echo 170) python benchmarks/rollouts.py --model smollm2-gsm8k "$@" --no-vllm-seeded \
      --gpu-memory-utilization 0.5 --out "$work/rollouts_$name.json" >"$work/rollouts_$name.log" 2>&1
    echo "[rollouts3] $name rc=$? at ${SECONDS} s"
  done
}
# e2e_step LEAST MOST [fit options]: the end-to-end GRPO step of configs/grpo.yaml on both GPUs, within the deadline
e2e_step() { local least=$1 most=$2; shift 2
  within "$least" "$most" python benchmarks/grpo_step.py --steps 3 --workdir "$work/grpo_step" \
    --out "$work/grpo_step_2gpu.json" "$@" >"$work/grpo_step.log" 2>&1; echo "[$plan] grpo_step rc=$? at ${SECONDS} s"; }
case $plan in
  tests)
    timeout 260 bash benchmarks/gpu/run_tests.sh "$work" >/dev/null 2>&1
    tail -1 "$work/gpu_tests.log"
    (CUDA_VISIBLE_DEVICES=0 timeout 290 python benchmarks/rollouts.py --model qwen1.5b-shape --engine both --no-vllm-seeded \
      --hf-num-prompts 64 --gpu-memory-utilization 0.6 --out "$work/rollouts_qwen1.5b.json" >"$work/rollouts_qwen1.5b.log" 2>&1) &
    CUDA_VISIBLE_DEVICES=1 timeout 290 python benchmarks/rollouts.py --model smollm2-gsm8k --engine both \
      --hf-num-prompts 64 --gpu-memory-utilization 0.6 --out "$work/rollouts_smollm2.json" >"$work/rollouts_smollm2.log" 2>&1
    wait
    cp "$work"/gpu_tests.log "$work"/rollouts_*.json "$out"/ 2>/dev/null ;;
  smollm2)
    timeout 560 bash benchmarks/gpu/run_smollm2_gsm8k.sh "$work/smollm2_gsm8k" 00:00:07:00 \
      --model.init_args.engine.init_args.device 1 --model.init_args.engine.init_args.gpu_memory_utilization 0.6 "$@" \
      >"$work/smollm2_track.log" 2>&1
    tail -3 "$work/smollm2_track.log"; grep "\[eval\]" "$work/smollm2_gsm8k/fit.log"
    cp "$work"/smollm2_gsm8k/logs/version_*/metrics.csv "$out"/ 2>/dev/null ;;
  update)
    CUDA_VISIBLE_DEVICES=0 timeout 330 python benchmarks/policy_update.py --variant all --phase grpo --warmup 2 --steps 3 \
      --profile-step 1 --out "$work/policy_update_grpo.json" >"$work/policy_update_grpo.log" 2>&1
    timeout 200 python benchmarks/grpo_step.py --steps 3 --workdir "$work/grpo_step" --out "$work/grpo_step_2gpu_packed.json" \
      --model.init_args.microbatch_max_tokens 16384 "$@" >"$work/grpo_step.log" 2>&1
    cp "$work"/policy_update_grpo.json "$work"/grpo_step_2gpu_packed.json "$out"/ 2>/dev/null ;;
  step1)  # one GPU: the end-to-end step with the engine colocated (sleep mode), as far as one GPU allows
    timeout 400 python benchmarks/grpo_step.py --steps 3 --workdir "$work/grpo_step" --out "$work/grpo_step_1gpu_colocated.json" \
      --model.init_args.engine.init_args.colocate true --model.init_args.engine.init_args.gpu_memory_utilization 0.45 \
      "$@" >"$work/grpo_step.log" 2>&1; echo "[step1] rc=$?"
    cp "$work"/grpo_step_1gpu_colocated.json "$out"/ 2>/dev/null ;;
  sft)
    CUDA_VISIBLE_DEVICES=0 timeout 540 python benchmarks/policy_update.py --variant all --phase sft --warmup 2 --steps 3 \
      --profile-step 1 --out "$work/policy_update_sft.json" >"$work/policy_update_sft.log" 2>&1
    cp "$work"/policy_update_sft.json "$out"/ 2>/dev/null ;;
  final)
    (CUDA_VISIBLE_DEVICES=0 timeout 450 bash benchmarks/gpu/run_smollm2_gsm8k.sh "$work/smollm2_gsm8k" 00:00:05:00 \
      --model.init_args.microbatch_max_tokens 16384 "$@" >"$work/smollm2_track.log" 2>&1) &
    for spec in "trl 220 --variant trl" "r1_packed_16k 110 --variant r1-packed" \
                "r1_packed_8k 110 --variant r1-packed --r1-microbatch-max-tokens 8192"; do
      set -- $spec; name=$1; limit=$2; shift 2
      CUDA_VISIBLE_DEVICES=1 timeout "$limit" python benchmarks/policy_update.py "$@" --phase grpo --warmup 1 --steps 3 \
        --out "$work/update_$name.json" >"$work/update_$name.log" 2>&1; echo "[final] $name rc=$?"
    done
    wait; tail -3 "$work/smollm2_track.log"; grep "\[eval\]" "$work/smollm2_gsm8k/fit.log"
    cp "$work"/update_*.json "$out"/ 2>/dev/null ;;
  profile)
    bench() { name=$1; shift; timeout "$@" --phase grpo --warmup 2 --steps 2 --profile-step 1 --out "$work/$name.json" \
      >"$work/$name.log" 2>&1; echo "[profile] $name rc=$?"; }
    bench all 420 python benchmarks/policy_update.py --variant all
    bench r1_naive_head 140 python benchmarks/policy_update.py --variant r1 --logprob-chunk-size 0 --no-peak-measure
    cp "$work"/*.json "$out"/ 2>/dev/null ;;
  rollouts)
    timeout 250 python benchmarks/rollouts.py --model smollm2-gsm8k --engine both --hf-num-prompts 64 \
      --gpu-memory-utilization 0.5 --out "$work/rollouts_smollm2.json" >"$work/rollouts_smollm2.log" 2>&1
    echo "[rollouts] smollm2 rc=$?"
    deadline=570 within 1 570 python benchmarks/rollouts.py --model qwen1.5b-shape --engine both --no-vllm-seeded \
      --hf-num-prompts 64 --gpu-memory-utilization 0.5 --out "$work/rollouts_qwen1.5b.json" >"$work/rollouts_qwen1.5b.log" 2>&1
    echo "[rollouts] qwen1.5b rc=$?"
    cp "$work"/rollouts_*.json "$out"/ 2>/dev/null ;;
  rollouts2)  # where vLLM's time goes: SmolLM2 ran at 11.7k tokens/s (1.2x HF) on 2026-11-28
    for spec in "smollm2 --model smollm2-gsm8k" "smollm2_seqs2048 --model smollm2-gsm8k --max-num-seqs 2048" \
                "smollm2_no_logprobs --model smollm2-gsm8k --vllm-logprobs none" \
                "qwen1.5b_seqs2048 --model qwen1.5b-shape --max-num-seqs 2048"; do
      set -- $spec; name=$1; shift
      within 60 150 python benchmarks/rollouts.py "$@" --engine vllm --no-vllm-seeded \
        --gpu-memory-utilization 0.5 --out "$work/rollouts_$name.json" >"$work/rollouts_$name.log" 2>&1
      echo "[rollouts2] $name rc=$? at ${SECONDS} s"
    done
    cp "$work"/rollouts_*.json "$out"/ 2>/dev/null ;;
  update3|sft1|update4)
    update_runs $plan
    cp "$work"/update_*.json "$out"/ 2>/dev/null ;;
  pair|final2)  # the update runs on GPU 0 while the rollout runs use GPU 1
    (CUDA_VISIBLE_DEVICES=0 update_runs $([ $plan = pair ] && echo update4 || echo final2) >"$work/pair_gpu0.log" 2>&1) &
    CUDA_VISIBLE_DEVICES=1 rollouts3_runs $plan; wait; cat "$work/pair_gpu0.log"
    if [ $plan = pair ]; then
      cp "$work"/rollouts_*.json "$work"/rollouts_smollm2_cpu_profile.txt "$out"/ 2>/dev/null
    else
      e2e_step 120 240; cp "$work"/rollouts_*.json "$work"/update_*.json "$work"/grpo_step_2gpu.json "$out"/ 2>/dev/null
    fi ;;
  e2e)
    e2e_step 120 330 "$@"
    within 100 240 bash benchmarks/gpu/run_tests.sh "$work" >/dev/null 2>&1; tail -1 "$work/gpu_tests.log"
    cp "$work"/grpo_step_2gpu.json "$out"/ 2>/dev/null ;;
  *) echo "unknown plan $plan (tests | smollm2 | update | sft | final | profile | rollouts | rollouts2 | update3 | sft1 | update4 | step1 | pair | e2e | final2)"; exit 2 ;;
esac
tar -czf "$out/$plan.tgz" --exclude="*.ckpt" --exclude="*.safetensors" -C /tmp "r1l-$plan"
echo "[session] $plan done in $SECONDS s"; ls -la "$out"
