"""Headless batch evaluation through the Slicer-side logic (MRML volume node -> session -> segment).

    Slicer --no-splash --no-main-window --python-script batch_evaluate.py --data DIR --out DIR [options]
    python batch_evaluate.py --data DIR --out DIR [options]        # with the slicer-core wheel

For every labelled case (IMISSegmentLib.evaluation.datasets.discover_cases) and every structure, the
3D simulated-user protocol (first prompt, propagate, then --rounds of click + propagate) is run through
``IMISSegmentMRMLLogic``, so every prompt's result is written into a segment by the Segment Editor logic.
Written under --out: ``segmentations/<case>-<method>.seg.nrrd`` (one segment per structure, named after
it, on the image's exact geometry, voxels taken from the MRML segments), ``metrics.csv`` (one row per
case, structure and method) and ``metrics.json`` (configuration, rows with every step, errors).
``--mrf both`` runs each model that can fuse rounds twice, as ``<method>`` (multi-round fusion on) and
``<method>-nomrf`` (off): the ablation through Slicer's logic; each row says whether fusion was on, how many
rounds lost more than 0.01 Dice ("drops") and how many of those had the clicked slice itself worse.

A case whose image cannot be read, a truncated or corrupt NIfTI file among them, is reported as an error and
skipped; so is a --labels entry that no case has. Nothing evaluated at all is an error too.

Exit code: 0 all cases ran, 1 some cases, structures or --labels entries failed (or nothing was evaluated),
2 bad arguments (an --out that cannot be written among them).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from pathlib import Path


def _add_paths() -> None:
    """Make IMISSegmentSlicer and IMISSegmentLib importable from the source tree or an installed extension."""
    here = Path(__file__).resolve().parent
    for folder in (here.parent, here.parent.parent):
        for package in ("IMISSegmentSlicer", "IMISSegmentLib"):
            if (folder / package).is_dir() and str(folder) not in sys.path:
                sys.path.insert(0, str(folder))


_add_paths()

CSV_FIELDS = ("case", "structure", "label", "method", "prompt", "rounds", "fusion", "final_dice", "final_nsd",
              "final_dice_segment", "dsc_auc", "nsd_auc", "noc85", "noc90", "seconds_per_step", "drops",
              "drops_clicked_slice", "segmentation_file")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="batch_evaluate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder of labelled cases (case folders or MSD / nnU-Net)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--methods", default="default",
                        help="comma-separated engines or bundle folders; 'default' = load_model() (default)")
    parser.add_argument("--labels", default=None, help="comma-separated label values or structure names (default: all)")
    parser.add_argument("--rounds", type=int, default=5, help="correction rounds after the first prompt (default 5)")
    parser.add_argument("--prompt", choices=("box", "click"), default="box", help="first prompt (default box)")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2), default=0, help="view normal of the prompts (0: k)")
    parser.add_argument("--tolerance-mm", type=float, default=2.0, help="NSD tolerance (default 2 mm)")
    parser.add_argument("--mrf", choices=("default", "on", "off", "both"), default="default",
                        help="multi-round fusion: the model's default, on, off, or both (each model that can fuse "
                             "runs twice, the second as <method>-nomrf)")
    args = parser.parse_args(argv)
    if args.rounds < 0:
        parser.error(f"--rounds must be 0 or more, got {args.rounds}")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not args.methods:
        parser.error("--methods is empty")
    if args.labels is not None:
        args.labels = {int(v) if v.strip().isdigit() else v.strip() for v in args.labels.split(",") if v.strip()}
        if not args.labels:
            parser.error("--labels is empty; leave it out to evaluate every structure")
    return args


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def _check_nifti(path: Path) -> None:
    """InputError for a truncated or corrupt NIfTI file, or one storing NaN / inf voxels: MRML's reader
    zero-fills the missing voxels and reads NaN / inf as they come, without a word (IMISSegmentLib's reader
    rejects all three). Other formats are left to the reader."""
    from IMISSegmentLib.errors import InputError
    from IMISSegmentLib.io.nifti_check import scan_nifti

    if not path.is_file() or not path.name.lower().endswith((".nii", ".nii.gz")):
        return
    nan, inf = scan_nifti(path)
    if nan or inf:
        raise InputError(f"{path}: {nan + inf} voxels are not finite ({nan} NaN, {inf} inf)")


def run(args) -> int:
    import numpy as np
    import slicer

    from IMISSegmentLib import load_model
    from IMISSegmentLib.errors import InputError
    from IMISSegmentLib.evaluation.datasets import LabelFilter, discover_cases
    from IMISSegmentLib.evaluation.metrics import dice
    from IMISSegmentLib.evaluation.protocol import clicked_slice_drops, round_record, run_3d, supported
    from IMISSegmentLib.evaluation.runner import fusion_variants, safe_filename, summarise_steps
    from IMISSegmentLib.io.atomic import check_output_path, write_text
    from IMISSegmentLib.io import read_label, write_segmentation
    from IMISSegmentSlicer import IMISSegmentMRMLLogic, load_volume_node, volume_from_node
    from IMISSegmentSlicer.mrml import has_slicer_app

    try:
        check_output_path(args.out, folder=True)
        cases = discover_cases(args.data)
        engines = {}
        for method in args.methods:
            engine = load_model(None if method == "default" else method)
            reason = supported(engine, "3d", args.prompt)
            if reason:
                raise InputError(f"method '{method}': {reason}")
            engines[method] = engine
    except InputError as error:
        print(f"batch_evaluate: error: {error}", file=sys.stderr)
        return 2

    out = Path(args.out)
    (out / "segmentations").mkdir(parents=True, exist_ok=True)
    rows, errors = [], []
    wanted = LabelFilter(args.labels)
    scene = slicer.mrmlScene if has_slicer_app() else slicer.vtkMRMLScene()
    for case in cases:
        start = time.perf_counter()
        try:
            _check_nifti(Path(case.image))
            volume_node = load_volume_node(case.image, scene, name=case.name)
            volume = volume_from_node(volume_node)          # LPS geometry of the node, for labels and writing
            label_map = read_label(case.label, volume)
        except InputError as error:
            errors.append(f"{case.name}: {error}")
            print(f"{case.name}: error: {error}", file=sys.stderr)
            continue
        values = wanted.select(case, [int(v) for v in np.unique(label_map) if v != 0])
        for method, engine, fused in fusion_variants(engines, args.mrf):
            logic = IMISSegmentMRMLLogic(scene, model=engine)
            if fused is not None:
                logic.fusion = fused
            segmentation_node, masks, names = None, {}, {}
            try:
                for value in values:
                    structure = case.names.get(value, f"label_{value}")
                    reference = label_map == value
                    try:
                        segment_id = logic.setup(volume_node, segmentation_node, segment_name=structure)
                        segmentation_node = logic.segmentation_node
                        # each segment is its own session's result: structures do not overwrite each other
                        logic.editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
                        rounds = []
                        steps, final = run_3d(logic, reference, volume.spacing, args.prompt, args.rounds,
                                              axis=args.axis, tolerance_mm=args.tolerance_mm,
                                              on_round=lambda *state: rounds.append(
                                                  round_record(*state, reference, args.axis)))
                        segment = logic.segment_array()
                    except Exception as error:  # one failing structure must not lose the run
                        errors.append(f"{case.name} / {structure} / {method}: {type(error).__name__}: {error}")
                        print(errors[-1], file=sys.stderr)
                        continue
                    masks[value], names[value] = segment, structure
                    rows.append({"case": case.name, "structure": structure, "label": value, "method": method,
                                 "engine": engine.name, "prompt": args.prompt, "rounds": args.rounds,
                                 "fusion": logic.fusion,
                                 **{k: _clean(v) for k, v in summarise_steps(steps).items()},
                                 "drops_clicked_slice": clicked_slice_drops(rounds),
                                 "final_dice_segment": dice(segment > 0, reference),
                                 "steps": [s.as_dict() for s in steps], "segmentation_file": None,
                                 "segment_id": segment_id})
            finally:
                logic.shutdown()
            if masks:
                labelmap = np.zeros(volume.shape, np.uint16 if max(masks) > 255 else np.uint8)
                for value, mask in masks.items():      # one file layer: later structures win on overlaps
                    labelmap[mask > 0] = value
                relative = Path("segmentations") / f"{safe_filename(case.name)}-{safe_filename(method)}.seg.nrrd"
                write_segmentation(out / relative, labelmap, volume, names)
                for row in rows:
                    if row["case"] == case.name and row["method"] == method:
                        row["segmentation_file"] = str(relative)
            if segmentation_node is not None:
                scene.RemoveNode(segmentation_node)
        scene.RemoveNode(volume_node)
        print(f"{case.name}: {len(values)} structure(s), {time.perf_counter() - start:.1f} s", flush=True)

    unmatched = wanted.unmatched()
    if unmatched:
        errors.append(unmatched)
        print(f"batch_evaluate: error: {errors[-1]}", file=sys.stderr)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})
    write_text(out / "metrics.csv", table.getvalue())
    config = {k: (sorted(map(str, v)) if isinstance(v, set) else v) for k, v in vars(args).items()}
    write_text(out / "metrics.json", json.dumps(
        {"config": config, "cases": [c.name for c in cases], "records": rows, "errors": errors},
        indent=1, default=_clean))
    print(f"wrote {out / 'metrics.csv'} ({len(rows)} rows, {len(errors)} errors)")
    if not rows and not errors:
        print("batch_evaluate: error: nothing was evaluated (no structure in the cases)", file=sys.stderr)
    return 1 if errors or not rows else 0


def main(argv=None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as error:            # argparse: --help (0) or bad arguments (2)
        return int(error.code or 0)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
