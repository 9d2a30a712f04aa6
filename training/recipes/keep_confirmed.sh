#!/usr/bin/env bash
# Bundle 0.8.0: bundle 0.7.0 with text.localiser.keep_confirmed (no training). Runs after
# training/recipes/input_gamma.sh (Resources/models/default is then bundle 0.7.0).
#
#   bash training/recipes/keep_confirmed.sh      # from the repository root
#
# A name's answer (the text localiser's) and then a positive click on one of its parts: the click network answers
# the click alone (a myocardium ring became a blob around the click). With keep_confirmed the clicked part stays in
# the answers on that slice until a negative click lands in it. Chosen on the validation split against 0.7.0
# (docs/evaluation/confirming-clicks: the same evaluation with the setting off and on; seconds here).
set -euo pipefail
source "$(dirname "$0")/common.sh"

require_run input_gamma.sh input_gamma_tuning.run input_gamma
require_run text_localiser_robust_cpu.sh text.localiser_training.run_name text_localiser_robust_lite0
rm -rf runs/bundle_keep
cp -r "$OUT" runs/bundle_keep
"$PY" -m training.export.settings --bundle runs/bundle_keep --set text.localiser.keep_confirmed=true \
    --bundle-version 0.8.0
"$PY" -m training.export.model_card --bundle runs/bundle_keep --split training/splits/validation.json \
    --evaluation docs/evaluation/confirming-clicks/validation-2d docs/evaluation/source-shifts/validation-3d
install_bundle runs/bundle_keep
