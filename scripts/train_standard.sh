#!/usr/bin/env sh
# The standard ProtoFormer schedule (official recipe): FlyingChairs -> FlyingThings3D -> Sintel mixture -> KITTI.
# Each stage starts from the final checkpoint of the one before (train.restore_ckpt); numbers live in configs/*.yaml.
#
#   sh ./scripts/train_standard.sh [NPROC] [WORK_ROOT]        # defaults: 4 processes, runs/standard
#
# NPROC must divide every stage's global train.batch_size (8 for chairs, 4 after): 1, 2 or 4.
# Resumable: run the same command again after an interruption; a stage with checkpoints continues from its
# latest.pth (a finished stage does nothing) and the later stages follow.
set -eu

NPROC=${1:-4}
WORK=${2:-runs/standard}
TRAIN="sh $(dirname "$0")/dist_train.sh"

stage() {  # stage NAME PREVIOUS: train configs/NAME.yaml from PREVIOUS's final weights, or resume it
    if [ -f "$WORK/$1/checkpoints/latest.pth" ]; then
        $TRAIN "configs/$1.yaml" "$NPROC" --work-dir "$WORK/$1" --resume
    elif [ -n "$2" ]; then
        $TRAIN "configs/$1.yaml" "$NPROC" --work-dir "$WORK/$1" train.restore_ckpt "$WORK/$2/checkpoints/latest.pth"
    else
        $TRAIN "configs/$1.yaml" "$NPROC" --work-dir "$WORK/$1"
    fi
}

stage chairs ""
stage things chairs
stage sintel things
stage kitti sintel
