#!/usr/bin/env bash
# The shipped multi-round fusion (MRF) quality network, trained on one 2-core CPU, added to the bundle that
# training/recipes/click_net_cpu.sh and prop_net_cpu.sh made (Resources/models/default by default).
#
#   bash training/recipes/mrf_net_cpu.sh            # from the repository root, ../shared/data beside it
#
# 1. Round pairs: the simulated user runs the 3D protocol (6 rounds, box and click, every axis) through the
#    session with fusion off on the training cases, with the bundle's own 2D and propagation networks; every
#    slice a round changed is a pair (previous mask, current mask, which has fewer wrong pixels).
# 2. Training: a bank of synthetic defective-mask pairs (training/defects.py) plus the round pairs; the round
#    pairs of a quarter of the structures are held out for validation.
# 3. Export: the ONNX stage, the torch weights and the fusion settings (decision threshold) into the bundle.
set -euo pipefail
source "$(dirname "$0")/common.sh"

ensure_data
# the two data folders in two processes (about 25 min; the 512 x 512 lesion scans take most of it)
pids=()
[ -f runs/mrf/round_pairs_shared.npz ] || { IMIS_SEGMENT_MODEL="$OUT" "$PY" -m training.mrf_data --roots ../shared/data \
    --out runs/mrf/round_pairs_shared.npz & pids+=($!); }
[ -f runs/mrf/round_pairs_chest.npz ] || { IMIS_SEGMENT_MODEL="$OUT" "$PY" -m training.mrf_data --roots runs/data \
    --out runs/mrf/round_pairs_chest.npz & pids+=($!); }
for pid in "${pids[@]}"; do wait "$pid"; done
"$PY" -m training.train_mrf --config training/configs/mrf_net_cpu.json --out runs/mrf_net_cpu --no-progress
# the decision threshold: the run's threshold sweep on the validation pairs (train.log) was flat from 0.35 to 0.55;
# 0.5. Off by default ("enabled": false): on the held-out case it does not yet beat plain re-propagation
# (training/README.md); sessions switch it on with fusion=True, evaluate with --mrf on|both
"$PY" -m training.export_mrf --checkpoint runs/mrf_net_cpu/checkpoint.pt --bundle "$OUT" --runs runs/mrf_net_cpu \
    --settings '{"threshold": 0.5, "enabled": false}'
