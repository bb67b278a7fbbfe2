#!/usr/bin/env bash
# The seed paper's two studies at small scale, on the device machine from the repo root (.carry/ as in
# tools/gpu_train_student.sh). benchmarks/train_studies.py turns the run folders into the table.
# Usage: tools/gpu_studies.sh DT_ITERS ALPHA_ITERS
#   dt rank 2 vs 30: the student preset trained from scratch on L1 to ground truth, one run at a time (NVML power
#   is the GPU's, so a run must have it alone); alpha sweep: the one-group DVMSR prune (tools/prune_groups.py) distilled with each
#   alpha, side by side (PSNR only).
set -uo pipefail
dt_iters=$1 alpha_iters=$2
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
out=${OUT:-runs_out}; mkdir -p "$out" runs/studies .carry/init
teacher=.carry/weights/team07_DVMSR.pth
common=(--train-dir .carry/data/train --val-dir .carry/data/Set5 --batch-size 32 --patch 64
        --log-every 50 --ckpt-every 100000 --scan triton --out runs/studies --warmup 50)
status=0
for rank in 2 30; do
  python3 -m mambaesr_edge.cli train --preset student --dt-rank $rank -n "$dt_iters" --lr 5e-4 \
    --val-every $((dt_iters / 2)) --name dt_rank_$rank "${common[@]}" >"runs/studies/dt_rank_$rank.log" 2>&1 || status=1
done
python3 tools/prune_groups.py "$teacher" --keep 0 --out .carry/init/g0.safetensors || exit 1
pids=()
for alpha in 0.0 0.2 0.4 0.5 0.6 0.8; do
  python3 -m mambaesr_edge.cli train --init .carry/init/g0.safetensors --teacher "$teacher" --alpha $alpha -n "$alpha_iters" --lr 2e-4 \
    --val-every $((alpha_iters / 2)) --name alpha_$alpha "${common[@]}" >"runs/studies/alpha_$alpha.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
tar -cf "$out/studies.tar" --exclude=checkpoints -C runs studies
exit $status
