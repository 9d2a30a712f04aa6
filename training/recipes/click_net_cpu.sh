#!/usr/bin/env bash
# The 2D network trained from scratch on six scans (shipped before bundle 0.3.0), on one 2-core CPU: about 3.5 hours.
#
#   bash training/recipes/click_net_cpu.sh            # from the repository root, ../shared/data beside it
#
# Four runs, each starting from the previous one's weights (configs in training/configs/), then the export
# with every run's config, log and metrics copied into the bundle's training/ folder, and a fifth run for
# corrections on propagated slices added beside it. Each run resumes when
# its folder already has a checkpoint, so the script can be re-run after an interruption.
set -euo pipefail
source "$(dirname "$0")/common.sh"

"$PY" -m training.data.prepare_data --out runs/data
# 1. from scratch; the config's schedule is 3000 steps, the run used stopped at 1700 (35 min)
"$PY" -m training.loops.click_net --config training/configs/click_net_cpu.json --out runs/click_net_cpu --stop-at 1700 --no-progress
cp runs/click_net_cpu/checkpoint.pt runs/click_net_cpu/checkpoint_1700.pt
# 2. every round under the loss (22 min)
"$PY" -m training.loops.click_net --config training/configs/click_net_cpu_finetune.json --out runs/click_net_cpu_ft --no-progress
# 3. focal alpha off, more box-first samples (27 min)
"$PY" -m training.loops.click_net --config training/configs/click_net_cpu_finetune2.json --out runs/click_net_cpu_ft2 --no-progress
# 4. batch norm recalibrated on first prompts and frozen, so training sees what inference sees (training/loops/batchnorm.py)
# (2000 steps, 45 min)
"$PY" -m training.loops.click_net --config training/configs/click_net_cpu_finetune3.json --out runs/click_net_cpu_ft3 --no-progress
"$PY" -m training.export.click_net --checkpoint runs/click_net_cpu_ft3/checkpoint.pt --out "$OUT" --replace-bundle \
    --runs runs/click_net_cpu runs/click_net_cpu_ft runs/click_net_cpu_ft2 runs/click_net_cpu_ft3
# 5. the network for corrections on propagated slices (training/export/correction.py): run 4 fine-tuned with
# propagated priors, half the real samples starting from the structure's mask on a slice 2-20 mm away
# (possibly past the structure's end) and the correction click for it (training/data/datasets.py; 1200 steps,
# about 30 min); the bundle's slice network stays run 4
"$PY" -m training.loops.click_net --config training/configs/click_net_cpu_finetune5.json --out runs/click_net_cpu_ft5 --no-progress
"$PY" -m training.export.correction --checkpoint runs/click_net_cpu_ft5/checkpoint.pt --bundle "$OUT" \
    --runs runs/click_net_cpu_ft5
