"""Export labelled scans that ship inside packages into the case-folder layout training reads.

    python -m training.prepare_data --out runs/data

Writes ``ct_chest_slicerio/`` (the `slicerio` wheel's CTChest4.nrrd with its 7-segment
Segmentation.seg.nrrd: ribs, three vertebral-column parts, both lungs, tissue) as image.nii.gz +
label.nii.gz + labels.json. Nothing is downloaded: the files are in the installed wheel.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from IMISSegmentLib.io import read_image, write_label
from IMISSegmentLib.io.atomic import write_text


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/data", help="folder to write the case folders into")
    args = parser.parse_args(argv)
    print(f"wrote {export_slicerio_chest(Path(args.out))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
