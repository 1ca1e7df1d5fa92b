#!/usr/bin/env bash
# GPU session, part C (one GPU is enough), on the machine parts A and B left warm:
#   bash benchmarks/gpu/session_c.sh $OUT
# The SFT policy-update benchmark (r1-lightning vs TRL's SFTTrainer vs a plain loop).
out=${1:?OUT}
source benchmarks/gpu/setup.sh
CUDA_VISIBLE_DEVICES=0 timeout 300 python benchmarks/policy_update.py --variant all --phase sft --warmup 1 --steps 4 \
  --out "$out/policy_update_sft.json" >"$out/policy_update_sft.log" 2>&1
tail -30 "$out/policy_update_sft.log"
