#!/usr/bin/env sh
# Reproduces the shipped default checkpoint: protoformer-s on the built-in synthetic data, on a CPU.
# Resumable: run it again to continue an interrupted run; at the end the weights are exported (fp16) to
# checkpoints/protoformer-s-synthetic.pth with its config beside it.
#
#   sh ./scripts/train_cpu_default.sh [WORK_DIR]          # default work dir: runs/cpu_default
set -eu
WORK=${1:-runs/cpu_default}
PYTHON=${PYTHON:-python}
if [ -f "$WORK/checkpoints/latest.pth" ]; then
    $PYTHON train.py --work-dir "$WORK" --resume
else
    $PYTHON train.py --config configs/cpu_default.yaml --work-dir "$WORK"
fi
$PYTHON train.py --work-dir "$WORK" --export checkpoints/protoformer-s-synthetic.pth --fp16
