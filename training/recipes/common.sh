# Sourced by the recipes: the repository root as the working directory, quiet threads on a shared CPU, the
# Python to run ($PYTHON, default python), the bundle to build ($OUT, default Resources/models/default), and
# ensure_data: the labelled scans that ship in packages, prepared once under runs/data; localiser_bundle (below).
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1
PY=${PYTHON:-python}
OUT=${OUT:-Resources/models/default}

ensure_data() {
    [ -f runs/data/ct_chest_slicerio/label.nii.gz ] || "$PY" -m training.data.prepare_data --out runs/data
}
# the six case folders of ../shared/data the shipped models were made from (the five public sets in it came later)
CASE_FOLDERS=(../shared/data/ct_abdomen_multiorgan ../shared/data/ct_lesion_a ../shared/data/ct_lesion_b
              ../shared/data/ct_lesion_c ../shared/data/mr_brain_tumor ../shared/data/phantom_prostate)

# require_run RECIPE PATH RUN...: stop unless $OUT's inference_info.json records one of the runs RUN at PATH (dotted
# keys, e.g. text.localiser_training.run_name); RECIPE is what makes it
require_run() {
    local recipe=$1 path=$2 found
    shift 2
    found=$("$PY" - "$OUT/inference_info.json" "$path" <<'PYTHON'
import json, sys
entry = json.load(open(sys.argv[1]))
for key in sys.argv[2].split("."):
    entry = entry.get(key) if isinstance(entry, dict) else None
print(entry if isinstance(entry, str) else "")
PYTHON
)
    for run in "$@"; do [ "$found" = "$run" ] && return 0; done
    echo "$(basename "$0"): $OUT holds run '${found:-none}' at $path, not $*: run training/recipes/$recipe first" >&2
    exit 2
}

# install_bundle FOLDER: the bundle built (and checked) in FOLDER replaces $OUT; a failure before this left $OUT as it was
install_bundle() {
    rm -rf "$OUT.previous"
    mv "$OUT" "$OUT.previous"
    cp -r "$1" "$OUT"
    rm -rf "$OUT.previous"
}

# localiser_bundle RUN STAGING VERSION SETTINGS EVALUATION...: train the text localiser run RUN
# (training/configs/RUN.json, started from $OUT; resumes from runs/RUN), export it into STAGING (a copy of $OUT)
# with SETTINGS (JSON) as bundle VERSION, write the model card citing the EVALUATION folders, install STAGING
localiser_bundle() {
    local run=$1 staging=$2 version=$3 settings=$4
    shift 4
    "$PY" -m training.loops.text_localiser --config "training/configs/$run.json" \
        --out "runs/$run" --no-progress --set "init_bundle=\"$OUT\""
    rm -rf "$staging"
    cp -r "$OUT" "$staging"
    "$PY" -m training.export.text_localiser --checkpoint "runs/$run/checkpoint.pt" \
        --bundle "$staging" --runs "runs/$run" --bundle-version "$version" --settings "$settings"
    "$PY" -m training.export.model_card --bundle "$staging" --split training/splits/validation.json --evaluation "$@"
    install_bundle "$staging"
}
