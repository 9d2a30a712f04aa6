# Sourced by the recipes: the repository root as the working directory, quiet threads on a shared CPU, the
# Python to run ($PYTHON, default python), the bundle to build ($OUT, default Resources/models/default), and
# ensure_data: the labelled scans that ship in packages, prepared once under runs/data.
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
