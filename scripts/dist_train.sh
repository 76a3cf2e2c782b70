#!/usr/bin/env sh
# Train one stage on NPROC processes of this machine with torchrun (DistributedDataParallel; NCCL on GPUs, gloo on CPU).
#
#   sh ./scripts/dist_train.sh CONFIG NPROC --work-dir DIR [--resume] [--device cpu] [KEY VALUE ...]
#   sh ./scripts/dist_train.sh configs/sintel.yaml 4 --work-dir SCRATCH_DIR
#
# train.batch_size is the global batch and must divide by NPROC (the stage configs use 4 or 8).
#
# Environment: PYTHON (default python), PORT (rendezvous port, default 29500; use another one for a second run on the
# same machine), NNODES / NODE_RANK / MASTER_ADDR for several machines (run the same command on each).
set -eu

if [ "$#" -lt 2 ]; then
    echo "usage: sh $0 CONFIG NPROC --work-dir DIR [train.py options and KEY VALUE overrides]" >&2
    exit 2
fi
CONFIG=$1
NPROC=$2
shift 2

exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" \
    --nproc_per_node="$NPROC" \
    "$(dirname "$0")/../train.py" --config "$CONFIG" "$@"
