#!/usr/bin/env bash
# The GPU measurements behind benchmarks/results/README.md, one function each. On the GPU machine,
# from the repository root, once the device pack's parts are in /tmp/parts (setup.sh says how):
#   bash benchmarks/gpu/run.sh WHAT [ARCHIVE_DIR]
#     setup     unpack vLLM/TRL/SmolLM2, install this package, print the versions
#     tests     tests/gpu (2 GPUs: policy on cuda:0, vLLM on cuda:1; 1 GPU: the colocated test) but for
#               test_engine_layouts.py, whose three fits take most of a command (layout_tests runs it)
#     update    GRPO and SFT policy update vs TRL, 1.5B shape, same batches (1 GPU)
#     mfu       the GRPO update at configs/grpo.yaml's settings (16k-token microbatches, 1024-token log-prob
#               chunks), eager and compiled (inductor); tokens/s and MFU; first the compiled head's gradient
#               test, tests/gpu/test_compiled_head.py (1 GPU)
#     rollouts  vLLM vs HF engine rollouts and the weight sync, SmolLM2 and the 1.5B shape
#     rollout_cost  where a 1.5B-shape rollout batch's time goes, on both GPUs at once: log-probs for every token
#               (GPU 0) vs the one-prompt check (GPU 1), each with its GPU's utilization during generate (well
#               under 100%: the engine's CPU work is what the rollout waits on). On a fresh machine vLLM's first
#               engine build takes ~2 minutes
#     step      one GRPO step of configs/grpo.yaml end to end, policy on GPU 0, vLLM on GPU 1
#     async     configs/grpo.yaml's GRPO step synchronous, then one step off (async rollouts) with ASYNC_REPLICAS
#               (default 1) vLLM replicas sharing GPU 1, one process each on the same 2 GPUs, vLLM in processes of
#               its own (weights over NCCL); ASYNC_STEPS (default 8) steps,
#               medians of those after the first ASYNC_WARMUP_STEPS (default 3: builds, compiles, recompiles);
#               ASYNC_EAGER=1: no CUDA graphs, faster start. On a fresh machine the first run pays the first
#               compiles (tests/gpu/test_vllm_separate_process.py runs with `tests`)
#     async_variants  after `async`: one step off with 2 vLLM replicas, then one step off without the engine's
#               log-probs (engine_logprobs false: no TIS), what they cost
#     async_learning  GRPO on GSM8K with SmolLM2-135M-Instruct from the base model, synchronous vs one-step-off
#               async rollouts, LEARN_STEPS (default 30) steps each with the held-out evaluation every 10, for each
#               of LEARN_SEEDS (default "0"; e.g. "0 1" puts one seed's two runs on each of 2 GPUs): a seed's two
#               runs share a GPU (policies and in-process engines), the second started once the first one's
#               engine is built (vLLM sizes its cache from the free memory it sees); LEARN_ASYNC_ARGS: more
#               options for the one-step-off run (e.g. "--model.init_args.async_rollouts.warmup_steps 10")
#     layouts   configs/grpo.yaml's step (1.5B shape) in the two engine layouts on all N GPUs: colocated DDP (N ranks,
#               each with its engine on its own GPU, sleep mode) and split N/2+N/2 (ranks on GPUs 0..N/2-1, rank r's
#               engine on GPU N/2+r in a process of its own, weights over NCCL)
#     layout_tests  tests/gpu/test_engine_layouts.py: colocated DDP, colocated FSDP2 and split 1+1 fits, log-prob gap
#     fsdp7b    the Qwen2.5-Math-7B shape's GRPO step under FSDP2 on all GPUs with colocated engines (128 rollouts
#               per rank, no CUDA graphs), step breakdown and peak memory (FSDP7B_STEPS, default 3)
#     scaling   the 1.5B shape's GRPO update, tokens/s per GPU on 1 GPU vs 2, 4, .. all GPUs under DDP (weak scaling)
#     smollm2   GRPO on GSM8K with SmolLM2-135M-Instruct, accuracy before/after (1 GPU; SMOLLM2_MAX_TIME)
#     pipeline  the CS336 pipeline on GSM8K with SmolLM2: greedy test evaluation, SFT, GRPO from the SFT
#               export; run it twice (two 10-minute commands: the second resumes GRPO with --ckpt_path
#               last); with 2 GPUs, TRL's SFTTrainer + GRPOTrainer on GPU 1 for the same time
# Each run writes its JSON and log to $R1L_GPU_WORK/WHAT (default /tmp/r1l-gpu/WHAT); with ARCHIVE_DIR,
# everything but checkpoints also lands in ARCHIVE_DIR/WHAT.tgz. Each WHAT fits in 10 minutes: runs are
# skipped once fewer than their minimum seconds are left of DEADLINE (default 570).
set -uo pipefail
what=${1:?"WHAT: setup | tests | update | mfu | rollouts | rollout_cost | step | async | async_variants | async_learning | layouts | layout_tests | fsdp7b | scaling | smollm2 | pipeline"}; archive=${2:-}
work=${R1L_GPU_WORK:-/tmp/r1l-gpu}/$what; mkdir -p "$work"
source benchmarks/gpu/setup.sh

# within LEAST MOST CMD...: run CMD for at most MOST seconds, never past second DEADLINE of this script;
# skip it (status 125) when fewer than LEAST seconds are left.
within() { local least=$1 most=$2 left=$((${DEADLINE:-570} - SECONDS)); shift 2
  [ "$left" -lt "$least" ] && { echo "skipped: ${left} s left"; return 125; }
  timeout $((left < most ? left : most)) "$@"; }
# bench NAME LEAST MOST SCRIPT ARGS...: one benchmark process, its JSON and log named NAME
bench() { local name=$1 least=$2 most=$3 script=$4; shift 4
  within "$least" "$most" python "benchmarks/$script.py" "$@" --out "$work/$name.json" >"$work/$name.log" 2>&1
  echo "[$what] $name rc=$? at ${SECONDS} s"; }

tests() {
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; date -u; } >"$work/gpu_tests.log" 2>&1
  within 60 480 python -m pytest tests/gpu --ignore=tests/gpu/test_engine_layouts.py -v -rA -p no:cacheprovider \
    --junitxml="$work/gpu_tests.xml" >>"$work/gpu_tests.log" 2>&1; echo "[tests] rc=$?"; tail -1 "$work/gpu_tests.log"; }

update() {  # the configs' 16k-token microbatches, then the memory-lean 4k + 256-token chunks (eager, compiled)
  local lean="--variant r1-packed --r1-microbatch-max-tokens 4096 --logprob-chunk-size 256"
  bench update_trl 45 120 policy_update --phase grpo --warmup 1 --steps 3 --variant trl
  bench update_r1_16k 45 120 policy_update --phase grpo --warmup 1 --steps 3 --variant r1-packed
  bench update_r1_4k_chunk256 45 120 policy_update --phase grpo --warmup 1 --steps 3 $lean
  bench update_sft_trl 45 120 policy_update --phase sft --warmup 1 --steps 3 --variant trl
  bench update_sft_r1_4k_chunk256 45 120 policy_update --phase sft --warmup 1 --steps 3 $lean
  bench update_r1_4k_chunk256_compile 60 120 policy_update --phase grpo --warmup 1 --steps 3 $lean --r1-compile inductor; }

mfu() {  # each a process of its own; the compiled one keeps a second warm-up step for its compiles
  local grpo="--phase grpo --variant r1-packed --steps 3"
  within 30 150 python -m pytest tests/gpu/test_compiled_head.py -v -rA -p no:cacheprovider >"$work/gpu_test.log" 2>&1
  echo "[mfu] gradient test rc=$? at ${SECONDS} s"; tail -1 "$work/gpu_test.log"
  bench mfu_r1_16k 45 120 policy_update $grpo --warmup 1
  bench mfu_r1_16k_compile 90 200 policy_update $grpo --warmup 2 --r1-compile inductor
  python - "$work" <<'PY'
import json, pathlib, sys
for name in ("r1_16k", "r1_16k_compile"):
    path = pathlib.Path(sys.argv[1]) / f"mfu_{name}.json"
    r = json.loads(path.read_text()) if path.exists() else {}
    print(f"[mfu] {name:22s} " + (f"tokens/s {r['tokens_per_s']:,.0f}  MFU {r['mfu']:.1%}  step {r['median_step_seconds']:.2f} s  "
          f"peak {r.get('peak_memory_gb') or 0:.2f} GiB" if "mfu" in r else f"no result ({str(r.get('error', 'missing'))[-200:]})"))
PY
}

rollouts() {  # with two GPUs the 1.5B shape runs on GPU 1 beside SmolLM2 on GPU 0
  local common="--no-vllm-seeded --gpu-memory-utilization 0.5"
  if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    (CUDA_VISIBLE_DEVICES=1 bench rollouts_qwen1.5b 300 420 rollouts --model qwen1.5b-shape --engine both \
      --hf-num-prompts 64 $common) & local qwen_pid=$!
  fi
  CUDA_VISIBLE_DEVICES=0 bench rollouts_smollm2_both 200 320 rollouts --model smollm2-gsm8k --engine both \
    --hf-num-prompts 64 $common
  CUDA_VISIBLE_DEVICES=0 bench rollouts_smollm2_seqs2048 60 170 rollouts --model smollm2-gsm8k --engine vllm \
    --max-num-seqs 2048 $common
  if [ -n "${qwen_pid:-}" ]; then wait "$qwen_pid"
  else CUDA_VISIBLE_DEVICES=0 bench rollouts_qwen1.5b 300 420 rollouts --model qwen1.5b-shape --engine both \
    --hf-num-prompts 64 $common; fi; }

step() { bench grpo_step_2gpu 120 450 grpo_step --steps 3 --workdir "$work/grpo_step"; }

rollout_cost() {  # the two in parallel, one per GPU (vLLM's V2 model runner samples with per-request seeds at no
  # extra cost, so only one seed per call is timed)
  local common=(--model qwen1.5b-shape --engine vllm --gpu-memory-utilization 0.5 --sync-repeats 2 --no-vllm-seeded)
  (CUDA_VISIBLE_DEVICES=0 bench rollouts_qwen1.5b_logprobs_all 120 300 rollouts "${common[@]}" --vllm-logprobs all) &
  local all_pid=$!
  CUDA_VISIBLE_DEVICES=1 bench rollouts_qwen1.5b_logprobs_check 120 300 rollouts "${common[@]}" --vllm-logprobs check
  wait "$all_pid"
  python - "$work" <<'PY'
import json, pathlib, sys
for name in ("all", "check"):
    path = pathlib.Path(sys.argv[1]) / f"rollouts_qwen1.5b_logprobs_{name}.json"
    v = (json.loads(path.read_text()) if path.exists() else {}).get("results", {}).get("vllm", {})
    print(f"[rollout_cost] log-probs {name:5s} {v.get('seconds', 0):.2f} s {v.get('tokens_per_s', 0):,.0f} tok/s "
          f"GPU {v.get('gpu_utilization_percent')}% | {v.get('error', '')[-200:]}")
PY
}

async() {  # synchronous, then one step off with ASYNC_REPLICAS (default 1) vLLM replicas sharing GPU 1, all in
  # processes of their own; on a fresh machine the first run also pays vLLM's and inductor's first compiles
  local common=(--steps "${ASYNC_STEPS:-8}" --warmup-steps "${ASYNC_WARMUP_STEPS:-3}" ${ASYNC_EAGER:+--enforce-eager}
                --engine-process separate)
  bench grpo_step_separate 150 340 grpo_step "${common[@]}" --workdir "$work/separate"
  bench grpo_step_separate_async 120 260 grpo_step "${common[@]}" --async-rollouts --workdir "$work/separate_async" \
    --model.init_args.engine.init_args.replicas "${ASYNC_REPLICAS:-1}"
  summarize grpo_step_separate grpo_step_separate_async; }

async_variants() {  # after `async` on the same machine (warm caches): one step off with 2 vLLM replicas, then one
  # step off without the engine's log-probs (no TIS): what asking for every token's log-prob costs
  local common=(--steps "${ASYNC_STEPS:-8}" --warmup-steps "${ASYNC_WARMUP_STEPS:-3}" --engine-process separate
                --async-rollouts)
  bench grpo_step_separate_async_2_replicas 120 220 grpo_step "${common[@]}" --workdir "$work/separate_async_2_replicas" \
    --model.init_args.engine.init_args.replicas 2
  bench grpo_step_separate_async_no_logprobs 120 220 grpo_step "${common[@]}" --workdir "$work/separate_async_no_logprobs" \
    --model.init_args.engine_logprobs false
  summarize grpo_step_separate_async_2_replicas grpo_step_separate_async_no_logprobs; }

async_learning() {  # LEARN_SEEDS (default "0"): per seed a synchronous and a one-step-off run sharing one GPU (seed i
  # on GPU i mod the GPU count), all seeds at once; each run's CSV log and evaluations in $work/seed<S>/{sync,async}/logs
  smollm2_folder || return 1
  local gpus=$(gpu_count) i=0 pids=()
  # max_time ends a run that is too slow with its logs written, 90 s before the deadline
  learn() { local dir=$1 least=$2; shift 2; within "$least" $((${DEADLINE:-570} - SECONDS - 10)) python -m r1_lightning.cli fit \
    --config configs/gsm8k/smollm2_grpo.yaml --model.init_args.model_name_or_path /tmp/smollm2 \
    --trainer.max_steps "${LEARN_STEPS:-30}" --trainer.max_time "$(hms $((${DEADLINE:-570} - SECONDS - 90)))" \
    --trainer.default_root_dir "$dir" "$@" >"$dir.log" 2>&1; }
  # the one-step-off run starts once the synchronous run's engine is built (vLLM sizes its cache from the free memory)
  pair() { local seed=$1 dir="$work/seed$1"; mkdir -p "$dir"
    learn "$dir/sync" 200 --seed_everything "$seed" & local sync_pid=$!
    for _ in $(seq 180); do grep -q "built in" "$dir/sync.log" 2>/dev/null && break; sleep 1; done
    learn "$dir/async" 150 --seed_everything "$seed" --model.init_args.async_rollouts.enabled true ${LEARN_ASYNC_ARGS:-}
    echo "[async_learning] seed $seed async rc=$? at ${SECONDS} s"
    wait "$sync_pid"; echo "[async_learning] seed $seed sync rc=$? at ${SECONDS} s"; }
  for seed in ${LEARN_SEEDS:-0}; do CUDA_VISIBLE_DEVICES=$((i % gpus)) pair "$seed" & pids+=($!); i=$((i + 1)); done
  wait "${pids[@]}"
  for run in "$work"/seed*/sync "$work"/seed*/async; do echo "[$run]"; cat "$run"/logs/version_*/eval/*_summary.json 2>/dev/null | tr -d '\n'; echo; done; }

# summarize NAME...: one line per grpo_step JSON of this WHAT
summarize() { python - "$work" "$@" <<'PY'
import json, pathlib, sys
for name in sys.argv[2:]:
    path = pathlib.Path(sys.argv[1]) / f"{name}.json"
    r = json.loads(path.read_text()) if path.exists() else {}
    m = r.get("median_timed") or {}
    keys = ("step_s", "wall_step_s", "rollout_s", "rollout_wait_s", "update_s", "weight_sync_s", "samples_per_s",
            "train_tokens_per_s", "policy_gpu_peak_memory_gb", "engine_logprob_gap")
    print(f"[{name}] steps {r.get('timed_steps')}: " + (" ".join(f"{k}={m.get(k) or 0:.4g}" for k in keys)
          + f" gpu_peak_gb={r.get('gpu_peak_memory_used_gb')}"
          if m else f"no result ({r.get('error', 'missing')[-300:]})"))
PY
}

# gpu_count: the CUDA devices this command sees
gpu_count() { python -c 'import torch; print(max(1, torch.cuda.device_count()))'; }

layouts() {  # the same per-rank batch (256 rollouts) in both: colocated on N GPUs makes N x 256 per step, split N/2 x 256
  local n half; n=$(gpu_count); half=$((n / 2))
  bench grpo_step_colocated_$n 200 330 grpo_step --steps 4 --layout colocated --devices "$n" --workdir "$work/colocated_$n"
  bench grpo_step_split_${half}_$half 150 230 grpo_step --steps 4 --layout split --devices "$half" --engine-process separate \
    --workdir "$work/split_${half}_$half"
  summarize grpo_step_colocated_$n grpo_step_split_${half}_$half; }

layout_tests() {
  within 60 540 python -m pytest tests/gpu/test_engine_layouts.py -v -rA -p no:cacheprovider \
    --junitxml="$work/layout_tests.xml" >"$work/layout_tests.log" 2>&1; echo "[layout_tests] rc=$?"; tail -3 "$work/layout_tests.log"; }

fsdp7b() {  # the first call also writes the 7B folder (random bf16 weights, ~15 GB) into $R1L_BENCH_CACHE
  # eager: torch.compile under FSDP2 has not run on a GPU yet
  bench grpo_step_7b_fsdp2_colocated 240 560 grpo_step --model qwen7b-shape --layout colocated --devices "$(gpu_count)" \
    --strategy fsdp2 --rollout-batch-size 128 --engine-memory 0.4 --enforce-eager --steps "${FSDP7B_STEPS:-3}" \
    --workdir "$work/fsdp7b" --model.init_args.compile false
  summarize grpo_step_7b_fsdp2_colocated; }

scaling() {
  bench update_weak_scaling 150 560 policy_update --variant r1-packed --phase grpo --weak-scaling "$(gpu_count)" --warmup 1 --steps 3
  python -c "import json, sys; r = json.load(open(sys.argv[1])); print('[scaling]', r.get('efficiency'),
    {n: x.get('tokens_per_s') or x.get('error') for n, x in r.get('runs', {}).items()})" "$work/update_weak_scaling.json"; }

# smollm2_folder: SmolLM2's GGUF as an HF folder in /tmp/smollm2 (at once when it is there already)
smollm2_folder() { [ -f /tmp/smollm2/config.json ] || python -c "import sys; sys.path.insert(0, 'benchmarks'); import common; common.smollm2_hf_folder(out_dir='/tmp/smollm2')" \
    >"$work/convert.log" 2>&1 || { cat "$work/convert.log"; return 1; }; }

smollm2() {  # the GGUF becomes an HF folder, then `r1-lightning fit` on configs/gsm8k/smollm2_grpo.yaml
  smollm2_folder || return 1
  # the run's CSV log and evaluations land in $work/logs as they are written (kept if the run is cut)
  mkdir -p runs/smollm2_gsm8k "$work/logs" && rm -rf runs/smollm2_gsm8k/logs && ln -s "$(realpath "$work/logs")" runs/smollm2_gsm8k/logs
  within 120 560 python -m r1_lightning.cli fit --config configs/gsm8k/smollm2_grpo.yaml \
    --model.init_args.model_name_or_path /tmp/smollm2 \
    --trainer.max_steps 500 --trainer.max_time "${SMOLLM2_MAX_TIME:-00:00:06:30}" >"$work/fit.log" 2>&1
  echo "[smollm2] fit rc=$? at ${SECONDS} s"; cat "$work"/logs/version_*/eval/*_summary.json 2>/dev/null; }

# hms SECONDS: Lightning's max_time (DD:HH:MM:SS)
hms() { printf "00:%02d:%02d:%02d" $(($1 / 3600)) $(($1 % 3600 / 60)) $(($1 % 60)); }

pipeline() {  # first call: base eval, SFT, GRPO part 1; second call (its checkpoint exists): GRPO part 2
  # r1-lightning on GPU 0 (policy and vLLM share it); with 2 GPUs, TRL on GPU 1 for the same wall time,
  # resuming where its own previous call stopped. rm -rf $work to start over. Every evaluation is
  # greedy on all 1,319 GSM8K test questions with configs/gsm8k/smollm2_grpo.yaml's settings.
  local grpo=(python -m r1_lightning.cli fit --config configs/gsm8k/smollm2_grpo.yaml
    --trainer.default_root_dir "$work/grpo" --trainer.max_steps 500 --data.init_args.max_val_examples null)
  smollm2_folder || return 1
  local trl_pid= eval_base=${PIPELINE_EVAL_BASE:-1}  # 0: the starting model's evaluation is known already
  if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    CUDA_VISIBLE_DEVICES=1 timeout $((${DEADLINE:-570} - SECONDS - 20)) python benchmarks/trl_gsm8k_pipeline.py \
      --model /tmp/smollm2 --workdir "$work/trl" $([ "$eval_base" = 0 ] && echo --skip-eval-base) \
      --budget-seconds $((${DEADLINE:-570} - SECONDS - 60)) --out "$work/trl_$(date +%s).json" >>"$work/trl.log" 2>&1 &
    trl_pid=$!
  fi
  export CUDA_VISIBLE_DEVICES=0
  if [ ! -f "$work/grpo/checkpoints/last.ckpt" ]; then
    # vLLM's first engine on a fresh machine spends minutes compiling kernels (cached after): with the base
    # evaluation skipped, a 16-question evaluation in the background pays that during SFT instead
    local examples=$([ "$eval_base" = 0 ] && echo 16 || echo null)
    within 60 300 python -m r1_lightning.cli validate --config configs/gsm8k/smollm2_grpo.yaml \
      --model.init_args.model_name_or_path /tmp/smollm2 --trainer.limit_val_batches 1.0 \
      --trainer.default_root_dir "$work/eval_base" --data.init_args.max_val_examples "$examples" \
      >"$work/eval_base.log" 2>&1 &
    local eval_pid=$!
    [ "$eval_base" = 0 ] || { wait "$eval_pid"; echo "[pipeline] base evaluation rc=$? at ${SECONDS} s"; }
    if [ ! -f "$work/sft/checkpoints/last_hf/config.json" ]; then  # a retry keeps the SFT export it has
      within 90 200 python -m r1_lightning.cli fit --config configs/gsm8k/smollm2_sft.yaml \
        --model.init_args.model_name_or_path /tmp/smollm2 --trainer.default_root_dir "$work/sft" \
        --trainer.max_time 00:00:02:30 >"$work/sft.log" 2>&1
      echo "[pipeline] SFT rc=$? at ${SECONDS} s"
    fi
    [ "$eval_base" = 0 ] && { wait "$eval_pid"; echo "[pipeline] engine warm-up rc=$? at ${SECONDS} s"; }
    # GRPO part 1 from the SFT export; max_time counts training only: 180 s of the command are kept for
    # the start (weights, engine, the evaluation at step 0), the last step, the evaluation at the end and
    # the save (97 s of it with vLLM's kernels cached; a first engine on a fresh machine took longer than
    # 110 s and was cut before its checkpoint)
    local part1=$((${DEADLINE:-570} - SECONDS - 180))
    echo "$part1" >"$work/grpo_part1_seconds"
    within 240 $((part1 + 170)) "${grpo[@]}" --model.init_args.model_name_or_path "$work/sft/checkpoints/last_hf" \
      --trainer.max_time "$(hms "$part1")" >"$work/grpo_part1.log" 2>&1
    echo "[pipeline] GRPO part 1 rc=$? at ${SECONDS} s"
  else
    # Lightning's Timer restores the training time already spent from the checkpoint: max_time is the total
    local total=$(($(cat "$work/grpo_part1_seconds") + ${DEADLINE:-570} - SECONDS - 180))
    within 240 $((${DEADLINE:-570} - SECONDS)) "${grpo[@]}" --model.init_args.model_name_or_path \
      "$work/sft/checkpoints/last_hf" --trainer.max_time "$(hms "$total")" --ckpt_path last >"$work/grpo_part2.log" 2>&1
    echo "[pipeline] GRPO part 2 (resumed) rc=$? at ${SECONDS} s"
  fi
  cat "$work"/eval_base/logs/version_*/*_summary.json "$work"/grpo/logs/version_*/eval/*_summary.json 2>/dev/null
  if [ -n "$trl_pid" ]; then wait "$trl_pid"; echo "[pipeline] TRL rc=$? at ${SECONDS} s"; tail -3 "$work/trl.log"; fi; }

case $what in
  setup) ;;
  tests|update|mfu|rollouts|rollout_cost|step|async|async_variants|async_learning|layouts|layout_tests|fsdp7b|scaling|smollm2|pipeline) $what ;;
  *) echo "unknown WHAT '$what' (setup | tests | update | mfu | rollouts | rollout_cost | step | async | async_variants | async_learning | layouts | layout_tests | fsdp7b | scaling | smollm2 | pipeline)"; exit 2 ;;
esac
# weights, optimizer states and checkpoints stay behind (a file back from the machine is at most 16 MiB)
[ -n "$archive" ] && mkdir -p "$archive" && tar -czf "$archive/$what.tgz" --exclude="*.ckpt" \
  --exclude="*.safetensors" --exclude="*.pt" --exclude="*.pth" --exclude="*.bin" -C "$(dirname "$work")" "$what"
echo "[run.sh] $what done in $SECONDS s"
