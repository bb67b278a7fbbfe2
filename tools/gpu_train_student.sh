#!/usr/bin/env bash
# How the shipped student was trained: on the device machine (H100), from the repo root, with the training images
# repacked as lossless WebP under .carry/data/train (tools/pack_training_images.py ../shared/datasets/train --out
# .carry/data/train), Set5 under .carry/data/Set5 and the DVMSR teacher under .carry/weights.
# Usage: tools/gpu_train_student.sh MINUTES [RESUME_RUN_DIR]
set -euo pipefail
minutes=${1:-7}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
out=${OUT:-runs_out}; mkdir -p "$out"
if [ -n "${2:-}" ]; then
  python3 -m mambaesr_edge.cli train --resume "$2" --max-minutes "$minutes"
  exit
fi
timeout 240 python3 benchmarks/train_step.py --presets student dvmsr --scans triton --batch 32 --steps 10 --json "$out/train_step_triton.json"
# iterations that fit the budget: student step + a third of a DVMSR step (teacher forward only), 90% margin
iters=$(python3 -c "import json,sys; r={x['preset']:x['step_ms_median'] for x in json.load(open('$out/train_step_triton.json'))['results']}; print(int($minutes*60e3*0.9/(r['student']+r['dvmsr']/3)))")
echo "iterations: $iters"
python3 -m mambaesr_edge.cli train --preset student --train-dir .carry/data/train --val-dir .carry/data/Set5 \
  --teacher .carry/weights/team07_DVMSR.pth --alpha 0.8 -n "$iters" --lr 5e-4 --warmup 200 --batch-size 32 --patch 64 \
  --val-every 1000 --log-every 100 --ckpt-every 500 --max-minutes "$minutes" --scan triton --out runs --name student_kd
