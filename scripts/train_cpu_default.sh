#!/usr/bin/env sh
# Reproduces the shipped default checkpoint: protoformer-s on the built-in synthetic data, on a CPU, in ten stages
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
#   6. configs/cpu_default_ft5.yaml  from the mean of the weights of stage 5's last 7 checkpoints (exported to
#                                    WORK_DIR/stage5/average.pth): half of the layers painted with real video
#                                    frames ($TEXTURES), 2000 annealed steps
#   7. configs/cpu_default_ft6.yaml  from the mean of the weights of stage 6's last 7 checkpoints (exported to
#                                    WORK_DIR/stage6/average.pth): 80 % of the layers painted with more video
#                                    frames ($TEXTURES_DENSE), 1800 annealed steps
#   8. configs/cpu_default_ft7.yaml  from stage 7's average (WORK_DIR/stage7/average.pth): stage 7's data on new
#                                    samples, 8 refinement iterations in training instead of 6, 1600 annealed steps
#   9. configs/cpu_default_ft8.yaml  from stage 8's average (WORK_DIR/stage8/average.pth): half of the image
#                                    textures from 24 photographs ($TEXTURES_MIX/photos), half from stage 7's video
#                                    frames ($TEXTURES_MIX/videos), 1400 annealed steps
#  10. configs/cpu_default_ft9.yaml  from stage 9's average (WORK_DIR/stage9/average.pth): stage 9's data on new
#                                    samples, 2000 annealed steps
# The textures of stages 6-10 are frames of OpenCV's sample clips megamind.avi, tree.avi and vtest.avi, read
# from $VIDEOS (default: $PROTOFORMER_SHARED/realdata/videos, else ../shared/realdata/videos; Debian's opencv-doc
# package has them too, with megamind.avi spelt Megamind.avi: link it under the lower-case name) and written by
# scripts/extract_frames.py to $TEXTURES (default: datasets/textures_videos,
# the folder configs/cpu_default_ft5.yaml names; every 9th, 4th and 40th frame), $TEXTURES_DENSE (default:
# datasets/textures_videos_dense, named by configs/cpu_default_ft6.yaml and ft7; every 3rd, 2nd and 20th frame) and
# $TEXTURES_MIX/videos (default datasets/textures_mix, named by configs/cpu_default_ft8.yaml and ft9; the same
# frames), unless the folder holds the marker .complete, written after a finished extraction (an interrupted one is
# redone). The photographs of stages 9-10 are OpenCV's sample images (the PHOTO_FILES list below), copied from
# $PHOTOS (default: /usr/share/doc/opencv-doc/examples/data, where `apt-get install opencv-doc` puts them) to
# $TEXTURES_MIX/photos; the recipe checks that they are all there before it starts any stage.
# Resumable: run it again to continue an interrupted stage (train.py exits with code 3 when a signal stops it, so
# the chain stops there too). At the end the mean of the weights of stage 10's last 7
# checkpoints (steps 1400-2000) is exported (fp16, inferring with 8 refinement iterations and 2 in a refining pass)
# to checkpoints/protoformer-s-synthetic.pth with their config beside it (this replaces the shipped file).
#
#   sh ./scripts/train_cpu_default.sh [WORK_DIR]          # default work dir: runs/cpu_default
set -eu
WORK=${1:-runs/cpu_default}
PYTHON=${PYTHON:-python}

# the photographs of stages 9-10 (see above)
PHOTOS=${PHOTOS:-/usr/share/doc/opencv-doc/examples/data}
TEXTURES_MIX=${TEXTURES_MIX:-datasets/textures_mix}
PHOTO_FILES="aero1.jpg aero3.jpg aloeL.jpg apple.jpg baboon.jpg board.jpg box_in_scene.png building.jpg butterfly.jpg
chicky_512.png ela_original.jpg fruits.jpg graf1.png graf3.png home.jpg leuvenA.jpg licenseplate_motion.jpg messi5.jpg
orange.jpg smarties.png squirrel_cls.jpg starry_night.jpg stuff.jpg Blender_Suzanne1.jpg"

if [ ! -f "$TEXTURES_MIX/photos/.complete" ]; then  # stages 9-10 need them: fail now, not after eight stages
    for name in $PHOTO_FILES; do
        if [ ! -f "$PHOTOS/$name" ]; then
            echo "train_cpu_default.sh: photograph $PHOTOS/$name not found; set PHOTOS to OpenCV's sample" \
                "data folder (apt-get install opencv-doc puts it in /usr/share/doc/opencv-doc/examples/data)" >&2
            exit 2
        fi
    done
fi

# stage NAME CONFIG WEIGHTS [train.py options]: resume NAME if it has a checkpoint, else start it from CONFIG
# (with the weights of the file WEIGHTS unless it is empty).
stage() {
    name=$1 config=$2 weights=$3
    shift 3
    if [ -f "$WORK/$name/checkpoints/latest.pth" ]; then
        $PYTHON train.py --work-dir "$WORK/$name" --resume "$@"
    elif [ -z "$weights" ]; then
        $PYTHON train.py --config "$config" --work-dir "$WORK/$name" "$@"
    else
        $PYTHON train.py --config "$config" --work-dir "$WORK/$name" "$@" \
            train.restore_ckpt "$weights"
    fi
}

# average STAGE OUT: export the mean of the weights of STAGE's last 7 checkpoints to OUT (fp16; inference settings
# stored with it: 8 iterations and 2 in a refining pass of eval.scales, chosen for stage 10's release on stage 9's
# synthetic validation set; the next stage's training ignores them. The README's per-stage tables were measured
# with the 12 iterations the intermediate releases were first exported with: --iters 12 reproduces them).
average() {
    $PYTHON train.py --work-dir "$WORK/$1" --export "$2" --fp16 --average 7 model.iters 8 eval.refine_iters 2
}

stage stage1 configs/cpu_default.yaml "" --stop-at 500
stage stage2 configs/cpu_default_ft.yaml "$WORK/stage1/checkpoints/latest.pth"
stage stage3 configs/cpu_default_ft2.yaml "$WORK/stage2/checkpoints/latest.pth" --stop-at 1400
stage stage4 configs/cpu_default_ft3.yaml "$WORK/stage3/checkpoints/latest.pth"
stage stage5 configs/cpu_default_ft4.yaml "$WORK/stage4/checkpoints/latest.pth"
[ -f "$WORK/stage6/checkpoints/latest.pth" ] || average stage5 "$WORK/stage5/average.pth"
VIDEOS=${VIDEOS:-${PROTOFORMER_SHARED:-../shared}/realdata/videos}
TEXTURES=${TEXTURES:-datasets/textures_videos}
TEXTURES_DENSE=${TEXTURES_DENSE:-datasets/textures_videos_dense}

# frames OUT EVERY_MEGAMIND EVERY_TREE EVERY_VTEST: extract the sample clips' frames into OUT unless an earlier
# extraction finished (OUT/.complete).
frames() {
    if [ ! -f "$1/.complete" ]; then
        $PYTHON scripts/extract_frames.py "$VIDEOS/megamind.avi" "$VIDEOS/tree.avi" "$VIDEOS/vtest.avi" \
            --every "$2" "$3" "$4" --out "$1"
        mkdir -p "$1" && touch "$1/.complete"
    fi
}

frames "$TEXTURES" 9 4 40
stage stage6 configs/cpu_default_ft5.yaml "$WORK/stage5/average.pth" synthetic.texture_dir "$TEXTURES"
[ -f "$WORK/stage7/checkpoints/latest.pth" ] || average stage6 "$WORK/stage6/average.pth"
frames "$TEXTURES_DENSE" 3 2 20
stage stage7 configs/cpu_default_ft6.yaml "$WORK/stage6/average.pth" synthetic.texture_dir "$TEXTURES_DENSE"
[ -f "$WORK/stage8/checkpoints/latest.pth" ] || average stage7 "$WORK/stage7/average.pth"
stage stage8 configs/cpu_default_ft7.yaml "$WORK/stage7/average.pth" synthetic.texture_dir "$TEXTURES_DENSE"
[ -f "$WORK/stage9/checkpoints/latest.pth" ] || average stage8 "$WORK/stage8/average.pth"

# photos OUT: copy the photographs of PHOTO_FILES from $PHOTOS into OUT unless an earlier copy finished.
photos() {
    if [ ! -f "$1/.complete" ]; then
        mkdir -p "$1"
        for name in $PHOTO_FILES; do cp "$PHOTOS/$name" "$1/"; done
        touch "$1/.complete"
    fi
}

photos "$TEXTURES_MIX/photos"
frames "$TEXTURES_MIX/videos" 3 2 20
stage stage9 configs/cpu_default_ft8.yaml "$WORK/stage8/average.pth" synthetic.texture_dir "$TEXTURES_MIX"
[ -f "$WORK/stage10/checkpoints/latest.pth" ] || average stage9 "$WORK/stage9/average.pth"
stage stage10 configs/cpu_default_ft9.yaml "$WORK/stage9/average.pth" synthetic.texture_dir "$TEXTURES_MIX"
average stage10 checkpoints/protoformer-s-synthetic.pth
