#!/usr/bin/env bash
# The shipped propagation network, trained on one 2-core CPU (two runs, about 50 min), added to the bundle that
# training/recipes/click_net_cpu.sh made (Resources/models/default by default).
#
#   bash training/recipes/prop_net_cpu.sh            # from the repository root, ../shared/data beside it
#
# Resumes when runs/prop_net_cpu already has a checkpoint. The export rebuilds the bundle in a staging
# folder with the three propagation stages, checks onnxruntime against torch, and swaps it in.
set -euo pipefail
source "$(dirname "$0")/common.sh"

ensure_data
# 1. from scratch; the config's schedule is 3000 steps, the shipped run stopped at 1000 (about 17 min)
"$PY" -m training.loops.propagation --config training/configs/prop_net_cpu.json --out runs/prop_net_cpu --stop-at 1000 --no-progress
# 2. 8-slice sequences, 40 % placed so the structure ends inside them (where to stop), from run 1's weights;
#    the shipped run stopped at 1200 of its 1400 steps (validation had levelled off; about 30 min)
"$PY" -m training.loops.propagation --config training/configs/prop_net_cpu_ends.json --out runs/prop_net_cpu_ends --stop-at 1200 --no-progress
"$PY" -m training.export.propagation --checkpoint runs/prop_net_cpu_ends/checkpoint.pt --bundle "$OUT" \
    --runs runs/prop_net_cpu runs/prop_net_cpu_ends
