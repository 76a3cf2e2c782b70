#!/usr/bin/env sh
# Reproduces the shipped default checkpoint: protoformer-s on the built-in synthetic data, on a CPU, in five stages
# (an easy-to-hard curriculum):
#   1. configs/cpu_default.yaml      motions up to 48 px, photometric 0.3, paused at step 500 of its long schedule
#   2. configs/cpu_default_ft.yaml   from stage 1's weights: motions up to 72 px, photometric 0.5, 1200 steps that
#                                    anneal the learning rate to zero
#   3. configs/cpu_default_ft2.yaml  from stage 2's weights: new samples of stage 2's distribution, paused at step
#                                    1400 of its schedule
#   4. configs/cpu_default_ft3.yaml  from stage 3's weights: motions up to 100 px (whole-scene motions up to 60 px),
#                                    1300 steps that anneal the learning rate to zero
#   5. configs/cpu_default_ft4.yaml  from stage 4's weights: new samples of stage 4's distribution, 2400 steps that
#                                    anneal the learning rate to zero again
# Resumable: run it again to continue an interrupted stage. At the end the mean of the weights of stage 5's last 7
# checkpoints (steps 1800-2400) is exported (fp16, inferring with 12 refinement iterations; training used 6)
# to checkpoints/protoformer-s-synthetic.pth with their config beside it (this replaces the shipped file).
#
#   sh ./scripts/train_cpu_default.sh [WORK_DIR]          # default work dir: runs/cpu_default
set -eu
WORK=${1:-runs/cpu_default}
PYTHON=${PYTHON:-python}

# stage NAME CONFIG FROM_STAGE [train.py options]: resume NAME if it has a checkpoint, else start it from CONFIG
# (with FROM_STAGE's latest weights unless FROM_STAGE is empty).
stage() {
    name=$1 config=$2 from=$3
    shift 3
    if [ -f "$WORK/$name/checkpoints/latest.pth" ]; then
        $PYTHON train.py --work-dir "$WORK/$name" --resume "$@"
    elif [ -z "$from" ]; then
        $PYTHON train.py --config "$config" --work-dir "$WORK/$name" "$@"
    else
        $PYTHON train.py --config "$config" --work-dir "$WORK/$name" "$@" \
            train.restore_ckpt "$WORK/$from/checkpoints/latest.pth"
    fi
}

stage stage1 configs/cpu_default.yaml "" --stop-at 500
stage stage2 configs/cpu_default_ft.yaml stage1
stage stage3 configs/cpu_default_ft2.yaml stage2 --stop-at 1400
stage stage4 configs/cpu_default_ft3.yaml stage3
stage stage5 configs/cpu_default_ft4.yaml stage4
$PYTHON train.py --work-dir "$WORK/stage5" --export checkpoints/protoformer-s-synthetic.pth --fp16 --average 7 \
    model.iters 12
