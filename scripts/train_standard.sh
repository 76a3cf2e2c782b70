#!/usr/bin/env sh
# The standard ProtoFormer schedule (official recipe): FlyingChairs -> FlyingThings3D -> Sintel mixture -> KITTI.
# Each stage starts from the final checkpoint of the one before (train.restore_ckpt); numbers live in configs/*.yaml.
#
#   sh ./scripts/train_standard.sh [NPROC] [WORK_ROOT]        # defaults: 4 processes, runs/standard
#
# NPROC must divide every stage's global train.batch_size (8 for chairs, 4 after): 1, 2 or 4.
# A stage that stopped can be continued with
#   sh ./scripts/dist_train.sh configs/<stage>.yaml NPROC --work-dir WORK_ROOT/<stage> --resume
# after which the later stages are started by hand with the lines below.
set -eu

NPROC=${1:-4}
WORK=${2:-runs/standard}
TRAIN="sh $(dirname "$0")/dist_train.sh"

$TRAIN configs/chairs.yaml "$NPROC" --work-dir "$WORK/chairs"
$TRAIN configs/things.yaml "$NPROC" --work-dir "$WORK/things" train.restore_ckpt "$WORK/chairs/checkpoints/latest.pth"
$TRAIN configs/sintel.yaml "$NPROC" --work-dir "$WORK/sintel" train.restore_ckpt "$WORK/things/checkpoints/latest.pth"
$TRAIN configs/kitti.yaml "$NPROC" --work-dir "$WORK/kitti" train.restore_ckpt "$WORK/sintel/checkpoints/latest.pth"
