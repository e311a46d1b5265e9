#!/usr/bin/env bash
# Runs ON the lent accelerator machine (device tool), from the repository root, after
# `python -m models.device_kit prepare --config CONFIG` here, with the carry list it prints.
#   bash models/device_run.sh CONFIG [TRAINING_MINUTES]
# Trains every job of CONFIG at once on the GPU with the schedule fitted to TRAINING_MINUTES
# (models.parallel --minutes), finalizes (calibration, operating points, weights folder), times
# the new and the shipped model at batch 64 beside a ViT-B/16, and leaves in $OUT: gpu.txt,
# train.log, card_tables.md, bench.json and run.tar.gz (the run without the per-job checkpoints;
# unpack it under runs/ here). Whatever finished is packed even if a later step fails.
# DEVICE=cpu PROCS=2 run it here as a dry run.
set -uo pipefail
CONFIG=${1:?usage: device_run.sh CONFIG [TRAINING_MINUTES]}
MINUTES=${2:-5}
DEVICE=${DEVICE:-cuda}
PROCS=${PROCS:-8}
OUT=${OUT:-runs/device_out}
RUN=${RUN:-runs/device}
mkdir -p "$OUT" "$RUN"
trap 'tar czf "$OUT/run.tar.gz" --exclude="*/jobs/*/model.pt" --exclude="*/probe/jobs/*/model.pt" -C "$(dirname "$RUN")" "$(basename "$RUN")"' EXIT

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/sonopacs-site \
  .device/whl/*.whl || exit 1
export PYTHONPATH=/tmp/sonopacs-site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export SONOPACS_IMAGENET_DIR=$PWD/.device/imagenet
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; python3 --version
  python3 -c 'import torch, monai; print("torch", torch.__version__, "monai", monai.__version__)'; } >"$OUT/gpu.txt" 2>&1

python3 -m models.parallel --config "$CONFIG" --device "$DEVICE" --procs "$PROCS" --minutes "$MINUTES" \
  --out "$RUN" 2>&1 | tee "$OUT/train.log" || exit 1
python3 -m models.card_tables "$RUN/weights/metrics.json" >"$OUT/card_tables.md" 2>&1
python3 benchmarks/inference.py --skip-cpu --weights "$RUN/weights" --weights models/weights \
  --json "$OUT/bench.json" >/dev/null 2>&1 || echo "benchmark failed" >>"$OUT/train.log"
