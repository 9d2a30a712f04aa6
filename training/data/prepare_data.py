"""Export labelled scans that ship inside packages into the case-folder layout training reads.

    python -m training.data.prepare_data --out runs/data

Writes ``ct_chest_slicerio/`` (the `slicerio` wheel's CTChest4.nrrd with its 7-segment
Segmentation.seg.nrrd: ribs, three vertebral-column parts, both lungs, tissue) as image.nii.gz +
label.nii.gz + labels.json; and into ``--ribs-out`` (a folder of its own, so that runs reading ``--out`` see the
same cases as before) the same CT with each rib piece (a 3D connected component of its ribs segment, at least
``RIB_MIN_VOXELS`` voxels) as a structure of its own: small structures that change size from slice to slice,
like the held-out scan's ribs and adrenal glands. The pieces, ranked by size, alternate between
``ct_chest_ribs_train/`` (1st, 3rd, ...) and ``ct_chest_ribs_val/`` (2nd, 4th, ...), so a run can train on one
half and be checked on the other. Nothing is downloaded: the files are in the installed wheel.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from IMISSegmentLib.errors import InputError
from IMISSegmentLib.io import read_image, write_label
from IMISSegmentLib.io.atomic import check_output_path, write_text

#: rib pieces smaller than this (voxels of 3 x 3 x 10 mm) are left out of the rib-piece case
RIB_MIN_VOXELS = 80


def export_slicerio_chest(out_dir: Path) -> Path:
    import slicerio

    data = Path(slicerio.__file__).parent / "data"
    volume = read_image(data / "CTChest4.nrrd")
    segmentation = slicerio.read_segmentation(str(data / "Segmentation.seg.nrrd"))
    labels = np.asarray(segmentation["voxels"]).transpose(2, 1, 0)   # slicerio is (i, j, k)
    if labels.shape != volume.shape:
        raise RuntimeError(f"slicerio chest segmentation {labels.shape} does not match its CT {volume.shape}")
    names = {int(s["labelValue"]): s["name"] for s in segmentation["segments"]}
    case = out_dir / "ct_chest_slicerio"
    write_label(case / "image.nii.gz", volume.array, volume)
    write_label(case / "label.nii.gz", labels.astype(np.uint8), volume)
    write_text(case / "labels.json", json.dumps({"labels": {str(k): v for k, v in sorted(names.items())},
                                                 "source": "slicerio wheel: data/CTChest4.nrrd + Segmentation.seg.nrrd",
                                                 "licence": "see the slicerio package"}, indent=1))
    return case


def export_rib_pieces(chest: Path, out_dir: Path) -> list:
    """The chest case's ribs segment split into its 3D connected components, largest first, alternating
    between a training and a validation case; their folders."""
    from scipy import ndimage

    from IMISSegmentLib.io.readers import read_label

    volume = read_image(chest / "image.nii.gz")
    ribs = read_label(chest / "label.nii.gz", volume) == 1
    components, _ = ndimage.label(ribs, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(components.ravel())[1:]
    kept = [int(i) + 1 for i in np.argsort(-sizes, kind="stable") if sizes[i] >= RIB_MIN_VOXELS]
    cases = []
    halves = (("ct_chest_ribs_train", "first", kept[0::2]), ("ct_chest_ribs_val", "second", kept[1::2]))
    for name, first, pieces in halves:
        labels = np.zeros(volume.shape, np.uint8)
        for value, component in enumerate(pieces, start=1):
            labels[components == component] = value
        case = out_dir / name
        write_label(case / "image.nii.gz", volume.array, volume)
        write_label(case / "label.nii.gz", labels, volume)
        write_text(case / "labels.json", json.dumps(
            {"labels": {str(v): f"rib piece {v}" for v in range(1, len(pieces) + 1)},
             "source": f"ct_chest_slicerio's ribs segment: its 3D connected components of >= {RIB_MIN_VOXELS} "
                       f"voxels ranked by size, every second one from the {first}",
             "licence": "see the slicerio package"}, indent=1))
        cases.append(case)
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data.prepare_data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/data", help="folder to write the case folders into")
    parser.add_argument("--ribs-out", default="runs/data_ribs", help="folder for the two rib-piece cases")
    args = parser.parse_args(argv)
    try:
        for folder in (args.out, args.ribs_out):
            check_output_path(folder, folder=True)
        chest = export_slicerio_chest(Path(args.out))
        print(f"wrote {chest}")
        for case in export_rib_pieces(chest, Path(args.ribs_out)):
            print(f"wrote {case}")
    except (InputError, OSError) as error:
        print(f"training.data.prepare_data: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
