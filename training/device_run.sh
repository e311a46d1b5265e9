#!/usr/bin/env bash
# Runs ON the lent accelerator machine (device tool), from the repository root, after
# `python -m sonopacs.training.device_kit prepare --config CONFIG` here, with the carry list it prints.
#   bash training/device_run.sh CONFIG [MINUTES]
# Trains every job of CONFIG at once on the GPU, with the schedule fitted so that the timing probe
# and the training take MINUTES (models.parallel --minutes), finalizes (calibration, operating
# points, weights folder), times the new and the shipped model at batch 64 beside a ViT-B/16, and
# leaves in $OUT: gpu.txt, train.log, run.tar.gz (the run without per-job checkpoints; unpack it
# under runs/ here), card_tables.md, bench.json. The whole call takes about MINUTES + 2.
# Dry run here: DEVICE=cpu PROCS=2 bash training/device_run.sh CONFIG 1
set -uo pipefail
CONFIG=${1:?usage: device_run.sh CONFIG [MINUTES]}
MINUTES=${2:-6}
DEVICE=${DEVICE:-cuda}
PROCS=${PROCS:-8}
OUT=${OUT:-runs/device_out}
RUN=${RUN:-runs/device}
rm -rf "$RUN"  # a warm machine keeps ignored folders between calls: no stale jobs in this run
mkdir -p "$OUT" "$RUN"
pack_run() {
  tar czf "$OUT/run.tar.gz" --exclude="*/jobs/*/model.pt" -C "$(dirname "$RUN")" "$(basename "$RUN")"
}

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/sonopacs-site \
  .device/whl/*.whl || exit 1
# the checkout itself, so that `python3 -m sonopacs.training...` finds the namespace the packaging maps
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
  --target /tmp/sonopacs-site . || exit 1
export PYTHONPATH=/tmp/sonopacs-site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export SONOPACS_IMAGENET_DIR=$PWD/.device/imagenet
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; python3 --version
  python3 -c 'import torch, monai; print("torch", torch.__version__, "monai", monai.__version__)'; } >"$OUT/gpu.txt" 2>&1

# SIGTERM (not the tool's SIGKILL at its limit) if the estimate is badly off, so the run still packs
limit=$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 * 1.3 + 60 }')
timeout -s TERM "$limit" python3 -m sonopacs.training.parallel --config "$CONFIG" --device "$DEVICE" --procs "$PROCS" \
  --minutes "$MINUTES" --out "$RUN" 2>&1 | tee "$OUT/train.log"
status=$?
pack_run
[ "$status" -eq 0 ] || { echo "training failed (rc $status)" >>"$OUT/train.log"; exit "$status"; }
python3 -m sonopacs.training.card_tables "$RUN/weights/metrics.json" >"$OUT/card_tables.md" 2>&1
timeout -s TERM 120 python3 benchmarks/inference.py --skip-cpu --weights "$RUN/weights" --weights models/weights \
  --json "$OUT/bench.json" >/dev/null 2>>"$OUT/train.log" || echo "benchmark failed" >>"$OUT/train.log"
