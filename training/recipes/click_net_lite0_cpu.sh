#!/usr/bin/env bash
# The 2D network of bundles 0.3.0 and 0.4.0 (click_net_corrections_cpu.sh fine-tunes it into 0.5.0's):
# EfficientNet-Lite0 from ImageNet, trained on the training
# cases of ../shared/data (training/splits/validation.json holds the validation cases back), on one 2-core CPU.
#
#   bash training/recipes/click_net_lite0_cpu.sh            # from the repository root, ../shared/data beside it
#
# Every run resumes from its checkpoint when its folder has one, so the script can be re-run after an
# interruption; each step's time below is what it took on this project's 2-core CPU (2026-12-06).
#   1. click_net_lite0       800 steps from the ImageNet weights, batch norm trained (44 min)
#   2. click_net_lite0_ft    300 steps, batch norm recalibrated on simulated interactions and frozen (21 min)
#   3. click_net_lite0_long  1400 steps more, half the first prompts boxes, 0..3 correction rounds (59 min)
#   4. click_net_lite0_zoom  450 steps with half the slices cut to a window around the structure, as the
#                            inference zoom-in shows them (training/data/zoom_crops.py; 20 min)
#   5. export, and the stages this network does not replace carried from the bundle there before (the memory
#      network, the fusion settings, the propagated-slice correction network, the growth check)
#   6. the text stage on the frozen 2D network (training/loops/text.py, 600 steps, about 25 min)
#   7. the inference settings chosen on the validation split (training/analysis/tune_inference.py)
#   8. the model card (training/export/model_card.py)
set -euo pipefail
source "$(dirname "$0")/common.sh"

ensure_data
for run in click_net_lite0 click_net_lite0_ft click_net_lite0_long click_net_lite0_zoom; do
    "$PY" -m training.loops.click_net --config "training/configs/$run.json" --out "runs/$run" --no-progress
done
rm -rf runs/bundle_previous
cp -r "$OUT" runs/bundle_previous
"$PY" -m training.export.click_net --checkpoint runs/click_net_lite0_zoom/checkpoint.pt --out "$OUT" --replace-bundle \
    --runs runs/click_net_lite0 runs/click_net_lite0_ft runs/click_net_lite0_long runs/click_net_lite0_zoom
"$PY" -m training.export.carry --from runs/bundle_previous --to "$OUT" \
    --parts propagation,fusion,propagated_correction,growth_check --records fusion_direction
"$PY" -m training.loops.text --config training/configs/text_net_lite0.json --out runs/text_net_lite0 \
    --set init_bundle="\"$OUT\"" --no-progress
"$PY" -m training.export.text --checkpoint runs/text_net_lite0/checkpoint.pt --bundle "$OUT" --runs runs/text_net_lite0
"$PY" -m training.analysis.tune_inference --bundle "$OUT" --data ../shared/data --split training/splits/validation.json \
    --expansions 1.5,3 --min-crop-mm 60,120,240 --parts always --rounds 0 --out runs/inference_tune_lite0 --apply
"$PY" -m training.export.model_card --bundle "$OUT" --split training/splits/validation.json \
    --evaluation docs/evaluation/lite0-validation-2d/results.json
