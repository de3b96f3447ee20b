#!/usr/bin/env bash
# Train on several nodes with torchrun (LLaMA-Factory's launcher). Run the same command on every node, with
# NODE_RANK=0 on the node whose address is MASTER_ADDR and 1, 2, ... on the others:
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 bash examples/multinode.sh llava1_5_7b rejection
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 bash examples/multinode.sh llava1_5_7b rejection
#
# Every node needs the same environment (rejection-align installed: its start-up hook reaches every torchrun
# worker), the same repository checkout, data and images at the same paths. Overrides after the model and kind
# are passed to every worker, but only without spaces: the launcher rebuilds the command line by splitting on
# spaces, so rejection sentences belong in the YAML (docs/training.md).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[ $# -ge 1 ] || die "usage: NNODES=.. NODE_RANK=.. MASTER_ADDR=.. bash examples/multinode.sh MODEL [KIND] [key=value ...]"
: "${NNODES:?set NNODES (number of nodes)}"
: "${NODE_RANK:?set NODE_RANK (0 on the master node)}"
: "${MASTER_ADDR:?set MASTER_ADDR (address of the NODE_RANK=0 node)}"
export NNODES NODE_RANK MASTER_ADDR MASTER_PORT=${MASTER_PORT:-29500}
export NPROC_PER_NODE=${NPROC_PER_NODE:-$(gpu_count)}
export FORCE_TORCHRUN=1
MODEL=$1
KIND=${2:-rejection}
shift $(( $# >= 2 ? 2 : 1 ))
check_model_kind "$MODEL" "$KIND"
need_gpus 1 "multi-node training"
for arg in "$@"; do
  case "$arg" in *" "*) die "override '$arg' contains a space: put it in the YAML (torchrun splits on spaces)" ;; esac
done

# Keep the global batch at 128: per-device batch x grad-accum x NNODES x NPROC_PER_NODE.
PER_DEVICE=$(yaml_get "configs/${MODEL}_lora_${KIND}.yaml" per_device_train_batch_size)
WORLD=$(( NNODES * NPROC_PER_NODE ))
ACCUM=$(( 128 / (PER_DEVICE * WORLD) ))
[ "$ACCUM" -ge 1 ] || die "per-device batch $PER_DEVICE x $WORLD GPUs exceeds 128: lower per_device_train_batch_size"
echo "[multinode] node $NODE_RANK/$NNODES, $NPROC_PER_NODE GPU(s) each, gradient_accumulation_steps=$ACCUM"
llamafactory-cli train "configs/${MODEL}_lora_${KIND}.yaml" "gradient_accumulation_steps=$ACCUM" "$@"
