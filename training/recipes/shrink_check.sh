#!/usr/bin/env bash
# Bundle 0.9.0: bundle 0.8.0 with the shrink check on (no training). Runs after training/recipes/keep_confirmed.sh
# (Resources/models/default is then bundle 0.8.0).
#
#   bash training/recipes/shrink_check.sh       # from the repository root
#
# A positive click on a slice with a mask sometimes comes back as a small blob around the click, the rest of the
# mask dropped (a left ventricle of 983 pixels answered with 49). With the shrink check, an answer to a positive
# click that covers less than half of the slice's mask is joined to that mask (IMISSegmentLib/engines/shrink_check.py).
# Chosen on the validation split against 0.8.0 (docs/evaluation/shrink-check: the same evaluations with the check
# off and on; seconds here).
set -euo pipefail
source "$(dirname "$0")/common.sh"

require_run keep_confirmed.sh version 0.8.0
rm -rf runs/bundle_shrink
cp -r "$OUT" runs/bundle_shrink
"$PY" -m training.export.settings --bundle runs/bundle_shrink \
    --set 'shrink_check={"enabled": true, "min_share": 0.5}' --bundle-version 0.9.0
"$PY" -m training.export.model_card --bundle runs/bundle_shrink --split training/splits/validation.json \
    --evaluation docs/evaluation/shrink-check/validation-2d docs/evaluation/shrink-check/validation-3d
install_bundle runs/bundle_shrink
