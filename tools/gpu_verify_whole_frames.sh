#!/usr/bin/env bash
# Verify the native-scan default and whole-frame GPU inference (issues 14 and 16) on the device machine, from the
# repo root, in one call of under 10 minutes: the GPU tests, then the same network timed tiled (128, overlap 16) and
# whole-frame, the stream rows an app gets against the Triton tiles, and whole frames with TF32 GEMMs.
#
# Usage: OUT=... MAMBAESR_SHARED=$PWD/.carry/shared tools/gpu_verify_whole_frames.sh [SECONDS]   (default 560)
# Results: $OUT/pytest.txt, speed_tiled.json (+ _profile), speed_whole.json (+ _profile), speed_whole_tf32.json.
# What to read: speed_tiled's stream rows (scan auto = the native kernel and, on this branch, whole frames; triton =
# the tiles of before) and goals; the frame rows of both runs (cuda vs triton, tiled vs whole, fp32 vs fp16) and the
# Mamba / CNN ratios; the profiles say what is left.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
out=${OUT:-gpu_out}; mkdir -p "$out"
t0=$(date +%s); end=$(( t0 + ${1:-560} ))
left() { echo $(( end - $(date +%s) )); }
nvidia-smi -L >"$out/gpu.txt" 2>&1
timeout 200 python3 -m pytest -m gpu -q -rs tests/ >"$out/pytest.txt" 2>&1; echo "pytest rc $? at $(( $(date +%s) - t0 )) s"
tail -15 "$out/pytest.txt"
common=(--presets dvmsr-g1 --overlap 16 --frame-batch 256 --no-e2e-frame --stream-frames 300 --target-s 0.3)
timeout 170 python3 benchmarks/speed.py --sections stream scan frame --tile 128 --impls triton cuda --amp none fp16 --scan-dim 120 \
  --scan-batches 1 32 --stream-precisions default fp16 --stream-scans auto triton "${common[@]}" --profile --max-seconds 130 \
  --json "$out/speed_tiled.json" >"$out/speed_tiled.txt" 2>&1
echo "tiled rc $? at $(( $(date +%s) - t0 )) s"; grep -A45 "^STREAM" "$out/speed_tiled.txt" | head -55
timeout 120 python3 benchmarks/speed.py --sections frame --tile 0 --impls cuda --amp none fp16 "${common[@]}" --profile --max-seconds 90 \
  --json "$out/speed_whole.json" >"$out/speed_whole.txt" 2>&1
echo "whole rc $? at $(( $(date +%s) - t0 )) s"; grep -A30 "^NETWORK" "$out/speed_whole.txt" | head -30
if [ "$(left)" -gt 40 ]; then
  timeout "$(left)" python3 benchmarks/speed.py --matmul-tf32 --sections stream frame --tile 0 --impls cuda --amp none \
    --stream-precisions default "${common[@]}" --max-seconds $(( $(left) - 30 )) --json "$out/speed_whole_tf32.json" >"$out/speed_whole_tf32.txt" 2>&1
  echo "tf32 rc $? at $(( $(date +%s) - t0 )) s"; grep -A25 "^STREAM" "$out/speed_whole_tf32.txt" | head -30
fi
