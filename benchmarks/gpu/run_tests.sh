#!/usr/bin/env bash
# The GPU test suite (tests/gpu) on a 2-GPU machine: the policy on cuda:0, the vLLM engine on cuda:1.
#   bash benchmarks/gpu/run_tests.sh [LOG_DIR]       # after `source benchmarks/gpu/setup.sh`
# Writes LOG_DIR/gpu_tests.log (pytest -v, with the skip reasons) and LOG_DIR/gpu_tests.xml (JUnit).
set -uo pipefail
log_dir=${1:-benchmarks/results}
mkdir -p "$log_dir"
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -lt 2 ]; then
  echo "[gpu tests] $gpus GPU(s) visible: the two-GPU tests will skip (one GPU runs the engine colocated)" >&2
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import vllm, torch, transformers, lightning; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'lightning', lightning.__version__)"
  date -u
} >"$log_dir/gpu_tests.log" 2>&1
VLLM_ENABLE_V1_MULTIPROCESSING=0 python -m pytest tests/gpu -v -rA -p no:cacheprovider \
  --junitxml="$log_dir/gpu_tests.xml" 2>&1 | tee -a "$log_dir/gpu_tests.log"
exit "${PIPESTATUS[0]}"
