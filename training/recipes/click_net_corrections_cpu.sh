#!/usr/bin/env bash
# The shipped 2D network of bundle 0.5.0: the 0.4.0 2D network (click_net_lite0_zoom) fine-tuned to answer
# corrections on slices that already hold a mask, then averaged with itself before the fine-tune, on one 2-core
# CPU. Runs after training/recipes/prop_net_real_cpu.sh (Resources/models/default is then bundle 0.4.0, whose
# memory network, fusion and inference settings are kept).
#
#   bash training/recipes/click_net_corrections_cpu.sh      # from the repository root, ../shared/data beside it
#
# Every run resumes from (or, for the average, rewrites) its run folder. Times are this project's 2-core CPU
# (2026-12-07), each beside another job.
#   1. click_net_lite0_corrzoom  600 steps from click_net_lite0_zoom: 30 % of the real slices start from a previous
#                                mask (a neighbouring slice's, or 40 % of those the slice's own mask spoilt) and its
#                                correction click, cut by the zoom as the others are; boxes 70 % of the other first
#                                prompts; the myocardium drawn 2x (25 min)
#   2. click_net_lite0_wise      its weights averaged half and half with click_net_lite0_zoom's (WiSE-FT,
#                                training/loops/average.py; seconds): the fine-tune alone lost 0.035 on a box alone
#                                in coronal and sagittal views (docs/evaluation/corrections/)
#   3. export into runs/bundle_wise, and bundle 0.4.0's other stages and settings carried over
#   4. the text stage retrained on the new network (600 steps, 27 min)
#   5. the model card; runs/bundle_wise replaces $OUT
set -euo pipefail
source "$(dirname "$0")/common.sh"

ensure_data
# the fine-tune starts from click_net_lite0_zoom (the config's init_from) and the other stages come from the bundle
# in $OUT, which must be 0.4.0 (prop_net_real_cpu.sh's result) or this recipe's own, when it is run again
problem=$("$PY" - "$OUT/inference_info.json" <<'PYTHON'
import json, sys
info = json.load(open(sys.argv[1]))
net = (info.get("training") or {}).get("run_name")
prop = ((info.get("propagation") or {}).get("training") or {}).get("run_name")
if net not in ("click_net_lite0_zoom", "click_net_lite0_wise"):
    print(f"holds the 2D network of run '{net}', not click_net_lite0_zoom (training/recipes/click_net_lite0_cpu.sh)")
elif prop != "prop_net_real_long" or "slice_propagated" in info.get("stages", {}):
    print(f"holds the memory network of run '{prop}' (or a propagated-slice stage): run prop_net_real_cpu.sh first")
PYTHON
)
if [ -n "$problem" ]; then echo "click_net_corrections_cpu.sh: $OUT $problem" >&2; exit 2; fi
[ -f runs/click_net_lite0_zoom/checkpoint.pt ] || {
    echo "click_net_corrections_cpu.sh: runs/click_net_lite0_zoom/checkpoint.pt is missing" \
         "(training/recipes/click_net_lite0_cpu.sh makes it)" >&2
    exit 2; }
"$PY" -m training.loops.click_net --config training/configs/click_net_lite0_corrzoom.json \
    --out runs/click_net_lite0_corrzoom --no-progress
"$PY" -m training.loops.average --config training/configs/click_net_lite0_wise.json --out runs/click_net_lite0_wise
# built in runs/bundle_wise (the text config's init_bundle), then copied over $OUT: a failure leaves $OUT as it was
rm -rf runs/bundle_wise
"$PY" -m training.export.click_net --checkpoint runs/click_net_lite0_wise/checkpoint.pt --out runs/bundle_wise \
    --runs runs/click_net_lite0 runs/click_net_lite0_ft runs/click_net_lite0_long runs/click_net_lite0_zoom \
    runs/click_net_lite0_corrzoom runs/click_net_lite0_wise
"$PY" -m training.export.carry --from "$OUT" --to runs/bundle_wise \
    --parts propagation,fusion,growth_check,box_fill,zoom,prompted_parts,inference_tuning \
    --records fusion_direction,prop_net_cpu,prop_net_cpu_ends   # records no entry names (the memory network's history)
"$PY" -m training.loops.text --config training/configs/text_net_lite0_wise.json --out runs/text_net_lite0_wise --no-progress
"$PY" -m training.export.text --checkpoint runs/text_net_lite0_wise/checkpoint.pt --bundle runs/bundle_wise \
    --runs runs/text_net_lite0_wise
"$PY" -m training.export.model_card --bundle runs/bundle_wise --split training/splits/validation.json \
    --evaluation docs/evaluation/corrections/shipped-2d docs/evaluation/corrections/shipped-3d
install_bundle runs/bundle_wise
