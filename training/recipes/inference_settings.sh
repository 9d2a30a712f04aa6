#!/usr/bin/env bash
# The shipped inference settings of the 2D network (zoom-in window, prompted parts): chosen on the validation
# cases and written into the bundle (about 22 min on this 2-core CPU). Run last, after the network recipes.
#
#   bash training/recipes/inference_settings.sh       # from the repository root, ../shared/data beside it
#
# Validation cases: ../shared/data and the prepared slicerio chest CT, without ct_abdomen_multiorgan (held
# out, reported on). The grid: zoom off, or expansion 1.5 / 2 / 3 x min window 120 / 240 / 360 mm x on a box
# alone or not; prompted parts "text" or "always"; each scored by the 2D protocol, then a 3D check for
# zoom.propagated and zoom.box_alone (training/analysis/tune_inference.py).
set -euo pipefail
source "$(dirname "$0")/common.sh"

ensure_data
"$PY" -m training.analysis.tune_inference --bundle "$OUT" --data "${CASE_FOLDERS[@]}" runs/data \
    --exclude-cases ct_abdomen_multiorgan --out runs/inference_tune --apply
