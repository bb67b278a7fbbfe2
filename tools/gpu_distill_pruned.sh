#!/usr/bin/env bash
# Distil students pruned from DVMSR (tools/prune_groups.py), several runs side by side on one GPU, on the device
# machine from the repo root, with .carry/ laid out as in tools/gpu_train_student.sh.
# Usage: tools/gpu_distill_pruned.sh MINUTES "KEEP:ITERS:LR" ...   e.g. "0:4000:2e-4" "0 3:3000:2e-4"
# Each run: runs/dvmsr_g<KEEP>_kd, log in $OUT/g<KEEP>.log, run folder tarred into $OUT/g<KEEP>.tar.
set -uo pipefail
minutes=$1; shift
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
out=${OUT:-runs_out}; mkdir -p "$out" runs .carry/init
teacher=.carry/weights/team07_DVMSR.pth
pids=()
for spec in "$@"; do
  IFS=: read -r keep iters lr <<<"$spec"
  tag=g${keep// /}
  python3 tools/prune_groups.py "$teacher" --keep $keep --out .carry/init/$tag.safetensors || exit 1
  python3 -m mambaesr_edge.cli train --init .carry/init/$tag.safetensors --name dvmsr_${tag}_kd -n "$iters" --lr "$lr" \
    --warmup 100 --train-dir .carry/data/train --val-dir .carry/data/Set5 --teacher "$teacher" --alpha 0.8 \
    --batch-size 32 --patch 64 --val-every 500 --log-every 100 --ckpt-every 500 --max-minutes "$minutes" --scan triton \
    --out runs >"$out/$tag.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for run in runs/dvmsr_g*_kd; do tar -cf "$out/$(basename "$run" _kd | sed 's/dvmsr_//').tar" -C runs "$(basename "$run")"; done
nvidia-smi --query-gpu=name,memory.used --format=csv >"$out/gpu.txt" 2>&1
exit $status
