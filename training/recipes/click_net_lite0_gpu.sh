#!/usr/bin/env bash
# The 2D network of training/recipes/click_net_lite0_cpu.sh, trained on one GPU: more steps, a larger batch.
#
#   bash training/recipes/click_net_lite0_gpu.sh prepare    # here (SimpleITK installed): pack the data, ImageNet init
#   bash training/recipes/click_net_lite0_gpu.sh train      # on the GPU machine; resumable (run it again)
#   bash training/recipes/click_net_lite0_gpu.sh finetune   # on the GPU machine: batch norm frozen, zoom crops
#   bash training/recipes/click_net_lite0_gpu.sh export     # here: bundle runs/bundle_lite0_gpu, then as the CPU
#                                                           # recipe's steps 5-8 (carry, text, settings, card)
#
# prepare packs the training cases of ../shared/data and runs/data (the split's validation cases left out) into
# .gpudata/train.npz and the validation cases into .gpudata/val.npz (training.data.pack_data: the arrays
# IMISSegmentLib.io reads, no SimpleITK needed there), and writes the network with its ImageNet encoder as the
# first run's init_from (.gpuinit/lite0_imagenet.pt: no package needed there). Both folders are ignored by git
# (.git/info/exclude) and must travel with the working tree (the device tool's `carry`; 64 MiB in all there).
# NPROC processes share the GPU (gloo; the simulated user runs on the CPU cores): 8 x batch 16 = 128 per step.
# Not yet run on a GPU (no GPU was lent when it was written): the CPU recipe made the shipped network.
set -euo pipefail
source "$(dirname "$0")/common.sh"
NPROC=${NPROC:-8}

case "${1:-}" in
prepare)
    ensure_data
    mkdir -p .gpudata .gpuinit
    "$PY" -m training.data.pack_data ../shared/data runs/data --exclude phantom_prostate --out .gpudata/train.npz
    "$PY" -m training.data.pack_data ../shared/data --held-out only --out .gpudata/val.npz
    "$PY" - <<'PYEOF'
import json
import torch
from IMISSegmentLib.networks.click_net import ClickNet
from training.loops.pretrained import load_pretrained_encoder
config = json.load(open("training/configs/click_net_lite0_gpu.json"))
network = ClickNet(config["network"])
print(load_pretrained_encoder(network))
torch.save({"model": network.state_dict(), "batchnorm_frozen": False}, ".gpuinit/lite0_imagenet.pt")
PYEOF
    du -sh .gpudata .gpuinit
    ;;
train|finetune)
    export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
    if [ "$1" = train ]; then
        config=training/configs/click_net_lite0_gpu.json run=runs/click_net_lite0_gpu
        init=(--set init_from=.gpuinit/lite0_imagenet.pt)
    else
        config=training/configs/click_net_lite0_gpu_ft.json run=runs/click_net_lite0_gpu_ft init=()
    fi
    # stops itself after TRAIN_SECONDS (the device tool runs a command at most 10 minutes); the checkpoint is
    # written every 100 steps, so running it again resumes
    timeout -s TERM "${TRAIN_SECONDS:-540}" "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
        -m training.loops.click_net --config "$config" --out "$run" --no-progress "${init[@]}" "${@:2}" || true
    ;;
export)
    "$PY" -m training.export.click_net --checkpoint runs/click_net_lite0_gpu_ft/checkpoint.pt --out runs/bundle_lite0_gpu \
        --runs runs/click_net_lite0_gpu runs/click_net_lite0_gpu_ft
    IMIS_SEGMENT_MODEL=runs/bundle_lite0_gpu imis-segment evaluate ../shared/data --split training/splits/validation.json \
        --methods clicknet --protocol 2d --no-masks --out runs/eval_lite0_gpu
    ;;
*)
    echo "usage: $0 prepare|train|finetune|export" >&2
    exit 2
    ;;
esac
