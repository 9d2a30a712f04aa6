#!/usr/bin/env bash
# The click network's input gamma of bundle 0.7.0, chosen on the validation split and written into the bundle
# (about 5 min on this 2-core CPU). Runs after training/recipes/text_localiser_robust_cpu.sh; changes no weights.
#
#   bash training/recipes/input_gamma.sh       # from the repository root, ../shared/data beside it
#
# The grid: the slice's 0..1 intensities raised to 1 (as they are), 0.8, 0.6, 0.5 or 0.4 before the click network
# sees them; each scored by the 2D protocol (5 interactions, first prompt a click and a box) on the validation
# split, the bundle's zoom and prompted parts held (training/analysis/tune_inference.py --input-gammas).
set -euo pipefail
source "$(dirname "$0")/common.sh"

require_run text_localiser_robust_cpu.sh text.localiser_training.run_name text_localiser_robust_lite0
"$PY" -m training.analysis.tune_inference --bundle "$OUT" --data ../shared/data \
    --split training/splits/validation.json --input-gammas 1,0.8,0.6,0.5,0.4 --clicks 5 \
    --out runs/input_gamma --apply
"$PY" -m training.export.model_card --bundle "$OUT" --split training/splits/validation.json \
    --evaluation docs/evaluation/source-shifts/validation-2d docs/evaluation/source-shifts/validation-3d
