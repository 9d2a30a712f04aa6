#!/usr/bin/env bash
# The shipped text prompt: the 2D network's text stage, trained on one 2-core CPU (about 35 min) on top of
# the click weights of the bundle that training/recipes/click_net_cpu.sh made (Resources/models/default by
# default), which stay frozen: clicks and boxes without text give the same masks afterwards.
#
#   bash training/recipes/text_net_cpu.sh            # from the repository root, ../shared/data beside it
#
# 1. Named structures: the labelled cases whose labels.json names the vocabulary resolves (the slicerio
#    chest CT's lungs, ribs (split into single ribs), vertebral columns and soft tissue; the lesions; the
#    brain tumour) plus the phantoms' named classes; ct_abdomen_multiorgan is held out.
# 2. Training (training/loops/text.py): text alone, text + click, text + box, with correction clicks.
# 3. Export (training/export/text.py): the slice stage with its text input, the vocabulary marking the trained
#    categories, checked against torch and against the bundle's network without text.
set -euo pipefail
source "$(dirname "$0")/common.sh"

ensure_data
"$PY" -m training.loops.text --config training/configs/text_net_cpu.json --out runs/text_net_cpu \
    --set init_bundle="\"$OUT\"" --no-progress
"$PY" -m training.export.text --checkpoint runs/text_net_cpu/checkpoint.pt --bundle "$OUT" --runs runs/text_net_cpu
