#!/usr/bin/env sh
# Reproduces the shipped default checkpoint: protoformer-s on the built-in synthetic data, on a CPU, in four stages
# (an easy-to-hard curriculum):
#   1. configs/cpu_default.yaml      motions up to 48 px, photometric 0.3, paused at step 500 of its long schedule
#   2. configs/cpu_default_ft.yaml   from stage 1's weights: motions up to 72 px, photometric 0.5, 1200 steps that
#                                    anneal the learning rate to zero
#   3. configs/cpu_default_ft2.yaml  from stage 2's weights: new samples of stage 2's distribution, paused at step
#                                    1400 of its schedule
#   4. configs/cpu_default_ft3.yaml  from stage 3's weights: motions up to 100 px (whole-scene motions up to 60 px),
#                                    1300 steps that anneal the learning rate to zero
# Resumable: run it again to continue an interrupted stage. At the end the best stage-4 weights are exported (fp16,
# inferring with 12 refinement iterations; training used 6)
# to checkpoints/protoformer-s-synthetic.pth with their config beside it (this replaces the shipped file).
#
#   sh ./scripts/train_cpu_default.sh [WORK_DIR]          # default work dir: runs/cpu_default
set -eu
WORK=${1:-runs/cpu_default}
PYTHON=${PYTHON:-python}
STAGE1_STEPS=500
STAGE3_STEPS=1400

if [ -f "$WORK/stage1/checkpoints/latest.pth" ]; then
    $PYTHON train.py --work-dir "$WORK/stage1" --resume --stop-at $STAGE1_STEPS
else
    $PYTHON train.py --config configs/cpu_default.yaml --work-dir "$WORK/stage1" --stop-at $STAGE1_STEPS
fi
if [ -f "$WORK/stage2/checkpoints/latest.pth" ]; then
    $PYTHON train.py --work-dir "$WORK/stage2" --resume
else
    $PYTHON train.py --config configs/cpu_default_ft.yaml --work-dir "$WORK/stage2" \
        train.restore_ckpt "$WORK/stage1/checkpoints/latest.pth"
fi
if [ -f "$WORK/stage3/checkpoints/latest.pth" ]; then
    $PYTHON train.py --work-dir "$WORK/stage3" --resume --stop-at $STAGE3_STEPS
else
    $PYTHON train.py --config configs/cpu_default_ft2.yaml --work-dir "$WORK/stage3" --stop-at $STAGE3_STEPS \
        train.restore_ckpt "$WORK/stage2/checkpoints/latest.pth"
fi
if [ -f "$WORK/stage4/checkpoints/latest.pth" ]; then
    $PYTHON train.py --work-dir "$WORK/stage4" --resume
else
    $PYTHON train.py --config configs/cpu_default_ft3.yaml --work-dir "$WORK/stage4" \
        train.restore_ckpt "$WORK/stage3/checkpoints/latest.pth"
fi
$PYTHON train.py --work-dir "$WORK/stage4" --export checkpoints/protoformer-s-synthetic.pth --fp16 model.iters 12
