#!/usr/bin/env bash
# The text localiser of bundle 0.6.0 (a typed name alone -> the structure's map), on one 2-core CPU. Runs after
# training/recipes/click_net_corrections_cpu.sh ($OUT is then bundle 0.5.0, whose click network the localiser's
# body starts from and whose stages all stay).
#
#   bash training/recipes/text_localiser_cpu.sh      # from the repository root, ../shared/data beside it
#
# The run resumes from its run folder. Times are this project's 2-core CPU (2026-12-07).
#   1. text_localiser_lite0   4000 steps: the 0.5.0 click network's body (prompts held at zero) with a head of one
#                             map per structure code the training cases label, whole slices along all three axes
#                             drawn balanced over categories, BCE + soft Dice on the maps each case labels (about
#                             110 min; the shipped run was planned at 3000 steps and extended to 4000 at step 2200,
#                             its learning-rate schedule then following the new total: its train.log says so)
#   2. export into runs/bundle_localiser (a copy of $OUT), bundle version 0.6.0, the model card; it then replaces $OUT
set -euo pipefail
source "$(dirname "$0")/common.sh"

ensure_data
require_run click_net_corrections_cpu.sh training.run_name click_net_lite0_wise
require_run click_net_corrections_cpu.sh text.training.run_name text_net_lite0_wise
localiser_bundle text_localiser_lite0 runs/bundle_localiser 0.6.0 '{"threshold": -0.5, "min_part_share": 0.1}' \
    docs/evaluation/text_localiser/validation-2d docs/evaluation/corrections/shipped-3d
