#!/usr/bin/env bash
# The text localiser of bundle 0.7.0: bundle 0.6.0's localiser fine-tuned on slices shown as other scanners and
# protocols would show them (training/data/source_shift.py), on one 2-core CPU. Runs after
# training/recipes/text_localiser_cpu.sh ($OUT is then bundle 0.6.0, whose localiser this starts from; every
# other stage stays).
#
#   bash training/recipes/text_localiser_robust_cpu.sh      # from the repository root, ../shared/data beside it
#
# The run resumes from its run folder. Times are this project's 2-core CPU (2026-12-07).
#   1. text_localiser_robust_lite0   1500 steps from 0.6.0's localiser: half the slices get another field of view
#                                    (0.6 - 1.7 x), 30 % a coarser resolution (1.3 - 3 x), half another window and
#                                    gamma, 20 % noise; then the flips / transposition / gamma of every sample;
#                                    AdamW 5e-4, cosine (about 40 min)
#   2. export into runs/bundle_localiser_robust (a copy of $OUT), bundle version 0.7.0, the model card; it then
#      replaces $OUT
set -euo pipefail
source "$(dirname "$0")/common.sh"

ensure_data
# $OUT is bundle 0.6.0, or this recipe's own result when it is run again over its run folder (a fresh clone ships
# 0.7.0, whose localiser this must not fine-tune a second time)
if [ -f runs/text_localiser_robust_lite0/checkpoint.pt ]; then
    require_run text_localiser_cpu.sh text.localiser_training.run_name text_localiser_lite0 text_localiser_robust_lite0
else
    require_run text_localiser_cpu.sh text.localiser_training.run_name text_localiser_lite0
fi
localiser_bundle text_localiser_robust_lite0 runs/bundle_localiser_robust 0.7.0 \
    '{"threshold": -1.0, "min_part_share": 0.1}' \
    docs/evaluation/source-shifts/validation-2d docs/evaluation/source-shifts/validation-3d
