#!/usr/bin/env bash
# The 3D path of bundle 0.4.0 (kept in 0.5.0): the memory network fine-tuned on the training split of
# the public sets, and the 3D settings chosen on the validation split's 3D protocol, on one 2-core CPU. Runs
# after training/recipes/click_net_lite0_cpu.sh, whose bundle still holds the previous memory network
# (prop_net_cpu_ends, training/recipes/prop_net_cpu.sh): that network, in Resources/models/default, is where the
# fine-tune starts.
#
#   bash training/recipes/prop_net_real_cpu.sh            # from the repository root, ../shared/data beside it
#
# Every run resumes from its checkpoint when its folder has one. Times are this project's 2-core CPU (2026-12-07).
#   1. prop_net_real       800 steps from the previous memory network: sequences along all three axes of the
#                          training cases, balanced by structure (11 min)
#   2. prop_net_real_long  2000 steps more at a lower learning rate (40 min on one thread, beside an evaluation)
#   3. export into the bundle
#   4. the propagated-slice correction network of the previous 2D network taken out: the 2D network answers
#      corrections on propagated slices itself (3D protocol, validation shard 1/6: after 5 rounds from a box
#      0.628 with it, 0.700 without; docs/evaluation/prop-net-real-3d/)
#   5. multi-round fusion spread "agree": a correction reaches out until the slices where the new and previous
#      masks agree; beyond them the previous round stays (same Dice after 5 rounds, fewer rounds that lose)
#   6. the model card
set -euo pipefail
source "$(dirname "$0")/common.sh"

# the 3D evaluation the model card reports (docs/evaluation/prop-net-real-3d/README.md has its commands)
[ -f docs/evaluation/prop-net-real-3d/results.json ] || {
    echo "prop_net_real_cpu.sh: docs/evaluation/prop-net-real-3d/results.json is missing (the model card reads it)" >&2
    exit 2; }
ensure_data
# the fine-tune starts from Resources/models/default's memory network (the config's init_from), which must then
# be the previous one, prop_net_cpu_ends
if [ ! -f runs/prop_net_real/checkpoint.pt ]; then
    start=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['propagation']['training']['run_name'])" \
            Resources/models/default/inference_info.json)
    if [ "$start" != "prop_net_cpu_ends" ]; then
        echo "prop_net_real_cpu.sh: Resources/models/default holds the memory network of run '$start', not" \
             "prop_net_cpu_ends (training/recipes/prop_net_cpu.sh, then click_net_lite0_cpu.sh)" >&2
        exit 2
    fi
fi
"$PY" -m training.loops.propagation --config training/configs/prop_net_real.json --out runs/prop_net_real --no-progress
"$PY" -m training.loops.propagation --config training/configs/prop_net_real_long.json --out runs/prop_net_real_long \
    --no-progress
"$PY" -m training.export.propagation --checkpoint runs/prop_net_real_long/checkpoint.pt --bundle "$OUT" \
    --runs runs/prop_net_real runs/prop_net_real_long --bundle-version 0.4.0
if "$PY" -c "import json,sys; sys.exit('slice_propagated' not in json.load(open(sys.argv[1]))['stages'])" \
        "$OUT/inference_info.json"; then
    "$PY" -m training.export.correction --remove --bundle "$OUT" --neighbour off
fi
"$PY" -m training.export.fusion_settings --bundle "$OUT" --settings '{"spread": "agree", "agree_dice": 0.9}'
"$PY" -m training.export.model_card --bundle "$OUT" --split training/splits/validation.json \
    --evaluation docs/evaluation/lite0-validation-2d docs/evaluation/prop-net-real-3d
