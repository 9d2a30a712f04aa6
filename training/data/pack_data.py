"""Pack labelled cases into one ``.npz`` file that ``VolumeSliceDataset`` reads as a data root.

For a training machine without SimpleITK (or without ../shared/data beside the checkout): the arrays are
exactly what ``IMISSegmentLib.io`` reads here (image in its own dtype, label map resampled onto the image
grid, spacing (sk, sj, si), structure names); normalisation still happens when the dataset loads them.

    python -m training.data.pack_data ../shared/data runs/data --exclude ct_abdomen_multiorgan phantom_prostate \\
        --out .gpudata/train.npz
    python -m training.data.pack_data ../shared/data --include ct_abdomen_multiorgan --out .gpudata/val.npz

Then name the file in a config's ``data.roots`` / ``validation.roots`` (``include_cases`` /
``exclude_cases`` match the case names stored in it).

The validation split's held-out cases (training/splits/validation.json: its validation cases and the reported
``ct_abdomen_multiorgan``) are left out unless ``--include`` names them; ``--held-out only`` packs just the
split's validation cases (a trainer's validation set), ``--held-out include`` applies no split.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from IMISSegmentLib.io.atomic import atomic_path, check_output_path

from training.data.datasets import _read_cases


def pack_cases(roots, out, include=None, exclude=(), held_out: str = "skip") -> list[str]:
    """Write every case under ``roots`` (filtered by name and the split's ``held_out`` rule, as
    :func:`training.data.datasets.case_filter`) to ``out`` (.npz, compressed); returns the names."""
    arrays, cases = {}, []
    for root in roots:
        for case, array, spacing, label in _read_cases(root, include, exclude, held_out=held_out):   # as datasets
            number = len(cases)
            arrays[f"image_{number}"] = array
            arrays[f"label_{number}"] = label
            arrays[f"spacing_{number}"] = np.asarray(spacing, np.float64)
            cases.append({"name": case.name, "dataset": case.dataset,
                          "names": {str(k): v for k, v in case.names.items()}})
    if not cases:
        raise ValueError(f"no cases to pack under {list(roots)}")
    with atomic_path(Path(out), ".npz") as temp:   # a failure leaves no partial file
        np.savez_compressed(temp, cases=np.array(json.dumps(cases)), **arrays)
    return [c["name"] for c in cases]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data.pack_data", description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", help="data folders (case folders, MSD / nnU-Net raw)")
    parser.add_argument("--out", required=True, help="output .npz file")
    parser.add_argument("--include", nargs="*", default=None, help="only these case names")
    parser.add_argument("--exclude", nargs="*", default=(), help="leave these case names out")
    parser.add_argument("--held-out", default="skip", choices=("skip", "include", "only"),
                        help="the validation split's held-out cases: skip them unless --include names them "
                             "(default), include them, or pack only the split's validation cases")
    args = parser.parse_args(argv)
    try:
        check_output_path(args.out)
        names = pack_cases(args.roots, args.out, set(args.include) if args.include else None, tuple(args.exclude),
                           args.held_out)
    except (ValueError, OSError) as error:   # InputError is a ValueError
        print(f"training.data.pack_data: error: {error}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(names)} cases: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
