#!/usr/bin/env bash
# A candidate, not shipped: bundle 0.8.0 with the multi-round fusion (MRF) quality network retrained on round
# pairs of the current engine on the public sets' training cases (a subset: the 3D protocol costs about 30 s per
# structure and prompt on an abdominal CT) and switched on, on one 2-core CPU. Runs after
# training/recipes/keep_confirmed.sh (Resources/models/default is then bundle 0.8.0). On the validation split's 3D
# protocol it loses fewer axial rounds than 0.8.0 at the same mean, but ends lower from a coronal first prompt
# (axial sweeps only were collected): docs/evaluation/3d-rounds/. The bundle is left in runs/bundle_mrf_real.
#
#   bash training/recipes/mrf_net_real_cpu.sh       # from the repository root, ../shared/data beside it
#
# 1. Round pairs (about 25 min, two processes): the simulated user runs the 3D protocol (5 rounds, box and click)
#    through the session with fusion off, with $OUT's networks, on 2 BTCV CTs, 4 CHAOS, 12 ACDC, 8 MS-CMR
#    and 2 LA cases (axial sweeps); the first cases of each set's training split, sorted by name. The split's
#    validation cases are never read.
# 2. Training (1500 steps, about 5 min): the round pairs alone; those of a quarter of the structure names are
#    held out for the run's own validation.
# 3. Export: a copy of $OUT with the network switched on (decision threshold 0.4, the best of the run's threshold
#    sweep on its held-out pairs; the direction check and the "agree" spread kept).
set -euo pipefail
source "$(dirname "$0")/common.sh"

require_run prop_net_real_cpu.sh propagation.training.run_name prop_net_real_long

export IMIS_SEGMENT_THREADS=1 IMIS_SEGMENT_MODEL="$OUT"
cases() {   # SET:N ...: the first N training-split cases of each SET, sorted (one scan of the data folder)
    "$PY" - "$@" <<'PYTHON'
import sys
from IMISSegmentLib.evaluation.datasets import discover_cases
from training.data.datasets import case_filter
wanted = case_filter()
keys = sorted(c.key for c in discover_cases("../shared/data") if wanted(c))
for name, count in (arg.split(":") for arg in sys.argv[1:]):
    print(" ".join([k for k in keys if k.startswith(name + "/")][:int(count)]))
PYTHON
}
mkdir -p runs/mrf_real
pids=()
[ -f runs/mrf_real/round_pairs_ct.npz ] || { "$PY" -m training.data.mrf_data --roots ../shared/data --axes 0 --rounds 5 \
    --include $(cases ct_abdomen_btcv:2) --out runs/mrf_real/round_pairs_ct.npz & pids+=($!); }
[ -f runs/mrf_real/round_pairs_mr.npz ] || { "$PY" -m training.data.mrf_data --roots ../shared/data --axes 0 --rounds 5 \
    --include $(cases mr_abdomen_chaos_t2:4 mr_heart_acdc_cine:12 mr_heart_mscmr_bssfp:8 mr_heart_la2018_lge:2) \
    --out runs/mrf_real/round_pairs_mr.npz & pids+=($!); }
for pid in "${pids[@]}"; do wait "$pid"; done
"$PY" -m training.loops.mrf --config training/configs/mrf_net_real.json --out runs/mrf_net_real --no-progress
rm -rf runs/bundle_mrf_real
cp -r "$OUT" runs/bundle_mrf_real
"$PY" -m training.export.mrf --checkpoint runs/mrf_net_real/checkpoint.pt --bundle runs/bundle_mrf_real \
    --runs runs/mrf_net_real --settings '{"threshold": 0.4, "network": true}'
